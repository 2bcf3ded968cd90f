"""Stage *extra captions*: join ``--captions`` tables to the resolved images.

Runs once, right after *resolve*. Every caption of every ``--captions`` file is one more
input row: row ids ``n_rows, n_rows+1, …`` in command-line order of the files, then file
order, then list order, so the accounting (every row in a shard or in the rejects) covers
them. A caption joins the one resolved image whose join value equals its file's join
column (``--join-on``):

``key``
    the source's own id of the image, the row's ``id_hint``: wds the JSON ``key`` (else the
    sample key), table/hf the id column (``--id-column``, hf's ``img_id``), coco the
    ``image_id``, karpathy ``cocoid`` (else ``imgid``); flickr has none.
``url``
    the URL the image was downloaded from (wds: the JSON ``url``).
``filename``
    the base name of the image's file as the source names it (flickr, coco, karpathy,
    table, hf ``filename``/image path; wds: the URL's, else ``KEY.ext``); the file's value
    is compared by its base name too.
``image_id``
    the resolved image id (``KEY.json`` ``image_id``).

An image holding several rows (merged duplicates, img2dataset's one-row-per-caption
layout) is matched by the value of any of them. Captions are appended after the image's
own, in row-id order; ``caption_sources`` names the origin of each caption (``source``, or
the file's name). A caption whose value matches no image is rejected ``unknown_join_key``,
one whose value matches several images ``ambiguous_join_key``; captions are checked as the
source's are (``missing_caption``, ``empty_caption``, ``caption_too_long``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import UsageError
from .readers.base import JOIN_ON, CaptionSource
from .readers.recaption import caption_table
from .rejects import REJECT_SCHEMA, reject
from .resolve import Resolution
from .rows import plain

#: ``caption_sources`` entry of a caption the source itself gave.
SOURCE = "source"
#: Column of the rows table each ``--join-on`` matches (``image_id`` is the images' own).
ROW_COLUMNS = {"key": "id_hint", "url": "url", "filename": "file_name"}


def read_sources(sources: Sequence[CaptionSource]) -> list[tuple[CaptionSource, pa.Table]]:
    """Every file's captions (``recaption.caption_table``); user errors before any image is read."""
    labels = [s.label for s in sources]
    twice = sorted({name for name in labels if labels.count(name) > 1})
    if twice:
        raise UsageError(f"--captions: two files are named {twice[0]}; caption_sources names files, rename one")
    for s in sources:
        if s.join_on not in JOIN_ON:
            raise UsageError(f"--join-on must be one of {', '.join(JOIN_ON)}, not {s.join_on!r}")
    return [(s, caption_table(s)) for s in sources]


def add_captions(
    resolution: Resolution, rows: pa.Table, tables: Sequence[tuple[CaptionSource, pa.Table]], max_chars: int
) -> Resolution:
    """``resolution`` with the extra captions appended to their images (and ``caption_sources``
    added), the unmatched or bad ones in its rejects; unchanged without ``tables``."""
    if not tables:
        return resolution
    images = resolution.images.combine_chunks()
    extra = _numbered(tables, resolution.n_rows)
    matched = _match(extra, images, rows, tables)
    reason, caption = _reasons(matched, max_chars)
    matched = matched.set_column(matched.schema.get_field_index("caption"), "caption", caption)
    matched = matched.append_column("reason", reason)
    bad = matched.filter(pc.is_valid(matched["reason"]))
    good = matched.filter(pc.is_null(matched["reason"]))
    rejects = pa.concat_tables([resolution.rejects, _rejects(bad, max_chars)]).sort_by("row_id")
    return dataclasses.replace(
        resolution,
        images=_appended(images, good),
        rejects=rejects,
        n_rows=resolution.n_rows + extra.num_rows,
    )


def _numbered(tables: Sequence[tuple[CaptionSource, pa.Table]], first: int) -> pa.Table:
    """All files' captions in one table with row ids from ``first``, and their file's name and join."""
    parts = []
    for source, table in tables:
        n = table.num_rows
        parts.append(
            table.append_column("origin", pa.array([source.label] * n, pa.string())).append_column(
                "join_on", pa.array([source.join_on] * n, pa.string())
            )
        )
    extra = pa.concat_tables(parts)
    return extra.append_column("row_id", pa.array(np.arange(first, first + extra.num_rows), pa.int64()))


def _join_values(join_on: str, images: pa.Table, rows: pa.Table) -> pa.Table:
    """``(join, position, n_images)``: per join value, the image it names and how many it names."""
    if join_on == "image_id":
        pairs = pa.table({"join": images["image_id"], "position": pa.array(np.arange(images.num_rows), pa.int64())})
    else:
        parents = pc.list_parent_indices(images["row_ids"])
        owned = pa.table({"row_id": pc.list_flatten(images["row_ids"]), "position": parents.cast(pa.int64())})
        values = rows.select(["row_id", ROW_COLUMNS[join_on]]).rename_columns(["row_id", "join"])
        values = values.set_column(1, "join", plain(values["join"]))  # a ROWS column may be dictionary-encoded
        if join_on == "filename":  # a base name, whatever folder the source names
            values = values.set_column(1, "join", _basename(values["join"]))
        pairs = owned.join(values, "row_id", use_threads=False).select(["join", "position"])
        pairs = pairs.filter(pc.is_valid(pairs["join"])).group_by(["join", "position"], use_threads=False).aggregate([])
    per_value = pairs.group_by("join", use_threads=False).aggregate(
        [("position", "min"), ("position", "count_distinct")]
    )
    return per_value.rename_columns(["join", "position", "n_images"])


