"""Tables of extra captions (``--captions``, and the wds reader's older ``--captions-from``).

Recaptioned datasets ship their new captions apart from the images: a parquet (or CSV,
JSON Lines) table with a join column (``key``, ``url``, ``filename`` or ``image_id``) and a
caption column (one string, or a list of strings). This module reads such a table, local
or an fsspec URL: :func:`caption_table` as one Arrow row per caption, in file order (for
:mod:`pipeline.extra_captions`); :func:`extra_captions` as one ``(location, join value,
caption)`` per caption (for ``--captions-from``); :func:`file_digest` for the build identity.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SourceError, UsageError
from .arrow import BadValue, decode_caption
from .base import CaptionSource

#: Join keys ``--captions-key`` accepts.
JOIN_KEYS: tuple[str, ...] = ("key", "url")
#: Caption columns looked for when ``--captions-column`` is not given.
CAPTION_COLUMNS: tuple[str, ...] = ("captions", "caption", "text")
_KINDS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class ExtraCaption:
    """One caption of the file: where it is, the key it joins on, the caption (or its reject)."""

    location: str
    join: str | None
    caption: str | None
    reject: str | None


def read_table(source: str, option: str = "--captions-from", text_columns: tuple[str, ...] = JOIN_KEYS) -> pa.Table:
    """The whole captions table (captions are small next to images); ``text_columns`` of a
    CSV stay text (keys such as ``000010003`` are not numbers)."""
    kind = _KINDS.get(posixpath.splitext(source.split("?", 1)[0])[1].lower())
    if kind is None:
        raise UsageError(f"{option} {source}: expected a .parquet, .csv or .jsonl file")
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            if "://" in source:
                import fsspec

                fs, path = fsspec.core.url_to_fs(source)
                return pq.read_table(path, filesystem=fs)
            return pq.read_table(source)
        import fsspec

        with fsspec.open(source, "rb") as f:
            if kind == "csv":
                import pyarrow.csv as pcsv

                # Keys such as img2dataset's "000010003" must stay text, not become numbers.
                text = {name: pa.string() for name in text_columns}
                return pcsv.read_csv(f, convert_options=pcsv.ConvertOptions(column_types=text))
            import pyarrow.json as pjson

            return pjson.read_json(f)
    except FileNotFoundError:
        raise UsageError(f"{option} {source}: no such file") from None
    except (OSError, pa.ArrowInvalid) as e:
        raise UsageError(f"{option} {source}: cannot read it: {_one_line(e)}") from None


def file_digest(source: str, option: str) -> str:
    """``sha256:…`` of the file's bytes, local or an fsspec URL."""
    import fsspec

    h = hashlib.sha256()
    try:
        with fsspec.open(source, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:
        raise UsageError(f"{option} {source}: no such file") from None
    except OSError as e:
        raise UsageError(f"{option} {source}: cannot read it: {_one_line(e)}") from None
    return "sha256:" + h.hexdigest()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _caption_column(source: str, option: str, names: list[str], column: str | None) -> str:
    if column is None:
        found = next((c for c in CAPTION_COLUMNS if c in names), None)
        if found is None:
            raise UsageError(
                f"{option} {source}: no caption column (looked for {', '.join(CAPTION_COLUMNS)}); "
                f"columns: {', '.join(names)}; choose one with --captions-column"
            )
        return found
    if column not in names:
        raise UsageError(f"{option} {source}: no column {column!r}; columns: {', '.join(names)}")
    return column


def caption_table(source: CaptionSource) -> pa.Table:
    """One row per caption of ``source``, in file order: ``file_row`` (0-based row of the
    file), ``location`` (``NAME[ROW]``, ``#N`` appended for the N-th element of a list),
    ``join`` (the join column as text), ``caption`` and ``reject`` (``caption_not_utf8``).
    A row whose caption list is empty or null gives one row with a null caption."""
    option = "--captions"
    table = read_table(source.path, option, (source.join_on,))
    names = table.schema.names
    if source.join_on not in names:
        raise UsageError(
            f"{option} {source.path}: no {source.join_on!r} column to join on (--join-on {source.join_on}); "
            f"columns: {', '.join(names)}"
        )
    column = _caption_column(source.path, option, names, source.column)
    join = table[source.join_on]
    if not any(
        is_kind(join.type)
        for is_kind in (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_null)
    ):
        raise UsageError(f"{option} {source.path}: column {source.join_on!r} holds {join.type}, not text or integers")
    join = pc.cast(join, pa.string())
    values = table[column]
    rows = pa.array(range(table.num_rows), pa.int64())
    kind = values.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        flat = values.combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(flat), 0)
        empty = pc.indices_nonzero(pc.equal(lengths, 0))
        parents = pc.list_parent_indices(flat)
        element = pc.subtract(
            pa.array(range(len(parents)), pa.int64()),
            pc.take(pc.subtract(pc.cumulative_sum(lengths.cast(pa.int64())), lengths.cast(pa.int64())), parents),
        )
        parts = pa.table({"file_row": parents.cast(pa.int64()), "element": element, "value": pc.list_flatten(flat)})
        missing = pa.table(
            {
                "file_row": empty.cast(pa.int64()),
                "element": pa.nulls(len(empty), pa.int64()),
                "value": pa.nulls(len(empty), parts["value"].type),
            }
        )
        long = pa.concat_tables([parts, missing]).sort_by([("file_row", "ascending"), ("element", "ascending")])
        file_row, element, captions = long["file_row"], long["element"], long["value"]
    else:
        file_row, element, captions = rows, pa.nulls(table.num_rows, pa.int64()), values
    captions, rejects = _text(captions, source.path, column)
    location = pc.binary_join_element_wise(f"{source.label}[", pc.cast(file_row, pa.string()), "]", "")
    tagged = pc.binary_join_element_wise(location, "#", pc.cast(element, pa.string()), "")
    return pa.table(
        {
            "file_row": file_row,
            "location": pc.coalesce(tagged, location),
            "join": pc.take(join, file_row),
            "caption": captions,
            "reject": rejects,
        }
    )


