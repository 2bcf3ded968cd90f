"""Flickr caption files parsed as Arrow columns: one regex per layout over all lines at once.

The fast path of :mod:`.flickr`. A file is split into lines by Arrow and each line is
matched by an RE2 pattern that accepts exactly what the Python parser accepts for that
layout. Lines the pattern does not take (a malformed line, the Kaggle ``results.csv``
row that lost a ``|``) go to the Python line parser, in file order, so its messages,
warnings and repairs stay the same. Files that are not valid UTF-8 (a caption to reject
as ``caption_not_utf8``) and Kaggle ``captions.txt`` files whose CSV needs more than a
one-line record (quoted newlines, ``\\r`` line ends, odd quoting) are left to the Python
reader whole: ``None`` from :func:`records` means "not taken here".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .urlpath import SourcePath

#: What Python's ``str.isspace``/``\\s`` call whitespace (RE2's ``\\s`` is ASCII only).
WS = r"[\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
NOT_WS = WS.replace("[", "[^", 1)
_TOKEN = rf"(?s)^(?P<name>{NOT_WS}+?)#(?P<number>[0-9]+)(?P<sep>[\t ])(?P<caption>.*)$"
_RESULTS = rf"(?s)^{WS}*(?P<name>[^|]*?){WS}*\|{WS}*(?P<number>[0-9]+){WS}*\|(?P<caption>.*)$"
_CAPTIONS = r'^(?P<name>[^",]+),(?:"(?P<quoted>(?:[^"]|"")*)"|(?P<caption>[^",]*))$'

#: Columns of a parsed file: 1-based line, image name, caption number, caption.
RECORDS = pa.schema(
    [("line", pa.int64()), ("name", pa.string()), ("caption_id", pa.string()), ("caption", pa.string())]
)

#: ``parse(line_number, line) -> (name, caption_id, caption)`` for one line the pattern left
#: (raises ``SourceError`` for a malformed one), as the Python reader parses it.
LineParser = Callable[[int, str], tuple[str, str, str]]


def lines(path: SourcePath, *, csv: bool = False) -> tuple[pa.Array, np.ndarray] | None:
    """Non-blank lines without their ``\\n`` (and one ``\\r``), with 1-based numbers.

    ``csv``: as Python's csv module reads, where only empty lines are blank and a ``\\r``
    also ends a line (such files return ``None``). ``None`` too when the file is not UTF-8.
    """
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    if csv and b"\r" in data:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    all_lines = _split_lines(data)
    del data
    kept = pc.invert(pc.match_substring_regex(all_lines, "^$" if csv else rf"^{WS}*$"))
    numbers = np.flatnonzero(kept.to_numpy(zero_copy_only=False)) + 1
    return all_lines.filter(kept), numbers


def _split_lines(data: bytes) -> pa.Array:
    """``data`` (valid UTF-8) cut at each ``\\n``, one ``\\r`` dropped from the end of each line: the
    lines as an Arrow string array whose offsets numpy computes from the newline positions (no
    split of one large string, no regex pass for the ``\\r``). A ``\\n`` or ``\\r`` byte
    is never part of a longer UTF-8 character, so cutting the bytes cuts the text."""
    buf = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    starts = np.concatenate(([0], ends + 1))
    stops = np.concatenate((ends, [len(buf)]))
    filled = np.flatnonzero(stops > starts)
    cr = np.zeros(len(stops), dtype=bool)
    cr[filled] = buf[stops[filled] - 1] == ord("\r")
    stops -= cr
    kept = np.ones(len(buf), dtype=bool)
    kept[ends] = False
    kept[stops[cr]] = False
    offsets = np.concatenate(([0], np.cumsum(stops - starts))).astype(np.int64)
    values = buf[kept]
    text = pa.Array.from_buffers(pa.large_string(), len(starts), [None, pa.py_buffer(offsets), pa.py_buffer(values)])
    return text.cast(pa.string())


def _matched(found: pa.Array, numbers: np.ndarray, text: pa.Array, caption_id: pa.Array, parse: LineParser) -> pa.Table:
    """The records of the lines the pattern matched, merged in file order with the others parsed in Python."""
    ok = found.is_valid()
    name, caption = pc.struct_field(found, "name"), pc.struct_field(found, "caption")
    table = pa.table({"line": numbers, "name": name, "caption_id": caption_id, "caption": caption}, schema=RECORDS)
    if ok.false_count == 0:
        return table
    left = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
    parsed = [parse(int(n), line) for n, line in zip(numbers[left].tolist(), text.take(left).to_pylist(), strict=True)]
    rest = pa.table(
        {
            "line": numbers[left],
            "name": [p[0] for p in parsed],
            "caption_id": [p[1] for p in parsed],
            "caption": [p[2] for p in parsed],
        },
        schema=RECORDS,
    )
    return pa.concat_tables([table.filter(ok), rest]).sort_by("line")


def token_records(path: SourcePath, parse: LineParser) -> tuple[pa.Table, np.ndarray] | None:
    """``NAME#N<TAB>caption`` lines; also the numbers of lines with a space instead of the tab."""
    read = lines(path)
    if read is None:
        return None
    text, numbers = read
    # RE2 only says which lines match (its DFA): extracting the groups took 0.36 s for 200,000 lines,
    # this and the splits 0.1 s (with the line cutting above, the file's records 0.32 -> 0.22 s). In a
    # line that does, the first tab or space ends "NAME#N" (the name has no whitespace, the number is
    # digits), and the last "#" before it ends the name.
    ok = pc.match_substring_regex(text, _TOKEN)
    taken = text.filter(ok)
    head_caption = pc.split_pattern_regex(taken, r"[\t ]", max_splits=1)
    name_number = pc.split_pattern(pc.list_element(head_caption, 0), "#", max_splits=1, reverse=True)
    number = pc.list_element(name_number, 1)
    found = pa.StructArray.from_arrays(
        [pc.list_element(name_number, 0), number, pc.list_element(head_caption, 1)], names=["name", "number", "caption"]
    )
    kept = ok.to_numpy(zero_copy_only=False)
    at = pa.array(np.cumsum(kept) - 1, mask=~kept)  # each line's row in ``found``, null where it did not match
    found = found.take(at)
    spaced = numbers[kept][pc.match_substring_regex(taken, r"^[^\t ]* ").to_numpy(zero_copy_only=False)]
    return _matched(found, numbers, text, pc.struct_field(found, "number"), parse), spaced


