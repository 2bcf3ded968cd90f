"""``build``: run read → probe → resolve → plan → write → finalize into one folder.

The folder is the unit of a build. While a build runs, ``OUT/.capshard/`` holds its
identity (:mod:`pipeline.identity`: annotation fingerprint, digests of every image's path,
size and mtime, format, reading and output options), the inputs listing, the plan and the
``done`` record of each written shard; the manifest, written last, is the commit marker, after which
``.capshard/`` is removed. Re-running the same command resumes: finished shards whose
bytes match their record are kept, the rest are written again, and the result is
byte-identical to an uninterrupted run. Running it over a finished build of the same
input and options is a no-op; of anything else, an error that says what differs, unless
``overwrite``.

Three phases, also run apart by the cluster-job commands: :func:`plan_build` (``capshard
plan``), :func:`write_slice` (``capshard write --task I --tasks N``: shard ``k`` in name order
is slice ``k % N``'s) and :func:`finalize_build` (``capshard finalize``: every planned shard
must be at ``OUT`` with the size and sha256 of its done record). :func:`build` runs them in
sequence, the one slice 0 of 1, so the bytes are the same either way.

One build at a time: the folder's lock (:mod:`.lock`) is held from before ``OUT`` is
read until the manifest is written; by ``plan``/``finalize`` exclusively, by the ``write``
slices shared. ``OUT`` may be an fsspec URL (``config.out`` is then a ``str``): everything
goes through :mod:`.storage`, and the lock becomes a claim (:func:`.lock.claim`), which is
no mutual exclusion; ``write`` slices take none (they write distinct keys). Only files the
build recorded as its own are ever replaced or removed (:mod:`.outputs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from . import FORMAT_VERSION, plan_store
from .build_folder import claimant, output_errors, prepare_out, remove_temporary, take_out
from .config import BuildConfig
from .decontam import apply_near, near_options
from .errors import BuildError, CapshardError, OutputError, UsageError
from .executors import Executor, ExecutorChoice
from .extra_captions import add_captions, read_sources
from .finalize import (
    REJECTS,
    check_shards,
    manifest_dict,
    write_index,
    write_listing_to,
    write_manifest,
    write_rejects,
    write_sizes,
)
from .format import STATE
from .identity import default_version, input_check, make_identity
from .inputs import absolute_paths, image_root, referenced_paths, scan, shown_paths, summary, with_hashes
from .lock import hold
from .outputs import check_location, record, survey
from .plan import plan_shards
from .probe import ProbeTask, distinct_refs, probe_images, probe_table
from .readers import Reader, SourceSpec, detect, get_reader
from .resolve import Resolution, resolve
from .rows import read_rows
from .stats import BuildStats
from .storage import Location, Options, is_url, join, put_whole, read_bytes
from .write import ShardResult, ShardTask, json_bytes, write_shard
from .write_ahead import (
    Ahead,
    AheadTask,
    Bets,
    Commit,
    assumed_probe,
    commit,
    confirmed,
    discard,
    kept,
    probe_and_write,
    save_identity,
)
from .write_ahead import remove_temporary as remove_ahead_temporary

log = logging.getLogger(__name__)
T = TypeVar("T")
#: ``OUT/.capshard/`` file with the manifest's name and version (``--name``, ``--dataset-version``).
NAMES = "names.json"

#: A progress reporter: ``progress(label, total)`` gives a context whose value takes increments.
Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@contextlib.contextmanager
def _no_progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


@dataclass(frozen=True)
class BuildResult:
    """What ``build`` did: ``status`` is ``built``, ``resumed`` or ``up_to_date``."""

    out: Location
    status: str
    manifest: dict[str, Any]
    reused_shards: int = 0


@dataclass(frozen=True)
class Planned:
    """What the *plan* phase left in ``out``: ``status`` is ``planned``, ``kept`` (the saved plan of
    the same input, resumed) or ``up_to_date`` (a finished build of it: ``plan`` is None)."""

    out: Location
    status: str
    plan: plan_store.Plan | None
    manifest: dict[str, Any] | None = None
    #: Shards written ahead (:mod:`.write_ahead`) as the plan has them, by name, not yet committed.
    ahead: dict[str, Ahead] = dataclasses.field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Slice:
    """Slice ``task`` of ``tasks``: shard ``k`` of the plan (by sorted name) belongs to slice ``k % tasks``."""

    task: int
    tasks: int

    def __post_init__(self) -> None:
        if self.tasks < 1 or not 0 <= self.task < self.tasks:
            raise UsageError(f"--task must be between 0 and --tasks - 1 ({self.tasks - 1}), not {self.task}")

    def of(self, items: list[T]) -> list[T]:
        """This slice's share of ``items`` (sorted by the caller)."""
        return items[self.task :: self.tasks]


