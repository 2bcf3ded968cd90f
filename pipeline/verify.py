"""``verify``: prove a build intact from its bytes, trusting nothing in the shards.

Every shard the manifest lists is read once, as a stream: its sha256 and size are
compared with the manifest while :mod:`tarfile` walks its members, and every sample is
re-read (members complete, JSON valid, image header readable, captions as in the index).
Then the accounting: samples, captions and rejected rows against the manifest, and every
input row id in exactly one sample or one line of ``rejects.jsonl``.

Shards are treated as hostile input. Nothing is ever extracted or written; only regular
file members named ``KEY.EXT`` are read, each after a size check; extended (pax/GNU)
headers, links, devices and names such as ``../x`` or ``/etc/x`` are reported, never
followed; JSON members are refused above a size and nesting cap before parsing
(those per-shard checks are :mod:`pipeline.verify_shard`, run in parallel workers).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, cast

from . import storage
from .errors import UsageError
from .executors import make_executor
from .format import INDEX, MANIFEST, REJECTS, SHARD_NAME, Manifest, ManifestError, ShardEntry, read_manifest
from .media import DEFAULT_FORMATS, DEFAULT_MAX_PIXELS, EXTENSIONS
from .storage import Options
from .verify_shard import (
    MAX_TEXT_BYTES,
    Problem,
    SampleInfo,
    ShardCheck,
    ShardReport,
    check_shard,
    load_json_capped,
)
from .write import TMP_MARK


@dataclass(frozen=True)
class VerifyReport:
    """The result of :func:`verify`; ``ok`` when there is no problem at all."""

    build_dir: Path | str
    shards: tuple[ShardReport, ...]
    problems: tuple[Problem, ...]
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (``--json``)."""
        return {
            "ok": self.ok,
            "build": str(self.build_dir),
            "counts": self.counts,
            "shards": [
                {
                    "name": s.name,
                    "status": s.status,
                    "images": s.images,
                    "captions": s.captions,
                    "problems": [p.line() for p in s.problems],
                }
                for s in self.shards
            ],
            "problems": [{"where": p.where, "kind": p.kind, "detail": p.detail} for p in self.problems],
        }


def verify(
    build_dir: Path | str, *, decode: bool = False, workers: int = 1, storage_options: Options = None
) -> VerifyReport:
    """Check the build in ``build_dir`` (a folder, or a URL read with the fsspec backend's
    ``storage_options``); see the module docstring. ``decode`` also decodes every image."""
    build: Path | str = build_dir if storage.is_url(build_dir) else Path(build_dir)
    options = dict(storage_options or {})
    problems: list[Problem] = []
    try:
        manifest = read_manifest(build, check_names=False, options=options)  # unsafe names are reported below
    except ManifestError as e:
        return VerifyReport(build, (), (Problem(MANIFEST, "damaged", f"{MANIFEST} {e.detail}"),), {})
    if manifest is None:
        raise UsageError(f"{build} holds no finished build (no {MANIFEST})")
    listed = {s.name: s for s in manifest.shards}
    files, names = _top_level(build, options)
    reports: dict[str, ShardReport] = {}
    tasks = []
    formats, max_pixels = _image_options(manifest.identity.options)
    for name in listed:
        if not SHARD_NAME.fullmatch(name):
            problems.append(Problem(MANIFEST, "damaged", f"lists a shard with an unsafe name {ascii(name)[:120]}"))
        elif name not in files:
            reports[name] = ShardReport(
                name, "missing", problems=(Problem(name, "missing", f"listed in {MANIFEST}, not on disk"),)
            )
        else:
            tasks.append(ShardCheck(storage.join(build, name), name, formats, max_pixels, decode, options or None))
    reports.update(_check_shards(tasks, listed, workers))
    for name in names:
        if name not in listed and (PurePosixPath(name).suffix == ".tar" or TMP_MARK in name):
            reports[name] = ShardReport(name, "extra", problems=(Problem(name, "extra", f"not listed in {MANIFEST}"),))

    shards = tuple(reports[n] for n in sorted(reports))
    problems.extend(p for s in shards for p in s.problems)
    counts = _check_build(build, manifest, shards, problems, options)
    return VerifyReport(build, shards, tuple(problems), counts)


