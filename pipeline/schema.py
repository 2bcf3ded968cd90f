"""The Arrow schema of caption rows, the table every reader produces.

One row per input caption record. A row carries a *reference* to its image, never the
decoded image: ``image_path`` (a file) or ``image_index`` (a row of the reader's own
table holding the bytes), which the reader turns into bytes with ``open_image``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

CAPTION_ROWS = pa.schema(
    [
        # Position of the record in the input, 0..N-1 in reading order, assigned by the reader.
        pa.field("row_id", pa.int64(), nullable=False),
        # Where the record is, for messages: "Flickr8k.token.txt:6731" or "data/train[12]".
        pa.field("location", pa.string(), nullable=False),
        # The caption as published (not yet stripped); null when it could not be decoded.
        pa.field("caption", pa.string()),
        # The source's id of this caption ("3" for Flickr "#3", a sentid, a COCO annotation id), if any.
        pa.field("caption_id", pa.string()),
        # Split as the source names it (restval already mapped); null: not assigned.
        pa.field("split", pa.string()),
        # Image file, absolute path; null when the bytes live in the source table.
        pa.field("image_path", pa.string()),
        # Row of the reader's table that holds the image bytes; null for files.
        pa.field("image_index", pa.int64()),
        # Value of the source's image id column (nlphuji img_id, Karpathy cocoid/imgid, COCO image_id).
        pa.field("id_hint", pa.string()),
        # The image's original file name (basename), if the source names one.
        pa.field("file_name", pa.string()),
        # Set by the reader when the record cannot be used (e.g. caption not UTF-8); the reason code.
        pa.field("reject", pa.string()),
        # The URL the image was downloaded from (img2dataset's json ``url``), if the source says.
        pa.field("url", pa.string()),
    ]
)

COLUMNS = tuple(CAPTION_ROWS.names)


class RowBatcher:
    """Collects caption rows as dicts and emits ``CAPTION_ROWS`` record batches.

    Readers append one dict per caption record; ``row_id`` is assigned here, in order,
    so every reader numbers rows the same way.
    """

    def __init__(self, batch_size: int = 65536) -> None:
        self.batch_size = batch_size
        self.next_row_id = 0
        self._buf: dict[str, list[Any]] = {name: [] for name in COLUMNS}

    def add(self, row: Mapping[str, Any]) -> pa.RecordBatch | None:
        """Add one record; returns a full batch when one is ready."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown caption-row fields: {sorted(unknown)}")
        self._buf["row_id"].append(self.next_row_id)
        self.next_row_id += 1
        for name in COLUMNS[1:]:
            self._buf[name].append(row.get(name))
        if len(self._buf["row_id"]) >= self.batch_size:
            return self.flush()
        return None

    def flush(self) -> pa.RecordBatch | None:
        """Emit what is buffered, or ``None`` when nothing is."""
        if not self._buf["row_id"]:
            return None
        batch = pa.RecordBatch.from_pydict(self._buf, schema=CAPTION_ROWS)
        self._buf = {name: [] for name in COLUMNS}
        return batch


def batches_from_rows(rows: Iterable[Mapping[str, Any]], batch_size: int = 65536) -> Iterable[pa.RecordBatch]:
    """Turn an iterable of row dicts into ``CAPTION_ROWS`` batches with consecutive row ids."""
    batcher = RowBatcher(batch_size)
    for row in rows:
        batch = batcher.add(row)
        if batch is not None:
            yield batch
    last = batcher.flush()
    if last is not None:
        yield last
