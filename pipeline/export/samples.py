"""Read the samples of a finished build back, shard by shard, for exports and reports.

The build's own manifest names its shards; a shard is read as a stream and only regular
members are kept. A sample is the image bytes, its extension and the parsed ``KEY.json``.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import storage
from ..errors import IntegrityError, UsageError
from ..format import Manifest, require_manifest
from ..media import EXTENSIONS
from ..storage import Options

IMAGE_EXTENSIONS = frozenset(EXTENSIONS.values())


@dataclass(frozen=True)
class BuildSample:
    """One image of a build with everything its shard stores about it."""

    key: str
    shard: str
    ext: str
    image: bytes
    meta: dict[str, Any]

    @property
    def captions(self) -> list[str]:
        return list(self.meta["captions"])


def load_build(build_dir: Path | str, options: Options = None) -> Manifest:
    """The manifest of the finished build in ``build_dir`` (a folder or a URL read with the
    backend ``options``); UsageError when there is none."""
    return require_manifest(build_dir, options)


def shard_names(manifest: Manifest | dict[str, Any], split: str | None = None) -> list[str]:
    """The build's shards in name order, of one split or of all (``manifest`` as read, or as
    its parsed JSON); UsageError for an unknown split."""
    splits = (manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)).splits
    if split is not None and split not in splits:
        raise UsageError(f"the build has no split {split!r} (splits: {', '.join(sorted(splits)) or 'none'})")
    chosen = [split] if split is not None else sorted(splits)
    return sorted(s.name for name in chosen for s in splits[name].shards)


def iter_samples(build_dir: Path | str, shards: list[str], options: Options = None) -> Iterator[BuildSample]:
    """Every sample of ``shards`` in tar order (``options``: the fsspec backend's, for a URL)."""
    for name in shards:
        yield from _shard_samples(storage.join(build_dir, name), name, options)


def _shard_samples(where: str, name: str, options: Options) -> Iterator[BuildSample]:
    """A capshard tar is sorted, so a sample's members are contiguous: yield each when the key changes."""
    key: str | None = None
    parts: dict[str, bytes] = {}
    try:
        with storage.open_read(where, options) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for info in tar:
                if not info.isreg() or "." not in info.name:
                    continue
                k, ext = info.name.split(".", 1)
                if k != key:
                    if key is not None:
                        yield _sample(name, key, parts)
                    key, parts = k, {}
                f = tar.extractfile(info)
                assert f is not None  # a regular member always has a file object
                parts[ext] = f.read()
    except (OSError, tarfile.TarError) as e:
        raise IntegrityError(f"{where} cannot be read: {e}") from None
    if key is not None:
        yield _sample(name, key, parts)


def _sample(shard: str, key: str, parts: dict[str, bytes]) -> BuildSample:
    images = [ext for ext in parts if ext in IMAGE_EXTENSIONS]
    if len(images) != 1 or "json" not in parts:
        raise IntegrityError(f"{shard}: sample {key!r} is not a capshard sample (run capshard verify)")
    return BuildSample(key, shard, images[0], parts[images[0]], json.loads(parts["json"]))
