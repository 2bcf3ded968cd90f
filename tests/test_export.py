"""``capshard export`` and ``sizes.json``: the layouts CLIP_benchmark, open_clip and ``datasets`` read.

The consumers' own packages are exercised in test_interop.py (their own venv); here the
layouts are read with webdataset and ``datasets`` exactly as those consumers read them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from synth import mixed_format_dataset

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.export import export_clip_benchmark, export_hf
from pipeline.export.samples import iter_samples, shard_names
from pipeline.readers import SourceSpec


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 images (JPEG and PNG mixed), 3 captions each, 2 images per shard, splits train/val/test."""
    out = tmp_path_factory.mktemp("export") / "build"
    build(SourceSpec(dataset=mixed_format_dataset(12)), BuildConfig(out=out, workers=1, max_images_per_shard=2))
    return out


def manifest(build_dir: Path) -> dict[str, Any]:
    return dict(json.loads((build_dir / "manifest.json").read_text()))


def captions_by_sha(build_dir: Path, split: str | None = None) -> dict[str, list[str]]:
    m = manifest(build_dir)
    return {
        hashlib.sha256(s.image).hexdigest(): s.captions for s in iter_samples(build_dir, shard_names(m, split))
    }


def capshard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )


# --- sizes.json (open_clip)


def test_sizes_json_counts_every_shard_as_open_clip_reads_it(built: Path) -> None:
    sizes = json.loads((built / "sizes.json").read_text())
    m = manifest(built)
    listed = {s["name"]: s["images"] for v in m["splits"].values() for s in v["shards"]}
    assert sizes == listed
    # open_clip's get_dataset_size: sizes[basename(shard)] summed over the shards it is given.
    train = [str(built / s["name"]) for s in m["splits"]["train"]["shards"]]
    assert sum(int(sizes[os.path.basename(p)]) for p in train) == m["splits"]["train"]["images"] == 4


# --- clip-benchmark


def test_clip_benchmark_layout_is_the_split_shards_hard_linked(built: Path, tmp_path: Path) -> None:
    out = tmp_path / "cb"
    summary = export_clip_benchmark(built, out, split="test")
    m = manifest(built)
    shards = sorted(s["name"] for s in m["splits"]["test"]["shards"])
    assert (out / "dataset_type.txt").read_text() == "retrieval\n"
    assert (out / "test" / "nshards.txt").read_text() == f"{len(shards)}\n"
    assert sorted(p.name for p in (out / "test").glob("*.tar")) == sorted(f"{i}.tar" for i in range(len(shards)))
    for i, name in enumerate(shards):
        assert (out / "test" / f"{i}.tar").read_bytes() == (built / name).read_bytes()
        assert os.path.samefile(out / "test" / f"{i}.tar", built / name)
    assert summary["hard_links"] == len(shards) == 2 and summary["copies"] == 0
    assert summary["images"] == 4 and summary["captions"] == 12


def test_clip_benchmark_reader_gets_each_images_captions(built: Path, tmp_path: Path) -> None:
    """Read the export the way clip_benchmark's build_wds_dataset does (retrieval branch)."""
    out = tmp_path / "cb"
    export_clip_benchmark(built, out, split="test")
    nshards = int((out / "test" / "nshards.txt").read_text())
    pattern = str(out / "test" / f"{{0..{nshards - 1}}}.tar")
    ds = (
        wds.WebDataset(pattern, nodesplitter=lambda src: src, shardshuffle=False)
        .decode(wds.autodecode.ImageHandler("pil", extensions=["webp", "png", "jpg", "jpeg"]))
        .to_tuple("webp;png;jpg;jpeg", "txt")
        .map_tuple(lambda img: img.size, str.splitlines)
    )
    got = sorted(caps for _size, caps in ds)
    assert got == sorted(captions_by_sha(built, "test").values())
    assert len(got) == 4 and all(len(c) == 3 for c in got)


