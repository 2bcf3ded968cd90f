"""Walk a WebDataset tar as hostile input: group members into samples, read only small text.

Nothing is extracted and no member is decoded here. Only regular files are considered;
links, devices and directories are skipped, never followed, and member names are only
split into ``KEY.EXT`` (``../x.jpg`` is as harmless as ``x.jpg``: nothing is written).
The data of ``txt``/``json`` members is read (at most ``MAX_TEXT_BYTES`` each); image
members are located (offset, size) and left unread; every other member (``.pyd``,
``.pth``, ``.npy``, …) is skipped unread. Extended headers (pax, GNU long names) are read
only up to a small cap, and every size, however it was encoded (GNU base-256 included),
is checked against the file's length before anything is read or allocated.

A tar that ends early or has an unreadable header keeps the samples before the damage;
the sample being read when it happened is reported as the damaged tail.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from ..verify_shard import MAX_IMAGE_BYTES, MAX_TEXT_BYTES

#: Members whose bytes are an image, in the order one is chosen when a sample has several.
IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
#: Members whose bytes are read (captions and metadata).
TEXT_EXTS: tuple[str, ...] = ("txt", "json")
#: Largest extended header (pax records, GNU long name) read, in bytes.
MAX_EXTENDED_BYTES = 1 << 20

_EXTENDED = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
# webdataset's rule: the key is the path up to the first dot of its last component.
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$", re.DOTALL)


@dataclass(frozen=True)
class MemberRef:
    """Where a member's data lies in its tar."""

    offset: int
    size: int


@dataclass
class TarSample:
    """One sample: consecutive members sharing a key.

    ``key`` is ``None`` for damage found before any sample. ``problem`` is
    ``(reason, detail)`` when the sample cannot be used (truncated tail, oversized member).
    """

    key: str | None
    images: dict[str, MemberRef] = field(default_factory=dict)
    texts: dict[str, bytes] = field(default_factory=dict)
    problem: tuple[str, str] | None = None

    def image(self) -> tuple[str, MemberRef] | None:
        """The image member used: the first present in ``IMAGE_EXTS`` order."""
        for ext in IMAGE_EXTS:
            if ext in self.images:
                return ext, self.images[ext]
        return None


class HostileTar(tarfile.TarError):
    """A header that must not be processed (absurd or negative size, sparse file)."""


class _SafeTarInfo(tarfile.TarInfo):
    """Refuses extended headers over ``MAX_EXTENDED_BYTES`` before tarfile reads their data,
    and any member whose size (pax override included) is negative."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise HostileTar(f"sparse member {ascii(self.name)[:80]} refused")
        if self.type in _EXTENDED and not 0 <= self.size <= MAX_EXTENDED_BYTES:
            raise HostileTar(f"extended header of {self.size} bytes, over the cap of {MAX_EXTENDED_BYTES}")
        if self.size < 0:
            raise HostileTar(f"member {ascii(self.name)[:80]} declares a negative size")
        result: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        if result.size < 0:
            raise HostileTar(f"member {ascii(result.name)[:80]} declares a negative size")
        return result


def split_name(name: str) -> tuple[str, str] | None:
    """``(key, ext)`` of a member name as webdataset splits it (ext lower-cased), else None."""
    m = _KEY_EXT.match(name)
    if m is None:
        return None
    return m.group(1), m.group(2).lower()


def file_size(f: IO[bytes]) -> int:
    """Length of a seekable file; leaves the position at 0."""
    f.seek(0, 2)
    size = f.tell()
    f.seek(0)
    return size


def scan_tar(f: IO[bytes], label: str) -> Iterator[TarSample]:
    """The samples of the tar open in ``f`` (seekable), in tar order; see the module docstring."""
    size = file_size(f)
    current: TarSample | None = None
    damage: tuple[str, str] | None = None
    tail_only = False  # damage after a clean end: the last sample is whole
    try:
        with tarfile.open(fileobj=f, mode="r:", tarinfo=_SafeTarInfo) as tar:
            for member in tar:
                tar.members = []  # type: ignore[attr-defined]  # do not keep every header
                if not member.isreg():
                    continue
                parsed = split_name(member.name)
                if parsed is None:
                    continue
                key, ext = parsed
                if current is None or key != current.key:
                    if current is not None:
                        yield current
                    current = TarSample(key)
                if member.offset_data + member.size > size:
                    damage = (
                        "truncated_tar",
                        f"{label}: member {ascii(member.name)[:80]} declares {member.size} bytes at byte "
                        f"{member.offset_data}, past the end of the tar ({size} bytes)",
                    )
                    break
                _add_member(tar, member, ext, current)
            else:
                damage, tail_only = _tail_damage(f, tar.offset, size, label)
    except HostileTar as e:
        damage = ("corrupt_tar", f"{label}: {e}")
    except (tarfile.TarError, EOFError) as e:
        truncated = any(word in str(e) for word in ("end of data", "empty file", "truncated"))
        damage = ("truncated_tar" if truncated else "corrupt_tar", f"{label}: {e}")
    if current is not None and (damage is None or tail_only):
        yield current
        current = None
    if damage is not None:
        damaged = current or TarSample(None)
        damaged.problem = (damage[0], f"{damage[1]}; the samples before it are kept")
        yield damaged


def _add_member(tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str, sample: TarSample) -> None:
    shown = ascii(member.name)[:80]
    if ext in IMAGE_EXTS:
        if member.size > MAX_IMAGE_BYTES:
            sample.problem = sample.problem or (
                "image_too_large",
                f"member {shown} has {member.size} bytes, over the cap of {MAX_IMAGE_BYTES}",
            )
        elif ext in sample.images:
            sample.problem = sample.problem or ("duplicate_member", f"sample has two {ext} members ({shown})")
        else:
            sample.images[ext] = MemberRef(member.offset_data, member.size)
        return
    if ext not in TEXT_EXTS:
        return  # unknown members are never read
    if member.size > MAX_TEXT_BYTES:
        sample.problem = sample.problem or (
            "member_too_large",
            f"member {shown} has {member.size} bytes, over the cap of {MAX_TEXT_BYTES}",
        )
        return
    if ext in sample.texts:
        sample.problem = sample.problem or ("duplicate_member", f"sample has two {ext} members ({shown})")
        return
    data = tar.extractfile(member)
    payload = data.read() if data is not None else b""
    if len(payload) != member.size:
        raise tarfile.ReadError(f"unexpected end of data in member {shown}")
    sample.texts[ext] = payload


def _tail_damage(f: IO[bytes], end: int, size: int, label: str) -> tuple[tuple[str, str] | None, bool]:
    """What follows the last header tarfile read: ``(damage or None, whether only after the end)``.

    tarfile stops quietly at an unreadable header, at a file that ends mid-header and at a
    file without end-of-archive blocks; all are damage here. Bytes after the end-of-archive
    blocks (a second tar appended) cannot be read either, but leave the last sample whole.
    """
    f.seek(end)
    rest = size - end
    head = f.read(min(rest, tarfile.BLOCKSIZE))
    if rest >= tarfile.BLOCKSIZE and not head.strip(b"\0"):
        while chunk := f.read(1 << 20):
            if chunk.strip(b"\0"):
                return ("corrupt_tar", f"{label}: unreadable data after the end-of-archive blocks at byte {end}"), True
        return None, False
    if rest < tarfile.BLOCKSIZE:
        return ("truncated_tar", f"{label}: the tar ends at byte {size} without its end-of-archive blocks"), False
    return ("corrupt_tar", f"{label}: unreadable tar header at byte {end}; nothing after it can be read"), False