@dataclass(frozen=True)
class Written:
    """What :func:`write_slice` did: shards written now, shards already written; ``finished``:
    the build was already finalized."""

    part: Slice
    written: int
    reused: int
    finished: bool = False
    #: Every shard of the slice as this run wrote it or found it unchanged (its bytes hashed now).
    results: dict[str, ShardResult] = dataclasses.field(default_factory=dict, compare=False, repr=False)


def build(spec: SourceSpec, config: BuildConfig, progress: Progress = _no_progress) -> BuildResult:
    """Build shards from ``spec`` into ``config.out``; see the module docstring.

    The three phases of the split commands (:func:`plan_build`, :func:`write_slice` of the one
    slice 0 of 1, :func:`finalize_build`) in sequence, under one exclusive lock; the manifest's
    ``stats`` time this run's probe and write."""
    check_location(config.out, spec.images, spec.path, config.storage_options)
    stats, opts = BuildStats(config.workers), config.storage_options
    with contextlib.ExitStack() as stack:
        planned, executor = _plan_phase(spec, config, progress, stack, "build", stats, write_ahead=config.one_pass)
        if planned.plan is None:
            return BuildResult(planned.out, "up_to_date", planned.manifest or {})
        assert executor is not None  # made whenever there is a plan
        written = _write_phase(planned.out, planned.plan, Slice(0, 1), executor, progress, opts, stats, planned.ahead)
        manifest = _finalize_phase(planned.out, planned.plan, opts, stats, _REWRITE_HINT, written.results)
    earlier = sum(done.reused for done in planned.ahead.values())  # written by a pass that was stopped
    status = "resumed" if planned.status == "kept" or earlier else "built"
    return BuildResult(planned.out, status, manifest, written.reused + earlier)


def plan_build(spec: SourceSpec, config: BuildConfig, progress: Progress = _no_progress) -> Planned:
    """``capshard plan``: read, probe, resolve and save the plan under ``OUT/.capshard/``; write no shard."""
    check_location(config.out, spec.images, spec.path, config.storage_options)
    with contextlib.ExitStack() as stack:
        planned, _ = _plan_phase(spec, config, progress, stack, "plan", BuildStats(config.workers))
    return planned


def write_slice(
    out: Location, part: Slice, executor: ExecutorChoice, progress: Progress = _no_progress, options: Options = None
) -> Written:
    """``capshard write``: write the shards of slice ``part`` of the plan in ``out`` that are not written yet.

    Holds a local ``out``'s lock *shared*: the slices run in parallel, a plan or an ``--overwrite``
    cannot. On an object store it takes nothing (the slices write distinct keys; see the module
    docstring). Over a finished build (plan gone, manifest there) it does nothing. ``options``: the
    ``--storage-options`` of ``out`` and of the source's URLs."""
    with _shared(out, f"write --task {part.task} --tasks {part.tasks}"):
        if plan_store.status(out, options) != "complete":
            if survey(out, options).manifest is not None:
                return Written(part, 0, 0, finished=True)
            raise OutputError(f"{out} holds no complete plan: run capshard plan first")
        plan = plan_store.load(out, options)
        tasks = part.of(plan.tasks(_shipped_out(out), options))
        todo = [t for t in tasks if plan_store.finished(out, t.name, options) is None]
        if not todo:  # a slice already written: start no workers
            return Written(part, 0, len(tasks))
        spec = dataclasses.replace(_shipped_spec(plan.source_spec()), storage_options=dict(options or {}))
        reader = get_reader(plan.source_format)(spec)
        with contextlib.closing(executor.make(reader, _worker_modules(reader))) as ex:
            return _write_phase(out, plan, part, ex, progress, options, BuildStats(executor.workers))


