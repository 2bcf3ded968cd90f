"""The wds reader: WebDataset / img2dataset shards as a source, read as hostile input."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from synth import caption_text, image_bytes, img2dataset_folder

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.errors import UsageError
from pipeline.readers import SourceSpec, detect
from pipeline.readers.wds import WdsReader
from pipeline.schema import CAPTION_ROWS

REPO = Path(__file__).resolve().parents[1]


def rows_of(source: str | Path, **kwargs: object) -> tuple[WdsReader, list[dict[str, object]]]:
    reader = WdsReader(SourceSpec(path=str(source), **kwargs))  # type: ignore[arg-type]
    table = pa.Table.from_batches(list(reader.read()), schema=CAPTION_ROWS)
    return reader, table.to_pylist()


def tar_with(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A plain tar holding ``members`` in order."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def shard_samples(out: Path) -> dict[str, dict[str, object]]:
    """``image_id -> KEY.json`` of every sample of a build."""
    found = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    f = tar.extractfile(m)
                    assert f is not None
                    meta = json.loads(f.read())
                    found[meta["image_id"]] = meta
    return found


# --- img2dataset layout ------------------------------------------------------------------------------


def test_img2dataset_repeated_images_regroup_into_one_sample_each(tmp_path: Path) -> None:
    written = img2dataset_folder(tmp_path / "cc", n_images=4, captions_per_image=5, per_shard=7)
    assert (tmp_path / "cc" / "00000.parquet").is_file() and (tmp_path / "cc" / "00000_stats.json").is_file()
    assert detect(SourceSpec(path=str(tmp_path / "cc"))) == "wds"  # tars win over the parquet sidecars
    _, rows = rows_of(tmp_path / "cc")
    # One row per sample: the json caption and the txt are the same caption, taken once.
    assert [r["caption"] for r in rows] == [m["caption"] for m in written]
    assert [r["id_hint"] for r in rows] == [m["key"] for m in written]
    assert [r["url"] for r in rows] == [m["url"] for m in written]
    assert rows[8]["location"] == "00001.tar:000010001"
    assert {r["split"] for r in rows} == {"train"} and not any(r["reject"] for r in rows)

    result = build(SourceSpec(path=str(tmp_path / "cc")), BuildConfig(out=tmp_path / "out", workers=1))
    counts = result.manifest["counts"]
    assert (counts["rows"], counts["images"], counts["captions"], counts["rejected_rows"]) == (20, 4, 20, 0)
    assert result.manifest["resolution"]["merged_ids"] == 16
    samples = shard_samples(tmp_path / "out")
    assert sorted(samples) == [f"{1000 + i}.jpg" for i in range(4)]  # named by the URL's file name
    for i in range(4):
        meta = samples[f"{1000 + i}.jpg"]
        assert meta["captions"] == [caption_text(i, n) for n in range(5)]
        assert meta["source"]["ids"] == [m["key"] for m in written[5 * i : 5 * i + 5]]
        assert meta["source"]["urls"] == [f"https://img.example.com/photos/{1000 + i}.jpg"]
        assert meta["source"]["format"] == "wds"


def test_txt_lines_and_json_captions_are_deduplicated_across_members(tmp_path: Path) -> None:
    captions = ["a dog .", "a dog .", "a brown dog\non grass ."]
    tar_with(
        tmp_path / "a.tar",
        [
            # capshard/CLIP_benchmark style: json captions list, txt one line per caption.
            ("s1.jpg", image_bytes(1)),
            ("s1.json", json.dumps({"captions": captions, "split": "test"}).encode()),
            ("s1.txt", b"a dog .\na  dog .\na brown dog on grass .\n"),
            # txt says something the json does not: both kept, json first.
            ("s2.jpg", image_bytes(2)),
            ("s2.json", json.dumps({"caption": "from json"}).encode()),
            ("s2.txt", b"from txt\n\n"),
            # neither caption: one row, rejected downstream as missing_caption.
            ("s3.jpg", image_bytes(3)),
        ],
    )
    _, rows = rows_of(tmp_path / "a.tar")
    assert [(r["location"], r["caption"]) for r in rows] == [
        ("a.tar:s1#0", "a dog ."),
        ("a.tar:s1#1", "a dog ."),
        ("a.tar:s1#2", "a brown dog\non grass ."),
        ("a.tar:s2#0", "from json"),
        ("a.tar:s2#1", "from txt"),
        ("a.tar:s3", None),
    ]
    assert [r["split"] for r in rows] == ["test"] * 3 + ["train"] * 3
    assert [r["file_name"] for r in rows[2:4]] == ["s1.jpg", "s2.jpg"]


def test_split_from_json_else_folder_name_and_duplicate_members(tmp_path: Path) -> None:
    # CLIP_benchmark's retrieval layout: ROOT/test/0.tar, the txt lines are the captions.
    (tmp_path / "root" / "test").mkdir(parents=True)
    (tmp_path / "root" / "other").mkdir()
    tar_with(tmp_path / "root" / "test" / "0.tar", [("s0.webp", image_bytes(1, "WEBP")), ("s0.txt", b"x\ny\n")])
    tar_with(
        tmp_path / "root" / "other" / "0.tar",
        [
            ("s1.jpg", image_bytes(2)),
            ("s1.json", b'{"split": "val"}'),
            ("s1.txt", b"z"),
            ("s2.png", image_bytes(3)),
            ("s2.png", image_bytes(4)),
            ("s2.txt", b"two images, one name"),
        ],
    )
    _, rows = rows_of(tmp_path / "root")
    assert [(r["location"], r["split"], r["caption"], r["reject"]) for r in rows] == [
        ("other/0.tar:s1", "val", "z", None),
        ("other/0.tar:s2", "train", "two images, one name", "duplicate_member"),
        ("test/0.tar:s0#0", "test", "x", None),
        ("test/0.tar:s0#1", "test", "y", None),
    ]


# --- hostile and damaged input ---------------------------------------------------------------------


class _Trap:
    """Unpickling this creates ``path``: the test proves no member was ever unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.path), "w")


