"""The one tar member walker: webdataset's naming rule, the same members on a file and on a
stream, and its policy for hostile headers (refused before their data is read)."""

from __future__ import annotations

import io
import re
import tarfile
import tracemalloc

import pytest
from webdataset.tariterators import base_plus_ext

from pipeline.tarwalk import HostileTar, TarPolicy, TarWalk, split_name


class _Stream:
    """A read-only stream (no seek): what a hashing reader looks like to the walker."""

    def __init__(self, data: bytes) -> None:
        self.f = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self.f.read(n)


def _tar(members: list[tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT, kind: bytes = tarfile.REGTYPE) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), kind
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    "name",
    ["k0.jpg", "k0.JPG", "dir/k0.seg.json", "a.b.c", "x/y.z/k.txt", "__key__.json", "k\nnl.txt", "nodot", "d/"],
)
def test_the_naming_rule_is_webdatasets(name: str) -> None:
    key, ext = base_plus_ext(name)
    assert split_name(name) == (None if key is None else (key, ext.lower()))


def test_a_file_and_a_stream_give_the_same_members_and_bytes() -> None:
    data = _tar([("a.jpg", b"x" * 700), ("a.json", b"{}"), ("b" * 150 + ".txt", b"long")], tarfile.PAX_FORMAT)
    seen = []
    for source in (io.BytesIO(data), _Stream(data)):
        walk = TarWalk(source)
        seen.append([(m.name, m.size, walk.read(m)) for m in walk])
    assert seen[0] == seen[1]
    assert [n for n, _, _ in seen[0]] == ["a.jpg", "a.json", "b" * 150 + ".txt"]  # the pax path applied
    assert seen[0][0][2] == b"x" * 700
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        offsets = [m.offset_data for m in tar]
    assert [m.offset_data for m in TarWalk(io.BytesIO(data))] == offsets


def test_plain_ustar_refuses_extended_headers_and_the_default_caps_them() -> None:
    pax = _tar([("b" * 150 + ".txt", b"long")], tarfile.PAX_FORMAT)
    with pytest.raises(HostileTar, match=r"extended header \(type b'x'.*refused; shards are plain USTAR"):
        list(TarWalk(io.BytesIO(pax), TarPolicy(plain_ustar=True)))
    with pytest.raises(HostileTar, match="over the cap of 10"):
        list(TarWalk(io.BytesIO(pax), TarPolicy(max_extended_bytes=10)))


def test_links_and_devices_are_yielded_not_followed_and_sparse_is_refused() -> None:
    link = _tar([("l.jpg", b"")], kind=tarfile.SYMTYPE)
    (member,) = list(TarWalk(io.BytesIO(link)))
    assert not member.isreg() and member.kind() == "symlink"
    sparse = _tar([("s.jpg", b"")], fmt=tarfile.GNU_FORMAT, kind=tarfile.GNUTYPE_SPARSE)
    with pytest.raises(HostileTar, match=r"sparse member 's\.jpg' refused"):
        list(TarWalk(io.BytesIO(sparse)))


def test_damage_ends_or_breaks_the_walk_as_tarfile_does() -> None:
    data = _tar([("a.jpg", b"x" * 1000), ("b.jpg", b"y" * 1000)])
    walk = TarWalk(io.BytesIO(data))
    assert [m.name for m in walk] == ["a.jpg", "b.jpg"] and walk.end == 2 * (512 + 1024)
    garbled = data[:1536] + b"\x01" * 512 + data[2048:]  # b's header: a quiet end there
    walk = TarWalk(io.BytesIO(garbled))
    assert [m.name for m in walk] == ["a.jpg"] and walk.end == 1536
    for source in (io.BytesIO(data[:700]), _Stream(data[:700])):  # cut inside a's data
        walk = TarWalk(source)
        member = next(iter(walk))
        with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
            walk.read(member)
    for not_a_tar in (b"", b"<html>" * 200, b"\x00" * 300):  # tarfile's own words for each
        with pytest.raises(tarfile.ReadError) as theirs:
            tarfile.open(fileobj=io.BytesIO(not_a_tar), mode="r:").close()
        with pytest.raises(tarfile.ReadError, match=re.escape(str(theirs.value))):
            list(TarWalk(io.BytesIO(not_a_tar)))


def test_a_lying_size_costs_only_the_bytes_that_are_there() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("big.jpg")
        info.size = (8 << 30) - 1  # the most a USTAR header can say; no data follows
        tar.addfile(info)
    data = buf.getvalue() + b"\0" * 1024
    for source in (io.BytesIO(data), _Stream(data)):
        walk = TarWalk(source)
        member = next(iter(walk))
        assert member.size == (8 << 30) - 1
        tracemalloc.start()
        try:
            with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
                walk.read(member)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 << 20
