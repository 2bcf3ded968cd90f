"""``build``: run read → probe → resolve → plan → write → finalize into one folder.

The folder is the unit of a build. While a build runs, ``OUT/.capshard/`` holds its
identity (source fingerprint, format, output options), the plan and the ``done`` record
of each written shard; the manifest, written last, is the commit marker, after which
``.capshard/`` is removed. Re-running the same command resumes: finished shards whose
bytes match their record are kept, the rest are written again, and the result is
byte-identical to an uninterrupted run. Running it over a finished build of the same
input and options is a no-op; of anything else, an error unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import FORMAT_VERSION
from .config import BuildConfig
from .errors import BuildError, OutputError, UsageError
from .executors import Executor, make_executor
from .finalize import INDEX, MANIFEST, REJECTS, manifest_dict, read_manifest, write_index, write_manifest, write_rejects
from .plan import plan_shards
from .probe import distinct_refs, probe_images
from .readers import Reader, SourceSpec, detect, get_reader
from .resolve import REJECT_SCHEMA, resolve
from .schema import CAPTION_ROWS
from .write import TMP_MARK, SampleSpec, ShardResult, ShardTask, done_path, file_sha256, write_json_atomic, write_shard

log = logging.getLogger(__name__)

STATE = ".capshard"
#: A progress reporter: ``progress(label, total)`` gives a context whose value takes increments.
Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@contextlib.contextmanager
def _no_progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


@dataclass(frozen=True)
class BuildResult:
    """What ``build`` did: ``status`` is ``built``, ``resumed`` or ``up_to_date``."""

    out: Path
    status: str
    manifest: dict[str, Any]
    reused_shards: int = 0


def build(spec: SourceSpec, config: BuildConfig, progress: Progress = _no_progress) -> BuildResult:
    """Build shards from ``spec`` into ``config.out``; see the module docstring."""
    fmt = detect(spec) if config.format == "auto" else config.format
    if config.id_column is not None:
        spec = dataclasses.replace(spec, id_column=config.id_column)
    reader = get_reader(fmt)(spec)
    if config.format == "auto":
        log.info("format auto: reading %s as %s", spec.path or "the in-memory dataset", fmt)
    identity: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "format": fmt,
        "fingerprint": reader.fingerprint(),
        "reading": spec.reading_options(),
        "options": config.output_options(),
    }
    out = config.out
    existing = _prepare_out(out, identity, config.overwrite)
    if existing is not None:
        return BuildResult(out, "up_to_date", existing)

    state = out / STATE
    resumed = (state / "state.json").is_file()
    with contextlib.closing(make_executor(config.executor, config.workers, context=reader)) as executor:
        if resumed:
            planned, rejects, report, n_rows = _load_plan(state)
            log.info("resuming the unfinished build in %s", out)
        else:
            planned, rejects, report, n_rows = _plan(reader, config, executor, progress)
            with _output_errors(out):
                _save_plan(state, identity, planned, rejects, report, n_rows)
        results, reused = _write_shards(out, fmt, planned, config, executor, progress)
    with _output_errors(out):
        write_index(out, planned, results)
        write_rejects(out, rejects)
    name = config.name or spec.name or (Path(spec.path).stem if spec.path else "dataset")
    version = config.version or identity["fingerprint"].split(":")[-1][:12]
    manifest = manifest_dict(
        identity=identity,
        name=name,
        version=version,
        source_path=spec.path,
        planned=planned,
        results=results,
        rejects=rejects,
        report=report,
        n_rows=n_rows,
    )
    _check_accounting(manifest)
    with _output_errors(out):
        write_manifest(out, manifest)
    shutil.rmtree(state, ignore_errors=True)
    return BuildResult(out, "resumed" if resumed else "built", manifest, reused)


def _prepare_out(out: Path, identity: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """Check what ``out`` holds: same finished build → its manifest; else make room or refuse."""
    manifest = read_manifest(out) if out.is_dir() else None
    state_file = out / STATE / "state.json"
    if manifest is not None:
        same = _identity_of_manifest(manifest) == identity
        if same and not overwrite:
            return manifest
        if not overwrite:
            raise OutputError(
                f"{out} holds a finished build of different input or options; "
                "choose another --out or pass --overwrite to replace it"
            )
        _clean(out)
    elif state_file.is_file():
        with open(state_file, encoding="utf-8") as f:
            same = json.load(f) == identity
        if not same and not overwrite:
            raise OutputError(
                f"{out} holds an unfinished build of different input or options; "
                "re-run that build to finish it, or pass --overwrite to start over"
            )
        if not same or overwrite:
            _clean(out)
    elif out.is_dir() and not overwrite and any(not _leftover(p) for p in out.iterdir()):
        raise OutputError(f"{out} is not empty and holds no capshard build; choose an empty or new --out")
    elif out.is_dir():
        _clean(out)  # what a run killed while planning, or stopped by the reject budget, left
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(f".*{TMP_MARK}*"):
            stale.unlink()
    except OSError as e:
        raise OutputError(f"cannot write to {out}: {e.strerror}") from None
    return None


def _leftover(path: Path) -> bool:
    """Whether ``path`` is something a capshard run leaves before its plan is saved."""
    return path.name in (STATE, REJECTS) or TMP_MARK in path.name


@contextlib.contextmanager
def _output_errors(out: Path) -> Iterator[None]:
    """Turn an OS error while writing into ``out`` (full disk, read-only folder) into one OutputError."""
    try:
        yield
    except OSError as e:
        if e.errno is None:
            raise
        raise OutputError(f"cannot write to {out}: {e.strerror}") from None


def _identity_of_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "format_version": manifest.get("format"),
        "format": manifest.get("source", {}).get("format"),
        "fingerprint": manifest.get("source", {}).get("fingerprint"),
        "reading": manifest.get("source", {}).get("reading"),
        "options": manifest.get("options"),
    }


def _clean(out: Path) -> None:
    """Remove what a build wrote (and only that) from ``out``."""
    shutil.rmtree(out / STATE, ignore_errors=True)
    for name in (MANIFEST, INDEX, REJECTS):
        (out / name).unlink(missing_ok=True)
    for shard in out.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        shard.unlink()


def _plan(
    reader: Reader, config: BuildConfig, executor: Executor, progress: Progress
) -> tuple[pa.Table, pa.Table, dict[str, Any], int]:
    """read → probe → resolve → plan, with the reject budget checked before writing."""
    batches = list(reader.read())
    rows = pa.Table.from_batches(batches, schema=CAPTION_ROWS)
    log.info("read %d caption rows", rows.num_rows)
    refs = distinct_refs(rows)
    with progress("probing images", refs.num_rows) as advance:
        probed = probe_images(
            refs, reader, executor, formats=config.image_formats, max_pixels=config.max_pixels, on_progress=advance
        )
    if config.id_column is not None and reader.id_column() != config.id_column:
        raise UsageError(
            f"--id {config.id}: this {reader.name} source has no id column {config.id_column!r}"
            + (f" (its id column is {reader.id_column()!r})" if reader.id_column() else " (it has none)")
        )
    resolution = resolve(rows, probed, config, id_column=reader.id_column(), multi_caption=reader.multi_caption())
    n_rows, rejects = resolution.n_rows, resolution.rejects
    if n_rows and rejects.num_rows / n_rows > config.max_reject_fraction:
        with _output_errors(config.out):
            write_rejects(config.out, rejects)
        top = pc.value_counts(rejects["reason"]).to_pylist()
        top.sort(key=lambda v: -v["counts"])
        reasons = ", ".join(f"{v['values']}: {v['counts']}" for v in top[:3])
        hint = " Is --images the right folder?" if top[0]["values"] == "missing_image" else ""
        raise BuildError(
            f"{rejects.num_rows} of {n_rows} rows rejected ({rejects.num_rows / n_rows:.1%}), over "
            f"--max-reject-fraction {config.max_reject_fraction} ({reasons}); see {config.out / REJECTS}.{hint}"
        )
    planned = plan_shards(resolution.images, config)
    return planned, rejects, resolution.report, n_rows


def _save_plan(
    state: Path, identity: dict[str, Any], planned: pa.Table, rejects: pa.Table, report: dict[str, Any], n_rows: int
) -> None:
    state.mkdir(parents=True, exist_ok=True)
    pq.write_table(planned, state / "plan.parquet")
    pq.write_table(rejects, state / "rejects.parquet")
    write_json_atomic(state / "resolution.json", {"report": report, "rows": n_rows})
    write_json_atomic(state / "state.json", identity)  # last: the plan is complete


def _load_plan(state: Path) -> tuple[pa.Table, pa.Table, dict[str, Any], int]:
    planned = pq.read_table(state / "plan.parquet")
    rejects = pq.read_table(state / "rejects.parquet").cast(REJECT_SCHEMA)
    with open(state / "resolution.json", encoding="utf-8") as f:
        saved = json.load(f)
    return planned, rejects, saved["report"], saved["rows"]


def _shard_tasks(out: Path, fmt: str, planned: pa.Table, resize: int | None) -> list[ShardTask]:
    samples: dict[str, list[SampleSpec]] = {}
    for r in planned.to_pylist():
        samples.setdefault(r["shard"], []).append(
            SampleSpec(
                key=r["key"],
                image_id=r["image_id"],
                group=r["group"],
                split=r["split"],
                captions=tuple(r["captions"]),
                caption_ids=tuple(r["caption_ids"]),
                row_ids=tuple(r["row_ids"]),
                source_ids=tuple(r["source_ids"]),
                sha256=r["sha256"],
                format=r["format"],
                width=r["width"],
                height=r["height"],
                image_path=r["image_path"],
                image_index=r["image_index"],
                file_name=r["file_name"],
            )
        )
    return [ShardTask(name, str(out), tuple(s), fmt, resize) for name, s in sorted(samples.items())]


def _finished(out: Path, name: str) -> ShardResult | None:
    """The record of a shard written by an earlier run, if the file on disk still matches it."""
    record, shard = done_path(out, name), out / name
    if not (record.is_file() and shard.is_file()):
        return None
    with open(record, encoding="utf-8") as f:
        result = ShardResult.from_json(json.load(f))
    if shard.stat().st_size != result.bytes or file_sha256(shard)[0] != result.sha256:
        return None
    return result


def _write_shards(
    out: Path,
    fmt: str,
    planned: pa.Table,
    config: BuildConfig,
    executor: Executor,
    progress: Progress,
) -> tuple[dict[str, ShardResult], int]:
    tasks = _shard_tasks(out, fmt, planned, config.resize)
    results: dict[str, ShardResult] = {}
    todo = []
    for task in tasks:
        done = _finished(out, task.name)
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
        with progress("writing shards", sum(len(t.samples) for t in todo)) as advance, written as each:
            for result in each:
                results[result.name] = result
                advance(result.images)
    finally:
        for stale in [*out.glob(f".*{TMP_MARK}*"), *(out / STATE / "done").glob(f".*{TMP_MARK}*")]:
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
