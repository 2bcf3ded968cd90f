"""Stage *probe and write* in one pass: each image read once, for ``build``.

The plan needs every image's probe (its hash, whether it is usable at all) before it can
say which shard an image goes to, so a build that probes, plans, then writes reads and
hashes every image twice. Writing ahead reads it once:

1. the shards are planned from an *assumed* probe (:func:`assumed_probe`): every referenced
   file the inputs listing found is taken for a usable image of its own content;
2. each shard task probes its images as it writes them (:func:`probe_and_write`), to a
   temporary name, and sends back the probe's rows with what it wrote;
3. the plan is made from those probe rows, as always; the shards written ahead that it
   plans with the same content (:func:`kept`: the assumed plan, with the probed hash, format
   and size of each image, equal to the plan shard by shard) are committed as they are
   (:func:`commit`); the others are written again from the plan.

An unusable image, or a picture found under two names, changes the plan from its shard on:
those shards are written twice, and the result is the bytes of the build that probes first.
Only for file references (their sizes, which the plan's byte limit needs, are in the listing).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .probe import PROBE_SCHEMA, ProbeTask, probe_opened
from .readers import Reader
from .write import Probed, SampleSpec, ShardResult, ShardTask, commit_shard, output_error, temporary_path, write_tar

#: The reason the assumed probe gives a file the listing did not find (the real probe says why).
ASSUMED_MISSING = "missing_image"


def assumed_probe(refs: pa.Table, sizes: pa.Array) -> pa.Table:
    """The probe table the plan is guessed from: ``refs`` (file paths, as :func:`.probe.distinct_refs`
    gives them) with ``sizes`` (the listing's, null where it found no file); every file found a usable
    image with a hash of its own, so that no two are taken for the same picture."""
    n = refs.num_rows
    found = pc.is_valid(sizes)
    own = pc.utf8_lpad(pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()), 64, "0")
    text, number = pa.nulls(n, pa.string()), pa.nulls(n, pa.int64())
    columns = {
        "image_path": refs["image_path"],
        "image_index": refs["image_index"],
        "sha256": pc.if_else(found, own, text),
        "n_bytes": sizes,
        "format": pc.if_else(found, pa.scalar("JPEG"), text),
        "width": pc.if_else(found, pa.scalar(1, pa.int64()), number),
        "height": pc.if_else(found, pa.scalar(1, pa.int64()), number),
        "image_reason": pc.if_else(found, text, pa.scalar(ASSUMED_MISSING)),
        "image_detail": pc.if_else(found, text, pa.scalar(ASSUMED_MISSING)),
        "phash": number,
    }
    table = pa.table(columns, schema=PROBE_SCHEMA)
    return table.sort_by([("image_path", "ascending"), ("image_index", "ascending")])


@dataclass(frozen=True)
class AheadTask:
    """One shard of the assumed plan, and how to probe its images (``how.refs`` is not used)."""

    shard: ShardTask
    how: ProbeTask

    @property
    def name(self) -> str:
        return self.shard.name


@dataclass(frozen=True)
class Ahead:
    """What :func:`probe_and_write` did: the probe rows of the shard's images, and the shard it
    wrote at ``tmp`` (both None when one of the images was unusable: nothing is left then)."""

    name: str
    rows: list[dict[str, Any]]
    result: ShardResult | None
    tmp: str | None


class _Unusable(Exception):
    """An image of the shard is not usable: the shard cannot be the plan's."""


def probe_and_write(reader: Reader, task: AheadTask) -> Ahead:
    """Probe each image of the shard and write it, with the probed hash, format and size, into the
    shard's temporary file (not fsynced: a worker would wait for the disk, which has caught up by
    the time :func:`commit` fsyncs it); the first unusable image stops the writing, the rest are probed."""
    shard = task.shard
    opened = zip(shard.samples, reader.open_images([(s.image_path, s.image_index) for s in shard.samples]), strict=True)
    rows: list[dict[str, Any]] = []

    def probed() -> Iterator[tuple[SampleSpec, bytes, Probed]]:
        for spec, data in opened:
            row = probe_opened(spec.image_path, spec.image_index, data, task.how)
            rows.append(row)
            if row.get("image_reason") is not None or not isinstance(data, bytes):
                raise _Unusable
            yield spec, data, (row["sha256"], row["format"], row["width"], row["height"])

    tmp = temporary_path(shard)
    with output_error(shard.name, shard.out):
        try:
            result = write_tar(probed(), shard, tmp, fsync=False)
        except _Unusable:
            tmp.unlink()
            rows.extend(probe_opened(s.image_path, s.image_index, data, task.how) for s, data in opened)
            return Ahead(shard.name, rows, None, None)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return Ahead(shard.name, rows, result, str(tmp))


@dataclass(frozen=True)
class Commit:
    """A shard written ahead at ``tmp``, to be put under its ``name`` in ``out`` with its done record
    (at ``done``, relative to ``out``)."""

    out: str
    name: str
    done: str
    tmp: str
    result: ShardResult


def commit(_reader: Reader, task: Commit) -> ShardResult:
    """:func:`pipeline.write.commit_shard` of a shard written ahead (an executor task)."""
    with output_error(task.name, task.out):
        commit_shard(Path(task.out), task.name, task.done, Path(task.tmp), task.result, fsync=True)
    return task.result


def kept(assumed: pa.Table, planned: pa.Table, probed: pa.Table) -> set[str]:
    """The shards of the ``assumed`` plan's images that the real one (``planned``) holds unchanged
    once each image has the ``probed`` hash, format, size and dimensions of its file."""
    at = pc.index_in(assumed["image_path"], probed["image_path"])
    for column in ("sha256", "n_bytes", "format", "width", "height"):
        assumed = assumed.set_column(assumed.schema.get_field_index(column), column, probed[column].take(at))
    if assumed.equals(planned):
        return set(assumed["shard"].to_pylist())
    mine, theirs = _runs(assumed["shard"]), _runs(planned["shard"])
    return {
        name
        for name, (start, length) in mine.items()
        if name in theirs
        and theirs[name][1] == length
        and assumed.slice(start, length).equals(planned.slice(theirs[name][0], length))
    }


def _runs(shards: pa.ChunkedArray) -> dict[str, tuple[int, int]]:
    """Each shard's first row and row count (a plan's rows come in shard order)."""
    runs: dict[str, tuple[int, int]] = {}
    for row, name in enumerate(shards.to_pylist()):
        start, length = runs.get(name, (row, 0))
        runs[name] = (start, length + 1)
    return runs