def finalize_build(out: Location, options: Options = None) -> BuildResult:
    """``capshard finalize``: check every planned shard, then write index, rejects and, last, the manifest.

    A shard missing, or not matching its done record, is an :class:`OutputError` naming it. The
    manifest has no ``stats``: the probe and the writes ran in other processes."""
    with contextlib.ExitStack() as stack:
        if is_url(out):
            saved = plan_store.saved_identity(out, options)
            with output_errors(out):
                take_out(out, "finalize", stack, claimant(saved or {}), overwrite=False, options=options)
        else:
            _require_folder(out)
            stack.enter_context(hold(Path(out), "finalize"))
        if plan_store.status(out, options) != "complete":
            manifest = survey(out, options).manifest
            if manifest is not None:
                return BuildResult(out, "up_to_date", manifest.to_dict())
            raise OutputError(f"{out} holds no complete plan: run capshard plan first")
        remove_temporary(out, None)  # left by a write killed mid-shard; nobody writes now
        plan = plan_store.load(out, options)
        return BuildResult(out, "built", _finalize_phase(out, plan, options, None, _SLICES_HINT))


def _require_folder(out: Location) -> None:
    if not Path(out).is_dir():
        raise OutputError(f"{out} holds no plan: run capshard plan first")


@contextlib.contextmanager
def _shared(out: Location, command: str) -> Iterator[None]:
    """A local ``out``'s lock held shared for ``command``; nothing on an object store."""
    if is_url(out):
        yield
        return
    _require_folder(out)
    with hold(Path(out), command, shared=True):
        yield


def _plan_phase(
    spec: SourceSpec,
    config: BuildConfig,
    progress: Progress,
    stack: contextlib.ExitStack,
    command: str,
    stats: BuildStats,
    *,
    write_ahead: bool = False,
) -> tuple[Planned, Executor | None]:
    """*plan*: lock ``out`` (on ``stack``), check what it holds, then plan (or keep the saved plan).

    Also the executor it probed with, left open on ``stack`` for the write phase. ``write_ahead``:
    write the shards as the images are probed, where the build allows (:func:`_guess`)."""
    fmt = detect(spec) if config.format == "auto" else config.format
    if spec.captions_from and fmt != "wds":
        raise UsageError(f"--captions-from joins on WebDataset keys or URLs: it needs --format wds, not {fmt}")
    if config.id_column is not None:
        spec = dataclasses.replace(spec, id_column=config.id_column)
    reader = get_reader(fmt)(spec)
    if config.format == "auto":
        log.info("format auto: reading %s as %s", spec.path or "the in-memory dataset", fmt)
    # Started now, so a process pool's workers start Python and import while the rows are read;
    # they get the reader (which read() may change) with their first task.
    choice = ExecutorChoice(config.executor, config.workers, config.ray_address)
    executor = stack.enter_context(contextlib.closing(choice.make(preload=_worker_modules(reader))))
    executor.start()
    rows = _read(reader)
    root = image_root(spec.images, spec.path)
    listing = scan(referenced_paths(rows), root, options=spec.storage_options)
    identity = make_identity(
        format_version=FORMAT_VERSION,
        fmt=fmt,
        fingerprint=reader.fingerprint(),
        inputs=summary(listing),
        reading=spec.reading_options(),
        options=config.output_options(),
    )
    out, opts = config.out, config.storage_options
    differs = input_check(identity, listing, config.check_inputs, root, spec.storage_options)
    with output_errors(out):
        existing = prepare_out(out, differs, config, stack, command, identity)
    if existing is not None:
        return Planned(out, "up_to_date", None, existing), None
    resumed = plan_store.status(out, opts) == "complete"
    executor.context = _worker_reader(reader, fmt, spec)
    guess = _guess(config, listing, root, fmt, identity) if write_ahead and not resumed else None
    plan, ahead = _planned(rows, reader, spec, config, executor, progress, identity, listing, resumed, stats, guess)
    return Planned(out, "kept" if resumed else "planned", plan, ahead=ahead), executor


