"""Flickr8k / Flickr30k caption files to caption rows, in the three published layouts.

The layout is told by the file's first line:

- **token** — ``Flickr8k.token.txt``, ``results_20130124.token``: ``NAME#N<TAB>caption``,
  ``caption_id`` N. Copies with CRLF endings are read alike, and so are copies where a
  line has a space instead of the tab (the caption starts after the first space or tab
  that follows ``#N``; logged). The phantom key ``2258277193_586949ec62.jpg.1`` of the
  original release is read as it is: no such file exists, so the build rejects its rows
  as ``missing_image`` rather than silently renaming it.
- **captions** — Kaggle ``captions.txt``: CSV with header ``image,caption`` (quoted
  commas). There is no caption number: ``caption_id`` counts the image's rows (0, 1, 2…).
- **results** — Kaggle Flickr30k ``results.csv``: ``image_name| comment_number| comment``.
  Its known malformed row ``2199200615.jpg| 4   A dog runs across the grass .`` lost the
  ``|`` after the number; a two-field row of that shape is repaired (number 4, caption
  "A dog runs across the grass .") and the repair is logged.

Split lists (``SourceSpec.split_files``, e.g. ``Flickr_8k.trainImages.txt``) give each
image its split; a row whose image is in no list gets ``reject="not_in_split_lists"``.
Without split lists every row is "train". The image file is ``--images DIR``/NAME; the
file name is the only id, so ``id_hint`` is null. A caption that is not UTF-8 gives a row
with a null caption and ``reject="caption_not_utf8"`` (``not_in_split_lists`` wins when
both apply). ``location`` is "FILE:LINE", 1-based; a CSV record's first line.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, TextIO, cast

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SourceError, UsageError
from ..schema import CAPTION_ROWS, batches_from_rows
from . import flickr_columns as columns
from .base import Reader
from .fields import checked_caption, images_root
from .urlpath import SourcePath

logger = logging.getLogger(__name__)

_SUFFIXES = {".txt", ".token", ".csv"}
#: Rows per record batch, as ``schema.batches_from_rows`` makes them.
BATCH_ROWS = 65536
_TOKEN_LINE = re.compile(r"(\S+?)#([0-9]+)[\t ](.*)", re.DOTALL)
_RESULTS_HEADER = ["image_name", "comment_number", "comment"]
_CAPTIONS_HEADER = ["image", "caption"]
# The Kaggle results.csv row that lost its second "|": "NAME| 4   caption".
_RESULTS_MISSING_PIPE = re.compile(r"\s*([0-9]+)\s+(.*)", re.DOTALL)
_NUMBER = re.compile(r"[0-9]+")


class _Record(NamedTuple):
    """One caption record as a layout parser finds it (caption may hold undecodable bytes)."""

    line: int
    name: str
    caption_id: str
    caption: str


def layout_of(first_line: str) -> str | None:
    """The layout a file's first line shows: "token", "captions", "results", or ``None``."""
    line = first_line.removeprefix("\ufeff").removesuffix("\n").removesuffix("\r")
    if _TOKEN_LINE.fullmatch(line):
        return "token"
    if [c.strip().lower() for c in line.split(",")] == _CAPTIONS_HEADER:
        return "captions"
    if [c.strip().lower() for c in line.split("|")] == _RESULTS_HEADER:
        return "results"
    return None


def _open(path: SourcePath, newline: str) -> TextIO:
    # surrogateescape: a caption that is not UTF-8 becomes one rejected row, not a failed file.
    return cast(TextIO, path.open(encoding="utf-8-sig", errors="surrogateescape", newline=newline))