def _basename(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """File names compared by their base name, whatever folder either side names."""
    return pc.replace_substring_regex(values, r"^.*[/\\]", "")


def _match(
    extra: pa.Table, images: pa.Table, rows: pa.Table, tables: Sequence[tuple[CaptionSource, pa.Table]]
) -> pa.Table:
    """``extra`` with ``position`` (the image joined, or null) and ``n_images`` per caption, in row-id order."""
    parts = []
    for join_on in sorted({source.join_on for source, _ in tables}):
        part = extra.filter(pc.equal(extra["join_on"], join_on))
        if join_on == "filename":
            part = part.set_column(part.schema.get_field_index("join"), "join", _basename(part["join"]))
        found = _join_values(join_on, images, rows)
        parts.append(part.join(found, "join", join_type="left outer", use_threads=False))
    return pa.concat_tables(parts).sort_by("row_id")


def _reasons(matched: pa.Table, max_chars: int) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """Each caption's reject reason (null: accepted) and the caption stripped of surrounding whitespace."""
    caption = pc.utf8_trim_whitespace(matched["caption"])
    length = pc.utf8_length(caption)
    none = pa.scalar(None, pa.string())
    reason = pc.coalesce(
        pc.if_else(pc.is_null(matched["position"]), pa.scalar("unknown_join_key"), none),
        pc.if_else(pc.greater(matched["n_images"], 1), pa.scalar("ambiguous_join_key"), none),
        matched["reject"],
        pc.if_else(pc.is_null(caption), pa.scalar("missing_caption"), none),
        pc.if_else(pc.equal(length, 0), pa.scalar("empty_caption"), none),
        pc.if_else(pc.greater(length, max_chars), pa.scalar("caption_too_long"), none),
    )
    return reason, caption


def _rejects(bad: pa.Table, max_chars: int) -> pa.Table:
    """Reject records of ``bad``, each detail naming the file and row."""
    records = []
    for r in bad.select(
        ["row_id", "location", "reason", "origin", "file_row", "join_on", "join", "caption", "n_images"]
    ).to_pylist():
        where = f"{r['origin']} row {r['file_row']}"
        reason = r["reason"]
        if reason == "unknown_join_key":
            what = f"no {r['join_on']}" if r["join"] in (None, "") else f"{r['join_on']} {r['join']!r} matches no image"
        elif reason == "ambiguous_join_key":
            what = f"{r['join_on']} {r['join']!r} matches {r['n_images']} images"
        elif reason == "caption_too_long":
            what = f"caption has {len(r['caption'])} characters, over the cap of {max_chars}"
        elif reason == "empty_caption":
            what = "caption is empty after stripping whitespace"
        else:
            what = reason.replace("_", " ")
        records.append(reject(r["row_id"], r["location"], reason, f"{where}: {what}"))
    return pa.Table.from_pylist(records, schema=REJECT_SCHEMA)


def _appended(images: pa.Table, good: pa.Table) -> pa.Table:
    """``images`` with ``good``'s captions after their own (row-id order) and ``caption_sources``."""
    own = images["captions"].chunk(0) if images.num_rows else pa.array([], images["captions"].type)
    parents = pc.list_parent_indices(own).cast(pa.int64())
    long = pa.concat_tables(
        [
            pa.table(
                {
                    "position": parents,
                    "row_id": pc.list_flatten(images["row_ids"]),
                    "caption": pc.list_flatten(own),
                    "caption_id": pc.list_flatten(images["caption_ids"]),
                    "origin": pa.array([SOURCE] * len(parents), pa.string()),
                }
            ),
            pa.table(
                {
                    "position": good["position"],
                    "row_id": good["row_id"],
                    "caption": good["caption"],
                    "caption_id": pa.nulls(good.num_rows, pa.string()),
                    "origin": good["origin"],
                }
            ),
        ]
    ).sort_by([("position", "ascending"), ("row_id", "ascending")])
    offsets = pa.array(np.searchsorted(long["position"].to_numpy(), np.arange(images.num_rows + 1)), pa.int32())
    for name, column in (("captions", "caption"), ("caption_ids", "caption_id"), ("row_ids", "row_id")):
        values = pa.ListArray.from_arrays(offsets, long[column].combine_chunks())
        images = images.set_column(images.schema.get_field_index(name), name, values.cast(images[name].type))
    origins = pa.ListArray.from_arrays(offsets, long["origin"].combine_chunks())
    return images.append_column("caption_sources", origins)
