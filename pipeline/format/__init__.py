"""The ``capshard/1`` contract in one place: file names, the manifest's typed shape, its one reader.

* :mod:`.names`: the names of a build folder's files and the shard name rule.
* :mod:`.manifest`: :class:`Manifest` and its parts, frozen dataclasses;
  :meth:`Manifest.to_dict` is what a build writes, :meth:`Manifest.from_dict` validates.
* :mod:`.read`: the only place that parses ``manifest.json`` (a local path or an ``fsspec``
  URL), with a size and a nesting cap before any parsing, since a manifest may come from
  anywhere (a URL, a copied folder).

Every way a manifest can be wrong is one :class:`ManifestError`, one line that names the
file. The package is light on purpose (the loader imports it): the standard library only,
and ``fsspec`` imported when a URL is read.
"""

from __future__ import annotations

from .. import FORMAT_VERSION
from .manifest import (
    BuildIdentity,
    Counts,
    Manifest,
    ManifestError,
    Rejects,
    ResolutionReport,
    ShardEntry,
    SplitEntry,
)
from .names import (
    AHEAD,
    DONE,
    HASH_PARTS,
    INDEX,
    INPUTS,
    LEDGER,
    LOCK,
    MANIFEST,
    MANIFEST_KEYS,
    MAX_JSON_DEPTH,
    MAX_MANIFEST_BYTES,
    PHASH,
    REJECTS,
    SHARD_NAME,
    SIZES,
    STATE,
    STATE_FILE,
)
from .read import is_remote, loads_capped, manifest_url, parse_manifest, read_manifest, require_manifest

__all__ = [
    "AHEAD",
    "DONE",
    "FORMAT_VERSION",
    "HASH_PARTS",
    "INDEX",
    "INPUTS",
    "LEDGER",
    "LOCK",
    "MANIFEST",
    "MANIFEST_KEYS",
    "MAX_JSON_DEPTH",
    "MAX_MANIFEST_BYTES",
    "PHASH",
    "REJECTS",
    "SHARD_NAME",
    "SIZES",
    "STATE",
    "STATE_FILE",
    "BuildIdentity",
    "Counts",
    "Manifest",
    "ManifestError",
    "Rejects",
    "ResolutionReport",
    "ShardEntry",
    "SplitEntry",
    "is_remote",
    "loads_capped",
    "manifest_url",
    "parse_manifest",
    "read_manifest",
    "require_manifest",
]
