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
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, TextIO, cast

from ..errors import SourceError, UsageError
from .base import Reader
from .coco import checked_caption, images_root
from .urlpath import SourcePath

logger = logging.getLogger(__name__)

_SUFFIXES = {".txt", ".token", ".csv"}
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


def _token_records(path: SourcePath) -> Iterator[_Record]:
    spaced: list[int] = []
    with _open(path, "\n") as f:
        for n, line in _lines(f, 1):
            m = _TOKEN_LINE.fullmatch(line)
            if m is None:
                raise SourceError(path, n, f"expected NAME#N<TAB>caption, found {line[:80]!r}")
            if line[m.end(2)] == " ":
                spaced.append(n)
            yield _Record(n, m.group(1), m.group(2), m.group(3))
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
        # The Kaggle header is "image_name| comment_number| comment": the space is part of the separator.
        spaced = "| " in header
        for n, line in _lines(f, 2):
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
            yield _Record(n, name, number, comment)


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

    def rows(self) -> Iterator[dict[str, Any]]:
        root = images_root(self.spec, self.name)
        if self.spec.path is None:
            raise UsageError("the flickr format needs the caption file as its source")
        path = self.spec.location(self.spec.path)
        splits = self._split_lists()
        layout = self._layout(path)
        logger.info("%s: %s layout", path.name, layout)
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
        self._log_split_coverage(path, splits, seen, unlisted)

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
    def _log_split_coverage(
        path: SourcePath, splits: dict[str, str] | None, seen: set[str], unlisted: set[str]
    ) -> None:
        if unlisted:
            logger.warning(
                "%s: %d images are in no split list; their rows are rejected (not_in_split_lists)",
                path.name,
                len(unlisted),
            )
        if splits is not None and (no_captions := len(splits.keys() - seen)):
            logger.warning("%s: %d images of the split lists have no caption", path.name, no_captions)
