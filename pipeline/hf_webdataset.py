"""Load a build with Hugging Face ``datasets``' own ``webdataset`` loader, one ``image`` column.

``load_dataset("webdataset", data_files=…)`` names columns after member extensions and
infers them from the first five samples of the first shard. A build that mixes ``jpg``
and ``png`` samples then either fails (a mix within those five) or, worse, silently
loses every image whose extension was not among them (its column is not in the
features, so the value is dropped). :func:`load_build` passes the features explicitly
(one column per image extension capshard stores) and folds them into one ``image``
column without re-encoding: the bytes are the shard's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .export.samples import IMAGE_EXTENSIONS, iter_samples, shard_names
from .export.samples import load_build as load_manifest


def build_features(build_dir: Path, shards: list[str]) -> Any:
    """The features of the build's samples as the webdataset loader sees them, every image extension included."""
    import datasets
    import pyarrow as pa

    first = next(iter_samples(build_dir, shards[:1]))
    meta = datasets.Features.from_arrow_schema(pa.Table.from_pylist([first.meta]).schema)
    image_columns = {ext: datasets.Image(decode=False) for ext in sorted(IMAGE_EXTENSIONS)}
    return datasets.Features(
        {
            **image_columns,
            "json": dict(meta),
            "txt": datasets.Value("string"),
            "__key__": datasets.Value("string"),
            "__url__": datasets.Value("string"),
        }
    )


def _fold(row: dict[str, Any]) -> dict[str, Any]:
    image = next(row[ext] for ext in sorted(IMAGE_EXTENSIONS) if row[ext] is not None)
    return {"image": image}


def load_build(build_dir: str | Path, split: str | None = None, **load_kwargs: Any) -> Any:
    """The build's samples (one split, or all) as a ``datasets.Dataset`` with columns
    ``image`` (decoded lazily, bytes as stored), ``json``, ``txt``, ``__key__``, ``__url__``."""
    import datasets

    build_dir = Path(build_dir)
    shards = shard_names(load_manifest(build_dir), split)
    features = build_features(build_dir, shards)
    ds = datasets.load_dataset(
        "webdataset",
        data_files={"train": [str(build_dir / s) for s in shards]},
        split="train",
        features=features,
        **load_kwargs,
    )
    image_columns = sorted(IMAGE_EXTENSIONS)
    folded = ds.map(
        _fold,
        remove_columns=image_columns,
        features=datasets.Features({"image": datasets.Image(decode=False), **{
            k: v for k, v in features.items() if k not in image_columns
        }}),
    )
    return folded.cast_column("image", datasets.Image())
