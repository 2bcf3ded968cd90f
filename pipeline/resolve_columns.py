"""Column kernels of stage *resolve*: per-row work as Arrow/NumPy operations, not Python loops.

:mod:`.resolve` decides what the rules are; this module applies them to millions of rows
without a Python object per row. Rows are addressed by position (``int32`` indices into
the caption-row table, :func:`positions`) and strings by integer codes (:func:`codes`), so the wide caption
table is never joined, sorted or copied whole: each output column is taken once, in its
final order. Python runs only for the rare rows a rule singles out (merged or conflicting
ids, clashing image ids, leaked images, rejected rows).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .rows import plain, string_offsets, unified

ArrayLike: TypeAlias = "pa.Array | pa.ChunkedArray"
KEY_BAD = r"[^A-Za-z0-9_-]+"
#: Rows per batch that Acero's table source cuts a table into (``TableSourceNodeOptions``' default).
GROUP_BATCH = 1 << 20
#: Indices gathered per block by :func:`take` from a chunked column.
TAKE_BLOCK = 1 << 18
#: Ids hashed in Python per batch (not a Python string per image id at once).
DIGEST_BATCH = 65536
#: A changed key (:func:`.resolve.sanitize_key`): up to _KEY_STEM characters, "_", _DIGEST_CHARS hex digits (80 in all).
_DIGEST_CHARS = 10
_KEY_STEM = 80 - 1 - _DIGEST_CHARS
# An id that sanitize_key leaves as it is: allowed characters, no "_" at either end, <= 80.
_KEY_KEPT = r"^[A-Za-z0-9-]([A-Za-z0-9_-]{0,78}[A-Za-z0-9-])?$"


def codes(values: ArrayLike) -> tuple[pa.Array, np.ndarray]:
    """Distinct non-null values (first-appearance order) and each row's code into them (-1: null).

    One hash pass (``dictionary_encode``, whose chunks all carry the one final dictionary), not
    two (``unique``, then ``index_in``); none for a column already encoded (a dictionary-encoded
    column of :func:`.rows.read_rows`): its dictionary and indices are the answer, its dictionary
    holding just the values its rows have, in that order.
    """
    if pa.types.is_dictionary(values.type):
        return _dictionary_codes(values)
    encoded = pc.dictionary_encode(values)  # nulls stay null, outside the dictionary
    if isinstance(encoded, pa.ChunkedArray):
        if encoded.num_chunks == 0:
            return pa.array([], values.type), np.empty(0, np.int32)
        distinct = encoded.chunk(0).dictionary
        code: ArrayLike = pa.chunked_array([c.indices for c in encoded.chunks], pa.int32())
    else:
        distinct, code = encoded.dictionary, encoded.indices
    del encoded
    return distinct, as_numpy(pc.fill_null(code, -1))


def _dictionary_codes(values: ArrayLike) -> tuple[pa.Array, np.ndarray]:
    """:func:`codes` of a dictionary-encoded column."""
    distinct, indices = _encoded(values)
    return distinct, as_numpy(pc.fill_null(indices, -1)) if len(indices) else np.empty(0, np.int32)


def _encoded(values: ArrayLike) -> tuple[pa.Array, pa.ChunkedArray]:
    """A dictionary-encoded column's one dictionary (:func:`.rows.unified`) and its indices."""
    values = unified(values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values]))
    if values.num_chunks == 0:
        return pa.array([], values.type.value_type), pa.chunked_array([], values.type.index_type)
    return values.chunk(0).dictionary, pa.chunked_array([c.indices for c in values.chunks], values.type.index_type)


def as_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values.to_numpy(zero_copy_only=False)


def positions(mask: np.ndarray) -> np.ndarray:
    """The positions where ``mask`` is true, as ``int32`` when they fit (half of NumPy's ``int64``:
    position arrays are the largest NumPy transients of *resolve*, one entry per caption row)."""
    return np.flatnonzero(mask).astype(index_type(len(mask)), copy=False)


def index_type(n: int) -> type[np.signedinteger[Any]]:
    """The narrowest of ``int32``/``int64`` that holds positions into ``n`` rows (and -1)."""
    return np.int32 if n < 2**31 else np.int64


