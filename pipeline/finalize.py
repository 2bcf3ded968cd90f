"""Stage *finalize*: the index, the rejects report and, last, the manifest.

Runs once every planned shard exists and matches its ``done`` record. The manifest is
the commit marker of a build: a folder without one holds no finished build.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__, storage
from .errors import OutputError
from .format import (
    INDEX,
    INPUTS,
    MANIFEST,
    REJECTS,
    SIZES,
    BuildIdentity,
    Counts,
    Manifest,
    Rejects,
    ResolutionReport,
    ShardEntry,
    SplitEntry,
)
from .storage import Location, Options
from .write import ShardResult, json_bytes

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


def write_rejects(out: Location, rejects: pa.Table, options: Options = None) -> None:
    """``rejects.jsonl``: one line per input row not in a shard, in row order."""
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rejects.to_pylist()]
    storage.put_whole(storage.join(out, REJECTS), "".join(lines).encode("utf-8"), options)


def write_sizes(out: Location, results: dict[str, ShardResult], options: Options = None) -> None:
    """``sizes.json``: shard name -> number of samples, open_clip's ``get_dataset_size`` format."""
    _put_json(storage.join(out, SIZES), {name: results[name].images for name in sorted(results)}, options)


def write_listing_to(out: Location, listing: pa.Table, options: Options = None) -> None:
    """``inputs.parquet``: the build's inputs listing (:mod:`pipeline.inputs`), beside the manifest."""
    _put_parquet(storage.join(out, INPUTS), listing, options)


def check_shards(
    out: Location,
    planned: list[str],
    results: dict[str, ShardResult],
    options: Options = None,
    hint: str = "Re-run to write them again",
    hashed: Mapping[str, ShardResult] | None = None,
) -> None:
    """Before the manifest: every planned shard is in ``out`` with the size and sha256 of its
    ``done`` record, else one :class:`OutputError` naming the missing or different shards (a
    shard written to a node-local disk of another machine is missing here).

    ``hashed``: what this process learnt of shards whose bytes it hashed in this run (the
    writers hash what they write; a reused shard was hashed against its record): such a
    shard is not read again when its record says the same sha256; its size is still checked."""
    bad: list[str] = []
    hashed = hashed or {}
    for name in planned:
        result = results.get(name)
        where = storage.join(out, name)
        known = hashed.get(name)
        try:
            ok = result is not None and storage.size(where, options) == result.bytes
            if ok and result is not None and (known is None or known.sha256 != result.sha256):
                ok = storage.sha256(where, options)[0] == result.sha256
        except FileNotFoundError:
            ok = False
        if not ok:
            bad.append(name)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise OutputError(
            f"{len(bad)} of {len(planned)} planned shards are missing from {out} or differ from their done "
            f"record ({shown}); no manifest written. {hint}"
        )


def write_index(
    out: Location, planned: pa.Table, results: dict[str, ShardResult], options: Options = None
) -> None:
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
    _put_parquet(storage.join(out, INDEX), table, options)


def manifest_dict(
    *,
    identity: Mapping[str, Any],
    name: str,
    version: str,
    source_path: str | None,
    planned: pa.Table,
    results: dict[str, ShardResult],
    rejects: pa.Table,
    report: ResolutionReport,
    n_rows: int,
    stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest's content, in the shape DESIGN.md gives (:class:`~pipeline.format.Manifest`)."""
    per_image = Counter(pc.list_value_length(planned["captions"]).to_pylist())
    by_reason = Counter(rejects["reason"].to_pylist())
    manifest = Manifest(
        identity=BuildIdentity.from_dict(identity),
        name=name,
        version=version,
        source_path=source_path,
        counts=Counts(
            rows=n_rows,
            images=planned.num_rows,
            captions=sum(r.captions for r in results.values()),
            rejected_rows=rejects.num_rows,
        ),
        splits=_splits(results),
        captions_per_image={str(k): per_image[k] for k in sorted(per_image)},
        resolution=report,
        rejects=Rejects(rejects.num_rows, dict(sorted(by_reason.items()))),
        tool=f"capshard {__version__}",
        stats=stats,
    )
    return manifest.to_dict()


def _splits(results: dict[str, ShardResult]) -> dict[str, SplitEntry]:
    """Per split, its shards in name order and their totals."""
    shards: dict[str, list[ShardEntry]] = {}
    for name in sorted(results):
        r = results[name]
        entry = ShardEntry(r.name, r.images, r.captions, r.bytes, r.sha256)
        shards.setdefault(name.rsplit("-", 1)[0], []).append(entry)
    return {
        split: SplitEntry(sum(s.images for s in entries), sum(s.captions for s in entries), tuple(entries))
        for split, entries in shards.items()
    }


def write_manifest(out: Location, manifest: dict[str, Any], options: Options = None) -> None:
    """Write the manifest atomically (whole, on an object store): the last file of a build."""
    _put_json(storage.join(out, MANIFEST), manifest, options)


def _put_json(where: str, data: Any, options: Options) -> None:
    """As :func:`pipeline.write.write_json_atomic` writes it: indented, key-sorted, UTF-8."""
    storage.put_whole(where, json_bytes(data), options)


def _put_parquet(where: str, table: pa.Table, options: Options) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.put_whole(where, sink.getvalue().to_pybytes(), options)