def _text(values: pa.ChunkedArray | pa.Array, source: str, column: str) -> tuple[pa.Array, pa.Array]:
    """Captions as text, and ``caption_not_utf8`` where bytes do not decode."""
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        text = pc.cast(values, pa.string())
        return text, pa.nulls(len(text), pa.string())
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        decoded = [decode_caption(v) for v in values.to_pylist()]  # rare: captions stored as bytes
        return pa.array([d[0] for d in decoded], pa.string()), pa.array([d[1] for d in decoded], pa.string())
    raise UsageError(f"--captions {source}: column {column!r} holds {kind}, not text or lists of text")


def extra_captions(source: str, join_key: str, column: str | None) -> Iterator[ExtraCaption]:
    """Every caption of the file, one per list element; a row without any yields one null caption."""
    if join_key not in JOIN_KEYS:
        raise UsageError(f"--captions-key must be one of {', '.join(JOIN_KEYS)}, not {join_key!r}")
    table = read_table(source)
    names = table.schema.names
    if join_key not in names:
        raise UsageError(f"--captions-from {source}: no {join_key!r} column to join on; columns: {', '.join(names)}")
    if column is None:
        column = next((c for c in CAPTION_COLUMNS if c in names), None)
        if column is None:
            raise UsageError(
                f"--captions-from {source}: no caption column (looked for {', '.join(CAPTION_COLUMNS)}); "
                f"columns: {', '.join(names)}; choose one with --captions-column"
            )
    elif column not in names:
        raise UsageError(f"--captions-from {source}: no column {column!r}; columns: {', '.join(names)}")
    name = posixpath.basename(source)
    row = 0
    for batch in table.select([join_key, column]).to_batches():
        for join, value in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
            yield from _row(source, name, row, join, value)
            row += 1


def _row(source: str, name: str, row: int, join: Any, value: Any) -> Iterator[ExtraCaption]:
    key = None if join is None or join == "" else str(join)
    location = f"{name}[{row}]"
    values = value if isinstance(value, list) else [value]
    if not values:
        values = [None]
    for n, item in enumerate(values):
        try:
            text, reject = decode_caption(item)
        except BadValue as e:
            raise SourceError(source, f"row {row}", str(e)) from None
        where = f"{location}#{n}" if isinstance(value, list) else location
        yield ExtraCaption(where, key, text, reject)
