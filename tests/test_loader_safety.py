"""What the loader refuses: pickle members, bombs, oversized members, corrupt and truncated
shards, checksum mismatches; and how skipped samples are counted."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import loader_fixtures as fx
import pytest
import synth
import webdataset as wds
from loader_fixtures import sample_members, write_tar

from pipeline.errors import IntegrityError
from pipeline.loader import make_loader
from pipeline.loader.decode import SampleError

five = pytest.fixture(scope="module", name="five")(fx.build_five)


class _Payload:
    """Unpickling this creates ``path``: the proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def evil_shard(tmp_path: Path, marker: Path) -> Path:
    payload = pickle.dumps(_Payload(marker))
    members = [
        *sample_members("k0", 0),
        ("k0.pyd", payload),
        *sample_members("k1", 1),
        ("k1.pickle", payload),
        ("k1.pkl", payload),
        *sample_members("k2", 2),
        ("k2.jpg.pyd", payload),
        ("k2.pth", payload),
        # k3's only "image" is a pickle behind a double extension; k4's .jpg holds pickle bytes.
        *[m for m in sample_members("k3", 3) if not m[0].endswith(".jpg")],
        ("k3.jpg.pyd", payload),
        *[m for m in sample_members("k4", 4) if not m[0].endswith(".jpg")],
        ("k4.jpg", payload),
    ]
    return write_tar(tmp_path / "train-000000.tar", sorted(members, key=lambda m: m[0].split(".")[0]))


@pytest.mark.parametrize("workers", [0, 1])
def test_no_pickle_member_is_ever_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    monkeypatch.setenv("WDS_SECURE", "0")
    monkeypatch.setattr(wds.utils, "enforce_security", False)
    marker = tmp_path / "pwned"
    shard = evil_shard(tmp_path, marker)
    loader = make_loader([str(shard)], split=None, batch_size=5, drop_last=False, shuffle=False,
                         num_workers=workers, handler="skip", image_size=8)
    batches = list(loader)
    assert not marker.exists()
    assert [b["image_id"] for b in batches] == [["0", "1", "2"]]
    assert set(batches[0]) == {"image", "caption", "caption_image", "image_group", "match_id", "image_id", "caption_id"}
    assert loader.counters == {"missing_image": 1, "corrupt_image": 1}