def take(values: ArrayLike, indices: np.ndarray, each: Callable[[pa.Array], pa.Array] | None = None) -> pa.Array:
    """``values`` at ``indices`` (``int32`` or ``int64``) as one array; an index of -1 gives null.

    ``each``: an element-wise function applied to the taken values (piece by piece, so that
    the values are not held twice, before and after it).
    """
    if pa.types.is_dictionary(values.type):
        return _take_encoded(values, indices, each)
    negative = indices < 0
    has_negative = bool(negative.any())
    if isinstance(values, pa.ChunkedArray) and values.num_chunks > 1 and not has_negative:
        return _take_by_chunk(values, indices, each)
    if isinstance(values, pa.ChunkedArray) and values.num_chunks == 1:
        values = values.chunk(0)  # Arrow's take on a chunked column copies it into one first
    out = pc.take(values, pa.array(indices, mask=negative if has_negative else None))
    out = out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out
    return each(out) if each is not None else out


def _take_encoded(values: ArrayLike, indices: np.ndarray, each: Callable[[pa.Array], pa.Array] | None) -> pa.Array:
    """:func:`take` of a dictionary-encoded column: its indices, over its one dictionary (concatenating
    pieces that each carry the dictionary would compare the dictionaries, piece by piece); ``each``
    gets the values decoded."""
    dictionary, codes = _encoded(values)
    out = pa.DictionaryArray.from_arrays(take(codes, indices), dictionary)
    return each(plain(out)) if each is not None else out


def _take_by_chunk(
    values: pa.ChunkedArray, indices: np.ndarray, each: Callable[[pa.Array], pa.Array] | None
) -> pa.Array:
    """``take`` chunk by chunk (Arrow's take on a chunked column first concatenates all of it: a
    copy of the whole column, to take a few rows of it), ``TAKE_BLOCK`` indices at a time, each
    block copied into the output's final buffers once gathered: besides the output, a take holds
    one block, never all the pieces."""
    n_bytes = _taken_bytes(values, indices) if values.type == pa.string() else 0
    if values.type != pa.string() or n_bytes >= 2**31:  # (too long for one string array: Arrow's error)
        pieces = [piece for block in _taken_blocks(values, indices, each) for piece in block]
        return pa.concat_arrays(pieces) if pieces else pa.array([], values.type)
    out = StringColumn(len(indices), n_bytes)
    for block in _taken_blocks(values, indices, each):
        for piece in block:
            out.append(piece)
        del block  # its pieces, now copied: the next block's reuse their memory
    return out.finish()


def _taken_blocks(
    values: pa.ChunkedArray, indices: np.ndarray, each: Callable[[pa.Array], pa.Array] | None
) -> Iterator[list[pa.Array]]:
    """:func:`_take_block` of each ``TAKE_BLOCK`` indices in turn."""
    bounds = np.cumsum([0] + [len(c) for c in values.chunks])
    for at in range(0, len(indices), TAKE_BLOCK):
        yield _take_block(values, bounds, indices[at : at + TAKE_BLOCK], each)


def _take_block(
    values: pa.ChunkedArray, bounds: np.ndarray, indices: np.ndarray, each: Callable[[pa.Array], pa.Array] | None
) -> list[pa.Array]:
    """``values`` at ``indices`` (one block of a take), gathered chunk by chunk: pieces that are,
    one after the other, the values in the order asked."""
    chunk, by_chunk, limits = _by_chunk(bounds, indices)
    pieces = []
    for c in np.flatnonzero(limits[1:] > limits[:-1]):
        local = indices[by_chunk[limits[c] : limits[c + 1]]] - bounds[c]
        piece = values.chunk(c).take(pa.array(local.astype(index_type(len(values.chunk(c))))))
        pieces.append(each(piece) if each is not None else piece)
    if len(indices) < 2 or bool(np.all(chunk[1:] >= chunk[:-1])):
        return pieces  # already in the order asked
    gathered = pa.concat_arrays(pieces)
    del pieces
    inverse = np.empty(len(indices), index_type(len(indices)))
    inverse[by_chunk] = np.arange(len(indices), dtype=inverse.dtype)
    return [gathered.take(pa.array(inverse))]


