"""The column kernels of resolve (pipeline.resolve_columns) against plain-Python references."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import resolve_columns as cols
from pipeline.resolve import sanitize_key
from pipeline.rows import split_location

TEXT = st.one_of(st.none(), st.text(alphabet="ab é_.-\t日", max_size=6))


def chunked(values: list, sizes: list[int], type_: pa.DataType) -> pa.ChunkedArray:
    """``values`` cut into chunks of the given sizes (cycled), empty chunks included."""
    chunks, at = [], 0
    for size in sizes * (len(values) + 1):
        if at >= len(values):
            break
        chunks.append(pa.array(values[at : at + size], type_))
        at += size
    chunks.append(pa.array(values[at:], type_))
    return pa.chunked_array(chunks, type_)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(TEXT, min_size=1, max_size=40),
    st.lists(st.integers(0, 7), min_size=1, max_size=4),
    st.data(),
    st.sampled_from([1, 2, 3, 1 << 18]),
    st.booleans(),
)
def test_take_from_chunks_is_arrow_take(
    values: list[str | None], sizes: list[int], data: st.DataObject, block: int, trim: bool
) -> None:
    column = chunked(values, sizes, pa.string())
    indices = np.array(data.draw(st.lists(st.integers(0, len(values) - 1), max_size=60)), np.int32)
    expected = pa.array([values[i] for i in indices], pa.string())
    if trim:
        expected = cols.trim(expected)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cols, "TAKE_BLOCK", block)
        got = cols.take(column, indices, cols.trim if trim else None)
    got.validate(full=True)
    assert got.equals(expected)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-5, 5)), min_size=1, max_size=30), st.data())
def test_take_of_integers_and_missing_indices(values: list[int | None], data: st.DataObject) -> None:
    column = chunked(values, [3, 1], pa.int64())
    indices = np.array(data.draw(st.lists(st.integers(-1, len(values) - 1), max_size=40)), np.int64)
    got = cols.take(column, indices)
    assert got.to_pylist() == [values[i] if i >= 0 else None for i in indices]


def test_string_column_grows_past_its_expected_size() -> None:
    column = cols.StringColumn(3, 1)
    column.append(pa.array(["abc", None]))
    column.append(pa.array(["défg"]))
    got = column.finish()
    got.validate(full=True)
    assert got.to_pylist() == ["abc", None, "défg"] and got.null_count == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(TEXT, max_size=40), st.lists(st.integers(1, 7), min_size=1, max_size=3))
def test_codes_are_first_appearance_order(values: list[str | None], sizes: list[int]) -> None:
    distinct, code = cols.codes(chunked(values, sizes, pa.string()))
    expected = list(dict.fromkeys(v for v in values if v is not None))
    assert distinct.to_pylist() == expected
    assert code.tolist() == [-1 if v is None else expected.index(v) for v in values]


@given(st.lists(st.tuples(st.integers(-1, 4), st.integers(-1, 4)), max_size=40))
def test_distinct_pairs_in_first_appearance_order(pairs: list[tuple[int, int]]) -> None:
    a = np.array([p[0] for p in pairs], np.int32)
    b = np.array([p[1] for p in pairs], np.int32)
    got_a, got_b = cols.distinct_pairs(a, b)
    assert list(zip(got_a.tolist(), got_b.tolist(), strict=True)) == list(dict.fromkeys(pairs))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=120), min_size=1, max_size=30, unique=True), st.sampled_from([1, 4]))
def test_sanitized_keys_are_sanitize_key(ids: list[str], batch: int) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cols, "DIGEST_BATCH", batch)
        got = cols.sanitized_keys(pa.array(ids, pa.string()))
    assert got.to_pylist() == [sanitize_key(i) for i in ids]


@given(st.lists(st.lists(st.one_of(st.none(), st.integers(0, 3)), min_size=1, max_size=4), min_size=1, max_size=8))
def test_first_valid_is_each_groups_first_non_null(groups: list[list[int | None]]) -> None:
    values = [v for g in groups for v in g]
    starts = np.cumsum([0] + [len(g) for g in groups[:-1]])
    index = np.arange(len(values), dtype=np.int32)[::-1].copy()  # rows read back to front
    column = chunked(values[::-1], [2], pa.int64())
    got = cols.first_valid(column, index, starts)
    assert got.to_pylist() == [next((v for v in g if v is not None), None) for g in groups]


#: Text with ASCII and other whitespace (U+00A0, U+0085, U+3000, U+2028, U+001C) at either end or inside.
PADDED = st.one_of(st.none(), st.text(alphabet="ab日\u00e9 \t\n\x0b\x1c\u00a0\u0085\u2028\u3000", max_size=6))


@settings(max_examples=200, deadline=None)
@given(st.lists(PADDED, max_size=20), st.integers(0, 3))
def test_trim_is_arrow_trim(values: list[str | None], offset: int) -> None:
    """``trim`` skips the copy only where Arrow's own trim would change nothing (a sliced array too)."""
    array = pa.array(["x"] * offset + values, pa.string()).slice(offset)
    got = cols.trim(array)
    got.validate(full=True)
    assert got.equals(pc.utf8_trim_whitespace(array))


