"""Stage *finalize*: the index, the rejects report and, last, the manifest.

Runs once every planned shard exists and matches its ``done`` record. The manifest is
the commit marker of a build: a folder without one holds no finished build.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import FORMAT_VERSION, __version__
from .errors import IntegrityError
from .write import ShardResult, write_bytes_atomic, write_json_atomic

MANIFEST = "manifest.json"
INDEX = "index.parquet"
REJECTS = "rejects.jsonl"
#: ``{"shard.tar": images}``: how open_clip's trainer counts webdataset samples.
SIZES = "sizes.json"

#: Top-level keys every manifest has (DESIGN.md).
MANIFEST_KEYS = (
    "format",
    "name",
    "version",
    "source",
    "options",
    "counts",
    "splits",
    "groups",
    "resolution",
    "rejects",
)

INDEX_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("group", pa.int64()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("position", pa.int64()),
        ("key", pa.string()),
        ("captions", pa.int64()),
        ("sha256", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
    ]
)


def write_rejects(out: Path, rejects: pa.Table) -> None:
    """``rejects.jsonl``: one line per input row not in a shard, in row order."""
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rejects.to_pylist()]
    write_bytes_atomic(out / REJECTS, "".join(lines).encode("utf-8"))


def write_sizes(out: Path, results: dict[str, ShardResult]) -> None:
    """``sizes.json``: shard name -> number of samples, open_clip's ``get_dataset_size`` format."""
    write_json_atomic(out / SIZES, {name: results[name].images for name in sorted(results)})


def write_index(out: Path, planned: pa.Table, results: dict[str, ShardResult]) -> None:
    """``index.parquet``: one row per image, with what was stored (sha256 and size after re-encoding)."""
    stored = {s.key: s for r in results.values() for s in r.samples}
    keys = planned["key"].to_pylist()
    table = pa.table(
        {
            "image_id": planned["image_id"],
            "group": planned["group"],
            "split": planned["split"],
            "shard": planned["shard"],
            "position": planned["position"],
            "key": planned["key"],
            "captions": pc.list_value_length(planned["captions"]).cast(pa.int64()),
            "sha256": pa.array([stored[k].sha256 for k in keys], pa.string()),
            "width": pa.array([stored[k].width for k in keys], pa.int64()),
            "height": pa.array([stored[k].height for k in keys], pa.int64()),
        },
        schema=INDEX_SCHEMA,
    )
    if "phash" in planned.column_names:  # build --phash / --exclude-near: pipeline.phash, stored signed
        table = table.append_column(pa.field("phash", pa.int64()), planned["phash"])
    if "caption_sources" in planned.column_names:  # build --captions: the origin of each caption
        table = table.append_column(pa.field("caption_sources", pa.list_(pa.string())), planned["caption_sources"])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(out / INDEX, sink.getvalue().to_pybytes())


def manifest_dict(
    *,
    identity: dict[str, Any],
    name: str,
    version: str,
    source_path: str | None,
    planned: pa.Table,
    results: dict[str, ShardResult],
    rejects: pa.Table,
    report: dict[str, Any],
    n_rows: int,
) -> dict[str, Any]:
    """The manifest's content, in the shape DESIGN.md gives."""
    splits: dict[str, Any] = {}
    for name_ in sorted(results):
        r = results[name_]
        split = name_.rsplit("-", 1)[0]
        entry = splits.setdefault(split, {"images": 0, "captions": 0, "shards": []})
        entry["images"] += r.images
        entry["captions"] += r.captions
        entry["shards"].append(
            {"name": r.name, "images": r.images, "captions": r.captions, "bytes": r.bytes, "sha256": r.sha256}
        )
    per_image = Counter(pc.list_value_length(planned["captions"]).to_pylist())
    by_reason = Counter(rejects["reason"].to_pylist())
    return {
        "format": FORMAT_VERSION,
        "name": name,
        "version": version,
        "tool": f"capshard {__version__}",
        "source": {
            "path": source_path,
            "format": identity["format"],
            "fingerprint": identity["fingerprint"],
            "reading": identity["reading"],
            "inputs": identity["inputs"],
        },
        "options": identity["options"],
        "counts": {
            "rows": n_rows,
            "images": planned.num_rows,
            "captions": sum(r.captions for r in results.values()),
            "rejected_rows": rejects.num_rows,
        },
        "splits": splits,
        "groups": {"captions_per_image": {str(k): per_image[k] for k in sorted(per_image)}},
        "resolution": report,
        "rejects": {"rows": rejects.num_rows, "by_reason": dict(sorted(by_reason.items()))},
    }


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically: the last file of a build."""
    write_json_atomic(out / MANIFEST, manifest)


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of the build in ``out``, or None when there is none."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise IntegrityError(f"{path} cannot be read: {e}") from None
    missing = [k for k in MANIFEST_KEYS if not isinstance(data, dict) or k not in data]
    if missing or data.get("format") != FORMAT_VERSION:
        raise IntegrityError(
            f"{path} is not a {FORMAT_VERSION} manifest"
            + (f" (missing {', '.join(missing)})" if missing else f" (format {data.get('format')!r})")
        )
    return dict(data)
