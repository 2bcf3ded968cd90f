"""Where the loader's shards come from: a build's manifest or a list of shard URLs.

:func:`resolve_source` turns what the user passed into a :class:`ShardSet`: the shards of
one split, each with its sample count (needed to plan an epoch without reading), and,
when a manifest describes it, its size and sha256.

* A build directory (local, or a remote URL such as ``s3://bucket/build``) is read
  through its ``manifest.json``.
* Shard URLs may be local paths, ``file://`` URLs, brace patterns (``train-{000..009}.tar``),
  globs, or remote URLs (``http(s)://``, ``s3://``, ``gs://``, anything ``fsspec`` knows).
  Remote bytes are read through ``fsspec`` only: no shell, no ``curl`` command line, so
  no URL is ever interpreted by a shell. A ``manifest.json`` beside the shards, when
  present, supplies counts and checksums; otherwise each shard's samples are counted
  from its tar headers once, at construction.

:class:`ShardOpener` opens a shard for reading: a missing shard or one whose size is not
the manifest's raises :class:`~pipeline.loader.integrity.BadShardError` before anything is
read, and with ``verify="sha256"`` a shard is hashed first (and, only when that does not
match, its images one by one; see :mod:`pipeline.loader.integrity`). A process scans a shard the
first time it opens it and remembers the result for the file's size and mtime, so later
epochs do not hash again.
"""

from __future__ import annotations

import glob
import hashlib
import io
import logging
import os
import posixpath
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import braceexpand

from .. import storage
from ..errors import UsageError
from ..format import MANIFEST, Manifest, ShardEntry, is_remote, manifest_url, read_manifest
from ..tarwalk import TarWalk
from .decode import member_key
from .integrity import BadShardError, OnBadShard, ShardCheck, judge, scan

log = logging.getLogger(__name__)

VERIFY_MODES = ("sha256", "size", "none")
Verify = Literal["sha256", "size", "none"]


