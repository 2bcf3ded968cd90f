"""The direct USTAR writer: the same bytes as the tarfile-based writer it replaced, and
readable by GNU tar, Python's tarfile and webdataset."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from synth import flickr_token_file, write_images

from pipeline import tarwriter
from pipeline import write as write_module
from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.readers import SourceSpec
from pipeline.tarwriter import TarWriter
from pipeline.write import MTIME


def tarfile_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """What the previous writer (``tarfile`` stream, USTAR, fixed metadata) made of ``members``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mtime = MTIME
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def direct_bytes(members: list[tuple[str, bytes]]) -> tuple[bytes, str, int]:
    buf = io.BytesIO()
    tar = TarWriter(buf, mtime=MTIME)
    for name, payload in members:
        tar.add(name, payload)
    sha, size = tar.close()
    return buf.getvalue(), sha, size


@pytest.mark.parametrize(
    "sizes",
    [[], [0], [1], [511], [512], [513], [10240 - 1536], [3, 700, 0, 5000, 512 * 19], [200_000, 1, 77]],
)
def test_same_bytes_as_tarfile_for_any_member_sizes(sizes: list[int]) -> None:
    members = [(f"{i:06d}_k-ey.{ext}", bytes((i + j) % 251 for j in range(n)))
               for i, n in enumerate(sizes) for ext in ("jpg",)]
    members += [("x" * 96 + ".txt", b"long name, exactly 100 bytes\n")]
    data, sha, size = direct_bytes(members)
    assert data == tarfile_bytes(members)
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))


def test_names_over_100_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        TarWriter(io.BytesIO(), mtime=MTIME).add("y" * 101, b"")


def test_built_shards_match_the_tarfile_writer_and_read_back_everywhere(tmp_path: Path) -> None:
    names = [f"{1000 + i}.jpg" for i in range(23)]
    write_images(tmp_path / "images", names)
    flickr_token_file(tmp_path / "c.token", names)
    spec = SourceSpec(path=str(tmp_path / "c.token"), images=tmp_path / "images")
    result = build(spec, BuildConfig(out=tmp_path / "out", workers=1, max_images_per_shard=5))
    shards = sorted(result.out.glob("*.tar"))
    assert len(shards) == 5
    listed = []
    for shard in shards:
        data = shard.read_bytes()
        with tarfile.open(shard) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
        assert tarfile_bytes(members) == data, shard.name
        gnu = subprocess.run(["tar", "-tvf", str(shard)], capture_output=True, text=True, check=True)
        assert gnu.stderr == ""
        assert [line.split()[-1] for line in gnu.stdout.splitlines()] == [n for n, _ in members]
        extracted = tmp_path / "x" / shard.stem
        extracted.mkdir(parents=True)
        subprocess.run(["tar", "-xf", str(shard), "-C", str(extracted)], check=True)
        assert all((extracted / n).read_bytes() == p for n, p in members)
        listed += [n for n, _ in members]
    assert len(listed) == 3 * 23

    wds = pytest.importorskip("webdataset")
    samples = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False))
    assert len(samples) == 23
    assert all({"jpg", "json", "txt"} <= set(s) for s in samples)


def test_a_real_file_gets_the_same_bytes_through_writev(tmp_path: Path) -> None:
    # Over FLUSH_AT (4 MiB) of members: several writev flushes into the file's descriptor,
    # after bytes the caller wrote through the buffered file object (they must stay first).
    members = [(f"{i:06d}.jpg", bytes((i * 7 + j) % 253 for j in range(300_000 + i))) for i in range(20)]
    path = tmp_path / "shard.tar"
    with open(path, "wb") as f:
        f.write(b"")
        tar = TarWriter(f, mtime=MTIME)
        for name, payload in members:
            tar.add(name, payload)
        sha, size = tar.close()
    data = path.read_bytes()
    assert data == tarfile_bytes(members)
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))


@pytest.mark.parametrize("write_behind", [False, True])
def test_write_behind_starts_the_disk_writes_of_each_flush_and_keeps_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_behind: bool
) -> None:
    members = [(f"{i:06d}.jpg", bytes((i * 5 + j) % 251 for j in range(1_000_000))) for i in range(10)]
    real = tarwriter._writeback_starter()
    started: list[tuple[int, int]] = []

    def recording() -> object:
        def start(fd: int) -> None:
            started.append((fd, os.fstat(fd).st_size))
            if real is not None:
                real(fd)  # the real call, where libc has it: it must not disturb the bytes

        return start

    monkeypatch.setattr(tarwriter, "_writeback_starter", recording)
    path = tmp_path / "shard.tar"
    with open(path, "wb") as f:
        tar = TarWriter(f, mtime=MTIME, write_behind=write_behind)
        for name, payload in members:
            tar.add(name, payload)
        tar.close()
        fd = f.fileno()
    assert path.read_bytes() == tarfile_bytes(members)
    if not write_behind:
        assert started == []
        return
    # after every flush: 10 MB of members in flushes of 4 MiB and more, then the end
    sizes = [size for _, size in started]
    assert {d for d, _ in started} == {fd} and len(sizes) == 3 and sizes == sorted(sizes)
    assert sizes[-1] == len(path.read_bytes())


@pytest.mark.parametrize(("out", "behind"), [("local", True), ("memory://bucket/out", False)])
def test_a_local_shard_is_written_behind_and_an_object_store_temporary_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str, behind: bool
) -> None:
    """Only bytes about to be fsynced are sent to the disk early: a shard bound for an object
    store goes through a local temporary file that is uploaded, then deleted."""
    writers: list[bool] = []

    class Recording(TarWriter):
        def __init__(self, fileobj: Any, *, mtime: int, write_behind: bool = False) -> None:
            writers.append(write_behind)
            super().__init__(fileobj, mtime=mtime, write_behind=write_behind)

    monkeypatch.setattr(write_module, "TarWriter", Recording)
    names = [f"{1000 + i}.jpg" for i in range(6)]
    write_images(tmp_path / "images", names)
    flickr_token_file(tmp_path / "c.token", names)
    spec = SourceSpec(path=str(tmp_path / "c.token"), images=tmp_path / "images")
    target = tmp_path / "out" if out == "local" else out
    build(spec, BuildConfig(out=target, workers=1, max_images_per_shard=2))
    assert writers == [behind] * 3


@pytest.mark.parametrize("short", [None, 1000, 70_001])
def test_each_writev_takes_at_most_write_at_once_bytes_and_a_short_write_is_continued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short: int | None
) -> None:
    """Members cut across calls and calls the kernel only partly wrote (``short``: the most
    bytes a call writes) still give tarfile's bytes."""
    members = [(f"{i:06d}.jpg", bytes((i * 3 + j) % 249 for j in range(150_000 + 777 * i))) for i in range(40)]
    real = os.writev
    asked: list[int] = []

    def writev(fd: int, buffers: list[memoryview]) -> int:
        asked.append(sum(len(b) for b in buffers))
        if short is None:
            return real(fd, buffers)
        return os.write(fd, b"".join(bytes(b) for b in buffers)[:short])

    monkeypatch.setattr(tarwriter.os, "writev", writev)
    path = tmp_path / "shard.tar"
    with open(path, "wb") as f:
        tar = TarWriter(f, mtime=MTIME)
        for name, payload in members:
            tar.add(name, payload)
        sha, size = tar.close()
    data = path.read_bytes()
    assert data == tarfile_bytes(members) and (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert max(asked) <= tarwriter.WRITE_AT_ONCE
    if short is None:  # full calls but for the last of each flush
        assert len(asked) < 2 * len(data) / tarwriter.WRITE_AT_ONCE
