"""Stage *probe*: read every distinct image once, validate it and hash it.

Input: the caption-row table and its reader; ``validate`` (``structure`` or ``decode``,
see :mod:`.validate`) says how an image is proven whole. Output: one row per distinct image
reference (``image_path`` or ``image_index``) with the content ``sha256``, size, format
and dimensions, or the reject ``reason`` and ``detail`` that explain why it is unusable.
Resolution works on these hashes, never on pixels, so memory follows the row count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .executors import Executor
from .media import BadImage, probe
from .phash import phash_bytes, to_int64
from .readers import ImageUnavailable, Reader
from .rows import dictionary, plain

PROBE_SCHEMA = pa.schema(
    [
        ("image_path", pa.string()),
        ("image_index", pa.int64()),
        ("sha256", pa.string()),
        ("n_bytes", pa.int64()),
        ("format", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("image_reason", pa.string()),
        ("image_detail", pa.string()),
        # 64-bit pHash (pipeline.phash, stored signed) when the build asks for hashes, else null.
        ("phash", pa.int64()),
    ]
)

CHUNK = 256


@dataclass(frozen=True)
class ProbeTask:
    """One chunk of image references for one worker (the reader comes as the worker's context)."""

    refs: tuple[tuple[str | None, int | None], ...]
    formats: tuple[str, ...]
    max_pixels: int
    phash: bool = False
    validate: str = "structure"


def probe_chunk(reader: Reader, task: ProbeTask) -> list[dict[str, Any]]:
    """Probe each reference of the chunk; failures become rows with a reason."""
    opened = reader.open_images(task.refs)
    return [probe_opened(path, index, data, task) for (path, index), data in zip(task.refs, opened, strict=True)]


def probe_opened(
    path: str | None, index: int | None, opened: bytes | ImageUnavailable, how: ProbeTask
) -> dict[str, Any]:
    """The ``PROBE_SCHEMA`` row of one reference, given what opening it gave (its bytes or why not);
    ``how`` says how to probe (its ``refs`` are not used)."""
    row: dict[str, Any] = {"image_path": path, "image_index": index}
    try:
        if isinstance(opened, ImageUnavailable):
            raise opened
        info = probe(
            opened,
            formats=how.formats,
            max_pixels=how.max_pixels,
            decode=how.validate == "decode",
            structure=how.validate == "structure",
        )
        if how.phash:
            row["phash"] = _phash(opened)
    except (ImageUnavailable, BadImage) as e:
        row.update(image_reason=e.reason, image_detail=str(e))
    else:
        row.update(sha256=info.sha256, n_bytes=info.n_bytes, format=info.format, width=info.width, height=info.height)
    return row


def _phash(data: bytes) -> int:
    """The stored pHash of bytes the probe accepted; a full decode that fails is a corrupt image."""
    try:
        return to_int64(phash_bytes(data))
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise BadImage("corrupt_image", f"image cannot be decoded: {e}") from None


def distinct_refs(rows: pa.Table) -> pa.Table:
    """The distinct (image_path, image_index) pairs of rows that have an image reference."""
    paths = rows["image_path"]
    if pa.types.is_dictionary(paths.type) and rows["image_index"].null_count == rows.num_rows:
        # Files only, paths encoded by rows.read_rows: the dictionary is the distinct paths, in order.
        distinct = dictionary(paths)
        return pa.table({"image_path": distinct, "image_index": pa.nulls(len(distinct), pa.int64())})
    refs = rows.select(["image_path", "image_index"])  # before the filter: it copies every column it keeps
    has_ref = pc.or_(pc.is_valid(refs["image_path"]), pc.is_valid(refs["image_index"]))
    if not pc.all(has_ref).as_py():
        refs = refs.filter(has_ref)
    del has_ref
    refs = refs.group_by(["image_path", "image_index"], use_threads=False).aggregate([])
    return refs.set_column(0, "image_path", plain(refs["image_path"]))


def probe_images(
    refs: pa.Table,
    reader: Reader,
    executor: Executor,
    *,
    formats: tuple[str, ...],
    max_pixels: int,
    phash: bool = False,
    validate: str = "structure",
    on_progress: Callable[[int], None] = lambda n: None,
) -> pa.Table:
    """Probe every reference of ``refs`` (see :func:`distinct_refs`); returns a ``PROBE_SCHEMA`` table."""
    paths = refs["image_path"].to_pylist()
    indices = refs["image_index"].to_pylist()

    def tasks() -> Iterator[ProbeTask]:
        for start in range(0, len(paths), CHUNK):
            chunk = tuple(zip(paths[start : start + CHUNK], indices[start : start + CHUNK], strict=True))
            yield ProbeTask(chunk, formats, max_pixels, phash=phash, validate=validate)

    results: list[dict[str, Any]] = []
    for part in executor.map_unordered(probe_chunk, tasks()):
        results.extend(part)
        on_progress(len(part))
    return probe_table(results)


def probe_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The ``PROBE_SCHEMA`` table of probe rows, sorted by reference: completion order varies with
    workers, so everything after is deterministic."""
    table = pa.Table.from_pylist(rows, schema=PROBE_SCHEMA)
    return table.sort_by([("image_path", "ascending"), ("image_index", "ascending")])