def _planned(
    rows: pa.Table,
    reader: Reader,
    spec: SourceSpec,
    config: BuildConfig,
    executor: Executor,
    progress: Progress,
    identity: dict[str, Any],
    listing: pa.Table,
    resumed: bool,
    stats: BuildStats,
    guess: _Guess | None = None,
) -> tuple[plan_store.Plan, dict[str, Ahead]]:
    """The plan: the saved one when resuming, else planned now and saved. Its identity is ``identity``
    with the inputs summary of the listing that holds the images' sha256 (from the saved listing or the probe).
    Also the shards written ahead that the plan keeps (with a ``guess``: :func:`_plan`)."""
    out, root, opts = config.out, image_root(spec.images, spec.path), config.storage_options
    if resumed:
        saved = plan_store.load(out, opts)
        listing = with_hashes(listing, _known_hashes(saved.listing, root), root)
        log.info("resuming the unfinished build in %s", out)
        with output_errors(out):
            _save_names(out, spec, config)
        return dataclasses.replace(saved, identity={**identity, "inputs": summary(listing)}, listing=listing), {}
    if plan_store.status(out, opts) == "stale":
        log.info("%s holds the plan of an older capshard: planning again", out)
    resolution, known, ahead = _plan(rows, reader, config, executor, progress, stats, guess)
    listing = with_hashes(listing, known, root)
    plan = plan_store.Plan(
        identity={**identity, "inputs": summary(listing)},
        listing=listing,
        images=resolution.images,
        rejects=resolution.rejects,
        report=resolution.report,
        n_rows=resolution.n_rows,
        resize=config.resize,
        source=plan_store.source_record(spec),
    )
    with output_errors(out):  # stopped here, the next run takes the shards written ahead as they are
        _save_names(out, spec, config)  # before the plan is complete: a complete plan always has them
        plan_store.save(out, plan, opts)
    return plan, ahead


def _name(spec: SourceSpec, config: BuildConfig) -> str:
    return config.name or spec.name or (Path(spec.path).stem if spec.path else "dataset")


def _save_names(out: Location, spec: SourceSpec, config: BuildConfig) -> None:
    """The manifest's name and ``--dataset-version`` (None: a hash of the input), for the finalize phase.

    Not part of the build's identity: a re-run with another ``--name`` finishes under the new name."""
    names = {"name": _name(spec, config), "version": config.version}
    put_whole(join(out, STATE, NAMES), json_bytes(names), config.storage_options)


def _load_names(out: Location, plan: plan_store.Plan, options: Options) -> tuple[str, str]:
    """The name and version :func:`_save_names` kept; the defaults when the plan has none."""
    try:
        names = json.loads(read_bytes(join(out, STATE, NAMES), options))
    except FileNotFoundError:
        source = plan.source
        names = {"name": source.get("name") or (Path(source["path"]).stem if source.get("path") else "dataset")}
    return str(names["name"]), names.get("version") or default_version(plan.identity)


#: What to do about missing shards, after ``build`` and after ``finalize``.
_REWRITE_HINT = "Is --out a location every worker writes to (not a node-local path)? Re-run to write them again"
_SLICES_HINT = "Run capshard write for their slices (a node-local --out on a cluster leaves shards on the nodes)"


def _finalize_phase(
    out: Location,
    plan: plan_store.Plan,
    opts: Options,
    stats: BuildStats | None,
    hint: str,
    hashed: dict[str, ShardResult] | None = None,
) -> dict[str, Any]:
    """*finalize*: every planned shard must be in ``out`` with the size and sha256 of its done record
    (checked here, on the driver: :func:`.finalize.check_shards`; ``hashed``: the shards this run
    wrote or re-hashed, whose records it wrote or read and whose bytes are not read again); then :func:`_finish`."""
    hashed = hashed or {}
    records = {name: hashed.get(name) or plan_store.done_record(out, name, opts) for name in plan.shards()}
    results = {name: done for name, done in records.items() if done is not None}
    check_shards(out, plan.shards(), results, opts, hint, hashed)
    return _finish(out, plan, results, *_load_names(out, plan, opts), opts, stats)


