"""Shared pieces of the loader tests: real builds (made by ``capshard build``'s library
API), hand-made tars, and a way to describe batches comparably.

A test module turns a builder into a fixture of its own:
``five = pytest.fixture(scope="module", name="five")(loader_fixtures.build_five)``.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import synth

from pipeline.build import BuildConfig, build
from pipeline.readers import SourceSpec

#: Train split of ``five``: 60 images, 5 captions each, shards of 7 (the last holds 4).
FIVE_IMAGES = 60


def make_build(out: Path, dataset: Any, per_shard: int = 7) -> Path:
    """A real build of ``dataset`` into ``out``; returns ``out``."""
    build(SourceSpec(dataset=dataset), BuildConfig(out=out, max_images_per_shard=per_shard, workers=1, seed=0))
    return out


def build_five(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 train images with 5 captions each, in 9 uneven shards."""
    return make_build(
        tmp_path_factory.mktemp("five") / "b", synth.nlphuji_dataset(FIVE_IMAGES, splits=("train",), captions=5)
    )


def build_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 train images with 2 captions each."""
    return make_build(tmp_path_factory.mktemp("two") / "b", synth.nlphuji_dataset(30, splits=("train",), captions=2))


def build_single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 train images with one caption each (a single-caption source)."""
    return make_build(tmp_path_factory.mktemp("single") / "b", synth.flattened_dataset(40, captions=1))


def manifest(build_dir: Path) -> dict[str, Any]:
    return json.loads((build_dir / "manifest.json").read_text())


def shard_paths(build_dir: Path, split: str = "train") -> list[Path]:
    return [build_dir / s["name"] for s in manifest(build_dir)["splits"][split]["shards"]]


def image_index(image_id: str) -> int:
    """synth's nlphuji ids are the image index as a string."""
    return int(image_id)


def signature(batches: Iterable[dict[str, Any]]) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]]:
    """What identifies a batch sequence: image ids, captions, caption -> image."""
    return [
        (tuple(b["image_id"]), tuple(b["caption"]), tuple(b["caption_image"].tolist())) for b in batches
    ]


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> Path:
    """A plain tar with ``members`` in the given order."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def sample_members(key: str, index: int, captions: int = 2, group: int | None = None) -> list[tuple[str, bytes]]:
    """The members the build writes for one sample (image, JSON, text)."""
    texts = [synth.caption_text(index, n) for n in range(captions)]
    meta = {
        "image_id": str(index),
        "group": index if group is None else group,
        "split": "train",
        "captions": texts,
        "caption_ids": [f"{index}-{n}" for n in range(captions)],
        "width": 32,
        "height": 24,
        "sha256": "",
        "source": {},
    }
    return [
        (f"{key}.jpg", synth.image_bytes(index)),
        (f"{key}.json", json.dumps(meta).encode()),
        (f"{key}.txt", "\n".join(texts).encode()),
    ]
