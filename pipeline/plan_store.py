"""The plan store: a build's :class:`Plan`, saved under ``OUT/.capshard/`` and loaded back.

A plan is everything the *write* and *finalize* stages need, so any process that can
see ``OUT`` (and the source) can write any shard of it or finish the build: the build's
identity and inputs listing, the planned images (with ``shard`` and ``position``), the
rejected rows, the resolution report, the row count, and how to open the source again.
Nothing in it names ``OUT`` itself: the folder can be reached under another path.

Layout of ``OUT/.capshard/`` (``STATE``)::

    inputs.parquet   the inputs listing (pipeline.inputs)
    plan.parquet     planned images, in shard then position order
    rejects.parquet  rejected rows (pipeline.rejects.REJECT_SCHEMA)
    plan.json        {"layout", "rows", "report", "resize", "source"}
    state.json       the build's identity; written last, so its presence means "plan complete"
    done/NAME.json   the done record of each written shard (pipeline.write.ShardResult)

A plan written by an older capshard (no ``plan.json`` of this layout) is not loaded:
:func:`status` says ``stale`` and the build plans again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .errors import IntegrityError
from .format import DONE, STATE, STATE_FILE, ResolutionReport
from .inputs import INPUTS, INPUTS_SCHEMA, read_listing
from .outputs import record
from .readers import CaptionSource, SourceSpec
from .rejects import REJECT_SCHEMA
from .storage import Location, Options
from .write import SampleSpec, ShardResult, ShardTask, json_bytes

log = logging.getLogger(__name__)

#: Version of the layout above; a plan of another layout is planned again.
LAYOUT = 2
PLAN_TABLE = "plan.parquet"
REJECTS_TABLE = "rejects.parquet"
PLAN_JSON = "plan.json"
IDENTITY = STATE_FILE


@dataclass(frozen=True)
class Plan:
    """A planned build: what :func:`save` writes and :func:`load` returns."""

    identity: dict[str, Any]
    listing: pa.Table
    #: One row per image, with ``shard`` and ``position``, in shard then position order.
    images: pa.Table
    rejects: pa.Table
    report: ResolutionReport
    n_rows: int
    #: ``--resize``: the one write option that changes bytes besides the plan.
    resize: int | None
    #: The source as a :class:`SourceSpec` without its in-memory dataset (see :meth:`source_spec`).
    source: dict[str, Any]

    @property
    def source_format(self) -> str:
        """The reader's name (``--format`` as resolved)."""
        return str(self.identity["format"])

    def shards(self) -> list[str]:
        """Every planned shard name, sorted."""
        return sorted(set(self.images["shard"].to_pylist()))

    def tasks(self, out: Location, options: Options = None) -> list[ShardTask]:
        """One write task per shard, sorted by name (``options``: the store's ``--storage-options``)."""
        return shard_tasks(self.images, self.source_format, self.resize, out, options)

    def source_spec(self) -> SourceSpec:
        """The source to read images from; an in-memory dataset source cannot be reopened from a plan."""
        data = dict(self.source)
        data["images"] = None if data.get("images") is None else _location(data["images"])
        data["split_files"] = tuple((split, _location(f)) for split, f in data.get("split_files", ()))
        data["captions"] = tuple(CaptionSource(**c) for c in data.get("captions", ()))
        return SourceSpec(**data)


def _location(text: str) -> Path | str:
    """A recorded path as the readers take it: a URL stays text."""
    return text if storage.is_url(text) else Path(text)


_NOT_RECORDED = frozenset({"dataset", "storage_options"})


def source_record(spec: SourceSpec) -> dict[str, Any]:
    """The JSON form of ``spec`` a plan keeps (its in-memory ``dataset`` and ``storage_options`` left out)."""
    # Not its in-memory dataset, nor its storage options (credentials may be in them: the
    # commands that reopen a plan take --storage-options again).
    data = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in _NOT_RECORDED}
    data = {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}
    data["split_files"] = [[split, str(f)] for split, f in spec.split_files]
    data["captions"] = [dataclasses.asdict(c) for c in spec.captions]
    return data


#: SampleSpec fields that are tuples (list columns in the plan); the plan may lack the optional ones.
_TUPLE_FIELDS = frozenset({"captions", "caption_ids", "row_ids", "source_ids", "source_urls", "caption_sources"})
_OPTIONAL_FIELDS = frozenset({"source_urls", "caption_sources"})