def _finish(
    out: Location,
    plan: plan_store.Plan,
    results: dict[str, ShardResult],
    name: str,
    version: str,
    opts: Options,
    stats: BuildStats | None,
) -> dict[str, Any]:
    """Index, rejects, inputs listing, sizes and, last, the manifest; then the state goes."""
    with output_errors(out):
        write_index(out, plan.images, results, opts)
        write_rejects(out, plan.rejects, opts)
        write_listing_to(out, plan.listing, opts)
        write_sizes(out, results, opts)
    manifest = manifest_dict(
        identity=plan.identity,
        name=name,
        version=version,
        source_path=plan.source.get("path"),
        planned=plan.images,
        results=results,
        rejects=plan.rejects,
        report=plan.report,
        n_rows=plan.n_rows,
        stats=None if stats is None else stats.to_dict(),
    )
    _check_accounting(manifest)
    with output_errors(out):
        write_manifest(out, manifest, opts)
    plan_store.remove_state(out, opts)
    return manifest


def _read(reader: Reader) -> pa.Table:
    try:
        rows = read_rows(reader.read())
    except OSError as e:  # a source file missing or unreadable: the user's error, in one line
        if e.errno is None:
            raise
        raise UsageError(f"cannot read {e.filename or reader.spec.path}: {e.strerror}") from None
    log.info("read %d caption rows", rows.num_rows)
    return rows


def _known_hashes(listing: pa.Table | None, root: str) -> pa.Table | None:
    """The absolute path (``image_path``) and ``sha256`` of each hashed file of a saved listing."""
    if listing is None:
        return None
    hashed = listing.filter(pc.is_valid(listing["sha256"]))
    return pa.table({"image_path": absolute_paths(hashed["path"], root), "sha256": hashed["sha256"]})


def _plan(
    rows: pa.Table,
    reader: Reader,
    config: BuildConfig,
    executor: Executor,
    progress: Progress,
    stats: BuildStats,
    guess: _Guess | None = None,
) -> tuple[Resolution, pa.Table, dict[str, Ahead]]:
    """probe → resolve → plan (the resolution's images with ``shard`` and ``position``), with the
    reject budget checked before writing; also the sha256 the probe found for each image path.

    With a ``guess`` that applies to these rows, the probe is the write of the shards planned on
    its assumption (:mod:`.write_ahead`); the third value holds those the plan keeps as written."""
    extra = read_sources(reader.spec.captions)  # --captions: user errors before the images are read
    refs = distinct_refs(rows)
    if config.id_column is not None and reader.id_column() != config.id_column:
        raise UsageError(
            f"--id {config.id}: this {reader.name} source has no id column {config.id_column!r}"
            + (f" (its id column is {reader.id_column()!r})" if reader.id_column() else " (it has none)")
        )
    assumed = None if guess is None else _assumed_plan(guess, refs, rows, reader, config, extra)
    ahead: dict[str, Ahead] = {}
    if guess is None or assumed is None:
        probed = _probe(refs, reader, config, executor, progress, stats)
    else:
        probed, ahead = _probe_writing(refs, assumed.images, guess, reader, config, executor, progress, stats)
    try:
        planned, keep = _real_plan(rows, probed, assumed, reader, config, extra)
    except CapshardError:
        if assumed is not None:
            discard(config.out)  # the same input and options would stop here again (an interrupt keeps them)
        raise
    if ahead:
        discard(config.out, [name for name, done in ahead.items() if name not in keep or done.result is None])
        ahead = {name: done for name, done in ahead.items() if name in keep and done.result is not None}
        shards = pc.count_distinct(planned.images["shard"]).as_py()
        again = f"; writing the other {shards - len(ahead)} again" if len(ahead) < shards else ""
        log.info("wrote %d of %d shards as their images were probed%s", len(ahead), shards, again)
    hashed = probed.filter(pc.and_(pc.is_valid(probed["image_path"]), pc.is_valid(probed["sha256"])))
    return planned, hashed.select(["image_path", "sha256"]), ahead


def _real_plan(
    rows: pa.Table, probed: pa.Table, assumed: _Assumed | None, reader: Reader, config: BuildConfig, extra: Any
) -> tuple[Resolution, set[str]]:
    """The plan of the real probe, and the shards of the ``assumed`` plan it holds unchanged: the
    assumed one with the probed hashes, sizes, formats and dimensions where the probe found what it
    assumed (:func:`.write_ahead.confirmed`: every shard kept), else resolved anew (:func:`_resolved`;
    :func:`.write_ahead.kept`); the reject budget checked either way."""
    resolution = None if assumed is None else confirmed(assumed.resolution, assumed.probe, probed)
    if resolution is None:
        resolution = _resolved(rows, probed, reader, config, extra)
        return resolution, set() if assumed is None else kept(assumed.images, resolution.images, probed)
    log.debug("the probe found what the plan assumed: the plan is the assumed one, with the images' hashes")
    _check_reject_budget(resolution, config)
    return resolution, set(pc.unique(resolution.images["shard"]).to_pylist())


