"""Source files named by fsspec URLs (``s3://``, ``gs://``), seen through the few ``Path`` methods readers use.

Readers were written against :class:`pathlib.Path`. :func:`source_path` gives a plain
``Path`` for a local path (so local builds read exactly as before) and a :class:`UrlPath`
for any other URL: the same ``name``/``suffix``/``parent``/``/``, ``is_file``/``is_dir``,
``open``/``read_bytes`` and ``rglob``, each going through :mod:`pipeline.storage` with the
user's ``--storage-options``. It is picklable (workers receive readers that hold one).
"""

from __future__ import annotations

import fnmatch
import io
import posixpath
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any


def _storage() -> Any:
    # Imported on use: pipeline.storage imports the write stage, which imports the readers.
    from .. import storage

    return storage


class UrlPath:
    """An object or prefix in a store, addressed by its URL (no trailing slash)."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.url = url.rstrip("/") if not url.endswith("://") else url
        self.options = dict(options or {})

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"UrlPath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UrlPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: UrlPath) -> bool:
        return self.url < other.url

    def __truediv__(self, part: str) -> UrlPath:
        return UrlPath(_storage().join(self.url, part), self.options)

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.partition("://")[2])

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> UrlPath:
        return UrlPath(_storage().parent(self.url), self.options)

    def absolute(self) -> UrlPath:
        return self

    def as_posix(self) -> str:
        return self.url

    def _fs(self) -> tuple[Any, str]:
        return _storage().filesystem(self.url, self.options)

    def exists(self) -> bool:
        fs, key = self._fs()
        return bool(fs.exists(key))

    def is_file(self) -> bool:
        fs, key = self._fs()
        return bool(fs.isfile(key))

    def is_dir(self) -> bool:
        fs, key = self._fs()
        return bool(fs.isdir(key))

    def read_bytes(self) -> bytes:
        return _storage().read_bytes(self.url, self.options)

    def open(
        self, mode: str = "r", encoding: str | None = None, errors: str | None = None, newline: str | None = None
    ) -> IO[Any]:
        """The object opened for reading, as ``open`` would: bytes for ``"rb"``, text otherwise."""
        if mode not in ("r", "rb"):
            raise ValueError(f"{self.url}: sources are opened for reading only, not {mode!r}")
        raw = _storage().open_read(self.url, self.options)
        if mode == "rb":
            return raw
        return io.TextIOWrapper(raw, encoding=encoding or "utf-8", errors=errors, newline=newline)

    def rglob(self, pattern: str) -> Iterator[UrlPath]:
        """Objects below this prefix whose name matches ``pattern``, sorted by key."""
        for key in _storage().list_prefix(self.url, self.options):
            if fnmatch.fnmatch(posixpath.basename(key), pattern):
                yield self / key

    def glob(self, pattern: str) -> Iterator[UrlPath]:
        """Objects directly below this prefix whose name matches ``pattern``."""
        for key in _storage().list_prefix(self.url, self.options):
            if "/" not in key and fnmatch.fnmatch(key, pattern):
                yield self / key

    def relative_to(self, other: UrlPath) -> Path:
        """The key below ``other`` as a relative path (``as_posix`` gives it back)."""
        prefix = other.url.rstrip("/") + "/"
        if not self.url.startswith(prefix):
            raise ValueError(f"{self.url} is not below {other.url}")
        return Path(self.url[len(prefix) :])


SourcePath = Path | UrlPath


def source_path(location: str | Path, options: Mapping[str, Any] | None = None) -> SourcePath:
    """A ``Path`` for a local path or ``file://`` URL, a :class:`UrlPath` for any other URL."""
    local = _storage().local_path(location)
    if local is not None:
        return local
    return UrlPath(str(location), options)
