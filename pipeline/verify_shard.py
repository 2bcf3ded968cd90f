"""One shard of a build, checked as hostile input: the worker side of ``capshard verify``.

The shard is read once, as a stream: its sha256 is computed while :mod:`pipeline.tarwalk`
walks its members (with its plain-USTAR policy). Nothing is ever extracted or written; only regular file members named
``KEY.EXT`` are read, each after a size check; extended (pax/GNU) headers, links, devices
and names such as ``../x`` or ``/etc/x`` are reported, never followed; JSON members are
refused above a size and nesting cap before parsing; every sample is re-read (members
complete, JSON valid, image header readable).
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass, field
from typing import IO, Any

from . import storage
from .format import MAX_JSON_DEPTH
from .format.read import nests_deeper
from .media import EXTENSIONS, BadImage, probe
from .resolve import sanitize_key
from .tarwalk import Member, TarPolicy, TarWalk, split_name

#: Largest image member read (bytes); larger ones are reported unread.
MAX_IMAGE_BYTES = 256 << 20
#: Largest ``.json``/``.txt`` member, manifest or rejects line read (bytes).
MAX_TEXT_BYTES = 16 << 20

_KEY = re.compile(r"[A-Za-z0-9_-]{1,200}")
_EXTS = ("jpg", "png", "webp", "json", "txt")
_IMAGE_EXTS = {ext: fmt for fmt, ext in EXTENSIONS.items()}
#: capshard writes plain USTAR: an extended header is refused before its data is read.
_POLICY = TarPolicy(plain_ustar=True)


@dataclass(frozen=True)
class Problem:
    """One thing wrong: ``where`` is a shard name or a build file; ``kind`` a short code."""

    where: str
    kind: str
    detail: str

    def line(self) -> str:
        return f"{self.where}: {self.kind}: {self.detail}"


@dataclass(frozen=True)
class SampleInfo:
    """What a shard's sample says about itself, for the build-wide checks."""

    key: str
    position: int
    captions: int
    sha256: str | None
    width: int | None
    height: int | None
    row_ids: tuple[int, ...]