def test_trim_returns_stripped_text_itself() -> None:
    stripped = pa.array(["a dog .", None, "", "a 日本 b"])  # ASCII ends: nothing to strip, no copy
    assert cols.trim(stripped) is stripped
    assert cols.trim(pa.array(["a dog .", " a cat", "日本\u3000"])).to_pylist() == ["a dog .", "a cat", "日本"]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(TEXT, min_size=1, max_size=40),
    st.lists(st.integers(1, 7), min_size=1, max_size=3),
    st.data(),
    st.booleans(),
)
def test_dictionary_columns_take_and_code_as_plain_ones(
    values: list[str | None], sizes: list[int], data: st.DataObject, unify: bool
) -> None:
    """A dictionary-encoded column (one dictionary, as ``rows.read_rows`` makes it, or one per
    chunk) gives the values and codes of the plain column."""
    column = chunked(values, sizes, pa.string())
    encoded = pa.chunked_array([pc.dictionary_encode(c) for c in column.chunks])
    encoded = encoded.unify_dictionaries() if unify else encoded
    indices = np.array(data.draw(st.lists(st.integers(-1, len(values) - 1), max_size=30)), np.int32)
    got = cols.take(encoded, indices)
    got.validate(full=True)
    assert got.to_pylist() == cols.take(column, indices).to_pylist()
    assert cols.take(encoded, indices, cols.trim).equals(cols.take(column, indices, cols.trim))
    distinct, code = cols.codes(encoded)
    expected_distinct, expected_code = cols.codes(column)
    assert distinct.to_pylist() == expected_distinct.to_pylist() and code.tolist() == expected_code.tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab:[]é0123456789", max_size=30), max_size=20), st.integers(0, 2))
def test_split_location_gives_the_location_back(values: list[str], offset: int) -> None:
    """Stem and trailing number join back to the location, whatever it ends in (leading zeros,
    more digits than an int64 holds, a bare number, none)."""
    array = pa.array(["7"] * offset + values, pa.string()).slice(offset)
    stem, number = split_location(array)
    joined = [s + ("" if n is None else str(n)) for s, n in zip(stem.to_pylist(), number.to_pylist(), strict=True)]
    assert joined == values
    assert all(n is None or 0 < n < 10**18 for n in number.to_pylist())


@settings(max_examples=150, deadline=None)
@given(st.lists(PADDED, max_size=20), st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_trimmed_length_is_length_of_arrow_trim(values: list[str | None], sizes: list[int]) -> None:
    column = chunked(values, sizes, pa.string())
    got = cols.trimmed_length(column)
    assert got.to_pylist() == pc.utf8_length(pc.utf8_trim_whitespace(column)).to_pylist()