def results_records(path: SourcePath, parse: LineParser, spaced: bool) -> pa.Table | None:
    """``image_name| comment_number| comment`` lines after the header (``spaced``: ``"| "`` separators)."""
    read = lines(path)
    if read is None:
        return None
    text, numbers = read
    if len(numbers) and numbers[0] == 1:  # the header
        text, numbers = text.slice(1), numbers[1:]
    found = pc.extract_regex(text, _RESULTS)
    name = pc.struct_field(found, "name")
    # An empty name is an error the Python parser words; leave those lines to it.
    found = pc.if_else(pc.fill_null(pc.equal(name, ""), False), pa.scalar(None, found.type), found)
    if spaced:
        found = _with_caption(found, pc.replace_substring_regex(pc.struct_field(found, "caption"), "^ ", ""))
    return _matched(found, numbers, text, pc.struct_field(found, "number"), parse)


def _with_caption(found: pa.Array, caption: pa.Array) -> pa.Array:
    """``found`` (a struct of name, number, caption) with another caption field, nulls kept."""
    return pa.StructArray.from_arrays(
        [pc.struct_field(found, "name"), pc.struct_field(found, "number"), caption],
        names=["name", "number", "caption"],
        mask=pc.is_null(found),
    )


def captions_records(path: SourcePath) -> pa.Table | None:
    """Kaggle ``image,caption`` CSV whose records are all one line; ``caption_id`` counts each image's rows."""
    read = lines(path, csv=True)
    if read is None:
        return None
    text, numbers = read
    if len(numbers) and numbers[0] == 1:
        text, numbers = text.slice(1), numbers[1:]
    found = pc.extract_regex(text, _CAPTIONS)
    if found.null_count:
        return None
    quoted = pc.replace_substring(pc.struct_field(found, "quoted"), '""', '"')
    # RE2 gives the group that did not take part as ""; a quoted caption is the line ending in '"'.
    caption = pc.if_else(pc.ends_with(text, '"'), quoted, pc.struct_field(found, "caption"))
    name = pc.struct_field(found, "name")
    return pa.table(
        {"line": numbers, "name": name, "caption_id": pc.cast(_running_count(name), pa.string()), "caption": caption},
        schema=RECORDS,
    )


def _running_count(name: pa.Array) -> np.ndarray:
    """Per row, how many earlier rows have the same value (0, 1, 2…)."""
    code = pc.index_in(name, value_set=pc.unique(name)).to_numpy(zero_copy_only=False)
    order = np.argsort(code, kind="stable")
    sorted_code = code[order]
    starts = np.flatnonzero(np.r_[True, sorted_code[1:] != sorted_code[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(code)]))
    count = np.empty(len(code), np.int64)
    count[order] = np.arange(len(code)) - first
    return count
