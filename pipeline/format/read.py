"""The one reader of ``manifest.json``: a local path or an ``fsspec`` URL, size and nesting
capped before parsing, validated into a :class:`~.manifest.Manifest`."""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import UsageError
from .manifest import Manifest, ManifestError
from .names import MANIFEST, MAX_JSON_DEPTH, MAX_MANIFEST_BYTES

_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_BRACKETS = re.compile(rb"[\[\]{}]")


def nests_deeper(data: bytes, limit: int) -> bool:
    """Whether the JSON text ``data`` nests brackets deeper than ``limit`` (strings skipped), found
    before parsing, so that hostile input never reaches the recursive parser."""
    depth = 0
    for bracket in _BRACKETS.finditer(_JSON_STRING.sub(b'""', data)):
        depth += 1 if bracket.group() in (b"[", b"{") else -1
        if depth > limit:
            return True
    return False


def loads_capped(data: bytes, file: str, cap: int = MAX_MANIFEST_BYTES) -> Any:
    """Parse JSON that may be hostile: size and nesting are checked before parsing."""
    if len(data) > cap:
        raise ManifestError(file, f"is over the cap of {cap} bytes")
    if nests_deeper(data, MAX_JSON_DEPTH):
        raise ManifestError(file, f"nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ManifestError(file, f"cannot be read: {str(e)[:200]}") from None


def parse_manifest(data: bytes, file: str = MANIFEST, *, check_names: bool = True) -> Manifest:
    """The manifest in ``data`` (the bytes of ``file``), capped and validated."""
    return Manifest.from_dict(loads_capped(data, file), file, check_names=check_names)


def is_remote(url: str) -> bool:
    """True for ``scheme://`` URLs other than ``file://`` (a one-letter scheme is a drive).

    The format stays light (no :mod:`pipeline.storage`); for every URL the builds and loaders
    take, this agrees with ``storage.local_path(url) is None``."""
    scheme = urlparse(url).scheme
    return len(scheme) > 1 and scheme != "file"


def manifest_url(root: str | os.PathLike[str]) -> str:
    """Where the manifest of the build at ``root`` (a folder or a URL) is."""
    text = os.fspath(root)
    if is_remote(text):
        return posixpath.join(text.rstrip("/"), MANIFEST)
    return str(Path(urlparse(text).path if text.startswith("file://") else text) / MANIFEST)


def read_manifest(
    root: str | os.PathLike[str], *, check_names: bool = True, options: Mapping[str, Any] | None = None
) -> Manifest | None:
    """The manifest of the build at ``root`` (a folder, or a URL ``fsspec`` can read, with the
    backend ``options``), or None when it has none; :class:`ManifestError` when there is one
    that is not ``capshard/1``."""
    url = manifest_url(root)
    data = _read_capped(url, options=options)
    return None if data is None else parse_manifest(data, url, check_names=check_names)


def require_manifest(build_dir: str | os.PathLike[str], options: Mapping[str, Any] | None = None) -> Manifest:
    """The manifest of the finished build in ``build_dir``; :class:`UsageError` when it has none."""
    manifest = read_manifest(build_dir, options=options)
    if manifest is None:
        raise UsageError(f"{build_dir} holds no finished build (no {MANIFEST})")
    return manifest


def _read_capped(url: str, cap: int = MAX_MANIFEST_BYTES, options: Mapping[str, Any] | None = None) -> bytes | None:
    """At most ``cap + 1`` bytes of ``url`` (so an oversized file is refused, never held), or None
    when there is no such file."""
    try:
        if not is_remote(url):
            path = Path(url)
            if not path.is_file():
                return None
            if path.stat().st_size > cap:
                raise ManifestError(url, f"is over the cap of {cap} bytes")
            return path.read_bytes()
        from .. import storage  # reads URLs; a missing backend is a one-line error naming the extra

        with storage.open_read(url, options) as f:
            return bytes(f.read(cap + 1))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ManifestError(url, f"cannot be read: {e}") from None
