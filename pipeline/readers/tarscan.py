"""Walk a WebDataset tar as hostile input: group members into samples, read only small text.

Members are walked by :mod:`pipeline.tarwalk` (its naming rule and hostile-header policy).
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

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from ..tarwalk import HostileTar, Member, TarWalk, split_name
from ..verify_shard import MAX_IMAGE_BYTES, MAX_TEXT_BYTES

#: Members whose bytes are an image, in the order one is chosen when a sample has several.
IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
#: Members whose bytes are read (captions and metadata).
TEXT_EXTS: tuple[str, ...] = ("txt", "json")
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
        walk = TarWalk(f)
        for member in walk:
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
            _add_member(walk, member, ext, current)
        else:
            damage, tail_only = _tail_damage(f, walk.end, size, label)
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


def _add_member(walk: TarWalk, member: Member, ext: str, sample: TarSample) -> None:
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
    sample.texts[ext] = walk.read(member)


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