@dataclass(frozen=True)
class ShardInfo:
    """One shard: where it is and what the manifest says it holds (``None``: not known)."""

    url: str
    name: str
    images: int
    captions: int | None = None
    bytes: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split, in manifest (or listed) order."""

    shards: tuple[ShardInfo, ...]
    split: str | None
    root: str | None = None
    manifest: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def images(self) -> int:
        return sum(s.images for s in self.shards)

    def fingerprint(self) -> str:
        """A short hash of the shard list and counts: a resumed loader must see the same."""
        h = hashlib.sha256()
        for s in self.shards:
            h.update(f"{s.name}\0{s.images}\0{s.sha256 or ''}\n".encode())
        return h.hexdigest()[:16]


def _local(url: str) -> Path:
    """The path of a local ``url`` (a plain path or ``file://``)."""
    path = storage.local_path(url)
    assert path is not None, url
    return path


def _shard_entries(doc: Manifest, split: str, url: str) -> tuple[ShardEntry, ...]:
    if split not in doc.splits:
        names = ", ".join(sorted(doc.splits)) or "none"
        raise UsageError(f"split {split!r} is not in {url} (splits: {names})")
    return doc.splits[split].shards


def _info(url: str, entry: ShardEntry) -> ShardInfo:
    return ShardInfo(url, entry.name, entry.images, entry.captions, entry.bytes, entry.sha256)


def _join(root: str, name: str) -> str:
    return storage.join(root, name) if is_remote(root) else str(_local(root) / name)


def _looks_like_shards(text: str) -> bool:
    return text.endswith(".tar") or any(c in text for c in "{*?[")


def resolve_source(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    split: str | None,
    options: storage.Options = None,
) -> ShardSet:
    """The shards of ``split`` in ``source`` (a build directory or shard URLs); ``options``
    are the fsspec backend's (``LoaderOptions.storage_options``)."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.endswith(MANIFEST):
            return _from_build(text[: -len(MANIFEST)].rstrip("/") or ".", split, options)
        if is_remote(text) and not _looks_like_shards(text):
            return _from_build(text, split, options)
        if not is_remote(text) and _local(text).is_dir():
            return _from_build(text, split, options)
        return _from_urls([text], split, options)
    urls = [os.fspath(s) for s in source]
    if not urls:
        raise UsageError("no shards given: the source list is empty")
    return _from_urls(urls, split, options)


def _from_build(root: str, split: str | None, options: storage.Options) -> ShardSet:
    doc = read_manifest(root, options=options)
    if doc is None:
        raise UsageError(f"{root} is not a capshard build: it has no {MANIFEST} (is the build finished?)")
    if split is None:
        if len(doc.splits) != 1:
            raise UsageError(f"give a split to read from {root} (splits: {', '.join(sorted(doc.splits))})")
        split = next(iter(doc.splits))
    shards = tuple(_info(_join(root, e.name), e) for e in _shard_entries(doc, split, manifest_url(root)))
    if not shards:
        raise UsageError(f"split {split!r} of {root} has no shards")
    return ShardSet(shards, split, root, doc.to_dict())


def expand_urls(urls: Sequence[str], options: storage.Options = None) -> list[str]:
    """Brace patterns and globs expanded, in the given order (globs sorted)."""
    out: list[str] = []
    for pattern in urls:
        for url in braceexpand.braceexpand(pattern):
            if not any(c in url for c in "*?["):
                if not is_remote(url) and not _local(url).exists():
                    raise UsageError(f"no such shard or build directory: {url}")
                out.append(url)
                continue
            if is_remote(url):
                fs, pattern = storage.filesystem(url, options)
                matches = sorted(fs.unstrip_protocol(p) for p in fs.glob(pattern))
            else:
                matches = sorted(glob.glob(str(_local(url))))
            if not matches:
                raise UsageError(f"no shard matches {url}")
            out.extend(matches)
    return out


def _from_urls(patterns: Sequence[str], split: str | None, options: storage.Options) -> ShardSet:
    urls = expand_urls(patterns, options)
    if split is not None:
        urls = [u for u in urls if posixpath.basename(u).startswith(f"{split}-")]
        if not urls:
            raise UsageError(f"none of the given shards belongs to split {split!r} (names {split}-NNNNNN.tar)")
    known: dict[str, ShardEntry] = {}
    parents = (storage.parent(u) if is_remote(u) else str(_local(u).parent) for u in urls)
    for parent in dict.fromkeys(parents):
        doc = read_manifest(parent, options=options)
        for e in doc.shards if doc is not None else ():
            known[_join(parent, e.name)] = e
    shards = []
    for u in urls:
        entry = known.get(u if is_remote(u) else str(_local(u)))
        if entry is not None:
            shards.append(_info(u, entry))
        else:
            log.info("%s: no manifest describes it; counting its samples from the tar headers", u)
            shards.append(ShardInfo(u, posixpath.basename(u), count_samples(u, options)))
    return ShardSet(tuple(shards), split, None, None)


def count_samples(url: str, options: storage.Options = None) -> int:
    """Samples in a shard, from its member names only (member data is skipped, not read)."""
    keys = 0
    last = None
    with open_url(url, options) as f:
        try:
            for member in TarWalk(f):
                parsed = member_key(member.name) if member.isreg() else None
                if parsed is not None and parsed[0] != last:
                    keys, last = keys + 1, parsed[0]
        except (tarfile.TarError, EOFError, OSError) as e:
            log.warning("%s: unreadable after %d samples (%s); counting those", url, keys, e)
    return keys


def open_url(url: str, options: storage.Options = None) -> IO[bytes]:
    """A seekable binary file for a local path or remote URL (through :mod:`pipeline.storage`)."""
    return storage.open_read(url, options)


def check_local_sizes(shards: ShardSet, on_bad_shard: OnBadShard) -> None:
    """Before any worker starts: a local shard that is missing or has the wrong size raises
    (``on_bad_shard="raise"``) or is logged (``"skip"``; its samples are counted when read)."""
    for s in shards.shards:
        if is_remote(s.url):
            continue
        path = _local(s.url)
        try:
            _check_size(s, path.stat().st_size if path.is_file() else None)
        except BadShardError as e:
            if on_bad_shard == "raise":
                raise
            log.warning("%s; its %d samples will be skipped (on_bad_shard='skip')", e, s.images)


def _check_size(shard: ShardInfo, size: int | None) -> None:
    if size is None:
        raise BadShardError(f"shard {shard.name} is missing: {shard.url}", "shard_missing")
    if size < 0:
        return  # a remote file that does not say its size
    if shard.bytes is not None and size != shard.bytes:
        raise BadShardError(
            f"shard {shard.name} has {size} bytes but the manifest says {shard.bytes}: "
            "truncated or replaced; run `capshard verify` on the build",
            "shard_size",
        )


@dataclass
class ShardOpener:
    """Opens shards for reading: missing or wrong-size shards raise :class:`BadShardError`
    at once; with ``verify="sha256"`` a shard the manifest records is scanned first (once
    per process and file version; see :mod:`pipeline.loader.integrity`)."""

    verify: Verify = "sha256"
    storage_options: dict[str, Any] | None = None
    _checks: dict[tuple[str, int, int], ShardCheck] = field(default_factory=dict, repr=False)

    def open(self, shard: ShardInfo) -> tuple[IO[bytes], frozenset[str] | None]:
        """A seekable file of ``shard`` and the keys of its samples to skip as damaged;
        ``None`` instead of the keys: not scanned, so check each sample as it is read."""
        if self.verify == "none":
            return open_url(shard.url, self.storage_options), frozenset()
        try:
            stamp: tuple[str, int, int] | None = None
            if is_remote(shard.url) and self.verify == "sha256" and shard.sha256 is not None:
                # One read serves both the scan and the tar reader.
                with open_url(shard.url, self.storage_options) as remote:
                    data = remote.read()
                f: IO[bytes] = io.BytesIO(data)
                size: int | None = len(data)
            elif is_remote(shard.url):
                f = open_url(shard.url, self.storage_options)
                size = getattr(f, "size", None)
                size = -1 if not isinstance(size, int) else size
            else:
                path = str(_local(shard.url))
                f = open(path, "rb")  # noqa: SIM115 - returned open to the caller
                st = os.fstat(f.fileno())
                stamp, size = (path, st.st_size, st.st_mtime_ns), st.st_size
        except FileNotFoundError:
            raise BadShardError(f"shard {shard.name} is missing: {shard.url}", "shard_missing") from None
        try:
            _check_size(shard, size)
            if self.verify != "sha256" or shard.sha256 is None:
                return f, None
            check = self._checks.get(stamp) if stamp is not None else None
            if check is None:
                check = scan(f, shard.sha256)
                if stamp is not None:
                    self._checks[stamp] = check
            bad = judge(shard.name, shard.url, shard.sha256, shard.images, check)
            f.seek(0)
            return f, bad
        except BaseException:
            f.close()
            raise
