"""``capshard smoke-train``: short runs on a small build of the embedded sample, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.build import build
from pipeline.cli import main
from pipeline.config import BuildConfig
from pipeline.readers import SourceSpec
from pipeline.sample import sample_dataset
from pipeline.smoke import SmokeConfig, Vocabulary, smoke_train

#: Small and quick: a few steps of a few images.
QUICK = ["--steps", "4", "--batch-size", "8", "--log-every", "2", "--eval-batches", "2"]
KEYS = {"steps", "gap", "positive_cos", "negative_cos", "loss"}


@pytest.fixture(scope="module")
def sample_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("builds") / "sample"
    build(SourceSpec(dataset=sample_dataset(100), name="sample"), BuildConfig(out=out, workers=1))
    return out


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the ``capshard`` entry point; returns (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def last_json(stdout: str) -> dict[str, object]:
    return json.loads(stdout.strip().splitlines()[-1])


def test_json_last_line_holds_the_figures(sample_build: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["smoke-train", str(sample_build), *QUICK, "--min-gap", "-1", "--json"], capsys)
    assert code == 0
    result = last_json(out)
    assert result.keys() >= KEYS
    assert result["steps"] == 4
    assert result["mode"] == "true-ids"
    assert result["passed"] is True
    assert result["gap"] == pytest.approx(result["positive_cos"] - result["negative_cos"])  # type: ignore[operator]
    # Every image brings all 5 of its captions: every batch has several positives per image row.
    assert result["multi_positive_share"] == 1.0
    assert result["false_negative_share"] == 0.0
    assert result["true_gap"] == pytest.approx(result["gap"])


def test_text_output_logs_every_n_steps_and_ends_with_a_verdict(
    sample_build: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["smoke-train", str(sample_build), *QUICK, "--min-gap", "-1"], capsys)
    assert code == 0
    lines = out.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["2/4", "4/4"]
    assert all(" gap " in line and "multi-positive batches 100%" in line for line in steps)
    assert lines[-1].startswith("PASS: gap ")


def test_plot_writes_a_png(sample_build: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "figs" / "smoke.png"
    code, _, _ = run(["smoke-train", str(sample_build), *QUICK, "--min-gap", "-1", "--plot", str(plot)], capsys)
    assert code == 0
    with Image.open(plot) as img:
        assert img.format == "PNG"
        assert img.size[0] > 100 and img.size[1] > 100


def test_exit_code_follows_min_gap(sample_build: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["smoke-train", str(sample_build), *QUICK, "--min-gap", "2", "--json"], capsys)
    assert code == 1
    assert last_json(out)["passed"] is False
    # Progress went to stderr (stdout is the JSON alone); the error is its last line.
    assert "not above --min-gap 2" in err.strip().splitlines()[-1]
    assert "Traceback" not in err


def test_control_replays_the_loop_counter_ids(sample_build: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["smoke-train", str(sample_build), *QUICK, "--min-gap", "-1", "--json", "--simulate-loop-counter-ids"]
    code, out, err = run(argv, capsys)
    assert code == 0
    result = last_json(out)
    assert result.keys() >= KEYS
    assert result["mode"] == "loop-counter-ids"
    # By its own ids no batch has a positive besides the diagonal, and the other captions
    # of each image are among its negatives: 4 of the 39 other captions of a batch of 8 images.
    assert result["multi_positive_share"] == 0.0
    assert result["false_negative_share"] == pytest.approx(4 / 39)
    assert isinstance(result["false_negative_cos"], float)
    assert isinstance(result["true_gap"], float)
    assert "loop-counter" in err


def test_same_seed_same_figures(sample_build: Path) -> None:
    config = SmokeConfig(source=str(sample_build), steps=3, batch_size=8, eval_batches=2)
    a, b = smoke_train(config), smoke_train(config)
    assert a.final == b.final
    assert [p.loss for p in a.points] == [p.loss for p in b.points]


def test_a_short_run_learns_the_sample(sample_build: Path) -> None:
    # 80 images in train: 60 steps of 16 images is 12 epochs, seconds on a CPU.
    config = SmokeConfig(source=str(sample_build), steps=60, batch_size=16, log_every=10)
    logged: list[float] = []
    result = smoke_train(config, lambda step, f: logged.append(f.gap))
    assert len(logged) == 6
    assert result.final.gap > 0.3
    assert result.final.gap > logged[0]
    assert result.final.positive_cos > result.final.negative_cos
    assert result.steps == 60 and len(result.points) == 60


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--captions-per-image", "0"], 2, "captions-per-image"),
        (["--device", "cuda"], 2, "CUDA is not available"),
        (["--device", "warp-drive"], 2, "unknown device"),
        (["--batch-size", "500"], 2, "lower --batch-size"),
        (["--split", "nope"], 2, "nope"),
    ],
)
def test_user_errors_are_one_line(
    sample_build: Path, capsys: pytest.CaptureFixture[str], extra: list[str], code: int, message: str
) -> None:
    got, _, err = run(["smoke-train", str(sample_build), *QUICK, *extra], capsys)
    assert got == code
    assert message in err
    assert "Traceback" not in err


def test_a_missing_build_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["smoke-train", str(tmp_path / "nothing"), *QUICK], capsys)
    assert code != 0
    assert "Traceback" not in err and err.strip()


@settings(max_examples=50, deadline=None)
@given(captions=st.lists(st.text(max_size=40), min_size=1, max_size=8), capacity=st.integers(2, 10))
def test_vocabulary_encodes_every_caption_as_a_bag(captions: list[str], capacity: int) -> None:
    vocab = Vocabulary(capacity)
    ids, offsets = vocab.encode(captions)
    assert offsets.tolist()[0] == 0 and len(offsets) == len(captions)
    # No empty bag (an empty caption is one unknown word), ids within the table.
    assert all(b > a for a, b in zip(offsets.tolist(), [*offsets.tolist()[1:], len(ids)], strict=True))
    assert int(ids.min()) >= 0 and int(ids.max()) < capacity
    assert len(vocab) <= capacity
    again, _ = vocab.encode(captions)
    assert again.tolist() == ids.tolist()