@dataclass(frozen=True)
class ShardReport:
    """One shard: ``status`` is ``ok``, ``damaged``, ``missing`` or ``extra``."""

    name: str
    status: str
    images: int = 0
    captions: int = 0
    bytes: int = 0
    sha256: str | None = None
    problems: tuple[Problem, ...] = ()
    samples: tuple[SampleInfo, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class ShardCheck:
    """One shard to check, with the image options of its build (picklable, for workers)."""

    path: str
    name: str
    formats: tuple[str, ...]
    max_pixels: int
    decode: bool
    storage_options: dict[str, Any] | None = None  # the fsspec backend's, for a shard at a URL


def check_shard(_context: None, task: ShardCheck) -> ShardReport:
    """Read one shard as a stream and check every member and sample (runs in a worker)."""
    problems: list[Problem] = []
    samples: list[SampleInfo] = []
    end = 0
    with storage.open_read(task.path, task.storage_options) as raw:
        stream = _HashingReader(raw)
        try:
            walk = TarWalk(stream, _POLICY)
            _walk(task, walk, samples, problems)
            end = walk.end
        except (tarfile.TarError, EOFError, OSError) as e:
            problems.append(Problem(task.name, "damaged", f"not a readable tar: {e}"))
        stream.drain()
        if end and not _zeros_from(raw, end):
            # A walk (like tarfile) ends an archive quietly at a header it cannot read.
            problems.append(
                Problem(task.name, "damaged", f"unreadable tar header at byte {end}; tar readers see nothing after it")
            )
    captions = sum(s.captions for s in samples)
    return ShardReport(
        task.name,
        "damaged" if problems else "ok",
        len(samples),
        captions,
        stream.size,
        stream.hash.hexdigest(),
        tuple(problems),
        tuple(samples),
    )


def _walk(task: ShardCheck, walk: TarWalk, samples: list[SampleInfo], problems: list[Problem]) -> None:
    """Group consecutive members by key into samples and check each sample."""
    members: dict[str, bytes] = {}
    key: str | None = None
    seen: set[str] = set()
    for member in walk:
        found = _read_member(walk, member, task.name, problems)
        if found is None:
            continue
        (member_key, ext), payload = found
        if member_key != key:
            if key is not None:
                samples.append(_check_sample(task, key, len(samples), members, problems))
            key, members = member_key, {}
            if key in seen:
                problems.append(Problem(task.name, "damaged", f"sample {key}: its members are not together"))
            seen.add(key)
        if ext in members:
            problems.append(Problem(task.name, "damaged", f"sample {key}: two {ext} members"))
        members[ext] = payload
    if key is not None:
        samples.append(_check_sample(task, key, len(samples), members, problems))


def _zeros_from(raw: IO[bytes], offset: int) -> bool:
    """Whether the file holds only zero bytes from ``offset`` on (end-of-archive padding)."""
    raw.seek(offset)
    while chunk := raw.read(1 << 20):
        if chunk.strip(b"\0"):
            return False
    return True


class _HashingReader:
    """A read-only file object that hashes and counts what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) what the walk left unread: end-of-archive padding, or what follows an error."""
        while self.read(1 << 20):
            pass


def _capshard_name(name: str) -> tuple[str, str] | None:
    """``(key, ext)`` of a name capshard writes (``KEY.jpg|png|webp|json|txt``, the key
    ``sanitize_key``'s alphabet: no path, no dot), split by the walker's naming rule."""
    parsed = split_name(name)
    if parsed is None or not _KEY.fullmatch(parsed[0]) or parsed[1] not in _EXTS:
        return None
    return parsed if name == f"{parsed[0]}.{parsed[1]}" else None  # extensions are lower case


def _read_member(
    walk: TarWalk, member: Member, shard: str, problems: list[Problem]
) -> tuple[tuple[str, str], bytes] | None:
    """``((key, ext), bytes)`` of a member that is safe to read, else ``None`` and a problem."""
    shown = ascii(member.name)[:120]
    parsed = _capshard_name(member.name)
    if not member.isreg():
        kind = member.kind()
        problems.append(Problem(shard, "damaged", f"member {shown} is a {kind}, not a regular file; not read"))
        return None
    if parsed is None:
        problems.append(Problem(shard, "damaged", f"member name {shown} is not KEY.jpg|png|webp|json|txt; not read"))
        return None
    cap = MAX_IMAGE_BYTES if parsed[1] in _IMAGE_EXTS else MAX_TEXT_BYTES
    if member.size > cap:
        problems.append(
            Problem(shard, "damaged", f"member {shown} declares {member.size} bytes, over the cap of {cap}; not read")
        )
        return None
    return parsed, walk.read(member)


def _check_sample(
    task: ShardCheck, key: str, position: int, members: dict[str, bytes], problems: list[Problem]
) -> SampleInfo:
    """Check one sample's members against each other; returns what it says about itself."""
    found = len(problems)

    def bad(detail: str) -> None:
        problems.append(Problem(task.name, "damaged", f"sample {key}: {detail}"))

    images = [ext for ext in members if ext in _IMAGE_EXTS]
    missing = [ext for ext in ("json", "txt") if ext not in members] + ([] if images else ["image"])
    if missing or len(images) > 1:
        bad(f"members {sorted(members)}; expected one image, json and txt")
    meta: dict[str, Any] = {}
    if "json" in members:
        try:
            meta = load_json_capped(members["json"], "json member")
            _check_meta(meta)
        except ValueError as e:
            bad(str(e))
            meta = {}
    captions = meta.get("captions") or []
    if meta and sanitize_key(meta["image_id"]) != key:
        bad(f"key does not belong to image_id {ascii(meta['image_id'])[:80]}")
    if "txt" in members and meta:
        try:
            lines = members["txt"].decode("utf-8").splitlines()
        except UnicodeDecodeError:
            lines = None
        if lines != [" ".join(c.splitlines()) for c in captions]:
            bad(f"txt does not hold the {len(captions)} captions of the json")
    sha = None
    if images:
        data = members[images[0]]
        sha = hashlib.sha256(data).hexdigest()
        if meta and meta["sha256"] != sha:
            bad(f"{images[0]} bytes do not match the sha256 in its json")
        try:
            info = probe(data, formats=task.formats, max_pixels=task.max_pixels, decode=task.decode)
            if EXTENSIONS.get(info.format) != images[0]:
                bad(f"{images[0]} member holds a {info.format} image")
            elif meta and (info.width, info.height) != (meta["width"], meta["height"]):
                bad(f"image is {info.width}x{info.height}, its json says {meta['width']}x{meta['height']}")
        except BadImage as e:
            bad(f"{images[0]} is not a readable image ({e.reason}: {e})")
    row_ids = tuple(meta["source"]["row_ids"]) if meta else ()
    if len(problems) > found:
        sha = None
    return SampleInfo(key, position, len(captions), sha, meta.get("width"), meta.get("height"), row_ids)


def _check_meta(meta: Any) -> None:
    """The shape of a sample's JSON (DESIGN.md); ValueError naming the first field that is off."""
    if not isinstance(meta, dict):
        raise ValueError("json is not an object")
    types: dict[str, type | tuple[type, ...]] = {
        "image_id": str,
        "group": int,
        "split": str,
        "captions": list,
        "caption_ids": list,
        "width": int,
        "height": int,
        "sha256": str,
        "source": dict,
    }
    for name, kind in types.items():
        if not isinstance(meta.get(name), kind) or isinstance(meta.get(name), bool):
            raise ValueError(f"json field {name!r} is missing or not a {getattr(kind, '__name__', kind)}")
    if not meta["captions"] or not all(isinstance(c, str) for c in meta["captions"]):
        raise ValueError("json captions are not a non-empty list of text")
    row_ids = meta["source"].get("row_ids")
    if (
        not isinstance(row_ids, list)
        or len(row_ids) != len(meta["captions"])
        or not all(isinstance(r, int) and not isinstance(r, bool) for r in row_ids)
    ):
        raise ValueError("json source.row_ids is not one row id per caption")


def load_json_capped(data: bytes, what: str, cap: int = MAX_TEXT_BYTES) -> Any:
    """Parse JSON that may be hostile: size and nesting are checked before parsing."""
    if len(data) > cap:
        raise ValueError(f"{what} has {len(data)} bytes, over the cap of {cap}")
    if nests_deeper(data, MAX_JSON_DEPTH):
        raise ValueError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{what} is not valid JSON: {str(e)[:120]}") from None