def _top_level(build: Path | str, options: Options) -> tuple[set[str], list[str]]:
    """The names of the files directly in the build, and every name directly in it (sorted).

    In a bucket, a key ``a/b`` makes ``a`` a name (a "folder"), not a file.
    """
    path = storage.local_path(build)
    if path is not None:
        entries = sorted(path.iterdir())
        return {p.name for p in entries if p.is_file()}, [p.name for p in entries]
    keys = storage.list_prefix(build, options)
    return {k for k in keys if "/" not in k}, sorted({k.split("/", 1)[0] for k in keys})


def _check_shards(tasks: list[ShardCheck], listed: Mapping[str, ShardEntry], workers: int) -> dict[str, ShardReport]:
    """Every shard checked in ``workers`` processes, and compared with its manifest entry."""
    reports = {}
    executor = make_executor("process", max(1, min(workers, len(tasks))))
    try:
        for report in executor.map_unordered(check_shard, tasks):
            reports[report.name] = _against_manifest(report, listed[report.name])
    finally:
        executor.close()
    return reports


def _image_options(options: Mapping[str, Any]) -> tuple[tuple[str, ...], int]:
    """The build's image formats and pixel cap, but only within what capshard stores: a
    manifest must not be able to enable another Pillow plug-in (EPS would run Ghostscript)."""
    listed = options.get("image_formats")
    formats = tuple(f for f in listed if f in EXTENSIONS) if isinstance(listed, list) else ()
    max_pixels = options.get("max_pixels")
    if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1:
        max_pixels = DEFAULT_MAX_PIXELS
    return formats or DEFAULT_FORMATS, max_pixels


def _against_manifest(report: ShardReport, entry: ShardEntry) -> ShardReport:
    """Add the differences between what a shard holds and what the manifest says."""
    name, problems = report.name, list(report.problems)
    if report.sha256 != entry.sha256 or report.bytes != entry.bytes:
        problems.insert(
            0,
            Problem(
                name,
                "damaged",
                f"sha256 {report.sha256} ({report.bytes} bytes) differs from the "
                f"manifest's {entry.sha256} ({entry.bytes} bytes)",
            ),
        )
    for what, have, said in (("images", report.images, entry.images), ("captions", report.captions, entry.captions)):
        if have != said:
            problems.append(Problem(name, "damaged", f"holds {have} {what}, the manifest says {said}"))
    status = "damaged" if problems else "ok"
    return ShardReport(
        name, status, report.images, report.captions, report.bytes, report.sha256, tuple(problems), report.samples
    )


def _check_build(
    build: Path | str, manifest: Manifest, shards: tuple[ShardReport, ...], problems: list[Problem], options: Options
) -> dict[str, int]:
    """Index, rejects and the row accounting; appends problems, returns the counts found."""
    samples = {s.key: (shard.name, s) for shard in shards for s in shard.samples}
    _check_index(build, samples, {s.name for s in shards if s.status == "missing"}, problems, options)
    rejected = _reject_row_ids(build, problems, options)
    counts = manifest.counts.to_dict()
    found = {
        "rows": counts["rows"],
        "images": len(samples),
        "captions": sum(s.captions for _, s in samples.values()),
        "rejected_rows": len(rejected),
    }
    if sum(shard.images for shard in shards) != len(samples):
        problems.append(Problem("build", "damaged", "a sample key appears in more than one shard"))
    for what in ("images", "captions", "rejected_rows"):
        if found[what] != counts.get(what):
            problems.append(
                Problem(MANIFEST, "accounting", f"counts.{what} is {counts.get(what)}, the build holds {found[what]}")
            )
    if found["captions"] + found["rejected_rows"] != found["rows"]:
        problems.append(
            Problem(
                "build",
                "accounting",
                f"{found['captions']} rows in shards + "
                f"{found['rejected_rows']} rejected != counts.rows {found['rows']}",
            )
        )
    _check_row_ids(found["rows"], [r for _, s in samples.values() for r in s.row_ids], rejected, problems)
    return found


