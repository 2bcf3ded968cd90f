"""The caption rows as ``build`` holds them: a reader's ``CAPTION_ROWS`` batches, packed.

Readers emit plain ``CAPTION_ROWS`` batches (:mod:`.schema`); :func:`read_rows` assembles
them into one ``ROWS`` table that holds the same values in less memory, for the stages that
keep every row at once (*probe* needs the references, *resolve* every column):

* ``image_path`` and ``file_name`` repeat from row to row (the five captions of a picture
  name one file): they are dictionary-encoded, one dictionary for the whole column, holding
  its distinct values in order of first appearance (so a dictionary's indices are its codes);
* ``location`` ("results_20130124.token:6731", "captions.json:annotations[7]") is kept as
  ``location_stem``, dictionary-encoded ("results_20130124.token:"), and ``location_number``
  (6731), where the value ends in a decimal number (1 to 18 digits, no leading zero); other
  values are their own stem, number null. :func:`.resolve_columns.locations` joins them back.

At 10M Flickr-like rows: ``image_path`` 600 → 158 MiB, ``file_name`` 285 → 95,
``location`` 323 → 114 (``benchmarks/bench_resolve.py``'s rows; indices plus the one dictionary).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .schema import CAPTION_ROWS

#: Columns held dictionary-encoded, as they are (``location``'s stem also is).
DICTIONARY_COLUMNS = ("image_path", "file_name")
#: Longest trailing number split off a location: 18 digits always fit an ``int64``.
MAX_DIGITS = 18
_DICTIONARY = pa.dictionary(pa.int32(), pa.string())


def _rows_schema() -> pa.Schema:
    fields: list[pa.Field] = []
    for f in CAPTION_ROWS:
        if f.name == "location":
            fields += [pa.field("location_stem", _DICTIONARY, nullable=False), pa.field("location_number", pa.int64())]
        else:
            fields.append(f.with_type(_DICTIONARY) if f.name in DICTIONARY_COLUMNS else f)
    return pa.schema(fields)


#: The schema of the table :func:`read_rows` returns.
ROWS = _rows_schema()


def read_rows(batches: Iterable[pa.RecordBatch]) -> pa.Table:
    """The caption rows of a reader's ``CAPTION_ROWS`` batches as one ``ROWS`` table.

    Each batch is packed as it arrives (its plain strings are let go before the next is
    read); then the chunks' dictionaries are unified, so each encoded column has one.
    """
    packed = [_packed(batch) for batch in batches]
    table = pa.Table.from_batches(packed, schema=ROWS)
    del packed
    return table.unify_dictionaries()


def _packed(batch: pa.RecordBatch) -> pa.RecordBatch:
    if not batch.schema.equals(CAPTION_ROWS):
        raise TypeError(f"a reader's batch must have the CAPTION_ROWS schema, not:\n{batch.schema}")
    columns: list[pa.Array] = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if name == "location":
            stem, number = split_location(column)
            columns += [pc.dictionary_encode(stem), number]
        else:
            columns.append(pc.dictionary_encode(column) if name in DICTIONARY_COLUMNS else column)
    return pa.RecordBatch.from_arrays(columns, schema=ROWS)


def split_location(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Each location as its stem and trailing number (see the module docstring); ``stem +
    str(number)`` (number null: the stem alone) gives the location back."""
    stem = pc.utf8_rtrim(values, characters="0123456789")
    digits = np.asarray(pc.subtract(pc.binary_length(values), pc.binary_length(stem)), np.int64)
    data = np.frombuffer(values.buffers()[2] or b"", np.uint8)
    end = string_offsets(values)[1:]
    split = (digits > 0) & (digits <= MAX_DIGITS)
    split[split] = data[end[split] - digits[split]] != ord("0")  # "x:007" would come back as "x:7"
    number = np.zeros(len(values), np.int64)
    for place in range(int(digits[split].max(initial=0))):  # units, tens, ...: one pass per digit
        has = split & (digits > place)
        number[has] += (data[end[has] - 1 - place].astype(np.int64) - ord("0")) * 10**place
    split_mask = pa.array(split)
    return pc.if_else(split_mask, stem, values), pa.array(number, mask=~split)


def string_offsets(values: pa.Array) -> np.ndarray:
    """The ``len(values) + 1`` offsets of a ``string`` array into its data (a view of its buffer)."""
    return np.frombuffer(values.buffers()[1], np.int32)[values.offset : values.offset + len(values) + 1]


def unified(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """A dictionary-encoded column with one dictionary in all its chunks: as it is when they share
    one already (a ``ROWS`` column: checked by buffer address, not by value), else unified."""
    first = values.chunk(0).dictionary if values.num_chunks else None
    if first is None or all(_same_buffers(c.dictionary, first) for c in values.chunks[1:]):
        return values
    return values.unify_dictionaries()


def dictionary(values: pa.ChunkedArray) -> pa.Array:
    """The one dictionary of a dictionary-encoded column (:func:`unified`); for a ``ROWS`` column,
    its distinct values in order of first appearance."""
    values = unified(values)
    return values.chunk(0).dictionary if values.num_chunks else pa.array([], values.type.value_type)


def _same_buffers(a: pa.Array, b: pa.Array) -> bool:
    """Whether two arrays are one array's data (``unify_dictionaries`` gives every chunk the same buffers)."""
    return len(a) == len(b) and [x and x.address for x in a.buffers()] == [x and x.address for x in b.buffers()]


def plain(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """``values`` as plain strings when dictionary-encoded (a ``ROWS`` column), else as they are."""
    return pc.cast(values, values.type.value_type) if pa.types.is_dictionary(values.type) else values
