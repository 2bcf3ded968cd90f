"""capshard builds read by the REAL consumers: open_clip's training data pipeline, the
open_clip example trainer, and CLIP_benchmark's dataset builder and retrieval evaluation.

These need ``open_clip_torch[training]`` and ``clip_benchmark`` (the ``interop`` extra),
which `.ci/run` installs in their own venv (``.venv-interop``: torch 2.14.1, and
webdataset 0.2.86, the newest open_clip's training code accepts). Elsewhere they skip.
Everything runs on CPU with a small randomly initialised open_clip model; nothing is
downloaded.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

_WHY = "not installed: the interop extra (pip install -e '.[interop]'; .ci/run does it in .venv-interop)"
open_clip = pytest.importorskip("open_clip", reason=f"open_clip {_WHY}")
pytest.importorskip("open_clip_train", reason=f"open_clip_train (open_clip_torch[training]) {_WHY}")
pytest.importorskip("clip_benchmark", reason=f"clip_benchmark {_WHY}")

import torch  # noqa: E402

from pipeline import sample  # noqa: E402
from pipeline.build import build  # noqa: E402
from pipeline.config import BuildConfig  # noqa: E402
from pipeline.export import export_clip_benchmark  # noqa: E402
from pipeline.export.samples import iter_samples, shard_names  # noqa: E402
from pipeline.readers import SourceSpec  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import train_open_clip as example  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded sample's generator, 100 images (80 train / 10 val / 10 test), 5 captions each."""
    out = tmp_path_factory.mktemp("interop") / "build"
    build(SourceSpec(dataset=sample.sample_dataset(100)), BuildConfig(out=out, workers=1, max_images_per_shard=16))
    return out


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any, Any]:
    example.register_tiny()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(example.TINY, pretrained=None)
    return model.eval(), preprocess, open_clip.get_tokenizer(example.TINY)


def captions_of(build_dir: Path, split: str) -> list[list[str]]:
    m = json.loads((build_dir / "manifest.json").read_text())
    return [s.captions for s in iter_samples(build_dir, shard_names(m, split))]


class Recording(example.OneCaption):
    """OneCaption that records what open_clip handed it and what it chose (workers=0: in-process)."""

    def __init__(self, tokenizer: Any, mode: str) -> None:
        super().__init__(tokenizer, mode)
        self.given: list[str] = []
        self.chosen: list[str] = []

    def choose(self, text: str) -> str:
        self.given.append(text)
        self.chosen.append(super().choose(text))
        return self.chosen[-1]


def test_open_clip_get_wds_dataset_counts_from_sizes_json(built: Path, tiny: tuple[Any, Any, Any]) -> None:
    from open_clip_train.data import get_wds_dataset

    _model, preprocess, tokenizer = tiny
    train = captions_of(built, "train")
    args = example.Namespace(
        train_data=example.shard_pattern(built, "train"), val_data=None, train_num_samples=None,
        dataset_resampled=False, train_data_upsampling_factors=None, seed=0, batch_size=16, workers=0, world_size=1,
    )
    recording = Recording(tokenizer, "first")
    data = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=recording)
    assert len(train) == 80
    assert data.dataloader.num_batches == math.ceil(80 / 16) == 5
    assert data.dataloader.num_samples == 80
    batches = list(data.dataloader)
    assert len(batches) == 5
    for images, texts in batches:
        assert images.shape == (16, 3, 64, 64) and texts.shape == (16, 32)
    # open_clip hands the whole txt (every caption, one per line) to the tokenizer ...
    joined = Counter("\n".join(c) + "\n" for c in train)
    assert set(recording.given) <= set(joined) and len(recording.given) == 80
    # ... and OneCaption("first") gives the text tower exactly one of them.
    assert set(recording.chosen) <= {c[0] for c in train}


def test_one_caption_random_draws_a_different_line_each_read(built: Path, tiny: tuple[Any, Any, Any]) -> None:
    _model, _preprocess, tokenizer = tiny
    caps = captions_of(built, "train")[0]
    chooser = example.OneCaption(tokenizer, "random")
    picks = {chooser.choose("\n".join(caps) + "\n") for _ in range(200)}
    assert picks == set(caps)
    assert example.OneCaption(tokenizer, "all").choose("a\nb\n") == "a b"
    assert chooser("\n".join(caps)).shape == (1, 32)


@pytest.mark.parametrize("loader", ["open_clip", "capshard"])
def test_example_trains_a_real_open_clip_model_and_the_loss_falls(built: Path, loader: str) -> None:
    losses = example.main([str(built), "--loader", loader, "--steps", "12", "--batch-size", "16", "--lr", "2e-3"])
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def test_clip_benchmark_builder_reads_the_export(built: Path, tmp_path: Path, tiny: tuple[Any, Any, Any]) -> None:
    from clip_benchmark.datasets.builder import build_dataset

    _model, preprocess, _tokenizer = tiny
    export_clip_benchmark(built, tmp_path / "cb", split="test")
    ds = build_dataset("wds/capshard", root=str(tmp_path / "cb"), transform=preprocess, split="test",
                       task="zeroshot_retrieval")
    got = list(ds)
    assert len(got) == 10
    assert all(img.shape == (3, 64, 64) for img, _ in got)
    assert sorted(caps for _, caps in got) == sorted(captions_of(built, "test"))
    assert sum(len(caps) for _, caps in got) == 50


def test_clip_benchmark_retrieval_evaluation_runs_on_the_export(
    built: Path, tmp_path: Path, tiny: tuple[Any, Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """clip_benchmark's own CLI (`eval`), on CPU, with a checkpoint of the random tiny model."""
    from clip_benchmark import cli

    model, _preprocess, _tokenizer = tiny
    checkpoint = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    export_clip_benchmark(built, tmp_path / "cb", split="test")
    result = tmp_path / "result.json"
    monkeypatch.setattr(sys, "argv", [
        "clip_benchmark", "eval", "--dataset", "wds/capshard", "--dataset_root", str(tmp_path / "cb"),
        "--task", "zeroshot_retrieval", "--model", example.TINY, "--pretrained", str(checkpoint),
        "--output", str(result), "--batch_size", "8", "--num_workers", "0", "--no_amp", "--recall_k", "1", "5",
        "--quiet",
    ])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cli.main()
    metrics = json.loads(result.read_text())["metrics"]
    assert set(metrics) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5)}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    # 10 images, 5 captions each: image recall@5 finds a right image among 10 at least half the time by chance
    assert metrics["text_retrieval_recall@5"] >= metrics["text_retrieval_recall@1"]
