"""The ``table`` reader: captions in a generic CSV/TSV, JSON Lines or parquet table.

Each table record names its image (a path, or the bytes in a parquet binary column)
and carries one caption or a list of them. The Arrow side (parquet) is shared with the
``hf`` reader, in ``readers/arrow.py``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ..errors import SourceError, UsageError
from .arrow import (
    LARGE_ROW_GROUP,
    ParquetPart,
    Parts,
    TableColumns,
    arrow_rows,
    caption_records,
    check_columns,
    choose_split,
    is_list,
    missing_column,
    resolve_path,
)
from .base import ImageUnavailable, Reader, SourceSpec
from .fields import checked_caption
from .urlpath import SourcePath

log = logging.getLogger(__name__)

#: File suffixes this reader claims, and how each is parsed.
SUFFIXES: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}


class TableReader(Reader):
    """Generic caption tables: CSV/TSV (header required), JSON Lines, parquet."""

    name: ClassVar[str] = "table"

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        if spec.path is None:
            raise UsageError("the table reader needs a path to a .csv, .tsv, .jsonl or .parquet file")
        self.path = spec.location(spec.path)
        # An explicit --format table on another suffix (Kaggle's captions.txt) reads it as CSV.
        self.kind = "parquet" if self.path.is_dir() else SUFFIXES.get(self.path.suffix.lower(), "csv")
        self.columns = TableColumns(
            image=spec.image_column or "image",
            caption=spec.caption_column or "caption",
            id=spec.id_column,
            split=spec.split_column,
        )
        self._parts: Parts | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_parts"] = None  # open files stay in the process that opened them
        return state

    @classmethod
    def sniff(cls, path: SourcePath) -> bool:
        if path.is_dir():
            return next(iter(path.glob("*.parquet")), None) is not None
        return path.is_file() and path.suffix.lower() in SUFFIXES

    def multi_caption(self) -> bool:
        if self.kind == "parquet":
            return is_list(self._open().parts[0].schema.field(self.columns.caption).type)
        if self.kind == "jsonl":  # the first record says; CSV cells are never lists
            first = next(iter(self._jsonl_records()), None)
            return first is not None and isinstance(first[1].get(self.columns.caption), list)
        return False

    def rows(self) -> Iterator[dict[str, Any]]:
        if self.kind == "parquet":
            records = arrow_rows(self._open(), self.columns, images=self.spec.images, restval=self.spec.restval)
        elif self.kind == "jsonl":
            records = self._jsonl_rows()
        else:
            records = self._csv_rows("\t" if self.kind == "tsv" else ",")
        yield from records

    def image_root(self) -> Path | str:
        """``--images``, else the table's folder (a parquet folder: that folder), which paths are relative to."""
        if self.spec.images:
            return self.spec.images
        folder = self.path if self.path.is_dir() else self.path.parent
        return folder if isinstance(folder, Path) else str(folder)

    def open_image(self, image_path: str | None, image_index: int | None) -> bytes:
        if image_path is not None:
            return self.read_image(image_path)
        if image_index is not None and self.kind == "parquet":
            return self._open().image_bytes(self.columns.image, image_index, self.spec.images, self.read_image)
        raise ImageUnavailable("missing_image", f"{self.path}: the record names no image")

    # --- parquet

    def _open(self) -> Parts:
        if self._parts is None:
            files: list[Any] = sorted(self.path.rglob("*.parquet")) if self.path.is_dir() else [self.path]
            if not files:
                raise UsageError(f"{self.path}: no .parquet files in this folder")
            root: Any = self.path if self.path.is_dir() else self.path.parent
            parts = [ParquetPart(f, f.relative_to(root).as_posix(), None, f.parent) for f in files]
            for part in parts:
                names = part.schema.names
                for name, what, option in (
                    (self.columns.image, "image", "image-column"),
                    (self.columns.caption, "caption", "caption-column"),
                    (self.columns.id, "id", "id-column"),
                    (self.columns.split, "split", "split-column"),
                ):
                    if name is not None and name not in names:
                        raise missing_column(str(part.path), "", what, name, option, names)
                check_columns(part.schema, self.columns, str(part.path))
                if part.largest_row_group > LARGE_ROW_GROUP:
                    log.warning(
                        "%s: row groups of up to %d rows; reading one image reads its whole row group",
                        part.path,
                        part.largest_row_group,
                    )
            self._parts = Parts(parts)
        return self._parts

    # --- text formats

    def _common(self, file: str, line: int, image: Any, ident: Any, split: Any) -> dict[str, Any]:
        if image is not None and not isinstance(image, str):
            raise SourceError(file, line, f"image is a {type(image).__name__}, not a path")
        for what, value in (("image path", image), ("id", ident), ("split", split)):
            if isinstance(value, str) and checked_caption(value) is None:
                raise SourceError(file, line, f"{what} is not valid UTF-8")
        base = self.spec.images or str(self.path.parent)
        return {
            "split": choose_split(split, "train", self.spec.restval),
            "image_path": resolve_path(image, base) if image else None,
            "id_hint": None if ident is None or ident == "" else str(ident),
            "file_name": os.path.basename(image) if image else None,
        }

    def _csv_rows(self, delimiter: str) -> Iterator[dict[str, Any]]:
        file, cols = str(self.path), self.columns
        with self.path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            # TSV has no quoting: a caption may hold a lone '"' (Flickr's do).
            if delimiter == "\t":
                reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE)
            else:
                reader = csv.reader(f, delimiter=delimiter)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise SourceError(file, 1, "empty file; a header row naming the columns is required") from None
            except csv.Error as e:
                raise SourceError(file, reader.line_num, f"bad CSV: {e}") from None
            for name, what, option in (
                (cols.image, "image", "image-column"),
                (cols.caption, "caption", "caption-column"),
                (cols.id, "id", "id-column"),
                (cols.split, "split", "split-column"),
            ):
                if name is not None and name not in header:
                    raise missing_column(file, ":1", what, name, option, header)
            at = {name: header.index(name) for name in cols.names()}
            line = reader.line_num + 1
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    raise SourceError(file, line, f"bad CSV: {e}") from None
                start, line = line, reader.line_num + 1
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise SourceError(
                        file,
                        start,
                        f"expected {len(header)} fields ({', '.join(header)}), found {len(fields)}",
                    )
                common = self._common(
                    file,
                    start,
                    fields[at[cols.image]],
                    fields[at[cols.id]] if cols.id else None,
                    fields[at[cols.split]] if cols.split else None,
                )
                caption = fields[at[cols.caption]]
                yield from caption_records(file, start, f"{self.path.name}:{start}", caption, None, common)

    def _jsonl_records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(line, object)`` per non-blank line; undecodable bytes kept as surrogates."""
        file = str(self.path)
        with self.path.open(encoding="utf-8-sig", errors="surrogateescape") as f:
            for line, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as e:
                    raise SourceError(file, line, f"invalid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(record, dict):
                    raise SourceError(file, line, f"expected a JSON object, found {type(record).__name__}")
                yield line, record

    def _jsonl_rows(self) -> Iterator[dict[str, Any]]:
        file, cols = str(self.path), self.columns
        for line, record in self._jsonl_records():
            for name, what, option in (
                (cols.image, "image", "image-column"),
                (cols.caption, "caption", "caption-column"),
            ):
                if name not in record:
                    raise missing_column(file, f":{line}", what, name, option, list(record))
            common = self._common(
                file,
                line,
                record[cols.image],
                record.get(cols.id) if cols.id else None,
                record.get(cols.split) if cols.split else None,
            )
            yield from caption_records(file, line, f"{self.path.name}:{line}", record[cols.caption], None, common)