def test_pickle_members_are_never_read_and_samples_without_image_are_rejects(tmp_path: Path) -> None:
    trap = tmp_path / "unpickled"
    payload = pickle.dumps(_Trap(trap))
    pickle.loads(payload).close()  # the trap works: unpickling creates the file
    assert trap.exists()
    trap.unlink()
    tar_with(
        tmp_path / "t.tar",
        [
            ("a.jpg", image_bytes(1)),
            ("a.pyd", payload),
            ("a.pth", payload),
            ("a.txt", b"kept"),
            ("b.txt", b"caption of nothing"),
            ("b.pyd", payload),
            ("c.json", b'{"key": "c"}'),
        ],
    )
    _, rows = rows_of(tmp_path / "t.tar")
    assert [(r["location"], r["caption"], r["reject"]) for r in rows] == [
        ("t.tar:a", "kept", None),
        ("t.tar:b", "caption of nothing", "no_image"),
        ("t.tar:c", None, "no_image"),
    ]
    result = build(
        SourceSpec(path=str(tmp_path / "t.tar")),
        BuildConfig(out=tmp_path / "out", workers=1, max_reject_fraction=1.0),
    )
    assert result.manifest["counts"]["images"] == 1
    assert result.manifest["rejects"]["by_reason"] == {"no_image": 2}
    assert not trap.exists()


def _five_samples(path: Path) -> None:
    tar_with(path, [m for i in range(5) for m in ((f"k{i}.jpg", image_bytes(i)), (f"k{i}.txt", b"cap %d" % i))])


