"""Stage *probe and write* in one pass: each image read once, for ``build``.

The plan needs every image's probe (its hash, whether it is usable at all) before it can
say which shard an image goes to, so a build that probes, plans, then writes reads and
hashes every image twice. Writing ahead reads it once:

1. the shards are planned from an *assumed* probe (:func:`assumed_probe`): every referenced
   file the inputs listing found is taken for a usable image of its own content;
2. each shard task probes its images as it writes them (:func:`probe_and_write`), to a
   temporary name, and sends back the probe's rows with what it wrote;
3. the plan is made from those probe rows: where they found what was assumed (every file a
   usable image of its own, of the listing's size), it is the assumed plan with the probed
   hash, format, size and dimensions of each image, without resolving the captions again
   (:func:`confirmed`); else it is resolved from them, as always. The shards written ahead that
   it plans with the same content (:func:`kept`: the assumed plan, with the probed hash, format
   and size of each image, equal to the plan shard by shard) are committed as they are
   (:func:`commit`); the others are written again from the plan.

An unusable image changes the plan of its whole split (the plan shuffles a split as a whole),
a picture found under two names that of every split: the shards written ahead until then are
written again from the plan, and the pass only probes the shards of a split it has lost
(:class:`Bets`); the result is the bytes of the build that probes first.
Only for file references (their sizes, which the plan's byte limit needs, are in the listing).

The pass resumes: each task writes its shard under ``OUT/.capshard/ahead/`` (:data:`pipeline.format.AHEAD`)
and then its record, ``NAME.json`` (a digest of the task, the probe rows, what it wrote). A task
whose record is there, of the same task, with the shard it names unchanged (size and sha256), is
not run again (:func:`written_before`); the build keeps that folder only for a run of the same
identity (``identity.json`` in it, :func:`save_identity`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .format import AHEAD, STATE
from .plan_store import PlannedShard, shard_runs
from .probe import PROBE_SCHEMA, ProbeTask, probe_opened
from .readers import Reader
from .resolve import Resolution
from .storage import Location
from .write import (
    TMP_MARK,
    Probed,
    SampleSpec,
    ShardResult,
    ShardTask,
    commit_shard,
    done_record,
    file_sha256,
    json_bytes,
    output_error,
    write_tar,
)

#: The reason the assumed probe gives a file the listing did not find (the real probe says why).
ASSUMED_MISSING = "missing_image"
#: In ``OUT/.capshard/ahead/``: the identity of the build whose pass wrote the rest.
IDENTITY = "identity.json"


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
    """One shard of the assumed plan, and how to probe its images (``how.refs`` is not used);
    ``write``: write the shard as they are probed (else only probe them: see :class:`Bets`)."""

    planned: PlannedShard
    how: ProbeTask
    write: bool = True

    @property
    def name(self) -> str:
        return self.planned.name

    @functools.cached_property
    def shard(self) -> ShardTask:
        """The shard's write task, made where the task runs (the parent sends the plan's rows)."""
        return self.planned.task()

    def digest(self) -> str:
        """What the task is, as its record names it: the sha256 of the ``repr`` of its shard
        (samples, output) and probe options."""
        return hashlib.sha256(repr((self.shard, self.how)).encode()).hexdigest()


@dataclass(frozen=True)
class Ahead:
    """What :func:`probe_and_write` did: the probe rows of the shard's images, and the shard it
    wrote at ``tmp``, with its done record's bytes (:func:`pipeline.write.done_record`, made by the
    worker that wrote it: the commit only writes them) (those three None when one of the images was
    unusable: nothing is left then); ``reused``: an earlier run of the pass did it (:func:`written_before`)."""

    name: str
    rows: list[dict[str, Any]]
    result: ShardResult | None
    tmp: str | None
    record: bytes | None = None
    reused: bool = False


class _Unusable(Exception):
    """An image of the shard is not usable: the shard cannot be the plan's."""


def ahead_dir(out: Location) -> Path:
    """``OUT/.capshard/ahead/`` of a local ``out``."""
    return Path(out, STATE, AHEAD)


def shard_path(shard: ShardTask) -> Path:
    """Where the pass writes ``shard`` (until it is committed under its name in ``OUT``)."""
    return ahead_dir(shard.out) / shard.name