def _resolved(
    rows: pa.Table, probed: pa.Table, reader: Reader, config: BuildConfig, extra: Any, *, budget: bool = True
) -> Resolution:
    """resolve → (near duplicates) → extra captions → (reject budget) → plan, from a probe table."""
    resolution = resolve(rows, probed, config, id_column=reader.id_column(), multi_caption=reader.multi_caption())
    if config.hashes:
        resolution = apply_near(resolution, rows, probed, near_options(config))
    resolution = add_captions(resolution, rows, extra, config.max_caption_chars)
    if budget:
        _check_reject_budget(resolution, config)
    return dataclasses.replace(resolution, images=plan_shards(resolution.images, config))


def _probe(
    refs: pa.Table, reader: Reader, config: BuildConfig, executor: Executor, progress: Progress, stats: BuildStats
) -> pa.Table:
    """The probe table of ``refs`` (stage *probe*, timed as such)."""
    with progress("probing images", refs.num_rows) as advance, stats.stage("probe") as probe_stats:
        probed = probe_images(
            refs,
            reader,
            executor,
            formats=config.image_formats,
            max_pixels=config.max_pixels,
            phash=config.hashes,
            validate=config.validate,
            on_progress=advance,
        )
        probe_stats.images += probed.num_rows
        probe_stats.bytes += pc.sum(probed["n_bytes"]).as_py() or 0
    return probed


@dataclass(frozen=True)
class _Guess:
    """What ``build`` needs to plan before the probe (:mod:`.write_ahead`): the inputs listing (the
    files' sizes) and how its shard tasks are made."""

    listing: pa.Table
    root: str
    fmt: str
    resize: int | None
    out: Location
    options: Options
    #: The build's identity before the probe: a stopped pass is resumed by a run of the same.
    identity: dict[str, Any]

    def assumed(self, refs: pa.Table) -> pa.Table | None:
        """The assumed probe of ``refs``; None unless every reference is a file path."""
        if refs.num_rows == 0 or refs["image_path"].null_count or refs["image_index"].null_count != refs.num_rows:
            return None
        shown = shown_paths(refs["image_path"], self.root)
        return assumed_probe(refs, self.listing["size"].take(pc.index_in(shown, self.listing["path"])))

    def shards(self, images: pa.Table) -> list[plan_store.PlannedShard]:
        return plan_store.planned_shards(images, self.fmt, self.resize, _shipped_out(self.out), self.options)


def _guess(config: BuildConfig, listing: pa.Table, root: str, fmt: str, identity: dict[str, Any]) -> _Guess | None:
    """How to write ahead (one pass, the default), where this build can: a local ``out``, the process
    pool or ``--workers 1``, and a plan that the probe's hashes change only when images are unusable or
    alike (not ``--id content``, not the perceptual hashes of near-duplicate handling)."""
    why_not = [
        reason
        for reason, applies in (
            ("--out is a URL", is_url(config.out)),
            (f"--executor {config.executor}", config.executor != "process"),
            ("perceptual hashes are computed", config.hashes),
            ("--id content", config.id == "content"),
        )
        if applies
    ]
    if why_not:
        log.info("probing every image before writing any shard (%s)", ", ".join(why_not))
        return None
    return _Guess(listing, root, fmt, config.resize, config.out, config.storage_options, identity)


@dataclass(frozen=True)
class _Assumed:
    """The guess's assumed probe and the plan made from it (its reject budget not checked)."""

    probe: pa.Table
    resolution: Resolution

    @property
    def images(self) -> pa.Table:
        return self.resolution.images


