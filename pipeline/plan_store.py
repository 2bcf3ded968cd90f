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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import IntegrityError
from .format import DONE, STATE, STATE_FILE, ResolutionReport
from .inputs import INPUTS, read_listing, write_listing
from .outputs import record
from .readers import CaptionSource, SourceSpec
from .rejects import REJECT_SCHEMA
from .write import SampleSpec, ShardResult, ShardTask, file_sha256, write_bytes_atomic, write_json_atomic

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

    def tasks(self, out: Path) -> list[ShardTask]:
        """One write task per shard, sorted by name."""
        samples: dict[str, list[SampleSpec]] = {}
        for r in self.images.to_pylist():
            samples.setdefault(r["shard"], []).append(_sample_spec(r))
        done = (Path(STATE) / DONE).as_posix()
        return [
            ShardTask(name, str(out), tuple(s), self.source_format, self.resize, f"{done}/{name}.json")
            for name, s in sorted(samples.items())
        ]

    def source_spec(self) -> SourceSpec:
        """The source to read images from; an in-memory dataset source cannot be reopened from a plan."""
        data = dict(self.source)
        data["images"] = None if data.get("images") is None else Path(data["images"])
        data["split_files"] = tuple((split, Path(f)) for split, f in data.get("split_files", ()))
        data["captions"] = tuple(CaptionSource(**c) for c in data.get("captions", ()))
        return SourceSpec(**data)


def source_record(spec: SourceSpec) -> dict[str, Any]:
    """The JSON form of ``spec`` a plan keeps (its in-memory ``dataset`` left out)."""
    data = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "dataset"}
    data = {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}
    data["split_files"] = [[split, str(f)] for split, f in spec.split_files]
    data["captions"] = [dataclasses.asdict(c) for c in spec.captions]
    return data


def _sample_spec(r: dict[str, Any]) -> SampleSpec:
    return SampleSpec(
        key=r["key"],
        image_id=r["image_id"],
        group=r["group"],
        split=r["split"],
        captions=tuple(r["captions"]),
        caption_ids=tuple(r["caption_ids"]),
        row_ids=tuple(r["row_ids"]),
        source_ids=tuple(r["source_ids"]),
        source_urls=tuple(r.get("source_urls") or ()),
        sha256=r["sha256"],
        format=r["format"],
        width=r["width"],
        height=r["height"],
        image_path=r["image_path"],
        image_index=r["image_index"],
        file_name=r["file_name"],
        caption_sources=tuple(r.get("caption_sources") or ()),
    )


def state_dir(out: Path) -> Path:
    """``OUT/.capshard``."""
    return out / STATE


def done_dir(out: Path) -> Path:
    """Where the done records of ``out``'s shards live."""
    return out / STATE / DONE


def done_path(out: Path, name: str) -> Path:
    """The done record of shard ``name``."""
    return done_dir(out) / f"{name}.json"


def status(out: Path) -> str:
    """``none`` (no plan), ``stale`` (a plan of an older layout, or cut short) or ``complete``."""
    state = state_dir(out)
    if not (state / IDENTITY).is_file():
        return "none"
    try:
        with open(state / PLAN_JSON, encoding="utf-8") as f:
            layout = json.load(f).get("layout")
    except (OSError, ValueError, AttributeError):
        return "stale"
    return "complete" if layout == LAYOUT else "stale"


def save(out: Path, plan: Plan) -> None:
    """Write ``plan`` under ``OUT/.capshard/``; the shard names go to the ledger first, the identity last."""
    record(out, plan.shards())  # before any shard exists
    state = state_dir(out)
    state.mkdir(parents=True, exist_ok=True)
    write_listing(state / INPUTS, plan.listing)
    _write_table(state / PLAN_TABLE, plan.images)
    _write_table(state / REJECTS_TABLE, plan.rejects)
    write_json_atomic(
        state / PLAN_JSON,
        {
            "layout": LAYOUT,
            "rows": plan.n_rows,
            "report": plan.report.to_dict(),
            "resize": plan.resize,
            "source": plan.source,
        },
    )
    write_json_atomic(state / IDENTITY, plan.identity)  # last: the plan is complete


def load(out: Path) -> Plan:
    """The complete plan saved in ``out``; :class:`IntegrityError` naming the file when it cannot be read."""
    state = state_dir(out)
    if status(out) != "complete":
        raise IntegrityError(f"{state} holds no complete plan of layout {LAYOUT}")
    try:
        identity = _read_json(state / IDENTITY)
        meta = _read_json(state / PLAN_JSON)
        images = pq.read_table(state / PLAN_TABLE)
        rejects = pq.read_table(state / REJECTS_TABLE).cast(REJECT_SCHEMA)
        listing = read_listing(state / INPUTS)
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


def finished(out: Path, name: str) -> ShardResult | None:
    """The done record of shard ``name`` when the file in ``out`` still matches it, else None."""
    path, shard = done_path(out, name), out / name
    if not (path.is_file() and shard.is_file()):
        return None
    try:
        result = ShardResult.from_json(_read_json(path))
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring the unreadable done record %s (%s); writing %s again", path, e, name)
        return None
    if shard.stat().st_size != result.bytes or file_sha256(shard)[0] != result.sha256:
        return None
    return result


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_table(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(path, sink.getvalue().to_pybytes())