def _record_path(shard: ShardTask) -> Path:
    return ahead_dir(shard.out) / f"{shard.name}.json"


def probe_and_write(reader: Reader, task: AheadTask) -> Ahead:
    """Probe each image of the shard and write it, with the probed hash, format and size, into the
    shard's file in ``OUT/.capshard/ahead/``, then its record (neither fsynced: a worker would wait
    for the disk, which has caught up by the time :func:`commit` fsyncs the shard; a record is only
    believed with its shard's bytes, :func:`written_before`); the first unusable image stops the
    writing, the rest are probed (all of them are, with nothing written, for a task that does not
    ``write``). What an earlier run of the pass did is taken as it is."""
    earlier = written_before(task)
    if earlier is not None:
        return earlier
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

    path = shard_path(shard)
    tmp = _temporary(path)
    with output_error(shard.name, shard.out):
        try:
            if not task.write:
                raise _Unusable
            result: ShardResult | None = write_tar(probed(), shard, tmp, fsync=False)
            os.replace(tmp, path)
        except _Unusable:
            tmp.unlink(missing_ok=True)
            rows.extend(probe_opened(s.image_path, s.image_index, data, task.how) for s, data in opened)
            result = None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        as_json = None if result is None else result.to_json()
        record = {"task": task.digest(), "rows": rows, "result": as_json}
        _put(_record_path(shard), json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
    if result is None:
        return Ahead(shard.name, rows, None, None)
    return Ahead(shard.name, rows, result, str(path), json_bytes(as_json))


def written_before(task: AheadTask) -> Ahead | None:
    """What an earlier run of the pass left for ``task``: its record, if it is of this task and the
    shard it names is there with the recorded size and sha256; else None (the task runs again)."""
    try:
        record = json.loads(_record_path(task.shard).read_bytes())
        if record["task"] != task.digest():
            return None
        result = None if record["result"] is None else ShardResult.from_json(record["result"])
        rows = list(record["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = shard_path(task.shard)
    if result is not None:
        try:
            if file_sha256(path) != (result.sha256, result.bytes):
                return None
        except OSError:
            return None
    if result is None:
        return Ahead(task.name, rows, None, None, reused=True)
    return Ahead(task.name, rows, result, str(path), done_record(result), reused=True)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def _put(path: Path, payload: bytes) -> None:
    """``payload`` at ``path`` whole or not at all (a temporary name, then rename; no fsync)."""
    tmp = _temporary(path)
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_identity(out: Location, identity: dict[str, Any]) -> None:
    """Start (or go on with) a pass in a local ``out``: its folder, with the build's ``identity``
    (before the probe: the inputs by path, size and mtime)."""
    folder = ahead_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    _put(folder / IDENTITY, json.dumps(identity, sort_keys=True, default=str).encode())


def saved_identity(out: Location) -> dict[str, Any] | None:
    """The identity of the build whose pass left shards in a local ``out``; None if none (or unreadable)."""
    try:
        data = json.loads((ahead_dir(out) / IDENTITY).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def has_records(out: Location) -> bool:
    """Whether a stopped pass left any shard's record in a local ``out``."""
    return any(ahead_dir(out).glob("*.tar.json"))


def remove_temporary(out: Location) -> None:
    """Remove what the pass's workers were writing when they were stopped (nobody writes now)."""
    for path in ahead_dir(out).glob(f".*{TMP_MARK}*"):
        path.unlink(missing_ok=True)


def discard(out: Location, names: Iterable[str] | None = None) -> None:
    """Remove the shards written ahead in a local ``out`` (``names``; None: the whole pass) and their records."""
    folder = ahead_dir(out)
    if names is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for name in names:
        (folder / name).unlink(missing_ok=True)
        (folder / f"{name}.json").unlink(missing_ok=True)


class Bets:
    """Whether the assumed plan of a split still holds as the pass's probe rows come in: the plan
    shuffles a split as a whole, so one unusable image loses the bet on every shard of its split,
    and a picture found under two names on every split. Once lost, the split's next shards are only
    probed (:attr:`AheadTask.write` false); the plan still keeps whatever it holds unchanged (:func:`kept`)."""

    def __init__(self) -> None:
        self._lost: set[str] = set()
        self._all_lost = False
        self._seen: set[str] = set()

    def hold(self, split: str) -> bool:
        """Whether shards of ``split`` are still worth writing ahead."""
        return not self._all_lost and split not in self._lost

    def settle(self, split: str, rows: list[dict[str, Any]]) -> str | None:
        """Take the probe rows of a task of ``split``; why the bet was lost by them, else None."""
        if not self.hold(split):
            return None
        for row in rows:
            if row.get("image_reason") is not None:
                self._lost.add(split)
                return f"{row['image_path']} is not a usable image ({row['image_reason']})"
            if row["sha256"] in self._seen:
                self._all_lost = True
                self._seen.clear()
                return f"{row['image_path']} holds the picture of another file"
            self._seen.add(row["sha256"])
        return None


@dataclass(frozen=True)
class Commit:
    """A shard written ahead at ``tmp``, to be put under its ``name`` in ``out`` with its done ``record``
    (:attr:`Ahead.record`, at ``done``, relative to ``out``)."""

    out: str
    name: str
    done: str
    tmp: str
    record: bytes


def commit(_reader: Reader, task: Commit) -> str:
    """:func:`pipeline.write.commit_shard` of a shard written ahead (an executor task); its name.

    The task holds paths and the record's bytes, not the shard's result (a thousand samples to
    pickle to the worker and back, and to serialize there, for each shard)."""
    with output_error(task.name, task.out):
        commit_shard(Path(task.out), task.name, task.done, Path(task.tmp), task.record, fsync=True)
    return task.name


#: The columns of a plan's images that the probe of their files gives them (as they are).
PROBED_COLUMNS = ("sha256", "n_bytes", "format", "width", "height")


#: Probe columns null for a usable image of a build that writes ahead.
_UNSET_WHEN_USABLE = ("image_reason", "image_detail", "phash")


def confirmed(assumed: Resolution, guessed: pa.Table, probed: pa.Table) -> Resolution | None:
    """The resolution of the real probe (``probed``), made from the one of the assumed probe
    (``guessed``, :func:`assumed_probe`) without resolving again, where the probe found what was
    assumed; else None (the caller resolves the real probe).

    It found what was assumed when it probed the same references, found each file a usable image
    (the assumed probe found every one), the listing's size for each, and no two files alike, and
    when the assumed plan named no image by the value of its hash (:attr:`Resolution.ids_from_hashes`).
    The resolution then sees the same usable images and the same partition of them by content, and
    so makes the same images, rejects and report; it takes each image's hash, size, format and
    dimensions from the probe, which is all the real probe changes; with the same sizes the plan
    puts the images in the same shards. (A build that writes ahead computes no perceptual hash.)
    """
    n = probed.num_rows
    if (
        assumed.ids_from_hashes
        or not probed["image_path"].equals(guessed["image_path"])
        or not probed["image_index"].equals(guessed["image_index"])
        or any(table[c].null_count != n for table in (guessed, probed) for c in _UNSET_WHEN_USABLE)
        or probed["sha256"].null_count
        or pc.count_distinct(probed["sha256"]).as_py() != n
        or not probed["n_bytes"].equals(guessed["n_bytes"])
    ):
        return None
    return dataclasses.replace(assumed, images=_with_probed(assumed.images, probed))


def _with_probed(images: pa.Table, probed: pa.Table) -> pa.Table:
    """``images`` (one file each) with the :data:`PROBED_COLUMNS` of their files in ``probed``."""
    at = pc.index_in(images["image_path"], probed["image_path"])
    for column in PROBED_COLUMNS:
        images = images.set_column(images.schema.get_field_index(column), column, probed[column].take(at))
    return images


def kept(assumed: pa.Table, planned: pa.Table, probed: pa.Table) -> set[str]:
    """The shards of the ``assumed`` plan's images that the real one (``planned``) holds unchanged
    once each image has the ``probed`` hash, format, size and dimensions of its file."""
    assumed = _with_probed(assumed, probed)
    if assumed.equals(planned):
        return set(assumed["shard"].to_pylist())
    mine, theirs = shard_runs(assumed["shard"]), shard_runs(planned["shard"])
    return {
        name
        for name, (start, length) in mine.items()
        if name in theirs
        and theirs[name][1] == length
        and assumed.slice(start, length).equals(planned.slice(theirs[name][0], length))
    }
