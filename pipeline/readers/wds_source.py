"""Which tars a ``wds`` source names, and how to open them (local paths or fsspec URLs).

A source is a folder (its ``*.tar`` files, recursively, sorted), one tar, a brace pattern
(``data/{00000..00009}.tar``, expanded as webdataset does), or several of these joined
by ``::`` (webdataset's list separator). Sidecar files beside the tars (img2dataset's
``.parquet`` and ``_stats.json``) are not listed.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import IO, Any

import braceexpand

from ..errors import UsageError

Options = Mapping[str, Any] | None


def is_url(path: str) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://…``, ``file://…``) rather than a local path."""
    return "://" in path


def looks_like_wds(path: str) -> bool:
    """Whether a source string that names no existing file is a tar pattern, list or URL."""
    if "::" in path:
        return True
    if "{" in path and ".." in path and "}" in path:
        return True
    return is_url(path) and ".tar" in path


def list_tars(source: str, options: Options = None) -> list[str]:
    """The tars of ``source`` in reading order; raises ``UsageError`` naming what is missing.

    ``options``: the ``--storage-options`` of URLs (every function here takes them)."""
    tars: list[str] = []
    for part in source.split("::"):
        if not part:
            continue
        for item in braceexpand.braceexpand(part):
            tars.extend(_expand_one(item, options))
    if not tars:
        raise UsageError(f"{source}: no .tar files found")
    return tars


def _expand_one(item: str, options: Options) -> list[str]:
    if is_url(item):
        fs, path = _fs(item, options)
        if fs.isdir(path):
            found = sorted(p for p in fs.find(path) if p.endswith(".tar"))
            if not found:
                raise UsageError(f"{item}: no .tar files in this folder")
            return [fs.unstrip_protocol(p) for p in found]
        if not fs.isfile(path):
            raise UsageError(f"{item}: no such tar")
        return [item]
    if os.path.isdir(item):
        found = sorted(os.path.join(d, f) for d, _, files in os.walk(item) for f in files if f.endswith(".tar"))
        if not found:
            raise UsageError(f"{item}: no .tar files in this folder")
        return [os.path.abspath(p) for p in found]
    if not os.path.isfile(item):
        raise UsageError(f"{item}: no such tar")
    return [os.path.abspath(item)]


def _fs(url: str, options: Options = None):  # type: ignore[no-untyped-def]
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **dict(options or {}))
    except (ImportError, ValueError) as e:
        raise UsageError(f"{url}: cannot open this URL: {e}") from None


def open_tar(url: str, options: Options = None) -> IO[bytes]:
    """A seekable binary file object for a tar listed by :func:`list_tars`."""
    if not is_url(url):
        return open(url, "rb")
    fs, path = _fs(url, options)
    f: IO[bytes] = fs.open(path, "rb")
    return f


def tar_size(url: str, options: Options = None) -> int:
    """The size of a tar in bytes, from the file system (no data read)."""
    if not is_url(url):
        return os.path.getsize(url)
    fs, path = _fs(url, options)
    return int(fs.size(path))


def labels(tars: list[str]) -> list[str]:
    """Short names for messages: each tar's path relative to the folder all of them share."""
    paths = [t.split("://", 1)[-1] for t in tars]
    dirs = {posixpath.dirname(p) for p in paths}
    common = posixpath.commonpath(sorted(dirs)) if len(dirs) > 1 else next(iter(dirs), "")
    return [posixpath.relpath(p, common) if common else p for p in paths]
