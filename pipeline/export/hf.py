"""``capshard export hf``: a build as a ``datasets.save_to_disk`` folder in the nlphuji/flickr30k schema.

One row per image: ``image`` (the stored bytes, with the original file name as path),
``caption`` (all its captions, in the build's order), ``sentids`` (the caption ids; the
caption's position when the source had none), ``split``, ``img_id`` (the resolved image
id) and ``filename``. Like nlphuji/flickr30k it is one ``Dataset`` whose ``split``
column says train/val/test. Rows are streamed into Arrow files in a temporary cache
beside the output, so memory does not grow with the build.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import OutputError, UsageError
from ..storage import Options, is_url
from .samples import BuildSample, iter_samples, load_build, shard_names


def hf_row(sample: BuildSample) -> dict[str, Any]:
    """The nlphuji/flickr30k row of one build sample."""
    meta = sample.meta
    file_name = (meta.get("source") or {}).get("file_name") or f"{sample.key}.{sample.ext}"
    ids = meta.get("caption_ids") or []
    sentids = [str(c) if c is not None else str(i) for i, c in enumerate(ids)] or [
        str(i) for i in range(len(meta["captions"]))
    ]
    return {
        "image": {"bytes": sample.image, "path": file_name},
        "caption": list(meta["captions"]),
        "sentids": sentids,
        "split": meta["split"],
        "img_id": str(meta["image_id"]),
        "filename": file_name,
    }


def _rows(build_dir: str, shards: list[str], options: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    for sample in iter_samples(build_dir if is_url(build_dir) else Path(build_dir), shards, options):
        yield hf_row(sample)


def _gen_kwargs(build_dir: Path | str, shards: list[str], options: Options) -> dict[str, Any]:
    """The generator's arguments (also its cache fingerprint): a local build's as always, a URL's with its options."""
    if isinstance(build_dir, Path):
        return {"build_dir": str(build_dir.resolve()), "shards": shards}
    return {"build_dir": build_dir, "shards": shards, "options": dict(options or {})}


def export_hf(
    build_dir: Path | str,
    out: Path,
    *,
    split: str | None = None,
    overwrite: bool = False,
    storage_options: Options = None,
) -> dict[str, Any]:
    """Save the build (or one split of it; a folder, or a URL read with the backend
    ``storage_options``) to ``out`` with ``Dataset.save_to_disk``."""
    import datasets

    from ..sample import FEATURES

    build_dir = build_dir if is_url(build_dir) else Path(build_dir)
    manifest = load_build(build_dir, storage_options)
    shards = shard_names(manifest, split)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".capshard-hf-", dir=out.parent) as cache:
            ds = datasets.Dataset.from_generator(
                _rows,
                features=FEATURES,
                gen_kwargs=_gen_kwargs(build_dir, shards, storage_options),
                cache_dir=cache,
                split=datasets.Split.TEST,
            )
            staged = Path(cache) / "saved"
            ds.save_to_disk(str(staged))
            del ds
            if out.exists():
                shutil.rmtree(out)
            os.replace(staged, out)
    except OSError as e:
        raise OutputError(f"cannot write the export to {out}: {e.strerror or e}") from None
    chosen = [manifest.splits[split]] if split else list(manifest.splits.values())
    images, captions = sum(s.images for s in chosen), sum(s.captions for s in chosen)
    return {"target": "hf", "out": str(out), "split": split, "rows": images, "images": images, "captions": captions}
