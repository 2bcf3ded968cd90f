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

One build at a time: the folder's lock (:mod:`.lock`) is held from before ``OUT`` is
read until the manifest is written. ``OUT`` may be an fsspec URL (``config.out`` is then a
``str``): everything goes through :mod:`.storage`, and the lock becomes a claim
(:func:`.lock.claim`), which is no mutual exclusion. Only files the build recorded as its own are ever
replaced or removed (:mod:`.outputs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import FORMAT_VERSION, plan_store
from .config import BuildConfig
from .decontam import apply_near, near_options
from .errors import BuildError, OutputError, UsageError
from .executors import Executor, make_executor
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
from .format import DONE, STATE
from .identity import default_version, input_check, make_identity
from .inputs import absolute_path, image_root, referenced_paths, scan, summary, with_hashes
from .lock import claim, hold
from .outputs import BUILD_FILES, check_location, clean, record, refuse_foreign, survey
from .plan import plan_shards
from .probe import distinct_refs, probe_images
from .readers import Reader, SourceSpec, detect, get_reader
from .resolve import Resolution, resolve
from .schema import CAPTION_ROWS
from .stats import BuildStats
from .storage import Location, Options, is_url, join
from .write import TMP_MARK, ShardResult, write_shard

log = logging.getLogger(__name__)

#: A progress reporter: ``progress(label, total)`` gives a context whose value takes increments.
Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]
#: ``differs(old_identity, old_listing)``: what differs from an earlier build (see ``identity.input_check``).
InputCheck = Callable[[dict[str, Any], "pa.Table | None"], list[str]]


@contextlib.contextmanager
def _no_progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


@dataclass(frozen=True)
class BuildResult:
    """What ``build`` did: ``status`` is ``built``, ``resumed`` or ``up_to_date``."""

    out: Path | str
    status: str
    manifest: dict[str, Any]
    reused_shards: int = 0


def build(spec: SourceSpec, config: BuildConfig, progress: Progress = _no_progress) -> BuildResult:
    """Build shards from ``spec`` into ``config.out``; see the module docstring."""
    check_location(config.out, spec.images, spec.path, config.storage_options)
    with contextlib.ExitStack() as lock:
        return _build(spec, config, progress, lock)


def _build(spec: SourceSpec, config: BuildConfig, progress: Progress, lock: contextlib.ExitStack) -> BuildResult:
    fmt = detect(spec) if config.format == "auto" else config.format
    if spec.captions_from and fmt != "wds":
        raise UsageError(f"--captions-from joins on WebDataset keys or URLs: it needs --format wds, not {fmt}")
    if config.id_column is not None:
        spec = dataclasses.replace(spec, id_column=config.id_column)
    reader = get_reader(fmt)(spec)
    if config.format == "auto":
        log.info("format auto: reading %s as %s", spec.path or "the in-memory dataset", fmt)
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
    with _output_errors(out):
        existing = _prepare_out(out, differs, config.overwrite, lock, _claimant(identity), opts)
    if existing is not None:
        return BuildResult(out, "up_to_date", existing)
    resumed = plan_store.status(out, opts) == "complete"
    stats = BuildStats(config.workers)
    with contextlib.closing(make_executor(config.executor, config.workers, context=reader)) as executor:
        plan = _planned(rows, reader, spec, config, executor, progress, identity, listing, resumed, stats)
        results, reused = _write_shards(out, plan, executor, progress, stats, opts)
    version = config.version or default_version(plan.identity)
    manifest = _finish(out, plan, results, _name(spec, config), version, stats, opts)
    return BuildResult(out, "resumed" if resumed else "built", manifest, reused)


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
) -> plan_store.Plan:
    """The plan: the saved one when resuming, else planned now and saved. Its identity is ``identity``
    with the inputs summary of the listing that holds the images' sha256 (from the saved listing or the probe)."""
    out, root = config.out, image_root(spec.images, spec.path)
    if resumed:
        saved = plan_store.load(out, config.storage_options)
        listing = with_hashes(listing, _known_hashes(saved.listing, root), root)
        log.info("resuming the unfinished build in %s", out)
        return dataclasses.replace(saved, identity={**identity, "inputs": summary(listing)}, listing=listing)
    if plan_store.status(out, config.storage_options) == "stale":
        log.info("%s holds the plan of an older capshard: planning again", out)
    resolution, known = _plan(rows, reader, config, executor, progress, stats)
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
    with _output_errors(out):
        plan_store.save(out, plan, config.storage_options)
    return plan


def _name(spec: SourceSpec, config: BuildConfig) -> str:
    return config.name or spec.name or (Path(spec.path).stem if spec.path else "dataset")


def _finish(
    out: Location,
    plan: plan_store.Plan,
    results: dict[str, ShardResult],
    name: str,
    version: str,
    stats: BuildStats,
    opts: Options,
) -> dict[str, Any]:
    """*finalize*: index, rejects, inputs listing, sizes; every shard checked; last, the manifest; then the state
    goes."""
    with _output_errors(out):
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
        stats=stats.to_dict(),
    )
    _check_accounting(manifest)
    check_shards(out, plan.shards(), results, opts)
    with _output_errors(out):
        write_manifest(out, manifest, opts)
    plan_store.remove_state(out, opts)
    return manifest


def _prepare_out(
    out: Location, differs: InputCheck, overwrite: bool, lock: contextlib.ExitStack, build_id: str, opts: Options
) -> dict[str, Any] | None:
    """Lock (or, on an object store, claim: :func:`.lock.claim`) ``out``, then check what it holds:
    same finished build → its manifest; else make room or refuse.

    ``differs(old_identity, old_listing)`` lists what differs from the build in ``out``."""
    _take_out(out, overwrite, lock, build_id, opts)
    folder = survey(out, opts)
    manifest = folder.manifest
    if manifest is not None:
        old_listing = None if overwrite else plan_store.saved_listing(out, opts, folder="")
        diffs = [] if overwrite else differs(manifest.identity.to_dict(), old_listing)
        if not overwrite and not diffs:
            return manifest.to_dict()
        refuse_foreign(folder)
        if not overwrite:
            raise OutputError(
                f"{out} holds a finished build of different input or options ({'; '.join(diffs)}); "
                "choose another --out or pass --overwrite to replace it"
            )
        clean(folder, opts)
    elif (saved := plan_store.saved_identity(out, opts)) is not None:
        refuse_foreign(folder)
        if not overwrite:
            diffs = differs(saved, plan_store.saved_listing(out, opts))
            if diffs:
                raise OutputError(
                    f"{out} holds an unfinished build of different input or options ({'; '.join(diffs)}); "
                    "pass --overwrite to start over from the current input, or restore that input to finish it"
                )
        else:
            clean(folder, opts)
    else:
        clean(folder, opts)  # what a run killed while planning, or stopped by the reject budget, left
    with _output_errors(out):
        if not is_url(out):
            for stale in Path(out).glob(f".*{TMP_MARK}*"):
                stale.unlink()
        record(out, BUILD_FILES, opts)
    return None


def _take_out(out: Location, overwrite: bool, lock: contextlib.ExitStack, build_id: str, opts: Options) -> None:
    """Hold the lock of a local ``out`` (created), or claim an object-store ``out``, for the rest of the build."""
    with _output_errors(out):
        if is_url(out):
            lock.enter_context(claim(str(out), "build", build_id, overwrite=overwrite, options=opts))
        else:
            Path(out).mkdir(parents=True, exist_ok=True)
            lock.enter_context(hold(Path(out), "build"))


def _claimant(identity: dict[str, Any]) -> str:
    """What a claim on an object store records as the build: a digest of its identity."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def _output_errors(out: Location) -> Iterator[None]:
    """Turn an OS error while writing into ``out`` (full disk, read-only folder; on a store: a missing
    bucket, denied access) into one OutputError."""
    try:
        yield
    except OSError as e:
        if e.errno is None and not is_url(out):
            raise
        raise OutputError(f"cannot write to {out}: {e.strerror or e}") from None


def _read(reader: Reader) -> pa.Table:
    try:
        rows = pa.Table.from_batches(list(reader.read()), schema=CAPTION_ROWS)
    except OSError as e:  # a source file missing or unreadable: the user's error, in one line
        if e.errno is None:
            raise
        raise UsageError(f"cannot read {e.filename or reader.spec.path}: {e.strerror}") from None
    log.info("read %d caption rows", rows.num_rows)
    return rows


def _known_hashes(listing: pa.Table | None, root: str) -> dict[str, str]:
    """Absolute path → sha256 from a saved listing."""
    if listing is None:
        return {}
    return {
        absolute_path(p, root): h
        for p, h in zip(listing["path"].to_pylist(), listing["sha256"].to_pylist(), strict=True)
        if h is not None
    }


def _plan(
    rows: pa.Table, reader: Reader, config: BuildConfig, executor: Executor, progress: Progress, stats: BuildStats
) -> tuple[Resolution, dict[str, str]]:
    """probe → resolve → plan (the resolution's images with ``shard`` and ``position``), with the
    reject budget checked before writing; also the sha256 the probe found for each image path."""
    extra = read_sources(reader.spec.captions)  # --captions: user errors before the images are read
    refs = distinct_refs(rows)
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
        probe_stats.images, probe_stats.bytes = probed.num_rows, pc.sum(probed["n_bytes"]).as_py() or 0
    if config.id_column is not None and reader.id_column() != config.id_column:
        raise UsageError(
            f"--id {config.id}: this {reader.name} source has no id column {config.id_column!r}"
            + (f" (its id column is {reader.id_column()!r})" if reader.id_column() else " (it has none)")
        )
    resolution = resolve(rows, probed, config, id_column=reader.id_column(), multi_caption=reader.multi_caption())
    if config.hashes:
        resolution = apply_near(resolution, rows, probed, near_options(config))
    resolution = add_captions(resolution, rows, extra, config.max_caption_chars)
    _check_reject_budget(resolution, config)
    planned = dataclasses.replace(resolution, images=plan_shards(resolution.images, config))
    hashed = probed.filter(pc.and_(pc.is_valid(probed["image_path"]), pc.is_valid(probed["sha256"])))
    known = dict(zip(hashed["image_path"].to_pylist(), hashed["sha256"].to_pylist(), strict=True))
    return planned, known


def _check_reject_budget(resolution: Resolution, config: BuildConfig) -> None:
    """Stop before writing when more rows are rejected than ``--max-reject-fraction`` allows."""
    n_rows, rejects = resolution.n_rows, resolution.rejects
    if n_rows and rejects.num_rows / n_rows > config.max_reject_fraction:
        with _output_errors(config.out):
            write_rejects(config.out, rejects, config.storage_options)
        top = pc.value_counts(rejects["reason"]).to_pylist()
        top.sort(key=lambda v: -v["counts"])
        reasons = ", ".join(f"{v['values']}: {v['counts']}" for v in top[:3])
        hint = " Is --images the right folder?" if top[0]["values"] == "missing_image" else ""
        raise BuildError(
            f"{rejects.num_rows} of {n_rows} rows rejected ({rejects.num_rows / n_rows:.1%}), over "
            f"--max-reject-fraction {config.max_reject_fraction} ({reasons}); see {join(config.out, REJECTS)}.{hint}"
        )


def _write_shards(
    out: Location, plan: plan_store.Plan, executor: Executor, progress: Progress, stats: BuildStats, opts: Options
) -> tuple[dict[str, ShardResult], int]:
    """Write every planned shard that is not already written (and unchanged); the results by name."""
    results: dict[str, ShardResult] = {}
    todo = []
    for task in plan.tasks(out, opts):
        done = plan_store.finished(out, task.name, opts)
        if done is not None:
            results[task.name] = done
        else:
            todo.append(task)
    reused = len(results)
    if reused:
        log.info("reusing %d finished shards, writing %d", reused, len(todo))
    try:
        # closing(): on an interrupt the executor stops its workers before the clean-up below.
        written = contextlib.closing(executor.map_unordered(write_shard, todo))
        total = sum(len(t.samples) for t in todo)
        with progress("writing shards", total) as advance, written as each, stats.stage("write") as write_stats:
            for result in each:
                results[result.name] = result
                advance(result.images)
                write_stats.images += result.images
                write_stats.bytes += result.bytes
    finally:
        if not is_url(out):  # an object store has no temporaries: a shard is uploaded whole or not at all
            done_dir = Path(out, STATE, DONE)
            for stale in [*Path(out).glob(f".*{TMP_MARK}*"), *done_dir.glob(f".*{TMP_MARK}*")]:
                stale.unlink(missing_ok=True)
    return results, reused


def _check_accounting(manifest: dict[str, Any]) -> None:
    """Nothing lost: rows in shards plus rejected rows must equal rows read."""
    counts = manifest["counts"]
    if counts["captions"] + counts["rejected_rows"] != counts["rows"]:
        raise BuildError(
            f"accounting mismatch: {counts['captions']} captions in shards + {counts['rejected_rows']} rejected "
            f"!= {counts['rows']} rows read"
        )