def _lines(f: TextIO, start: int) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, LF or CRLF endings removed."""
    for n, raw in enumerate(f, start):
        line = raw.removesuffix("\n").removesuffix("\r")
        if line.strip():
            yield n, line


def _token_line(path: SourcePath, n: int, line: str) -> tuple[str, str, str]:
    """``(name, number, caption)`` of one token line; a line of another shape is an error."""
    m = _TOKEN_LINE.fullmatch(line)
    if m is None:
        raise SourceError(path, n, f"expected NAME#N<TAB>caption, found {line[:80]!r}")
    return m.group(1), m.group(2), m.group(3)


def _token_records(path: SourcePath) -> Iterator[_Record]:
    spaced: list[int] = []
    with _open(path, "\n") as f:
        for n, line in _lines(f, 1):
            name, number, caption = _token_line(path, n, line)
            if line[len(name) + 1 + len(number)] == " ":
                spaced.append(n)
            yield _Record(n, name, number, caption)
    _log_spaced(path, spaced)


def _log_spaced(path: SourcePath, spaced: list[int]) -> None:
    if spaced:
        logger.warning(
            "%s: %d lines separate the caption with a space instead of a tab (lines %s); read alike",
            path.name,
            len(spaced),
            ", ".join(map(str, spaced[:10])),
        )


def _captions_records(path: SourcePath) -> Iterator[_Record]:
    counts: dict[str, int] = {}
    with _open(path, "") as f:
        reader = csv.reader(f)
        try:
            next(reader)  # the header, checked by layout_of
            end = reader.line_num
            for cells in reader:
                start, end = end + 1, reader.line_num
                if not cells or cells == [""]:
                    continue
                if len(cells) != 2:
                    raise SourceError(path, start, f"expected 2 fields (image,caption), found {len(cells)}")
                name, caption = cells
                if not name:
                    raise SourceError(path, start, "empty image name")
                counts[name] = counts.get(name, 0) + 1
                yield _Record(start, name, str(counts[name] - 1), caption)
        except csv.Error as e:
            raise SourceError(path, reader.line_num, f"not valid CSV: {e}") from None


def _results_records(path: SourcePath) -> Iterator[_Record]:
    with _open(path, "\n") as f:
        header = f.readline()
        spaced = "| " in header
        for n, line in _lines(f, 2):
            yield _Record(n, *_results_line(path, n, line, spaced))


def _results_spaced(path: SourcePath) -> bool:
    # The Kaggle header is "image_name| comment_number| comment": the space is part of the separator.
    with _open(path, "\n") as f:
        return "| " in f.readline()


def _results_line(path: SourcePath, n: int, line: str, spaced: bool) -> tuple[str, str, str]:
    """``(name, number, comment)`` of one results.csv line, the known missing-``|`` row repaired."""
    cells = line.split("|", 2)
    if len(cells) == 3 and _NUMBER.fullmatch(cells[1].strip()):
        name, number, comment = cells[0], cells[1].strip(), cells[2]
        comment = comment.removeprefix(" ") if spaced else comment
    elif len(cells) == 2 and (m := _RESULTS_MISSING_PIPE.fullmatch(cells[1])):
        name, number, comment = cells[0], m.group(1), m.group(2)
        logger.warning(
            "%s:%d: row lacks the '|' between comment_number and comment; read as number %s, "
            "comment %r (the known Kaggle results.csv defect)",
            path.name,
            n,
            number,
            comment,
        )
    else:
        raise SourceError(path, n, f"expected 'image_name| comment_number| comment', found {line[:80]!r}")
    name = name.strip()
    if not name:
        raise SourceError(path, n, "empty image_name")
    return name, number, comment


_PARSERS = {"token": _token_records, "captions": _captions_records, "results": _results_records}


class FlickrReader(Reader):
    """Reads a Flickr8k/30k caption file (token, Kaggle captions.txt or results.csv layout)."""

    name = "flickr"

    @classmethod
    def sniff(cls, path: SourcePath) -> bool:
        """A ``.txt``/``.token``/``.csv`` file whose first line fits one of the layouts.

        A ``.csv`` with the generic header ``image,caption`` is left to the ``table``
        reader: Kaggle publishes that layout as ``captions.txt``.
        """
        if path.suffix.lower() not in _SUFFIXES or not path.is_file():
            return False
        with path.open("rb") as f:
            head = f.read(4096)
        layout = layout_of(head.split(b"\n", 1)[0].decode("utf-8", "replace"))
        return layout is not None and not (layout == "captions" and path.suffix.lower() == ".csv")

    def multi_caption(self) -> bool:
        return True

    def id_column(self) -> str | None:
        return None

    def read(self) -> Iterator[pa.RecordBatch]:
        """Caption rows built from Arrow columns (:mod:`.flickr_columns`) where the file allows,
        else row by row from :meth:`rows`; the same rows, messages and warnings either way."""
        root, path, splits, layout = self._prepare()
        records = self._columnar_records(path, layout)
        if records is None:
            yield from batches_from_rows(self._rows(root, path, splits, layout))
            return
        yield from self._caption_table(root, path, splits, records).to_batches(max_chunksize=BATCH_ROWS)

    def rows(self) -> Iterator[dict[str, Any]]:
        yield from self._rows(*self._prepare())

    def _prepare(self) -> tuple[str, SourcePath, dict[str, str] | None, str]:
        """Image folder, caption file, split lists and layout, each checked."""
        root = images_root(self.spec, self.name)
        if self.spec.path is None:
            raise UsageError("the flickr format needs the caption file as its source")
        path = self.spec.location(self.spec.path)
        splits = self._split_lists()
        layout = self._layout(path)
        logger.info("%s: %s layout", path.name, layout)
        return root, path, splits, layout

    @staticmethod
    def _columnar_records(path: SourcePath, layout: str) -> pa.Table | None:
        """The file's records as columns (``flickr_columns.RECORDS``); ``None``: read it row by row."""
        if layout == "token":
            found = columns.token_records(path, functools.partial(_token_line, path))
            if found is None:
                return None
            records, spaced_lines = found
            _log_spaced(path, spaced_lines.tolist())
            return records
        if layout == "results":
            spaced = _results_spaced(path)
            return columns.results_records(path, functools.partial(_results_line, path, spaced=spaced), spaced)
        return columns.captions_records(path)

    def _caption_table(self, root: str, path: SourcePath, splits: dict[str, str] | None, records: pa.Table) -> pa.Table:
        """``CAPTION_ROWS`` of parsed records; rows of images in no split list rejected."""
        name, n = records["name"], records.num_rows
        if splits is None:
            split = pa.array(["train"] * n, pa.string()) if n else pa.array([], pa.string())
            n_unlisted = n_no_captions = 0
        else:
            listed = pa.array(list(splits), pa.string())
            split = pc.take(pa.array(list(splits.values()), pa.string()), pc.index_in(name, value_set=listed))
            seen = pc.unique(name)
            n_unlisted = len(pc.unique(name.filter(pc.is_null(split))))
            n_no_captions = len(listed) - pc.sum(pc.is_in(listed, value_set=seen)).as_py()
        none = pa.nulls(n, pa.string())
        table = pa.table(
            {
                "row_id": pa.array(range(n), pa.int64()),
                "location": pc.binary_join_element_wise(f"{path.name}:", pc.cast(records["line"], pa.string()), ""),
                "caption": records["caption"],
                "caption_id": records["caption_id"],
                "split": split,
                "image_path": pc.binary_join_element_wise(f"{root}{os.sep}", name, ""),
                "image_index": pa.nulls(n, pa.int64()),
                "id_hint": none,
                "file_name": pc.replace_substring_regex(name, "^.*/", ""),
                "reject": pc.if_else(pc.is_null(split), pa.scalar("not_in_split_lists"), none),
                "url": none,
            },
            schema=CAPTION_ROWS,
        )
        self._log_split_coverage(path, n_unlisted, n_no_captions)
        return table

    def _rows(
        self, root: str, path: SourcePath, splits: dict[str, str] | None, layout: str
    ) -> Iterator[dict[str, Any]]:
        unlisted: set[str] = set()
        seen: set[str] = set()
        for rec in _PARSERS[layout](path):
            if checked_caption(rec.name) is None:
                raise SourceError(path, rec.line, "image name is not valid UTF-8")
            caption = checked_caption(rec.caption)
            split: str | None = "train"
            reject = None
            if splits is not None:
                split = splits.get(rec.name)
                if split is None:
                    reject = "not_in_split_lists"
                    unlisted.add(rec.name)
            if reject is None and caption is None:
                reject = "caption_not_utf8"
            seen.add(rec.name)
            yield (
                {
                    "location": f"{path.name}:{rec.line}",
                    "caption": caption,
                    "caption_id": rec.caption_id,
                    "split": split,
                    "image_path": f"{root}{os.sep}{rec.name}",
                    "file_name": rec.name.rpartition("/")[2],
                    "reject": reject,
                }
            )
        self._log_split_coverage(path, len(unlisted), len(splits.keys() - seen) if splits is not None else 0)

    @staticmethod
    def _layout(path: SourcePath) -> str:
        try:
            with _open(path, "\n") as f:
                first = f.readline(1 << 16)
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from None
        layout = layout_of(first)
        if layout is None:
            raise SourceError(
                path,
                1,
                "fits no Flickr layout (NAME#N<TAB>caption, 'image,caption' or "
                f"'image_name| comment_number| comment'); found {first[:80]!r}",
            )
        return layout

    def _split_lists(self) -> dict[str, str] | None:
        """Image name → split from the split-list files; ``None`` when there are none."""
        if not self.spec.split_files:
            return None
        listed: dict[str, tuple[str, Path | str]] = {}
        for split, file in self.spec.split_files:
            try:
                data = self.spec.location(file).read_bytes()
            except OSError as e:
                raise UsageError(f"cannot read split list {file}: {e.strerror}") from None
            # Published lists come with LF or CRLF endings, with or without a final newline.
            for n, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), 1):
                try:
                    name = raw.strip().decode("utf-8")
                except UnicodeDecodeError:
                    raise SourceError(file, n, "image name is not valid UTF-8") from None
                if not name:
                    continue
                first = listed.setdefault(name, (split, file))
                if first != (split, file):
                    raise UsageError(
                        f"image {name} is in two split lists: {first[1]} ({first[0]}) and {file} ({split})"
                    )
        return {name: split for name, (split, _) in listed.items()}

    @staticmethod
    def _log_split_coverage(path: SourcePath, n_unlisted: int, n_no_captions: int) -> None:
        if n_unlisted:
            logger.warning(
                "%s: %d images are in no split list; their rows are rejected (not_in_split_lists)",
                path.name,
                n_unlisted,
            )
        if n_no_captions:
            logger.warning("%s: %d images of the split lists have no caption", path.name, n_no_captions)