def test_truncated_tar_keeps_complete_samples_and_rejects_its_tail(tmp_path: Path) -> None:
    _five_samples(tmp_path / "whole.tar")
    data = (tmp_path / "whole.tar").read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        last_image = next(m for m in tar if m.name == "k4.jpg")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "s.tar").write_bytes(data[: last_image.offset_data + 100])  # inside k4.jpg
    _, rows = rows_of(tmp_path / "cut")
    assert [(r["location"], r["reject"]) for r in rows] == [
        ("s.tar:k0", None),
        ("s.tar:k1", None),
        ("s.tar:k2", None),
        ("s.tar:k3", None),
        ("s.tar:k4", "truncated_tar"),
    ]
    # Cut at a member boundary (k4.txt lost with the end-of-archive blocks): k4 may be incomplete.
    (tmp_path / "cut" / "s.tar").write_bytes(data[: last_image.offset_data + 1024])
    _, rows = rows_of(tmp_path / "cut")
    assert [r["reject"] for r in rows] == [None] * 4 + ["truncated_tar"]
    # A header that is not a header, mid-tar: the rest cannot be read; the sample before it is the tail.
    garbled = bytearray(data)
    garbled[last_image.offset : last_image.offset + 512] = b"\x01" * 512
    (tmp_path / "cut" / "s.tar").write_bytes(bytes(garbled))
    _, rows = rows_of(tmp_path / "cut")
    assert [(r["location"], r["reject"]) for r in rows] == [
        ("s.tar:k0", None),
        ("s.tar:k1", None),
        ("s.tar:k2", None),
        ("s.tar:k3", "corrupt_tar"),
    ]
    # Not a tar at all: one reject naming the file.
    (tmp_path / "cut" / "s.tar").write_bytes(b"<html>not found</html>" * 40)
    _, rows = rows_of(tmp_path / "cut")
    assert [(r["location"], r["reject"]) for r in rows] == [("s.tar", "corrupt_tar")]


def _header(name: bytes, size_field: bytes, typeflag: bytes) -> bytes:
    """A 512-byte ustar header with a raw size field (e.g. GNU base-256) and a valid checksum."""
    h = bytearray(512)
    h[0 : len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = h[116:124] = b"0000000\0"
    h[124:136] = size_field
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[257:265] = b"ustar  \0"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


@pytest.mark.parametrize("typeflag", [b"0", b"L", b"x"])
def test_gnu_base256_absurd_size_is_refused_without_allocating(tmp_path: Path, typeflag: bytes) -> None:
    _five_samples(tmp_path / "ok.tar")
    body = (tmp_path / "ok.tar").read_bytes()
    end = body.rindex(b"cap 4") + 512  # past k4.txt's data block: where the end blocks start
    end -= end % 512
    huge = b"\x80" + (1 << 80).to_bytes(11, "big")  # 2**80 bytes, base-256 encoded
    header = _header(b"k4.jpg" if typeflag == b"0" else b"././@LongLink", huge, typeflag)
    assert tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape").size == 1 << 80
    hostile = body[:end] + header + b"\0" * 4096
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "x.tar").write_bytes(hostile)
    tracemalloc.start()
    try:
        _, rows = rows_of(tmp_path / "h")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
    assert [r["reject"] for r in rows[:4]] == [None] * 4
    assert rows[4]["location"] == "x.tar:k4"
    assert rows[4]["reject"] == ("truncated_tar" if typeflag == b"0" else "corrupt_tar")


def test_oversized_image_member_is_rejected_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.readers import tarscan

    monkeypatch.setattr(tarscan, "MAX_IMAGE_BYTES", 100)
    tar_with(tmp_path / "a.tar", [("a.jpg", image_bytes(1)), ("a.txt", b"big")])
    _, rows = rows_of(tmp_path / "a.tar")
    assert [(r["reject"], r["image_index"]) for r in rows] == [("image_too_large", None)]


# --- sources -------------------------------------------------------------------------------------------


