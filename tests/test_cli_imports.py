"""``capshard build`` imports only what the command needs: ``datasets`` (over a second) only
for a Hugging Face source or the embedded sample. Checked on real subprocesses."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from synth import flickr_token_file, write_images

ROOT = Path(__file__).resolve().parents[1]


def imported(args: list[str], cwd: Path, *, full: bool = False) -> set[str]:
    """The top-level module names a ``capshard`` run imported (``python -X importtime``); ``full``:
    the dotted names. Pool workers inherit ``-X importtime``: their imports are counted too."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line.split("|")[-1] for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return {line.strip() if full else line.strip().split(".")[0] for line in lines}


def test_build_help_does_not_import_datasets(tmp_path: Path) -> None:
    assert "datasets" not in imported(["build", "--help"], tmp_path)


def test_a_flickr_and_a_table_build_do_not_import_datasets(tmp_path: Path) -> None:
    names = [f"{i}.jpg" for i in range(4)]
    write_images(tmp_path / "images", names)
    flickr_token_file(tmp_path / "captions.token.txt", names)
    modules = imported(
        ["build", "captions.token.txt", "--images", "images", "--out", "flickr", "--workers", "1"], tmp_path
    )
    assert "datasets" not in modules and "pipeline" in modules
    with open(tmp_path / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows([name, f"a caption of {name}"] for name in names)
    modules = imported(["build", "table.csv", "--images", "images", "--out", "table", "--workers", "1"], tmp_path)
    assert "datasets" not in modules


def test_the_sample_build_imports_datasets(tmp_path: Path) -> None:
    modules = imported(["build", "--sample-images", "3", "--out", "sample", "--workers", "1"], tmp_path)
    assert "datasets" in modules


def test_a_build_imports_the_reader_it_uses_not_every_reader(tmp_path: Path) -> None:
    """Readers are plug-ins loaded by name: a flickr build (its pool workers included) does not
    import the WebDataset reader, its tar scanner and shard verifier, or the hf reader."""
    names = [f"{i}.jpg" for i in range(4)]
    write_images(tmp_path / "images", names)
    flickr_token_file(tmp_path / "captions.token.txt", names)
    args = ["build", "captions.token.txt", "--format", "flickr", "--images", "images", "--out", "o", "--workers", "2"]
    modules = imported(args, tmp_path, full=True)
    # (importlib.import_module's own module is not logged by -X importtime; what it imports is)
    assert "pipeline.readers.flickr_columns" in modules and "pipeline.probe" in modules
    assert not modules & {"pipeline.readers.wds", "pipeline.readers.tarscan", "pipeline.verify_shard"}
    assert not modules & {"pipeline.readers.hf", "pipeline.readers.coco", "pipeline.readers.table"}


def test_every_registered_reader_answers_to_its_name() -> None:
    from pipeline.readers import READERS, get_reader

    assert sorted(READERS) == ["coco", "flickr", "hf", "karpathy", "table", "wds"]
    assert all(get_reader(name).name == name for name in READERS)
