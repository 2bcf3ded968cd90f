"""A deterministic USTAR writer: headers built directly, large writes, one fsync.

Produces the same bytes as ``tarfile.open(mode="w|", format=USTAR_FORMAT)`` with members
of mode 0444, uid/gid 0, no user or group names and a fixed mtime: a 512-byte header per
member, the payload padded to 512 bytes, two zero blocks at the end and zero padding to
a 10240-byte record. It hashes the bytes as it writes them, so the shard's sha256 needs
no second read of the file.

Into a real file, the buffered pieces go out every :data:`FLUSH_AT` bytes, in ``writev``
calls of at most :data:`WRITE_AT_ONCE` bytes, with no copy into one buffer. A writer told
``write_behind`` (a shard about to be fsynced) then asks the kernel to start writing those
bytes to disk at once (Linux's ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not
wait), as RocksDB's ``bytes_per_sync`` and PostgreSQL's ``*_flush_after`` do: the disk works
while the next images are read and hashed, and the fsync at the end finds little left to write.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import io
import os
import sys
from collections.abc import Callable
from typing import BinaryIO

BLOCK = 512
RECORD = 20 * BLOCK
#: Flush to the file once this much is buffered (and hash it; start its disk writes when written behind).
FLUSH_AT = 4 << 20
#: Most bytes one ``writev`` call takes. Smaller calls let the kernel fill the page cache with
#: smaller folios, which cost less to get on the machine the ETL benchmark runs on (a
#: Firecracker VM, Linux 6.18, ext4): 10,000 photos, ``--workers 2``, 4 interleaved rounds,
#: write stage 1.90-2.20 s in whole 4 MiB calls, 1.42-1.61 s in 1 MiB, 1.37-1.50 s in 256 KiB
#: and 1.45-1.56 s in 128 KiB ones (benchmarks/results/etl_analysis.md). Four calls per MiB.
WRITE_AT_ONCE = 256 << 10
_NAME_MAX = 100
_SIZE_MAX = 8**11 - 1  # an 11-digit octal field; USTAR has no larger sizes
#: Most buffers one ``writev`` takes.
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


class _HeaderTemplate:
    """The 512-byte USTAR headers of regular files owned by uid/gid 0 with empty user names: the
    fields that do not change with the member (mode, owner, mtime, magic) laid out once, with
    their share of the checksum; :meth:`header` fills in name and size."""

    def __init__(self, mtime: int, mode: int) -> None:
        self.owner = _octal(mode & 0o7777, 8) + _octal(0, 8) + _octal(0, 8)  # mode, uid, gid
        self.mtime = _octal(mtime, 12)
        self.tail = b"0" + bytes(100) + b"ustar\x0000" + bytes(32 + 32 + 8 + 8 + 155 + 12)  # type .. prefix, pad
        # The checksum field counts as 8 spaces.
        self.fixed_sum = sum(self.owner) + sum(self.mtime) + 8 * ord(" ") + sum(self.tail)

    def header(self, name: str, size: int) -> bytes:
        raw = name.encode("utf-8")
        if len(raw) > _NAME_MAX:
            # tarfile would split it into a prefix at a slash; capshard's keys are short and have none.
            raise ValueError(f"tar member name {name!r} is longer than {_NAME_MAX} bytes")
        if not 0 <= size <= _SIZE_MAX:
            raise ValueError(f"tar member {name!r} is too large for USTAR ({size} bytes)")
        size_field = _octal(size, 12)
        checksum = b"%06o\0 " % (self.fixed_sum + sum(raw) + sum(size_field))
        return b"".join((raw.ljust(100, b"\0"), self.owner, size_field, self.mtime, checksum, self.tail))


@functools.lru_cache(maxsize=8)
def _header_template(mtime: int, mode: int) -> _HeaderTemplate:
    return _HeaderTemplate(mtime, mode)


class TarWriter:
    """Append members to an open binary file; ``close`` writes the end blocks and returns
    ``(sha256 hex, size)`` of everything written. Does not close or fsync the file;
    ``write_behind``: start the disk writes of each flush at once (see the module docstring)."""

    def __init__(self, fileobj: BinaryIO, *, mtime: int, write_behind: bool = False) -> None:
        self._file = fileobj
        self._parts: list[bytes] = []
        self._buffered = 0
        self._size = 0
        self._hash = hashlib.sha256()
        self._header = _header_template(mtime, 0o444).header
        self._fd = _fileno(fileobj)
        self._start_writeback = _writeback_starter() if write_behind and self._fd is not None else None
        if self._fd is not None:
            fileobj.flush()  # from here on the writer writes to the descriptor itself

    def add(self, name: str, payload: bytes) -> None:
        """Append one regular-file member."""
        self._put(self._header(name, len(payload)))
        self._put(payload)
        pad = -len(payload) % BLOCK
        if pad:
            self._put(bytes(pad))

    def close(self) -> tuple[str, int]:
        """Write the two end blocks and the record padding; flush; return (sha256, size)."""
        end = 2 * BLOCK
        end += -(self._size + end) % RECORD
        self._put(bytes(end))
        self._flush()
        self._file.flush()
        return self._hash.hexdigest(), self._size

    def _put(self, data: bytes) -> None:
        self._parts.append(data)
        self._buffered += len(data)
        self._size += len(data)
        if self._buffered >= FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        if not self._parts:
            return
        for part in self._parts:
            self._hash.update(part)
        if self._fd is None:
            self._file.write(b"".join(self._parts))
        else:
            _write_all(self._fd, self._parts)
            if self._start_writeback is not None:
                self._start_writeback(self._fd)
        self._parts.clear()
        self._buffered = 0


@functools.cache
def _writeback_starter() -> Callable[[int], None] | None:
    """``start(fd)``: begin writing ``fd``'s dirty pages to disk without waiting for them
    (``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)``); None where libc has no such call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    sync_file_range_write = 2

    def start(fd: int) -> None:
        call(fd, 0, 0, sync_file_range_write)  # advice: a failure (an odd filesystem) changes nothing

    return start


def _fileno(fileobj: BinaryIO) -> int | None:
    """The descriptor of a regular file opened for writing, else None (an in-memory buffer, a pipe)."""
    try:
        fd = fileobj.fileno()
    except (AttributeError, io.UnsupportedOperation):
        return None
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:  # not seekable: a pipe or a socket
        return None
    return fd


def _write_all(fd: int, parts: list[bytes]) -> None:
    """Write every part, in order: ``writev`` calls of at most :data:`WRITE_AT_ONCE` bytes
    (and ``IOV_MAX`` buffers), a part cut where a call's bytes end."""
    batch: list[memoryview] = []
    size = 0
    for part in parts:
        view = memoryview(part)
        while view:
            piece = view[: WRITE_AT_ONCE - size]
            batch.append(piece)
            size += len(piece)
            view = view[len(piece) :]
            if size == WRITE_AT_ONCE or len(batch) == _IOV_MAX:
                _writev_all(fd, batch)
                batch, size = [], 0
    if batch:
        _writev_all(fd, batch)


def _writev_all(fd: int, batch: list[memoryview]) -> None:
    """Write the whole batch, calling ``writev`` again for what a call left unwritten."""
    while batch:
        done = os.writev(fd, batch)
        while done:  # drop what was written, keep the rest of a buffer cut short
            first = batch[0]
            if done >= len(first):
                done -= len(first)
                batch.pop(0)
            else:
                batch[0] = first[done:]
                done = 0
