"""The one tar member walker: USTAR headers read one by one, with one naming rule and one
policy for hostile members.

Every reader of shards and WebDataset tars walks members here: the loader (reading,
counting and checksumming samples), ``capshard verify`` and the ``wds`` reader. Each
512-byte header is parsed by :meth:`tarfile.TarInfo.frombuf` (tarfile's public header
parser); what the header leads to is decided here, before anything it declares is read:

* extended headers (pax records, GNU long names) are refused outright under
  ``TarPolicy(plain_ustar=True)`` (capshard writes plain USTAR), else read only up to
  ``max_extended_bytes`` and applied (``path``, ``size``) to the member they precede;
* sparse members are refused, and so is any member whose size (pax override and GNU
  base-256 included) is negative;
* nothing is extracted or followed: links, devices and directories are yielded as
  :class:`Member` values for the caller to report or skip; a member's data is read only
  when the caller asks (:meth:`TarWalk.read`), else seeked over (or read through and
  discarded on a stream, so a hashing reader sees every byte).

The walk ends as :mod:`tarfile` ends one: at the end-of-archive blocks, or quietly at an
unreadable header after the first (the caller checks what follows :attr:`TarWalk.end`); an
unreadable first header or one after an extended header raises :class:`tarfile.ReadError`.

Naming rule (webdataset's, as :func:`webdataset.tariterators.base_plus_ext`): a member's
sample key is its path up to the first dot of its last component, the rest is its
extension (lower-cased here). Names whose last component starts with a dot or has none
belong to no sample.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Protocol, cast

BLOCK = tarfile.BLOCKSIZE
#: Largest extended header (pax records, GNU long name) read, in bytes.
MAX_EXTENDED_BYTES = 1 << 20
ENCODING, ERRORS = "utf-8", "surrogateescape"
_CHUNK = 1 << 20

_EXTENDED = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
# Types whose size field does not count data blocks (tarfile skips data only for the others).
_NO_DATA = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE)
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$", re.DOTALL)
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")


class Readable(Protocol):
    """What a walk needs of its file: ``read``; ``seekable``/``seek`` are used when present."""

    def read(self, n: int = -1, /) -> bytes: ...


def split_name(name: str) -> tuple[str, str] | None:
    """``(key, ext)`` of a member name by the naming rule (ext lower-cased), else None."""
    m = _KEY_EXT.match(name)
    if m is None:
        return None
    return m.group(1), m.group(2).lower()


class HostileTar(tarfile.TarError):
    """A header the policy refuses (extended where plain USTAR is required, sparse, absurd size)."""


@dataclass(frozen=True)
class TarPolicy:
    """What a walk refuses besides sparse members and negative sizes (always refused)."""

    plain_ustar: bool = False
    """Refuse every extended header (pax, GNU long name) before reading its data."""
    max_extended_bytes: int = MAX_EXTENDED_BYTES


@dataclass(frozen=True)
class Member:
    """One member as its header (and any extended header before it) declares it."""

    name: str
    type: bytes
    size: int
    offset: int
    """Byte offset of its first header (an extended header's, when one precedes it)."""
    offset_data: int

    def isreg(self) -> bool:
        return self.type in _REGULAR

    def kind(self) -> str:
        """A short human name for a member type that is not a regular file."""
        return _KINDS.get(self.type, f"member of type {self.type!r}")

    @property
    def next_offset(self) -> int:
        return self.offset_data + (0 if self.type in _NO_DATA else _blocks(self.size))


_KINDS = {
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
    tarfile.DIRTYPE: "directory",
}


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


class TarWalk:
    """The members of the tar in ``f``, in order (see the module doc). ``f`` may be a
    seekable file (data not read is seeked over) or a stream with ``read`` only."""

    def __init__(self, f: Readable, policy: TarPolicy = TarPolicy()) -> None:
        self.f, self.policy = f, policy
        self.pos = 0
        self.end = 0
        """Where the walk stopped: the offset of the header it did not or could not read."""
        self._seekable = bool(getattr(f, "seekable", lambda: False)())
        self._globals: dict[str, str] = {}

    def __iter__(self) -> Iterator[Member]:
        while (member := self._next()) is not None:
            yield member
            self._advance(member.next_offset)

    def read(self, member: Member) -> bytes:
        """The whole data of ``member``, the member last yielded; ReadError when it is cut short."""
        if self.pos != member.offset_data:
            raise ValueError(f"member {ascii(member.name)[:80]} is not the one at byte {self.pos}")
        data = self._read_chunked(member.size)
        if len(data) != member.size:
            raise tarfile.ReadError(f"unexpected end of data in member {ascii(member.name)[:80]}")
        return data

    def _read(self, n: int) -> bytes:
        data = self.f.read(n) if n else b""
        self.pos += len(data)
        return data

    def _read_chunked(self, n: int) -> bytes:
        """Up to ``n`` bytes, read in chunks: memory follows the bytes there, not a header's claim."""
        parts: list[bytes] = []
        left = n
        while left > 0 and (chunk := self._read(min(left, _CHUNK))):
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def _advance(self, target: int) -> None:
        """Move to ``target``; ReadError when the file ends before it (as tarfile does)."""
        if target <= self.pos:
            return
        if self._seekable:
            cast(IO[bytes], self.f).seek(target - 1)
            if not self.f.read(1):
                raise tarfile.ReadError("unexpected end of data")
            self.pos = target
            return
        while self.pos < target:
            if not self._read(min(target - self.pos, _CHUNK)):
                raise tarfile.ReadError("unexpected end of data")

    def _header(self, subsequent: bool) -> tarfile.TarInfo | None:
        """The header at the current position, or None where a walk ends quietly."""
        start = self.pos
        buf = self._read(BLOCK)
        loud = subsequent or start == 0
        if not buf:
            if loud:
                raise tarfile.ReadError("empty header" if subsequent else "empty file")
            return None
        if len(buf) < BLOCK:
            if loud:
                raise tarfile.ReadError("truncated header")
            return None
        if not buf.strip(b"\0"):
            if subsequent:
                raise tarfile.ReadError("end of file header")
            return None
        try:
            return tarfile.TarInfo.frombuf(buf, ENCODING, ERRORS)
        except tarfile.HeaderError as e:
            if loud:
                raise tarfile.ReadError(str(e)) from None
            return None

    def _next(self) -> Member | None:
        start = self.pos
        header = self._header(subsequent=False)
        if header is None:
            self.end = start
            return None
        pax = dict(self._globals)
        long_name: str | None = None
        while header.type in _EXTENDED or header.type == tarfile.GNUTYPE_SPARSE:
            self._police(header)
            data = self._read(_blocks(header.size))[: header.size]
            if len(data) != header.size:
                raise tarfile.ReadError("unexpected end of data")
            if header.type == tarfile.GNUTYPE_LONGNAME:
                long_name = data.split(b"\0", 1)[0].decode(ENCODING, ERRORS)
            elif header.type == tarfile.XGLTYPE:
                self._globals.update(_pax_records(data))
                pax.update(self._globals)
            elif header.type != tarfile.GNUTYPE_LONGLINK:
                pax.update(_pax_records(data))
            header = self._header(subsequent=True)
            assert header is not None  # subsequent headers raise instead
        name = pax.get("path", long_name if long_name is not None else header.name)
        size = _pax_size(pax, header.size)
        if any(k.startswith("GNU.sparse.") for k in pax):
            raise HostileTar(f"sparse member {ascii(name)[:80]} refused")
        if size < 0:
            raise HostileTar(f"member {ascii(name)[:80]} declares a negative size")
        return Member(name, header.type, size, start, self.pos)

    def _police(self, header: tarfile.TarInfo) -> None:
        """Refuse an extended or sparse header before its data is read."""
        if self.policy.plain_ustar:
            raise HostileTar(
                f"extended header (type {header.type!r}, {header.size} bytes) refused; shards are plain USTAR"
            )
        if header.type == tarfile.GNUTYPE_SPARSE:
            raise HostileTar(f"sparse member {ascii(header.name)[:80]} refused")
        if not 0 <= header.size <= self.policy.max_extended_bytes:
            raise HostileTar(
                f"extended header of {header.size} bytes, over the cap of {self.policy.max_extended_bytes}"
            )


def _pax_records(data: bytes) -> dict[str, str]:
    """The ``LENGTH KEY=VALUE\\n`` records of a pax header; ReadError when malformed."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        m = _PAX_RECORD.match(data, pos)
        length = int(m.group(1)) if m else 0
        record = data[pos : pos + length]
        if m is None or length < len(m.group(0)) + 1 or len(record) != length or not record.endswith(b"\n"):
            raise tarfile.ReadError("invalid pax header")
        key = m.group(2).decode(ENCODING, ERRORS)
        out[key] = record[len(m.group(0)) : -1].decode(ENCODING, ERRORS)
        pos += length
    return out


def _pax_size(pax: dict[str, str], size: int) -> int:
    if "size" not in pax:
        return size
    try:
        return int(pax["size"])
    except ValueError:
        raise tarfile.ReadError(f"invalid pax size {pax['size']!r}") from None