def test_brace_pattern_list_and_file_urls(tmp_path: Path) -> None:
    written = img2dataset_folder(tmp_path / "d", n_images=3, captions_per_image=2, per_shard=2, failed=0)
    assert len(list((tmp_path / "d").glob("*.tar"))) == 3
    pattern = str(tmp_path / "d" / "{00000..00001}.tar")
    assert detect(SourceSpec(path=pattern)) == "wds"
    _, rows = rows_of(pattern)
    assert [r["id_hint"] for r in rows] == [m["key"] for m in written[:4]]
    listed = f"{tmp_path / 'd' / '00002.tar'}::{tmp_path / 'd' / '00000.tar'}"
    _, rows = rows_of(listed)
    assert [r["id_hint"] for r in rows] == [m["key"] for m in written[4:] + written[:2]]
    reader, rows = rows_of(f"file://{tmp_path / 'd'}")
    assert [r["caption"] for r in rows] == [m["caption"] for m in written]
    assert reader.open_image(None, 5) == image_bytes(2)
    with pytest.raises(UsageError, match="no such tar"):
        WdsReader(SourceSpec(path=str(tmp_path / "d" / "{00000..00009}.tar")))


def test_fsspec_object_store_urls(tmp_path: Path) -> None:
    """fsspec's in-memory file system stands in for an object store: listing, reading, images."""
    import fsspec

    written = img2dataset_folder(tmp_path / "d", n_images=2, captions_per_image=2, per_shard=3, failed=0)
    fs = fsspec.filesystem("memory")
    for tar in sorted((tmp_path / "d").glob("*.tar")):
        fs.pipe(f"/bucket/cc/{tar.name}", tar.read_bytes())
    fs.pipe("/bucket/cc/00000.parquet", b"sidecar, never read")
    try:
        assert detect(SourceSpec(path="memory://bucket/cc/{00000..00001}.tar")) == "wds"
        reader, rows = rows_of("memory://bucket/cc")
        assert [r["caption"] for r in rows] == [m["caption"] for m in written]
        assert rows[3]["location"] == "00001.tar:000010000"
        assert reader.open_image(None, 3) == image_bytes(1)
    finally:
        fs.rm("/bucket", recursive=True)


def test_reader_survives_pickling_and_a_resumed_build(tmp_path: Path) -> None:
    img2dataset_folder(tmp_path / "d", n_images=2, captions_per_image=2, failed=0)
    reader, _ = rows_of(tmp_path / "d")
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.open_image(None, 3) == image_bytes(1)
    fresh = WdsReader(SourceSpec(path=str(tmp_path / "d")))  # as in a resumed build: rows never read
    assert fresh.open_image(None, 0) == image_bytes(0)
    assert fresh.fingerprint() == reader.fingerprint()


def test_fingerprint_sees_a_caption_edited_in_place(tmp_path: Path) -> None:
    tar_with(tmp_path / "a.tar", [("a.jpg", image_bytes(1)), ("a.txt", b"a cat")])
    before = WdsReader(SourceSpec(path=str(tmp_path / "a.tar"))).fingerprint()
    tar_with(tmp_path / "a.tar", [("a.jpg", image_bytes(1)), ("a.txt", b"a dog")])
    assert WdsReader(SourceSpec(path=str(tmp_path / "a.tar"))).fingerprint() != before


# --- recaptions ---------------------------------------------------------------------------------------