def test_the_payload_is_live_under_plain_webdataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: webdataset's default decoders do unpickle it, so the test above means something."""
    monkeypatch.setattr(wds.utils, "enforce_security", False)
    marker = tmp_path / "pwned"
    shard = evil_shard(tmp_path, marker)
    samples = wds.DataPipeline(
        wds.SimpleShardList([str(shard)]), wds.tarfile_to_samples(), wds.decode(handler=wds.ignore_and_continue)
    )
    for _ in samples:
        pass
    assert marker.exists()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` but holds one row of data: a bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 31)) + chunk(b"IEND", b"")


def test_bombs_and_oversized_members_are_refused_before_decoding(tmp_path: Path) -> None:
    members = []
    for i, image in enumerate([png_header(12_000, 12_000), png_header(60_000, 60_000)]):
        members += [(f"b{i}.png", image), *[m for m in sample_members(f"b{i}", i) if not m[0].endswith(".jpg")]]
    members += sample_members("ok", 7)
    shard = write_tar(tmp_path / "train-000000.tar", members)
    loader = make_loader([str(shard)], split=None, batch_size=3, drop_last=False, shuffle=False, handler="skip")
    assert [b["image_id"] for b in loader] == [["7"]]
    assert loader.counters == {"decompression_bomb": 2}
    small = make_loader([str(shard)], split=None, batch_size=3, drop_last=False, shuffle=False, handler="skip",
                        max_member_bytes=200)
    assert [b["image_id"] for b in small] == [[]]
    assert small.counters == {"member_too_large": 3}


def test_bad_metadata_is_counted_or_raised(tmp_path: Path) -> None:
    members = [
        *sample_members("a", 0),
        ("b.jpg", synth.image_bytes(1)),
        ("b.json", b"{not json"),
        ("c.jpg", synth.image_bytes(2)),
        ("c.json", json.dumps({"image_id": "2", "group": "two", "captions": ["x"]}).encode()),
        ("d.jpg", synth.image_bytes(3)),
    ]
    shard = str(write_tar(tmp_path / "train-000000.tar", members))
    loader = make_loader([shard], split=None, batch_size=4, drop_last=False, shuffle=False, handler="skip")
    assert [b["image_id"] for b in loader] == [["0"]]
    assert loader.counters == {"bad_json": 2, "missing_json": 1}
    with pytest.raises(SampleError, match=r"train-000000.tar: sample b, member .json: metadata is not valid JSON"):
        list(make_loader([shard], split=None, batch_size=4, drop_last=False, shuffle=False, handler="raise"))
    seen: list[str] = []

    def only_json_errors(exn: BaseException) -> bool:
        seen.append(str(exn))
        return True

    loader = make_loader([shard], split=None, batch_size=4, drop_last=False, shuffle=False, handler=only_json_errors,
                         num_workers=0)
    assert [b["image_id"] for b in loader] == [["0"]] and len(seen) == 3


def copy_build(build_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(build_dir, out)
    return out


def test_a_checksum_mismatch_is_refused_whatever_the_handler(five: Path, tmp_path: Path) -> None:
    build = copy_build(five, tmp_path)
    shard = fx.shard_paths(build)[3]
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(data))
    for workers in (0, 1):
        loader = make_loader(build, split="train", batch_size=4, handler="skip", num_workers=workers, image_size=8)
        with pytest.raises(IntegrityError, match=rf"shard {shard.name} .*does not match the manifest"):
            list(loader)
    assert len(list(make_loader(build, split="train", batch_size=4, verify="size", image_size=8))) == 15


def test_the_pixel_cap_follows_the_build(five: Path, tmp_path: Path) -> None:
    build = copy_build(five, tmp_path)
    doc = fx.manifest(build)
    doc["options"]["max_pixels"] = 500  # below the 32x24 test images
    (build / "manifest.json").write_text(json.dumps(doc))
    loader = make_loader(build, split="train", batch_size=4, handler="skip", image_size=8)
    assert sum(len(b["image_id"]) for b in loader) == 0 and loader.counters == {"decompression_bomb": 60}
    wider = make_loader(build, split="train", batch_size=4, handler="skip", image_size=8, max_image_pixels=768)
    assert sum(len(b["image_id"]) for b in wider) == 60


def test_a_truncated_shard_is_refused_or_its_rest_counted(five: Path, tmp_path: Path) -> None:
    build = copy_build(five, tmp_path)
    shard = fx.shard_paths(build)[2]
    cut = shard.stat().st_size // 2
    with open(shard, "r+b") as f:
        f.truncate(cut)
    with pytest.raises(IntegrityError, match=rf"shard {shard.name} has {cut} bytes but the manifest says"):
        make_loader(build, split="train", batch_size=4)
    loader = make_loader(build, split="train", batch_size=4, verify="none", handler="skip", image_size=8)
    for epoch in range(3):
        loader.set_epoch(epoch)
        ids = [i for b in loader for i in b["image_id"]]
        assert len(ids) == len(set(ids))
    assert sum(loader.counters.values()) > 0
    assert set(loader.counters) <= {"shard_read_error", "shard_short"}
    with pytest.raises(SampleError, match=rf"{shard.name}: "):
        list(make_loader(build, split="train", batch_size=60, verify="none", handler="raise"))
    # Every batch is still yielded (short), so ranks stay in step.
    full = make_loader(build, split="train", batch_size=6, verify="none", handler="skip", num_workers=2, image_size=8)
    sizes = [len(b["image_id"]) for b in full]
    assert len(sizes) == len(full) == 10
    lost = sum(full.counters.values())
    assert 1 <= lost <= 7 and sum(sizes) == fx.FIVE_IMAGES - lost


def test_counters_travel_from_workers(tmp_path: Path) -> None:
    members = []
    for i in range(8):
        members += sample_members(f"s{i}", i)
    members[3 * 5] = ("s5.jpg", b"not an image at all")
    shard = str(write_tar(tmp_path / "train-000000.tar", members))
    loader = make_loader([shard], split=None, batch_size=2, num_workers=2, handler="skip", image_size=8)
    ids = [i for b in loader for i in b["image_id"]]
    assert sorted(ids) == ["0", "1", "2", "3", "4", "6", "7"]
    assert loader.counters == {"corrupt_image": 1}
    assert loader.state_dict()["counters"] == {"corrupt_image": 1}


def test_manifest_shard_names_cannot_point_outside_the_build(five: Path, tmp_path: Path) -> None:
    from pipeline.errors import SourceError

    build = copy_build(five, tmp_path)
    manifest = json.loads((build / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["name"] = "../../etc/passwd"
    (build / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SourceError, match=r"shards\[0\]: not a shard entry named SPLIT-NNNNNN\.tar"):
        make_loader(build, split="train", batch_size=4, image_size=8)
