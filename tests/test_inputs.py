"""Inputs fingerprinted for what they are: a changed, deleted or added image is a different input,
the refusal names it, and ``verify --inputs`` reports it without rebuilding."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from synth import image_bytes, write_images

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.errors import IntegrityError
from pipeline.readers import SourceSpec

N = 12


def capshard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def pairs_table(root: Path) -> Path:
    """``pairs.csv`` whose image paths are relative to the table (no ``--images``)."""
    names = [f"img_{i:05d}.jpg" for i in range(N)]
    write_images(root / "imgs", names)
    table = root / "pairs.csv"
    table.write_text("image,caption\n" + "".join(f"imgs/{n},a photo number {i}\n" for i, n in enumerate(names)))
    return table


BUILD = ("build", "pairs.csv", "--out", "out", "--workers", "1")


@pytest.fixture
def built(tmp_path: Path) -> Path:
    pairs_table(tmp_path)
    first = capshard(*BUILD, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = capshard(*BUILD, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("up to date: out"), again.stderr
    return tmp_path


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("capshard: error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_a_replaced_image_makes_the_rerun_a_different_input(built: Path) -> None:
    (built / "imgs" / "img_00005.jpg").write_bytes(image_bytes(999))
    proc = capshard(*BUILD, cwd=built)
    assert proc.returncode == 1
    line = error_line(proc)
    assert "source: 1 image changed: imgs/img_00005.jpg" in line
    assert "--overwrite" in line

    rebuilt = capshard(*BUILD, "--overwrite", cwd=built)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert capshard(*BUILD, cwd=built).stdout.startswith("up to date: out")


def test_a_deleted_image_makes_the_rerun_a_different_input(built: Path) -> None:
    (built / "imgs" / "img_00007.jpg").unlink()
    line = error_line(capshard(*BUILD, cwd=built))
    assert "source: 1 image missing: imgs/img_00007.jpg" in line


def test_the_refusal_lists_the_first_paths_and_counts(built: Path) -> None:
    for i in range(7):
        (built / "imgs" / f"img_{i:05d}.jpg").write_bytes(image_bytes(500 + i))
    (built / "imgs" / "img_00010.jpg").unlink()
    line = error_line(capshard(*BUILD, cwd=built))
    assert "source: 7 images changed, 1 missing: imgs/img_00000.jpg, imgs/img_00001.jpg" in line
    assert "imgs/img_00004.jpg, …" in line and "img_00005" not in line


def same_size_rewrite(path: Path) -> None:
    """Different bytes, same size, same mtime: what a stat check cannot see."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_check_inputs_content_catches_a_same_size_same_mtime_rewrite(built: Path) -> None:
    same_size_rewrite(built / "imgs" / "img_00003.jpg")
    assert capshard(*BUILD, cwd=built).stdout.startswith("up to date: out")  # stat cannot see it
    proc = capshard(*BUILD, "--check-inputs", "content", cwd=built)
    assert proc.returncode == 1
    assert "source: 1 image changed: imgs/img_00003.jpg" in error_line(proc)

    shown = capshard("verify", "out", "--inputs", "pairs.csv", "--check-inputs", "content", cwd=built)
    assert shown.returncode == 1
    assert "changed: imgs/img_00003.jpg" in shown.stdout.splitlines()


def test_content_check_ignores_a_touched_but_identical_image(built: Path) -> None:
    os.utime(built / "imgs" / "img_00002.jpg", ns=(1, 1))
    assert "1 image changed: imgs/img_00002.jpg" in error_line(capshard(*BUILD, cwd=built))
    same = capshard(*BUILD, "--check-inputs", "content", cwd=built)
    assert same.returncode == 0 and same.stdout.startswith("up to date: out"), same.stderr


def test_verify_inputs_reports_changed_missing_and_added(built: Path) -> None:
    unchanged = capshard("verify", "out", "--inputs", "pairs.csv", cwd=built)
    assert unchanged.returncode == 0, unchanged.stderr
    assert f"inputs unchanged: out: {N} images as built" in unchanged.stdout

    (built / "imgs" / "img_00005.jpg").write_bytes(image_bytes(999))
    (built / "imgs" / "img_00007.jpg").unlink()
    write_images(built / "imgs", ["new.jpg"], start=300)
    with open(built / "pairs.csv", "a") as f:
        f.write("imgs/new.jpg,a new photo\n")
    proc = capshard("verify", "out", "--inputs", "pairs.csv", cwd=built)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert "changed: imgs/img_00005.jpg" in lines
    assert "missing: imgs/img_00007.jpg" in lines
    assert "added: imgs/new.jpg" in lines
    assert "source: annotation files changed" in lines
    assert "1 image changed, 1 missing, 1 added" in error_line(proc)

    as_json = json.loads(capshard("verify", "out", "--inputs", "pairs.csv", "--json", cwd=built).stdout)
    assert as_json["changed"] == ["imgs/img_00005.jpg"] and as_json["missing"] == ["imgs/img_00007.jpg"]
    assert as_json["ok"] is False
    # nothing was rebuilt
    assert json.loads((built / "out" / "manifest.json").read_text())["counts"]["images"] == N


