"""Reader plug-ins: one module per published format, looked up by name.

``READERS`` maps the ``--format`` value to the reader class; a reader's module is imported
the first time its class is asked for, so a build imports the reader it uses (and, for
``--format auto``, those it asks before it), not all of them: ``wds`` alone brings the tar
scanner and the shard verifier, ``hf`` the ``datasets`` glue. ``detect`` picks one for
``--format auto`` and says which; a failed lookup lists the valid names.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from ..errors import UsageError
from .base import CaptionSource, ImageUnavailable, Reader, SourceSpec
from .urlpath import UrlPath

#: ``--format`` name -> the module (in this package) and class of its reader.
_PLUGINS: dict[str, tuple[str, str]] = {
    "hf": ("hf", "HFReader"),
    "karpathy": ("karpathy", "KarpathyReader"),
    "coco": ("coco", "CocoReader"),
    "flickr": ("flickr", "FlickrReader"),
    "table": ("table", "TableReader"),
    "wds": ("wds", "WdsReader"),
}


class _Readers(Mapping[str, type[Reader]]):
    """The registry: a read-only mapping whose values are imported on first use."""

    def __getitem__(self, name: str) -> type[Reader]:
        module, cls = _PLUGINS[name]
        reader: type[Reader] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
        return reader

    def __iter__(self) -> Iterator[str]:
        return iter(_PLUGINS)

    def __len__(self) -> int:
        return len(_PLUGINS)


READERS: Mapping[str, type[Reader]] = _Readers()

#: Order in which ``auto`` asks readers; the generic table reader last (img2dataset folders
#: hold parquet sidecars beside their tars: ``wds`` is asked first).
DETECT_ORDER: tuple[str, ...] = ("hf", "karpathy", "coco", "flickr", "wds", "table")


def get_reader(name: str) -> type[Reader]:
    """The reader class registered as ``name``."""
    try:
        return READERS[name]
    except KeyError:
        raise UsageError(f"unknown format {name!r}; valid formats: {', '.join(sorted(READERS))}") from None


def detect(spec: SourceSpec) -> str:
    """The format name of ``spec`` for ``--format auto``; raises listing the formats."""
    if spec.dataset is not None:
        return "hf"
    if spec.path is None:
        raise UsageError("no source given")
    path = spec.location(spec.path)
    if not path.exists() and _wds_claims(spec.path):
        return "wds"  # a brace pattern, a "::" list or a URL of tars
    if not path.exists():
        if isinstance(path, UrlPath):
            raise UsageError(f"{spec.path} does not exist")
        if path.suffix or spec.path.startswith(("/", ".", "~")) or spec.path.count("/") > 1:
            raise UsageError(f"{spec.path} does not exist")
        # Not a local path: a hub name ("owner/name") for the hf reader, resolved offline.
        return "hf"
    for name in DETECT_ORDER:
        if READERS[name].sniff(path):
            return name
    raise UsageError(f"cannot tell the format of {path}; pass --format with one of: {', '.join(sorted(READERS))}")


def _wds_claims(source: str) -> bool:
    from .wds import WdsReader

    return WdsReader.claims(source)


def format_mismatch(spec: SourceSpec, fmt: str) -> str | None:
    """Why ``--format fmt`` may be the wrong choice for ``spec``'s file, or None when it looks right.

    Asked after reading failed: names the file, the format asked for, and what ``--format
    auto`` takes it for; None also when no format fits the file.
    """
    if spec.path is None or not spec.location(spec.path).exists() or READERS[fmt].sniff(spec.location(spec.path)):
        return None
    try:
        found = detect(spec)
    except UsageError:
        return None  # a damaged file of no format: its own error says enough
    if found == fmt:
        return None
    return f"{spec.path} does not look like a {fmt} source (it looks like a {found} source); try --format auto"


__all__ = [
    "DETECT_ORDER",
    "READERS",
    "CaptionSource",
    "ImageUnavailable",
    "Reader",
    "SourceSpec",
    "detect",
    "format_mismatch",
    "get_reader",
]