def test_clip_benchmark_copies_where_hard_links_are_refused(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    summary = export_clip_benchmark(built, tmp_path / "cb", split="val")
    assert summary["copies"] == 2 and summary["hard_links"] == 0
    assert not os.path.samefile(tmp_path / "cb" / "val" / "0.tar", built / "val-000000.tar")
    assert (tmp_path / "cb" / "val" / "0.tar").read_bytes() == (built / "val-000000.tar").read_bytes()


def test_clip_benchmark_cli_refuses_unknown_split_and_existing_output(built: Path, tmp_path: Path) -> None:
    proc = capshard("export", "clip-benchmark", str(built), str(tmp_path / "cb"), "--split", "nope")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "capshard: error: the build has no split 'nope' (splits: test, train, val)"
    ok = capshard("export", "clip-benchmark", str(built), str(tmp_path / "cb"))
    assert ok.returncode == 0, ok.stderr
    assert "exported 4 images, 12 captions" in ok.stdout and "2 hard-linked" in ok.stdout
    again = capshard("export", "clip-benchmark", str(built), str(tmp_path / "cb"))
    assert again.returncode == 2 and "exists (pass --overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert capshard("export", "clip-benchmark", str(built), str(tmp_path / "cb"), "--overwrite").returncode == 0


# --- hf


def test_hf_export_loads_from_disk_in_the_nlphuji_schema(built: Path, tmp_path: Path) -> None:
    import datasets

    from pipeline.sample import FEATURES

    export_hf(built, tmp_path / "hf")
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert isinstance(ds, datasets.Dataset)
    assert ds.features == FEATURES
    assert ds.num_rows == 12
    raw = ds.cast_column("image", datasets.Image(decode=False))
    got = {hashlib.sha256(r["image"]["bytes"]).hexdigest(): r for r in raw}
    index = pq.read_table(built / "index.parquet").to_pylist()
    assert set(got) == {r["sha256"] for r in index}
    want = captions_by_sha(built)
    for sha, row in got.items():
        assert row["caption"] == want[sha]
        assert row["sentids"] == [str(int(row["img_id"]) * 3 + n) for n in range(3)]
        assert row["filename"] == row["image"]["path"] and row["filename"].startswith(str(1000 + int(row["img_id"])))
    assert {r["split"] for r in raw} == {"train", "val", "test"}
    decoded = ds[0]["image"]
    assert decoded.size == (32, 24)


def test_hf_export_builds_back_into_the_same_build(built: Path, tmp_path: Path) -> None:
    export_hf(built, tmp_path / "hf")
    again = build(SourceSpec(path=str(tmp_path / "hf")), BuildConfig(out=tmp_path / "b2", format="hf", workers=1))
    assert again.manifest["counts"] == manifest(built)["counts"]
    assert captions_by_sha(tmp_path / "b2") == captions_by_sha(built)
    def ids(build_dir: Path) -> dict[str, tuple[str, str]]:
        rows = pq.read_table(build_dir / "index.parquet").to_pylist()
        return {r["sha256"]: (r["image_id"], r["split"]) for r in rows}

    assert ids(tmp_path / "b2") == ids(built)
    assert again.manifest["groups"] == manifest(built)["groups"]


def test_hf_export_of_one_split(built: Path, tmp_path: Path) -> None:
    import datasets

    summary = export_hf(built, tmp_path / "hf", split="val")
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ds.num_rows == summary["images"] == 4
    assert set(ds["split"]) == {"val"}


def test_hf_export_cli_prints_a_json_summary(built: Path, tmp_path: Path) -> None:
    proc = capshard("export", "hf", str(built), str(tmp_path / "hf"), "--split", "test", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary == {"target": "hf", "out": str(tmp_path / "hf"), "split": "test", "rows": 4, "images": 4,
                       "captions": 12}
    assert (tmp_path / "hf" / "state.json").is_file()