def test_verify_inputs_with_an_images_folder(tmp_path: Path) -> None:
    write_images(tmp_path / "pics", ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "caps.csv").write_text("image,caption\na.jpg,one\nb.jpg,two\nc.jpg,three\n")
    args = ("caps.csv", "--images", "pics")
    assert capshard("build", *args, "--out", "o", "--workers", "1", cwd=tmp_path).returncode == 0
    (tmp_path / "pics" / "b.jpg").unlink()
    proc = capshard("verify", "o", "--inputs", *args, cwd=tmp_path)
    assert proc.returncode == 1 and "missing: b.jpg" in proc.stdout.splitlines()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--seed", "1"), "seed: 0 -> 1"),
        (("--max-images-per-shard", "500"), "max_images_per_shard: 1000 -> 500"),
        (("--caption-column", "caption", "--seed", "2"), "caption_column: none -> caption; seed: 0 -> 2"),
    ],
)
def test_the_refusal_names_each_option_that_changed(built: Path, flags: tuple[str, ...], expected: str) -> None:
    line = error_line(capshard(*BUILD, *flags, cwd=built))
    assert f"different input or options ({expected})" in line


def test_the_refusal_names_the_sample_size(tmp_path: Path) -> None:
    first = capshard("build", "--sample-images", "10", "--workers", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    line = error_line(capshard("build", "--sample-images", "100", "--workers", "1", cwd=tmp_path))
    assert "sample_images: 10 -> 100" in line


def test_an_image_changed_mid_build_is_named_on_the_rerun(tmp_path: Path) -> None:
    table = pairs_table(tmp_path)

    @contextlib.contextmanager
    def change_after_probe(label: str, total: int) -> Iterator[object]:
        yield lambda n: None
        if label == "probing images":  # the plan holds the old bytes' hash; the write stage finds new ones
            (tmp_path / "imgs" / "img_00005.jpg").write_bytes(image_bytes(999))

    with pytest.raises(IntegrityError, match=r"img_00005\.jpg"):
        config = BuildConfig(out=tmp_path / "out", workers=1, one_pass=False)  # a probe, then the write
        build(SourceSpec(path=str(table)), config, progress=change_after_probe)
    assert (tmp_path / "out" / ".capshard" / "state.json").is_file()

    line = error_line(capshard(*BUILD, cwd=tmp_path))
    assert "unfinished build of different input" in line
    assert "source: 1 image changed: imgs/img_00005.jpg" in line
    assert "pass --overwrite to start over" in line
    assert "re-run that build" not in line
    assert capshard(*BUILD, "--overwrite", cwd=tmp_path).returncode == 0
    assert capshard("verify", "out", "--inputs", "pairs.csv", cwd=tmp_path).returncode == 0


def test_a_manifest_without_an_inputs_listing_is_refused_with_a_reason(built: Path) -> None:
    manifest = built / "out" / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["source"]["inputs"]
    manifest.write_text(json.dumps(data))
    (built / "out" / "inputs.parquet").unlink()
    line = error_line(capshard(*BUILD, cwd=built))
    assert "images not recorded (a build by an older capshard)" in line
    assert capshard("verify", "out", "--inputs", "pairs.csv", cwd=built).returncode == 1


def test_content_check_rerun_with_a_listed_image_that_is_not_read(tmp_path: Path) -> None:
    """A row naming a symlink out of the table's folder is rejected and never read; the
    content check of the re-run lists it as unreadable instead of failing."""
    data = tmp_path / "data"
    table = pairs_table(data)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.jpg").write_bytes(image_bytes(99))
    (data / "imgs" / "evil.jpg").symlink_to(tmp_path / "outside" / "secret.jpg")
    with open(table, "a") as f:
        f.write("imgs/evil.jpg,a photo that is not ours\n")
    args = (*BUILD, "--max-reject-fraction", "1", "--check-inputs", "content")
    first = capshard(*args, cwd=data)
    assert first.returncode == 0, first.stderr
    assert '"path_outside_images"' in (data / "out" / "rejects.jsonl").read_text()
    again = capshard(*args, cwd=data)
    assert again.returncode == 0 and again.stdout.startswith("up to date: out"), again.stderr