def _assumed_plan(
    guess: _Guess, refs: pa.Table, rows: pa.Table, reader: Reader, config: BuildConfig, extra: Any
) -> _Assumed | None:
    """The plan on the guess's assumption; None where it does not apply or that plan cannot be
    made (the real plan then says why, from the real probe)."""
    probe = guess.assumed(refs)
    if probe is None:
        log.info("probing every image before writing any shard (images that are not files)")
        return None
    try:
        return _Assumed(probe, _resolved(rows, probe, reader, config, extra, budget=False))
    except CapshardError:
        return None


def _probe_writing(
    refs: pa.Table,
    assumed: pa.Table,
    guess: _Guess,
    reader: Reader,
    config: BuildConfig,
    executor: Executor,
    progress: Progress,
    stats: BuildStats,
) -> tuple[pa.Table, dict[str, Ahead]]:
    """Probe every reference by writing the shards of the ``assumed`` plan's images (the references
    in none of them are probed alone); the probe table, and what each shard task did (or, for a pass
    stopped before, had done: those shards are kept in ``OUT/.capshard/ahead/`` until the plan says)."""
    how = ProbeTask((), config.image_formats, config.max_pixels, phash=config.hashes, validate=config.validate)
    in_shards = assumed["image_path"].combine_chunks()
    alone = refs.filter(pc.invert(pc.is_in(refs["image_path"], value_set=in_shards)))
    shards, out = guess.shards(assumed), guess.out  # each made into its task by the worker that takes it
    rows = _probe(alone, reader, config, executor, progress, stats).to_pylist() if alone.num_rows else []
    ahead: dict[str, Ahead] = {}
    with output_errors(out):
        record(out, [s.name for s in shards], config.storage_options)  # ours before they exist, as always
        save_identity(out, guess.identity)
    bets = Bets()
    split = {s.name: s.split for s in shards}
    # Made as workers take them (the pool holds one task per worker): a split whose bet is lost is only probed.
    each = contextlib.closing(
        executor.map_unordered(probe_and_write, (AheadTask(s, how, bets.hold(s.split)) for s in shards))
    )
    # The pass is both stages: it probes every image and writes every shard (counted when committed).
    try:
        with (
            progress("writing shards", len(in_shards)) as advance,
            each as done_tasks,
            stats.stage("probe") as probe_stats,
            stats.stage("write"),
        ):
            for done in done_tasks:
                ahead[done.name] = done
                rows.extend(done.rows)
                advance(len(done.rows))
                probe_stats.images += len(done.rows)
                probe_stats.bytes += sum(row.get("n_bytes") or 0 for row in done.rows)
                lost = bets.settle(split[done.name], done.rows)
                if lost is not None:
                    log.info("%s: the plan changes; probing the images of its shards before writing them", lost)
    except BaseException:
        # The workers are stopped (closing()); the shards they finished stay for the next run of this build.
        remove_ahead_temporary(out)
        raise
    earlier = sum(done.reused for done in ahead.values())
    if earlier:
        log.info(
            "resuming the unfinished build in %s: %d of %d shards were written before it stopped",
            out,
            earlier,
            len(shards),
        )
    return probe_table(rows), ahead


def _check_reject_budget(resolution: Resolution, config: BuildConfig) -> None:
    """Stop before writing when more rows are rejected than ``--max-reject-fraction`` allows."""
    n_rows, rejects = resolution.n_rows, resolution.rejects
    if n_rows and rejects.num_rows / n_rows > config.max_reject_fraction:
        with output_errors(config.out):
            write_rejects(config.out, rejects, config.storage_options)
        top = pc.value_counts(rejects["reason"]).to_pylist()
        top.sort(key=lambda v: -v["counts"])
        reasons = ", ".join(f"{v['values']}: {v['counts']}" for v in top[:3])
        hint = " Is --images the right folder?" if top[0]["values"] == "missing_image" else ""
        raise BuildError(
            f"{rejects.num_rows} of {n_rows} rows rejected ({rejects.num_rows / n_rows:.1%}), over "
            f"--max-reject-fraction {config.max_reject_fraction} ({reasons}); see {join(config.out, REJECTS)}.{hint}"
        )


