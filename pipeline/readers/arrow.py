"""Arrow machinery shared by the ``table`` and ``hf`` readers.

Both read sources that are Arrow tables (parquet files, ``datasets`` tables): this module
turns record batches of caption records into caption rows, and reads one image cell back
by global row index (parquet row groups cached), so neither reader copies image bytes
while scanning.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import SourceError, UsageError
from .base import ImageUnavailable
from .urlpath import SourcePath

log = logging.getLogger(__name__)

#: Arrow rows per batch when scanning a table; image bytes are never kept beyond one batch.
SCAN_BATCH_ROWS = 1024
#: Row groups larger than this make random image access slow; the reader says so.
LARGE_ROW_GROUP = 10_000


@dataclass(frozen=True)
class TableColumns:
    """Which column of a caption table holds what; ``None``: the table has no such column."""

    image: str
    caption: str
    id: str | None = None
    split: str | None = None
    caption_id: str | None = None
    file_name: str | None = None

    def names(self) -> list[str]:
        """The columns to read, each once, in a fixed order."""
        found = [self.image, self.caption, self.id, self.split, self.caption_id, self.file_name]
        return list(dict.fromkeys(c for c in found if c is not None))


class BadValue(ValueError):
    """A cell whose type cannot be what its column means (e.g. a number as a caption)."""


def decode_caption(value: Any) -> tuple[str | None, str | None]:
    """``(caption, reject)`` for one published caption value, not stripped."""
    if value is None:
        return None, None  # the resolve stage rejects it as missing_caption
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), None
        except UnicodeDecodeError:
            return None, "caption_not_utf8"
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # lone surrogates: undecodable bytes read with surrogateescape
        except UnicodeEncodeError:
            return None, "caption_not_utf8"
        return value, None
    raise BadValue(f"caption is a {type(value).__name__}, not text")


def caption_records(
    file: str, where: int, location: str, caption: Any, caption_ids: Any, common: Mapping[str, Any]
) -> Iterator[dict[str, Any]]:
    """Caption rows of one table record: one per element when ``caption`` is a list.

    A list caption gets locations ``LOCATION#n`` and caption ids from ``caption_ids``
    (else ``n``); a record without any caption still yields one row with a null caption
    (rejected downstream as ``missing_caption``), so the image it names is accounted for.
    """
    try:
        if not isinstance(caption, list):
            text, reject = decode_caption(caption)
            cid = None if caption_ids is None else str(caption_ids)
            yield {**common, "location": location, "caption": text, "caption_id": cid, "reject": reject}
            return
        if caption_ids is not None and len(caption_ids) != len(caption):
            raise BadValue(f"{len(caption)} captions but {len(caption_ids)} caption ids")
        if not caption:
            yield {**common, "location": location, "caption": None}
        for n, value in enumerate(caption):
            text, reject = decode_caption(value)
            cid = str(n) if caption_ids is None or caption_ids[n] is None else str(caption_ids[n])
            yield {
                **common,
                "location": f"{location}#{n}",
                "caption": text,
                "caption_id": cid,
                "reject": reject,
            }
    except BadValue as e:
        raise SourceError(file, where, str(e)) from None


def resolve_path(path: str, base: SourcePath | str) -> str:
    """An image path from a table, made absolute against ``base`` (absolute paths kept).

    Below a URL ``base`` the key is appended as written: the reader's confinement refuses
    ``..`` and absolute keys; a path that is itself a URL is kept."""
    text = str(base)
    if "://" in text and not text.lower().startswith("file://"):
        return path if "://" in path else f"{text.rstrip('/')}/{path}"
    return os.path.abspath(os.path.join(text, path))


def choose_split(value: Any, default: str, restval: str) -> str:
    """The split of a record: its split value (``restval`` mapped), else ``default``."""
    if value is None or value == "":
        return default
    text = str(value)
    return restval if text == "restval" else text


# --- Arrow tables -------------------------------------------------------------------------


def is_text(t: pa.DataType) -> bool:
    """Whether values of ``t`` can be captions (text or raw bytes decoded as UTF-8)."""
    kinds = (
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_binary,
        pa.types.is_large_binary,
        pa.types.is_null,
    )  # null: a column with no values at all
    return any(kind(t) for kind in kinds)


def is_list(t: pa.DataType) -> bool:
    """Whether ``t`` is a list type (a record with several captions or caption ids)."""
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def is_image_struct(t: pa.DataType) -> bool:
    """The ``datasets.Image`` storage: ``struct<bytes, path>``."""
    return bool(pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and t.get_field_index("path") >= 0)


def caption_type_ok(t: pa.DataType) -> bool:
    """Text, a list of text, or a list of Karpathy-style sentence structs with ``raw``."""
    if is_list(t):
        t = t.value_type
        if pa.types.is_struct(t) and t.get_field_index("raw") >= 0:
            t = t.field("raw").type
    return is_text(t)


def image_type_ok(t: pa.DataType) -> bool:
    """A path (text), bytes (binary) or an image struct."""
    return is_text(t) or is_image_struct(t)


def py_captions(arr: pa.Array) -> list[Any]:
    """Caption cells as Python values, text kept as ``bytes`` so bad UTF-8 is caught per cell."""
    t = arr.type
    if pa.types.is_string(t):
        return arr.view(pa.binary()).to_pylist()
    if pa.types.is_large_string(t):
        return arr.view(pa.large_binary()).to_pylist()
    if pa.types.is_struct(t):  # a Karpathy sentence: its ``raw`` text
        return py_captions(arr.flatten()[t.get_field_index("raw")])
    if is_list(t):
        values = py_captions(arr.flatten())
        out: list[Any] = []
        pos = 0
        for length in arr.value_lengths().to_pylist():
            out.append(None if length is None else values[pos : pos + length])
            pos += length or 0
        return out
    return arr.to_pylist()


def py_strings(arr: pa.Array, column: str, file: str) -> list[Any]:
    """Scalar cells (ids, splits, names) as strings; lists kept as lists."""
    if is_list(arr.type):
        return arr.to_pylist()
    try:
        return pc.cast(arr, pa.string()).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise UsageError(f"{file}: column {column!r} of type {arr.type} cannot be read as text: {e}") from None


class ArrowPart:
    """One table of a source (a dataset split, a parquet file), read in Arrow batches."""

    def __init__(self, label: str, split: str | None, base_dir: SourcePath) -> None:
        self.label = label
        self.split = split
        self.base_dir = base_dir

    @property
    def num_rows(self) -> int:
        raise NotImplementedError

    @property
    def schema(self) -> pa.Schema:
        raise NotImplementedError

    def batches(self, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        """The rows, in order, restricted to ``columns``."""
        raise NotImplementedError

    def cell(self, column: str, row: int) -> Any:
        """The Python value of one cell (an image struct dict, bytes or a path)."""
        raise NotImplementedError


class ParquetPart(ArrowPart):
    """A parquet file; random cell access reads (and caches) the row group holding the row."""

    def __init__(self, path: SourcePath, label: str, split: str | None, base_dir: SourcePath) -> None:
        super().__init__(label, split, base_dir)
        self.path = path
        try:
            self._file = pq.ParquetFile(path if isinstance(path, Path) else path.open("rb"))
        except (OSError, pa.ArrowInvalid) as e:
            raise SourceError(path, "footer", f"not a readable parquet file: {e}") from None
        meta = self._file.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._starts = [0, *itertools.accumulate(sizes)][:-1]
        self.largest_row_group = max(sizes, default=0)
        self._group: Callable[[int, str], pa.Table] = functools.lru_cache(maxsize=4)(self._read_group)

    @property
    def num_rows(self) -> int:
        return int(self._file.metadata.num_rows)

    @property
    def schema(self) -> pa.Schema:
        return self._file.schema_arrow

    def batches(self, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        yield from self._file.iter_batches(batch_size=batch_size, columns=list(columns))

    def _read_group(self, group: int, column: str) -> pa.Table:
        return self._file.read_row_group(group, columns=[column])

    def cell(self, column: str, row: int) -> Any:
        group = bisect.bisect_right(self._starts, row) - 1
        return self._group(group, column).column(0)[row - self._starts[group]].as_py()


class Parts:
    """The tables of a source in reading order, addressed by one global row index."""

    def __init__(self, parts: Sequence[ArrowPart]) -> None:
        self.parts = list(parts)
        self.starts: list[int] = []
        total = 0
        for part in self.parts:
            self.starts.append(total)
            total += part.num_rows
        self.num_rows = total

    def locate(self, index: int) -> tuple[ArrowPart, int]:
        """The part holding global row ``index`` and the row within it."""
        if not 0 <= index < self.num_rows:
            raise ImageUnavailable("missing_image", f"image index {index} is outside the table ({self.num_rows} rows)")
        i = bisect.bisect_right(self.starts, index) - 1
        return self.parts[i], index - self.starts[i]

    def image_bytes(
        self,
        column: str,
        index: int,
        images: Path | str | None,
        open_path: Callable[[str], bytes],
    ) -> bytes:
        """The stored bytes of the image cell at global row ``index``; a path cell is read with
        ``open_path`` (the reader's ``read_image``, which confines it)."""
        part, row = self.locate(index)
        value = part.cell(column, row)
        if isinstance(value, dict):
            if value.get("bytes") is not None:
                return bytes(value["bytes"])
            value = value.get("path")
        if isinstance(value, bytes):
            return value
        if isinstance(value, str) and value:
            return open_path(resolve_path(value, images or part.base_dir))
        raise ImageUnavailable("missing_image", f"{part.label}[{row}]: the image cell holds neither bytes nor a path")


def arrow_rows(
    parts: Parts, cols: TableColumns, *, images: Path | str | None, restval: str
) -> Iterator[dict[str, Any]]:
    """Caption-row dicts (without ``row_id``) of every part, in order."""
    for part, start in zip(parts.parts, parts.starts, strict=True):
        default_split = part.split or "train"
        base = images or part.base_dir
        local = 0
        for batch in part.batches(cols.names(), SCAN_BATCH_ROWS):
            n = batch.num_rows
            captions = py_captions(batch.column(cols.caption))
            ids, splits, cids, names = (
                _column_strings(batch, c, part.label) for c in (cols.id, cols.split, cols.caption_id, cols.file_name)
            )
            has_bytes, paths = _image_refs(batch.column(cols.image))
            for i in range(n):
                row = local + i
                path = paths[i]
                # Bytes win over a path; a cell with neither leaves both null (missing_image).
                common = {
                    "split": choose_split(splits[i], default_split, restval),
                    "image_path": resolve_path(path, base) if path and not has_bytes[i] else None,
                    "image_index": start + row if has_bytes[i] else None,
                    "id_hint": ids[i],
                    "file_name": names[i] or (os.path.basename(path) if path else None),
                }
                yield from caption_records(part.label, row, f"{part.label}[{row}]", captions[i], cids[i], common)
            local += n


def _column_strings(batch: pa.RecordBatch, name: str | None, file: str) -> list[Any]:
    return py_strings(batch.column(name), name, file) if name else [None] * batch.num_rows


def _image_refs(arr: pa.Array) -> tuple[list[bool], list[str | None]]:
    """Per cell: whether it holds bytes, and the path it names (never the bytes themselves)."""
    t = arr.type
    if is_image_struct(t):
        children = arr.flatten()
        has = pc.is_valid(children[t.get_field_index("bytes")]).to_pylist()
        return has, children[t.get_field_index("path")].to_pylist()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pc.is_valid(arr).to_pylist(), [None] * len(arr)
    return [False] * len(arr), arr.to_pylist()


def check_columns(schema: pa.Schema, cols: TableColumns, file: str) -> None:
    """UsageError when the image or caption column has a type that cannot mean what it should."""
    for name, ok, what in (
        (cols.image, image_type_ok, "an image path, bytes or image struct"),
        (cols.caption, caption_type_ok, "text or a list of text"),
    ):
        t = schema.field(name).type
        if not ok(t):
            raise UsageError(f"{file}: column {name!r} has type {t}; expected {what}")


def missing_column(file: str, where: str, what: str, name: str, option: str, columns: Sequence[str]) -> UsageError:
    """The error for a required column that the table does not have, listing those it has."""
    return UsageError(
        f"{file}{where}: no {what} column {name!r}; columns: {', '.join(columns) or '(none)'}; "
        f"choose one with --{option}"
    )


# --- the table reader ---------------------------------------------------------------------
