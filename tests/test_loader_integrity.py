"""The loader's integrity policy: a damaged image is skipped and counted before it is
decoded, a bad shard (missing, truncated, replaced) follows ``on_bad_shard``, and the
counts reach the trainer from worker processes."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import loader_fixtures as fx
import pytest

from pipeline.errors import IntegrityError
from pipeline.loader import make_loader
from pipeline.loader.decode import SampleError

five = pytest.fixture(scope="module", name="five")(fx.build_five)

#: 60 images in batches of 4: 15 batches, no image left out, so every loss is counted.
OPTIONS: dict[str, Any] = {"split": "train", "batch_size": 4, "image_size": 8}


def copy_build(build_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(build_dir, out)
    return out


def member(shard: Path, suffix: str, index: int = 0) -> tuple[tarfile.TarInfo, str]:
    """The ``index``-th member of ``shard`` whose name ends with ``suffix``, and its sample's image id."""
    with tarfile.open(shard) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(suffix)]
        info = members[index]
        meta = tar.extractfile(info.name.split(".")[0] + ".json")
        assert meta is not None
        return info, json.loads(meta.read())["image_id"]


def flip(shard: Path, offset: int) -> None:
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0x01
    shard.write_bytes(bytes(data))


def shard_ids(shard: Path) -> set[str]:
    with tarfile.open(shard) as tar:
        return {
            json.loads(tar.extractfile(m).read())["image_id"]  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.name.endswith(".json")
        }


def epoch_ids(loader: Any) -> tuple[list[str], int]:
    """Image ids yielded in one epoch, and the number of batches."""
    batches = list(loader)
    return [i for b in batches for i in b["image_id"]], len(batches)


@pytest.mark.parametrize(("workers", "verify"), [(0, "sha256"), (2, "sha256"), (2, "size")])
def test_a_flipped_image_byte_is_skipped_and_counted(five: Path, tmp_path: Path, workers: int, verify: str) -> None:
    build = copy_build(five, tmp_path)
    shard = fx.shard_paths(build)[3]
    info, damaged = member(shard, ".jpg", 2)
    flip(shard, info.offset_data + info.size // 2)  # inside the entropy-coded data: it may still decode
    loader = make_loader(build, num_workers=workers, verify=verify, **OPTIONS)
    for epoch in (0, 1):  # the second epoch comes from the per-process scan cache
        loader.set_epoch(epoch)
        ids, n_batches = epoch_ids(loader)
        assert n_batches == len(loader) == 15
        assert sorted(ids) == sorted(str(i) for i in range(fx.FIVE_IMAGES) if str(i) != damaged)
        assert loader.counters == {"sample_checksum": epoch + 1}


def test_a_flipped_image_byte_raises_under_handler_raise(five: Path, tmp_path: Path) -> None:
    build = copy_build(five, tmp_path)
    shard = fx.shard_paths(build)[3]
    info, _ = member(shard, ".jpg", 1)
    flip(shard, info.offset_data + info.size // 2)
    key = info.name.split(".")[0]
    with pytest.raises(SampleError, match=rf"{shard.name}: sample {key}: its image's sha256 does not match"):
        list(make_loader(build, handler="raise", num_workers=0, **OPTIONS))


def _missing(shard: Path) -> None:
    shard.unlink()


def _truncated(shard: Path) -> None:
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)


def _replaced(shard: Path) -> None:
    """Same size, other bytes, every image intact: one caption letter changed."""
    info, _ = member(shard, ".json", 1)
    data = bytearray(shard.read_bytes())
    at = data.index(b'"captions":["', info.offset_data) + len(b'"captions":["')
    data[at] = ord("X") if data[at] != ord("X") else ord("Y")
    shard.write_bytes(bytes(data))


FAULTS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "missing": (_missing, "shard_missing", "is missing"),
    "truncated": (_truncated, "shard_size", "bytes but the manifest says"),
    "replaced": (_replaced, "shard_checksum", "does not match the manifest's"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_bad_shard_is_skipped_and_counted_under_skip(five: Path, tmp_path: Path, fault: str) -> None:
    damage, reason, _ = FAULTS[fault]
    build = copy_build(five, tmp_path)
    shard = fx.shard_paths(build)[4]
    lost = shard_ids(shard)
    damage(shard)
    loader = make_loader(build, on_bad_shard="skip", num_workers=2, **OPTIONS)
    ids, n_batches = epoch_ids(loader)
    assert n_batches == len(loader) == 15
    assert sorted(ids) == sorted(str(i) for i in range(fx.FIVE_IMAGES) if str(i) not in lost)
    assert loader.counters == {reason: len(lost)}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_bad_shard_raises_before_any_of_its_samples_under_raise(five: Path, tmp_path: Path, fault: str) -> None:
    damage, _, message = FAULTS[fault]
    build = copy_build(five, tmp_path)
    shard = fx.shard_paths(build)[4]
    lost = shard_ids(shard)
    # Damaged after construction (a shard that vanishes or changes mid-run): the read path decides.
    loader = make_loader(build, num_workers=0, shuffle=False, **OPTIONS)
    damage(shard)
    seen: list[str] = []
    with pytest.raises(IntegrityError, match=rf"shard {shard.name} .*{message}"):
        for batch in loader:
            seen += batch["image_id"]
    assert seen and not lost & set(seen)
    if fault != "replaced":  # what the size already tells, make_loader refuses at once
        with pytest.raises(IntegrityError, match=rf"shard {shard.name} .*{message}"):
            make_loader(build, **OPTIONS)


def test_a_bad_shard_in_a_worker_raises_in_the_trainer(five: Path, tmp_path: Path) -> None:
    build = copy_build(five, tmp_path)
    _replaced(fx.shard_paths(build)[4])
    with pytest.raises(IntegrityError, match="does not match the manifest's"):
        list(make_loader(build, handler="skip", num_workers=2, **OPTIONS))