def test_captions_from_parquet_join_on_key_and_url(tmp_path: Path) -> None:
    written = img2dataset_folder(tmp_path / "d", n_images=2, captions_per_image=2, failed=0)
    pq.write_table(
        pa.table(
            {
                "key": [written[1]["key"], "999999999", written[2]["key"]],
                "recaption": [["long caption 0", "short caption 0"], ["orphan"], ["long caption 1"]],
            }
        ),
        tmp_path / "re.parquet",
    )
    spec = SourceSpec(path=str(tmp_path / "d"), captions_from=str(tmp_path / "re.parquet"), captions_column="recaption")
    _, rows = rows_of(spec.path, captions_from=spec.captions_from, captions_column="recaption")
    extra = rows[4:]
    assert [(r["location"], r["caption"], r["reject"], r["image_index"]) for r in extra] == [
        ("re.parquet[0]#0", "long caption 0", None, 1),
        ("re.parquet[0]#1", "short caption 0", None, 1),
        ("re.parquet[1]#0", "orphan", "unknown_join_key", None),
        ("re.parquet[2]#0", "long caption 1", None, 2),
    ]
    result = build(spec, BuildConfig(out=tmp_path / "out", workers=1, max_reject_fraction=0.5))
    assert result.manifest["counts"]["rows"] == 8
    assert result.manifest["rejects"]["by_reason"] == {"unknown_join_key": 1}
    samples = shard_samples(tmp_path / "out")
    own = [caption_text(0, 0), caption_text(0, 1)]
    assert samples["1000.jpg"]["captions"] == [*own, "long caption 0", "short caption 0"]
    assert samples["1001.jpg"]["captions"] == [caption_text(1, 0), caption_text(1, 1), "long caption 1"]
    assert result.manifest["source"]["reading"]["captions_from"] == ["re.parquet", "key", "recaption"]

    # By URL, from JSON Lines, the caption column found by its usual name.
    (tmp_path / "re.jsonl").write_text(json.dumps({"url": written[0]["url"], "caption": "by url"}) + "\n")
    _, rows = rows_of(tmp_path / "d", captions_from=str(tmp_path / "re.jsonl"), captions_key="url")
    assert (rows[-1]["caption"], rows[-1]["image_index"]) == ("by url", 0)


def test_captions_from_needs_wds_and_a_join_column(tmp_path: Path) -> None:
    img2dataset_folder(tmp_path / "d", n_images=1, captions_per_image=2, failed=0)
    pq.write_table(pa.table({"id": ["x"], "caption": ["y"]}), tmp_path / "re.parquet")
    with pytest.raises(UsageError, match="no 'key' column to join on; columns: id, caption"):
        rows_of(tmp_path / "d", captions_from=str(tmp_path / "re.parquet"))
    (tmp_path / "t.csv").write_text("image,caption\na.jpg,x\n")
    spec = SourceSpec(path=str(tmp_path / "t.csv"), captions_from=str(tmp_path / "re.parquet"))
    with pytest.raises(UsageError, match="needs --format wds"):
        build(spec, BuildConfig(out=tmp_path / "out", workers=1))


# --- the command line ---------------------------------------------------------------------------------


def test_cli_build_then_verify_accounts_for_every_row(tmp_path: Path) -> None:
    written = img2dataset_folder(tmp_path / "cc", n_images=6, captions_per_image=5, per_shard=8)
    # Damage: the last tar loses its end, a sample without image joins the first.
    last = sorted((tmp_path / "cc").glob("*.tar"))[-1]
    last.write_bytes(last.read_bytes()[:-2000])
    with wds.TarWriter(str(tmp_path / "cc" / "99999.tar")) as sink:
        sink.write({"__key__": "999990000", "txt": "no picture here"})
    (tmp_path / "re.csv").write_text(f"key,caption\n{written[0]['key']},a recaption\n")
    done = run_cli(
        "build",
        str(tmp_path / "cc"),
        "--out",
        str(tmp_path / "out"),
        "--workers",
        "2",
        "--captions-from",
        str(tmp_path / "re.csv"),
        "--json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "format: wds (detected" in done.stderr
    manifest = json.loads(done.stdout)["manifest"]
    counts = manifest["counts"]
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert counts["rows"] == len(written) + 2 == counts["captions"] + len(rejects)
    assert {r["reason"] for r in rejects} == {"truncated_tar", "no_image"}
    assert any(r["location"].startswith(last.name) for r in rejects if r["reason"] == "truncated_tar")
    assert counts["images"] == 6
    assert max(len(m["captions"]) for m in shard_samples(tmp_path / "out").values()) == 6  # 5 + the recaption

    verified = run_cli("verify", str(tmp_path / "out"), cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    missing = run_cli("build", str(tmp_path / "nope" / "{0..3}.tar"), "--out", str(tmp_path / "o2"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such tar" in missing.stderr and "Traceback" not in missing.stderr