def _write_phase(
    out: Location,
    plan: plan_store.Plan,
    part: Slice,
    executor: Executor,
    progress: Progress,
    opts: Options,
    stats: BuildStats,
    ahead: dict[str, Ahead] | None = None,
) -> Written:
    """*write*: the shards of slice ``part`` not already written (and unchanged); those written
    ``ahead`` (:mod:`.write_ahead`) are committed."""
    ahead = ahead or {}
    names = part.of(plan.shards()) if ahead else []
    early = {name: ahead[name] for name in names if name in ahead}
    # The tasks of a plan's shards are its images as Python objects: not made when every shard is written.
    tasks = [] if early and len(early) == len(names) else part.of(plan.tasks(_shipped_out(out), opts))
    todo = [t for t in tasks if t.name not in early]
    results, reused = _write_shards(out, todo, executor, progress, opts, stats, early)
    return Written(part, len(results) - reused, reused, results=results)


def _write_shards(
    out: Location,
    tasks: list[ShardTask],
    executor: Executor,
    progress: Progress,
    opts: Options,
    stats: BuildStats,
    ahead: dict[str, Ahead],
) -> tuple[dict[str, ShardResult], int]:
    """Commit the shards written ``ahead``; write every task's shard that is not already written (and
    unchanged); the results by name."""
    results: dict[str, ShardResult] = {}
    shipped = str(_shipped_out(out))
    early_results: dict[str, ShardResult] = {}  # of the shards written ahead: commits give their names
    commits = []
    for name, early in sorted(ahead.items()):
        if early.result is not None and early.tmp is not None and early.record is not None:
            early_results[name] = early.result
            commits.append(Commit(shipped, name, plan_store.done_key(name), early.tmp, early.record))
    todo = []
    for task in tasks:
        done = plan_store.finished(out, task.name, opts)
        if done is not None:
            results[task.name] = done
        else:
            todo.append(task)
    reused = len(results)
    if reused:
        log.info("reusing %d finished shards, writing %d", reused, len(todo))
    try:
        if commits:
            each_commit = contextlib.closing(executor.map_unordered(commit, commits))
            with stats.stage("write") as write_stats, each_commit as committed:
                for name in committed:
                    result = results[name] = early_results[name]
                    write_stats.images += result.images
                    write_stats.bytes += result.bytes
        # closing(): on an interrupt the executor stops its workers before the clean-up below.
        written = contextlib.closing(executor.map_unordered(write_shard, todo))
        total = sum(len(t.samples) for t in todo)
        with progress("writing shards", total) as advance, written as each, stats.stage("write") as write_stats:
            for result in each:
                results[result.name] = result
                advance(result.images)
                write_stats.images += result.images
                write_stats.bytes += result.bytes
    except BaseException:
        # Only this slice's: other slices may be writing theirs into the same folder now.
        remove_temporary(out, [t.name for t in todo] + [c.name for c in commits])
        raise
    return results, reused


def _shipped_out(out: Location) -> Location:
    """``out`` as tasks carry it: absolute, since a Ray worker does not run in this process's folder."""
    return out if is_url(out) else Path(out).absolute()


def _shipped_spec(spec: SourceSpec) -> SourceSpec:
    """``spec`` with its local paths absolute, for readers sent to workers that may run in another folder."""
    path = spec.path
    if path is not None and not is_url(path) and os.path.exists(path):
        path = os.path.abspath(path)
    images = spec.images
    if images is not None and not is_url(images):
        images = Path(os.path.abspath(images))
    return dataclasses.replace(spec, path=path, images=images)


def _worker_modules(reader: Reader) -> tuple[str, ...]:
    """What a build's pool workers import as they start: the task functions' modules and the reader's."""
    return ("pipeline.probe", "pipeline.write", type(reader).__module__)


def _worker_reader(reader: Reader, fmt: str, spec: SourceSpec) -> Reader:
    """The reader the executor's workers get: ``reader`` itself unless a path of ``spec`` is relative."""
    shipped = _shipped_spec(spec)
    return reader if shipped == spec else get_reader(fmt)(shipped)


def _check_accounting(manifest: dict[str, Any]) -> None:
    """Nothing lost: rows in shards plus rejected rows must equal rows read."""
    counts = manifest["counts"]
    if counts["captions"] + counts["rejected_rows"] != counts["rows"]:
        raise BuildError(
            f"accounting mismatch: {counts['captions']} captions in shards + {counts['rejected_rows']} rejected "
            f"!= {counts['rows']} rows read"
        )
