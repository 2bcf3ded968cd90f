"""Hugging Face ``datasets``' own loaders on a build: ``webdataset`` on the shards, ``parquet`` on the index.

All local files; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from synth import mixed_format_dataset, nlphuji_dataset

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.hf_webdataset import load_build
from pipeline.readers import SourceSpec


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hfload") / "mixed"
    build(SourceSpec(dataset=mixed_format_dataset(12)), BuildConfig(out=out, workers=1, max_images_per_shard=2))
    return out


def shards(build_dir: Path, split: str) -> list[str]:
    m = json.loads((build_dir / "manifest.json").read_text())
    return [str(build_dir / s["name"]) for s in m["splits"][split]["shards"]]


def test_plain_webdataset_loader_reads_a_single_format_build(tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "b"
    build(SourceSpec(dataset=nlphuji_dataset(9)), BuildConfig(out=out, workers=1, max_images_per_shard=2))
    ds = datasets.load_dataset("webdataset", data_files={"train": shards(out, "train")}, split="train")
    assert set(ds.column_names) == {"jpg", "json", "txt", "__key__", "__url__"}
    assert ds.num_rows == 3
    assert all(r["jpg"].size == (32, 24) for r in ds)
    assert [r["txt"].splitlines() for r in ds] == [r["json"]["captions"] for r in ds]


def test_plain_webdataset_loader_loses_images_of_a_second_extension(mixed: Path) -> None:
    """Why load_build exists: datasets infers the columns from the first samples only."""
    import datasets

    ds = datasets.load_dataset("webdataset", data_files={"train": shards(mixed, "train")}, split="train")
    assert "png" not in ds.column_names  # the first shard holds only jpg samples
    assert sum(r["jpg"] is None for r in ds) == 2  # the two PNG images are gone


def test_load_build_gives_one_image_column_with_the_stored_bytes(mixed: Path) -> None:
    import datasets

    ds = load_build(mixed, "train")
    assert ds.column_names == ["image", "json", "txt", "__key__", "__url__"]
    assert ds.num_rows == 4
    raw = ds.cast_column("image", datasets.Image(decode=False))
    index = {r["key"]: r["sha256"] for r in pq.read_table(mixed / "index.parquet").to_pylist()}
    for r in raw:
        assert hashlib.sha256(r["image"]["bytes"]).hexdigest() == index[r["__key__"]] == r["json"]["sha256"]
    assert sorted(img.format for img in ds["image"]) == ["JPEG", "JPEG", "PNG", "PNG"]
    assert load_build(mixed).num_rows == 12


def test_index_parquet_loads_with_the_parquet_loader(mixed: Path) -> None:
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(mixed / "index.parquet"), split="train")
    assert ds.num_rows == 12
    assert {"image_id", "group", "split", "shard", "key", "captions", "sha256"} <= set(ds.column_names)
    assert sorted(ds["image_id"], key=int) == [str(i) for i in range(12)]