def _check_row_ids(rows: int, in_shards: list[int], rejected: list[int], problems: list[Problem]) -> None:
    """Every row id 0..rows-1 exactly once over the shards and the rejects.

    One byte per row; when the manifest claims more rows than there are row ids, only the
    ids found are counted, so a lying ``counts.rows`` cannot make this allocate.
    """
    ids = list(itertools.chain(in_shards, rejected))
    size = min(rows, len(ids))
    seen = bytearray(size)
    stray: list[int] = []
    beyond: dict[int, int] = {}  # ids in size..rows-1 (only when rows > len(ids))
    for row_id in ids:
        if 0 <= row_id < size:
            seen[row_id] = min(seen[row_id] + 1, 2)
        elif size <= row_id < rows:
            beyond[row_id] = beyond.get(row_id, 0) + 1
        else:
            stray.append(row_id)
    if lost := rows - (size - seen.count(0)) - len(beyond):
        problems.append(Problem("build", "accounting", f"{lost} input rows are in no shard and no line of {REJECTS}"))
    if twice := seen.count(2) + sum(n > 1 for n in beyond.values()):
        first: list[int] = []
        at = seen.find(2)
        while at >= 0 and len(first) < 5:
            first.append(at)
            at = seen.find(2, at + 1)
        first += sorted(r for r, n in beyond.items() if n > 1)[: 5 - len(first)]
        problems.append(
            Problem(
                "build", "accounting", f"{twice} input rows are counted twice (row ids {', '.join(map(str, first))})"
            )
        )
    if stray:
        problems.append(
            Problem(
                "build",
                "accounting",
                f"{len(stray)} row ids are outside 0..rows-1 (e.g. {', '.join(map(str, stray[:5]))})",
            )
        )


def _check_index(
    build: Path | str,
    samples: dict[str, tuple[str, SampleInfo]],
    missing: set[str],
    problems: list[Problem],
    options: Options,
) -> None:
    """Every index row against the sample it names (rows of missing shards: already reported)."""
    try:
        rows = storage.read_parquet(storage.join(build, INDEX), options).to_pylist()
    except (OSError, ValueError) as e:
        problems.append(Problem(INDEX, "damaged", f"cannot be read: {e}"))
        return
    keys = set()
    for row in rows:
        key = row.get("key")
        keys.add(key)
        if row.get("shard") in missing:
            continue
        shard, sample = samples.get(key, (None, None))
        if sample is None:
            problems.append(Problem(INDEX, "damaged", f"lists sample {ascii(key)[:80]}, which no shard holds"))
            continue
        want = (shard, sample.position, sample.captions, sample.width, sample.height)
        have = (row.get("shard"), row.get("position"), row.get("captions"), row.get("width"), row.get("height"))
        if want != have or (sample.sha256 is not None and sample.sha256 != row.get("sha256")):
            problems.append(
                Problem(
                    INDEX,
                    "damaged",
                    f"row of {key} says shard, position, captions, size {have}; the shard holds {want}",
                )
            )
    for key in sorted(set(samples) - keys)[:20]:
        problems.append(Problem(INDEX, "damaged", f"has no row for sample {key} of {samples[key][0]}"))


def _reject_row_ids(build: Path | str, problems: list[Problem], options: Options) -> list[int]:
    where = storage.join(build, REJECTS)
    row_ids: list[int] = []
    if not storage.exists(where, options):
        problems.append(Problem(REJECTS, "missing", "not on disk"))
        return row_ids
    # Buffered here: readline(limit) on every backend (an fsspec file has no limit argument).
    with storage.open_read(where, options) as raw, io.BufferedReader(cast(io.RawIOBase, raw)) as f:
        # readline with a cap: a file without line breaks is never held whole.
        for n, line in enumerate(iter(lambda: f.readline(MAX_TEXT_BYTES + 1), b""), 1):
            if len(line) > MAX_TEXT_BYTES:
                problems.append(Problem(REJECTS, "damaged", f"line {n} is longer than {MAX_TEXT_BYTES} bytes"))
                break
            try:
                record = load_json_capped(line, f"line {n}")
                if not isinstance(record, dict) or not isinstance(record.get("reason"), str):
                    raise ValueError(f"line {n} has no reason")
                row_id = record.get("row_id")
                if not isinstance(row_id, int) or isinstance(row_id, bool):
                    raise ValueError(f"line {n} has no row_id")
            except ValueError as e:
                problems.append(Problem(REJECTS, "damaged", str(e)))
                continue
            row_ids.append(row_id)
    return row_ids