def _sample_specs(images: pa.Table) -> Iterator[SampleSpec]:
    """One :class:`SampleSpec` per row of the plan's ``images``, in row order (read column by column:
    a plan of millions of images turns into tasks without a dict per row)."""
    columns: list[list[Any]] = []
    for field in dataclasses.fields(SampleSpec):
        if field.name in _OPTIONAL_FIELDS and field.name not in images.column_names:
            columns.append([()] * images.num_rows)
            continue
        values = images[field.name].to_pylist()
        if field.name in _TUPLE_FIELDS:
            values = [tuple(v or ()) for v in values]
        columns.append(values)
    return (SampleSpec(*row) for row in zip(*columns, strict=True))


def shard_tasks(
    images: pa.Table, source_format: str, resize: int | None, out: Location, options: Options = None
) -> list[ShardTask]:
    """One write task per shard of the planned ``images`` (see :meth:`Plan.tasks`), sorted by name."""
    samples: dict[str, list[SampleSpec]] = {}
    for shard, spec in zip(images["shard"].to_pylist(), _sample_specs(images), strict=True):
        samples.setdefault(shard, []).append(spec)
    return [
        ShardTask(name, str(out), tuple(s), source_format, resize, done_key(name), dict(options) if options else None)
        for name, s in sorted(samples.items())
    ]


@dataclass(frozen=True)
class PlannedShard:
    """One shard of a plan as its rows: the plan's columns of its images, in a table of their own
    (cheap to send to a worker, where :meth:`task` makes the shard's :class:`ShardTask`, the same
    as :func:`shard_tasks` makes from the whole plan)."""

    name: str
    split: str
    rows: pa.Table
    source_format: str
    resize: int | None
    out: str
    options: dict[str, Any] | None = None

    def task(self) -> ShardTask:
        return shard_tasks(self.rows, self.source_format, self.resize, self.out, self.options)[0]


def planned_shards(
    images: pa.Table, source_format: str, resize: int | None, out: Location, options: Options = None
) -> list[PlannedShard]:
    """Each shard of the planned ``images`` (whose rows come shard by shard) as a :class:`PlannedShard`,
    sorted by name: what :func:`shard_tasks` gives, with the Python objects made by whoever runs them."""
    wanted = [f.name for f in dataclasses.fields(SampleSpec) if f.name in images.column_names]
    columns = images.select([*wanted, "shard"])
    shipped = dict(options) if options else None
    shards = []
    for name, (start, length) in sorted(shard_runs(columns["shard"]).items()):
        rows = columns.take(np.arange(start, start + length))  # a copy: a slice would pickle the whole plan's buffers
        shards.append(PlannedShard(name, rows["split"][0].as_py(), rows, source_format, resize, str(out), shipped))
    return shards


def shard_runs(shards: pa.ChunkedArray) -> dict[str, tuple[int, int]]:
    """Each shard's first row and row count in a plan's ``shard`` column, whose rows come shard by shard."""
    runs: dict[str, tuple[int, int]] = {}
    last = None
    for row, name in enumerate(shards.to_pylist()):
        if name != last and name in runs:
            raise ValueError(f"the plan's rows of shard {name} are not together")
        start, length = runs.get(name, (row, 0))
        runs[name] = (start, length + 1)
        last = name
    return runs


def done_key(name: str) -> str:
    """Where the done record of shard ``name`` goes, relative to ``OUT`` (POSIX separators)."""
    return (Path(STATE) / DONE / f"{name}.json").as_posix()


def state_dir(out: Location) -> Path | str:
    """``OUT/.capshard`` (a ``Path`` for a local ``out``, else a URL)."""
    return _at(out, STATE)


def done_dir(out: Location) -> Path | str:
    """Where the done records of ``out``'s shards live."""
    return _at(out, STATE, DONE)


def done_path(out: Location, name: str) -> Path | str:
    """The done record of shard ``name``."""
    return _at(out, STATE, DONE, f"{name}.json")


def _at(out: Location, *parts: str) -> Path | str:
    return storage.join(out, *parts) if storage.is_url(out) else Path(out, *parts)


def status(out: Location, options: Options = None) -> str:
    """``none`` (no plan), ``stale`` (a plan of an older layout, or cut short) or ``complete``."""
    if not storage.exists(_at(out, STATE, IDENTITY), options):
        return "none"
    try:
        layout = json.loads(storage.read_bytes(_at(out, STATE, PLAN_JSON), options)).get("layout")
    except (OSError, ValueError, AttributeError):
        return "stale"
    return "complete" if layout == LAYOUT else "stale"