def _by_chunk(bounds: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per index its chunk (``bounds``: the chunks' first rows, and the row count); the indices'
    order by chunk (stable); and where each chunk's run starts in that order (one more: the end)."""
    chunk = np.searchsorted(bounds, indices, side="right") - 1
    by_chunk = np.argsort(chunk, kind="stable")
    return chunk, by_chunk, np.searchsorted(chunk[by_chunk], np.arange(len(bounds)))


def _taken_bytes(values: pa.ChunkedArray, indices: np.ndarray) -> int:
    """The string bytes of ``values`` at ``indices``: what a take's output holds (before ``each``)."""
    bounds = np.cumsum([0] + [len(c) for c in values.chunks])
    total = 0
    for at in range(0, len(indices), TAKE_BLOCK):
        block = indices[at : at + TAKE_BLOCK]
        _, by_chunk, limits = _by_chunk(bounds, block)
        for c in np.flatnonzero(limits[1:] > limits[:-1]):
            lengths = np.diff(string_offsets(values.chunk(c)))
            total += int(lengths[block[by_chunk[limits[c] : limits[c + 1]]] - bounds[c]].sum(dtype=np.int64))
    return total


class StringColumn:
    """A string array of ``n`` values built piece by piece in buffers of its final size (NumPy
    memory, returned to the system when freed: nothing the Arrow pool keeps interleaves with it).

    ``n_bytes``: the string bytes to expect; more are accepted (the data buffer grows).
    """

    def __init__(self, n: int, n_bytes: int) -> None:
        if n_bytes >= 2**31:
            raise ValueError(f"{n_bytes} bytes of strings do not fit a 32-bit-offset string array")
        self._n = n
        self._offsets = np.zeros(n + 1, np.int32)
        self._data = np.empty(n_bytes, np.uint8)  # pages are committed as they are written
        self._valid: np.ndarray | None = None
        self._row = 0

    def append(self, piece: pa.Array) -> None:
        """Copy ``piece`` (a string array) after the values appended so far."""
        if len(piece) == 0:
            return
        off, row = string_offsets(piece), self._row
        start = int(self._offsets[row])
        stop = start + int(off[-1] - off[0])
        if stop >= 2**31:
            raise ValueError(f"{stop} bytes of strings do not fit a 32-bit-offset string array")
        if stop > len(self._data):  # more bytes than expected
            grown = np.empty(max(stop, 2 * len(self._data)), np.uint8)
            grown[:start] = self._data[:start]
            self._data = grown
        self._data[start:stop] = np.frombuffer(piece.buffers()[2] or b"", np.uint8)[off[0] : off[-1]]
        self._offsets[row + 1 : row + len(piece) + 1] = off[1:] - off[0] + start
        if piece.null_count:
            if self._valid is None:
                self._valid = np.ones(self._n, bool)
            self._valid[row : row + len(piece)] = as_numpy(piece.is_valid())
        self._row += len(piece)

    def finish(self) -> pa.Array:
        """The array (all ``n`` values must have been appended)."""
        assert self._row == self._n, f"{self._row} of {self._n} strings appended"
        null_count, bitmap = 0, None
        if self._valid is not None:
            null_count = self._n - int(np.count_nonzero(self._valid))
            bitmap = pa.py_buffer(np.packbits(self._valid, bitorder="little"))
        data = self._data[: self._offsets[-1]]
        return pa.Array.from_buffers(
            pa.string(), self._n, [bitmap, pa.py_buffer(self._offsets), pa.py_buffer(data)], null_count=null_count
        )


def group_distinct(key: str, schema: pa.Schema, columns: Callable[[int, int], list[pa.Array]], n: int) -> pa.Table:
    """``table.group_by(key, use_threads=False).aggregate([(c, "distinct"), …])`` for every other column,
    where ``columns(start, stop)`` makes rows ``start:stop`` of the ``n``-row table: the table is never
    held whole. Its batches are those the table source would cut, so the output is the same, down to
    the order ``hash_distinct`` lists values in (it follows the hash tables' input batch by batch)."""

    import pyarrow.acero as acero  # here, not at the top: it imports pyarrow.dataset and pandas (~0.3 s)

    def batches() -> Any:
        for at in range(0, n, GROUP_BATCH):
            yield pa.record_batch(columns(at, min(at + GROUP_BATCH, n)), schema=schema)

    source = acero.RecordBatchReaderSourceNodeOptions(pa.RecordBatchReader.from_batches(schema, batches()))
    aggregates = [([c], "hash_distinct", None, f"{c}_distinct") for c in schema.names if c != key]
    plan = acero.Declaration.from_sequence(
        [
            acero.Declaration("record_batch_reader_source", source),
            acero.Declaration("aggregate", acero.AggregateNodeOptions(aggregates, keys=[key])),
        ]
    )
    return plan.to_table(use_threads=False)


def release() -> None:
    """Hand the pages Arrow's allocator kept after frees back to the system, between stages.

    mimalloc (Arrow's default pool) keeps freed pages for reuse: at 10M rows, over 800 MiB at the
    end of *resolve*, which the next stage's transients would stack on.
    """
    pa.default_memory_pool().release_unused()


def probe_positions(rows: pa.Table, probed: pa.Table, ref_key: Any) -> np.ndarray:
    """Per caption row, the row of ``probed`` with its image reference (-1: none).

    The same match as joining on :func:`.resolve.ref_key`; file-only sources match on the
    path itself, without building a key column of the row count (and, paths dictionary-encoded,
    once per distinct path).
    """
    if rows["image_index"].null_count == rows.num_rows and pa.types.is_dictionary(rows["image_path"].type):
        paths, code = codes(rows["image_path"])
        found = as_numpy(pc.fill_null(pc.index_in(paths, value_set=_one_array(probed["image_path"])), -1))
        return np.append(found, -1)[code]  # code -1 (no path) reads the appended -1
    if rows["image_index"].null_count == rows.num_rows:
        keys, value_set = rows["image_path"], probed["image_path"]
    else:
        keys, value_set = ref_key(rows), ref_key(probed)
    return as_numpy(pc.fill_null(pc.index_in(keys, value_set=_one_array(value_set), skip_nulls=True), -1))


def _one_array(values: ArrayLike) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def trimmed_length(captions: pa.ChunkedArray) -> pa.ChunkedArray:
    """Length of each caption stripped of surrounding whitespace, a chunk at a time, stripping just
    the captions that may need it (:func:`take` strips those it takes, with ``each=trim``)."""
    return pa.chunked_array([_trimmed_length(chunk) for chunk in captions.chunks], pa.int32())


def _trimmed_length(captions: pa.Array) -> pa.Array:
    length = pc.utf8_length(captions)
    padded = np.flatnonzero(_maybe_padded(captions))
    if len(padded) == 0:
        return length
    stripped = pc.utf8_length(trim(captions.take(pa.array(padded))))
    mask = np.zeros(len(captions), bool)
    mask[padded] = True
    return pc.replace_with_mask(length, pa.array(mask), stripped)


def trim(captions: pa.Array) -> pa.Array:
    """Captions stripped of surrounding whitespace: the array itself when none can have any (no copy
    of text that is already stripped, the usual case)."""
    return pc.utf8_trim_whitespace(captions) if _maybe_padded(captions).any() else captions


def _maybe_padded(strings: pa.Array) -> np.ndarray:
    """Per value, whether it starts or ends with a byte outside ``!``..``~``: whitespace, or maybe
    (every byte of a non-ASCII character is one); printable ASCII at both ends means none."""
    if strings.type != pa.string():
        return np.ones(len(strings), bool)
    off = string_offsets(strings)
    data = np.frombuffer(strings.buffers()[2] or b"", np.uint8)
    nonempty = np.flatnonzero(off[1:] > off[:-1])  # (an empty value, or a null, has nothing to strip)
    first, last = data[off[:-1][nonempty]], data[off[1:][nonempty] - 1]
    padded = np.zeros(len(strings), bool)
    padded[nonempty] = (first <= 0x20) | (first >= 0x7F) | (last <= 0x20) | (last >= 0x7F)
    return padded


def distinct_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``(a, b)`` code pairs (codes from -1 up), in order of first appearance.

    Arrow's hash ``unique`` keeps that order by itself (NumPy's ``unique`` sorts: at 10M rows,
    a sort and an argsort of the pair keys, four times the time).
    """
    if len(a) == 0:
        return a, b
    width = int(b.max()) + 2
    key = (a.astype(np.int64) + 1) * width + (b.astype(np.int64) + 1)
    distinct = as_numpy(pc.unique(pa.array(key)))
    del key
    return (distinct // width - 1).astype(a.dtype), (distinct % width - 1).astype(b.dtype)


def list_column(values: pa.Array, starts: np.ndarray) -> pa.Array:
    """A list per group from ``values`` ordered by group; ``starts``: each group's first value (none empty)."""
    offsets = np.empty(len(starts) + 1, np.int32)
    offsets[:-1] = starts
    offsets[-1] = len(values)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def sanitized_keys(image_ids: pa.Array) -> pa.Array:
    """:func:`.resolve.sanitize_key` of every id: regexes in Arrow, only the hash suffix in Python.

    The ids to change are handled ``DIGEST_BATCH`` at a time (their intermediate columns too),
    each batch's keys copied into the final buffers before the next is made.
    """
    kept = pc.match_substring_regex(image_ids, _KEY_KEPT)
    changed = np.flatnonzero(~as_numpy(kept))
    if len(changed) == 0:
        return image_ids
    # A changed key is at most its id's bytes (a run of other characters becomes one "_"), or "img",
    # cut to _KEY_STEM ASCII characters, then "_" and 10 hex digits.
    stem = np.minimum(np.maximum(np.diff(string_offsets(image_ids))[changed], 3), _KEY_STEM)
    keys = StringColumn(len(changed), int(stem.sum(dtype=np.int64)) + (1 + _DIGEST_CHARS) * len(changed))
    del stem
    for at in range(0, len(changed), DIGEST_BATCH):
        keys.append(_sanitized(take(image_ids, changed[at : at + DIGEST_BATCH])))
    release()
    key = keys.finish()
    if len(changed) == len(image_ids) and kept.null_count == 0:
        return key  # every id changed: the mask would replace them all
    return pc.replace_with_mask(image_ids, pc.invert(kept), key)


def all_distinct(values: pa.Array) -> bool:
    """Whether every value is non-null and distinct: by sorting (``count_distinct``'s hash table
    took 500 MiB for 2M keys, sorting 100 MiB)."""
    if values.null_count:
        return False
    ordered = values.take(pc.sort_indices(values))
    return not pc.any(pc.equal(ordered.slice(0, max(len(ordered) - 1, 0)), ordered.slice(1))).as_py()


def _sanitized(ids: pa.Array) -> pa.Array:
    key = pc.utf8_trim(pc.replace_substring_regex(ids, KEY_BAD, "_"), "_")
    key = pc.if_else(pc.equal(key, ""), pa.scalar("img"), key)
    return pc.binary_join_element_wise(pc.utf8_slice_codeunits(key, 0, _KEY_STEM), _digests(ids), "_")


def _digests(ids: pa.Array) -> pa.Array:
    """The first 10 hex digits of each id's SHA-256."""
    return pa.array(
        [hashlib.sha256(i.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS] for i in ids.to_pylist()],
        pa.string(),
    )


def first_valid(values: ArrayLike, index: np.ndarray, starts: np.ndarray) -> pa.Array:
    """Per group, its first non-null value (``hash_first``'s rule), rows ordered by group.

    ``index``: per ordered row, its position in ``values``; ``starts``: each group's first row
    (none empty). Only groups whose first row is null are searched further.
    """
    at = index[starts]
    out = take(values, at)
    if out.null_count == 0 or values.null_count == len(values):
        return out  # nothing to search: no group lacks a value, or no row has one
    group = np.repeat(np.arange(len(starts), dtype=index.dtype), np.diff(starts, append=len(index)))
    missing = as_numpy(pc.is_null(out))
    rows = np.flatnonzero(missing[group])
    del missing
    rows = rows[as_numpy(pc.is_valid(take(values, index[rows])))]
    found, first = np.unique(group[rows], return_index=True)
    at = at.copy()
    at[found] = index[rows[first]]
    return take(values, at)


def locations(rows: pa.Table, at: np.ndarray) -> pa.Array:
    """The ``location`` of the rows at positions ``at``: a ``CAPTION_ROWS`` table's column, or the
    location a ``rows.ROWS`` table holds as stem and number, joined back."""
    if "location" in rows.column_names:
        return take(rows["location"], at)
    stem = plain(take(rows["location_stem"], at))
    number = pc.cast(take(rows["location_number"], at), pa.string())
    return pc.binary_join_element_wise(stem, number, "", null_handling="replace", null_replacement="")


def probe_failed(probed: pa.Table, pos: np.ndarray) -> np.ndarray:
    """Per row, whether the probe rejected its image (a reason in ``probed``; -1: not probed, False)."""
    failed = np.append(as_numpy(pc.is_valid(probed["image_reason"])), False)
    return failed[pos]  # pos -1 reads the appended False
