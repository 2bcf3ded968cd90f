"""Extra captions from a recaptioning file (``--captions-from``), keyed by sample key or URL.

Recaptioned datasets ship their new captions apart from the shards: a parquet (or CSV,
JSON Lines) table with the sample's ``key`` or ``url`` and a caption column (one string,
or a list of strings). This module reads such a table, local or an fsspec URL, and yields
one ``(location, join value, caption)`` per caption, in file order.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..errors import SourceError, UsageError
from .arrow import BadValue, decode_caption

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


def read_table(source: str) -> pa.Table:
    """The whole captions table (captions are small next to images)."""
    kind = _KINDS.get(posixpath.splitext(source.split("?", 1)[0])[1].lower())
    if kind is None:
        raise UsageError(f"--captions-from {source}: expected a .parquet, .csv or .jsonl file")
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
                text = {name: pa.string() for name in JOIN_KEYS}
                return pcsv.read_csv(f, convert_options=pcsv.ConvertOptions(column_types=text))
            import pyarrow.json as pjson

            return pjson.read_json(f)
    except FileNotFoundError:
        raise UsageError(f"--captions-from {source}: no such file") from None
    except (OSError, pa.ArrowInvalid) as e:
        raise UsageError(f"--captions-from {source}: cannot read it: {e}") from None


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
