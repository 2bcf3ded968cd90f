"""``capshard export clip-benchmark``: a split of a build in CLIP_benchmark's retrieval layout.

CLIP_benchmark's ``build_wds_dataset`` reads ``ROOT/dataset_type.txt`` (``retrieval``),
``ROOT/SPLIT/nshards.txt`` and ``ROOT/SPLIT/0.tar … N-1.tar``, and takes from every sample
its image (``webp``/``png``/``jpg``) and its ``txt`` split into lines, one caption per line.
capshard's samples already are that, so the export is the split's shards under those
names: hard links where the filesystem allows, byte copies otherwise. The split folder is
assembled under a temporary name and renamed into place, so it appears whole.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .. import storage
from ..errors import OutputError, UsageError
from ..storage import Options
from ..write import TMP_MARK, write_bytes_atomic
from .samples import load_build, shard_names

DATASET_TYPE = "retrieval"


def export_clip_benchmark(
    build_dir: Path | str, out: Path, *, split: str = "test", overwrite: bool = False, storage_options: Options = None
) -> dict[str, Any]:
    """Write ``out/dataset_type.txt`` and ``out/SPLIT/{nshards.txt,0.tar…}`` from ``build_dir``'s split
    (a folder, hard-linked where it can be; or a URL, downloaded with the backend ``storage_options``)."""
    build_dir = build_dir if storage.is_url(build_dir) else Path(build_dir)
    manifest = load_build(build_dir, storage_options)
    shards = shard_names(manifest, split)
    target = out / split
    if target.exists() and not overwrite:
        raise UsageError(f"{target} exists (pass --overwrite to replace it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{split}{TMP_MARK}{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        linked = 0
        for i, name in enumerate(shards):
            linked += _link_or_copy(build_dir, name, tmp / f"{i}.tar", storage_options)
        (tmp / "nshards.txt").write_text(f"{len(shards)}\n")
        provenance = {
            "build": build_dir if isinstance(build_dir, str) else str(build_dir.resolve()),
            "name": manifest.name,
            "version": manifest.version,
            "split": split,
            "shards": {f"{i}.tar": name for i, name in enumerate(shards)},
        }
        (tmp / "capshard.json").write_text(json.dumps(provenance, indent=1, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        write_bytes_atomic(out / "dataset_type.txt", f"{DATASET_TYPE}\n".encode())
    except OSError as e:
        raise OutputError(f"cannot write the export to {out}: {e.strerror or e}") from None
    split_info = manifest.splits[split]
    return {
        "target": "clip-benchmark",
        "out": str(out),
        "split": split,
        "shards": len(shards),
        "images": split_info.images,
        "captions": split_info.captions,
        "hard_links": linked,
        "copies": len(shards) - linked,
    }


def _link_or_copy(build_dir: Path | str, name: str, dst: Path, options: Options) -> int:
    """Hard-link shard ``name`` to ``dst`` (1), or copy its bytes when the filesystem refuses
    or the build is at a URL (0)."""
    if isinstance(build_dir, str):
        with storage.open_read(storage.join(build_dir, name), options) as f, open(dst, "wb") as w:
            shutil.copyfileobj(f, w, 1 << 20)
        return 0
    src = build_dir / name
    try:
        os.link(src, dst)
        return 1
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    shutil.copyfile(src, dst)
    return 0