def save(out: Location, plan: Plan, options: Options = None) -> None:
    """Write ``plan`` under ``OUT/.capshard/``; the shard names go to the ledger first, the identity last."""
    record(out, plan.shards(), options)  # before any shard exists
    _put_table(_at(out, STATE, INPUTS), plan.listing, options)
    _put_table(_at(out, STATE, PLAN_TABLE), plan.images, options)
    _put_table(_at(out, STATE, REJECTS_TABLE), plan.rejects, options)
    meta = {
        "layout": LAYOUT,
        "rows": plan.n_rows,
        "report": plan.report.to_dict(),
        "resize": plan.resize,
        "source": plan.source,
    }
    storage.put_whole(_at(out, STATE, PLAN_JSON), json_bytes(meta), options)
    storage.put_whole(_at(out, STATE, IDENTITY), json_bytes(plan.identity), options)  # last: the plan is complete


def load(out: Location, options: Options = None) -> Plan:
    """The complete plan saved in ``out``; :class:`IntegrityError` naming the file when it cannot be read."""
    state = state_dir(out)
    if status(out, options) != "complete":
        raise IntegrityError(f"{state} holds no complete plan of layout {LAYOUT}")
    try:
        identity = json.loads(storage.read_bytes(_at(out, STATE, IDENTITY), options))
        meta = json.loads(storage.read_bytes(_at(out, STATE, PLAN_JSON), options))
        images = _get_table(_at(out, STATE, PLAN_TABLE), options)
        rejects = _get_table(_at(out, STATE, REJECTS_TABLE), options).cast(REJECT_SCHEMA)
        listing = saved_listing(out, options)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise IntegrityError(f"the plan in {state} cannot be read: {e}") from None
    if listing is None:
        raise IntegrityError(f"the plan in {state} has no {INPUTS}")
    return Plan(
        identity=identity,
        listing=listing,
        images=images,
        rejects=rejects,
        report=ResolutionReport.from_dict(meta["report"], f"the plan in {state}"),
        n_rows=int(meta["rows"]),
        resize=meta["resize"],
        source=meta["source"],
    )


def saved_identity(out: Location, options: Options = None) -> dict[str, Any] | None:
    """The identity of the (complete or stale) plan in ``out``, None when there is none."""
    where = _at(out, STATE, IDENTITY)
    if not storage.exists(where, options):
        return None
    data = json.loads(storage.read_bytes(where, options))
    return data if isinstance(data, dict) else None


def saved_listing(out: Location, options: Options = None, *, folder: str = STATE) -> pa.Table | None:
    """The inputs listing saved in ``OUT/.capshard/`` (or, with ``folder=""``, the finished build's); None if none."""
    where = _at(out, *([folder] if folder else []), INPUTS)
    local = storage.local_path(where)
    if local is not None:
        return read_listing(local)
    if not storage.exists(where, options):
        return None
    try:
        return _get_table(where, options).cast(INPUTS_SCHEMA)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise IntegrityError(f"{where} cannot be read: {e}") from None


def done_record(out: Location, name: str, options: Options = None) -> ShardResult | None:
    """The done record of shard ``name`` in ``out`` (None: absent or unreadable); the shard is not looked at."""
    path = done_path(out, name)
    try:
        return ShardResult.from_json(json.loads(storage.read_bytes(path, options)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring the unreadable done record %s (%s); writing %s again", path, e, name)
        return None


def finished(out: Location, name: str, options: Options = None) -> ShardResult | None:
    """The done record of shard ``name`` when the shard in ``out`` still matches it, else None."""
    shard = storage.join(out, name)
    if not storage.exists(shard, options):
        return None
    result = done_record(out, name, options)
    if result is None:
        return None
    if storage.size(shard, options) != result.bytes or storage.sha256(shard, options)[0] != result.sha256:
        return None
    return result


def remove_state(out: Location, options: Options = None) -> None:
    """Remove ``OUT/.capshard/`` (once the manifest is written, or by a clean-up)."""
    local = storage.local_path(out)
    if local is not None:
        shutil.rmtree(local / STATE, ignore_errors=True)
        return
    state = storage.join(out, STATE)
    storage.remove([storage.join(state, key) for key in storage.list_prefix(state, options)], options)


def _put_table(where: Location, table: pa.Table, options: Options) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.put_whole(where, sink.getvalue().to_pybytes(), options)


def _get_table(where: Location, options: Options) -> pa.Table:
    return pq.read_table(pa.BufferReader(storage.read_bytes(where, options)))
