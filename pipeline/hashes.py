"""Perceptual hashes of a finished build: compute them from its shards, and load them.

``hash_build`` streams every shard (read only, never rewritten), hashes each image member
with :mod:`pipeline.phash` in parallel over shards, and keeps one part file per shard in
``BUILD/.capshard-hash/`` so an interrupted run resumes where it stopped. The parts are
then joined into the sidecar ``phash.parquet`` (``key``, ``phash`` int64, and with
``flip`` ``phash_flip``, the hash of the mirrored image), and the manifest lists it under
``sidecars.phash`` with its sha256; only the sidecar and the manifest are written.

``load_hashes`` gives the index joined with the hashes, from the index's own ``phash``
column (``build --phash``) or from the listed sidecar.
"""

from __future__ import annotations

import contextlib
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import IntegrityError, OutputError, UsageError
from .executors import make_executor
from .finalize import write_manifest
from .format import HASH_PARTS, INDEX, MANIFEST, PHASH, STATE, STATE_FILE, read_manifest
from .lock import hold
from .media import EXTENSIONS
from .outputs import record, survey
from .phash import phash_bytes, to_int64
from .write import file_sha256, write_bytes_atomic

SIDECAR = PHASH
PARTS = HASH_PARTS
SIDECAR_SCHEMA = pa.schema([("key", pa.string()), ("phash", pa.int64()), ("phash_flip", pa.int64())])
_IMAGE_EXTS = set(EXTENSIONS.values())


@dataclass(frozen=True)
class HashTask:
    """One shard to hash."""

    path: str
    flip: bool


@dataclass(frozen=True)
class HashResult:
    """What ``hash_build`` did."""

    build_dir: Path
    images: int
    shards: int
    reused_shards: int


def hash_shard(context: Any, task: HashTask) -> list[dict[str, Any]]:
    """``key``, ``phash`` (and ``phash_flip``) of every image member of one shard, in tar order."""
    rows = []
    with tarfile.open(task.path, "r|") as tar:  # a stream: members are read once, in order
        for member in tar:
            stem, _, ext = member.name.partition(".")
            if not member.isfile() or ext not in _IMAGE_EXTS:
                continue
            f = tar.extractfile(member)
            data = f.read() if f is not None else b""
            rows.append(
                {
                    "key": stem,
                    "phash": to_int64(phash_bytes(data)),
                    "phash_flip": to_int64(phash_bytes(data, mirror=True)) if task.flip else None,
                }
            )
    return rows


def hash_build(
    build_dir: Path,
    *,
    workers: int = 1,
    executor: str = "process",
    flip: bool = False,
    on_progress: Callable[[int], None] = lambda n: None,
) -> HashResult:
    """Compute the pHash of every image of the build from its shards; see the module docstring.

    Holds the build folder's lock (:mod:`.lock`): it rewrites the manifest, so no build may
    write there meanwhile."""
    build_dir = Path(build_dir)
    with hold(build_dir, "hash"):
        return _hash_build(build_dir, workers, executor, flip, on_progress)


def _hash_build(
    build_dir: Path, workers: int, executor: str, flip: bool, on_progress: Callable[[int], None]
) -> HashResult:
    manifest = _manifest(build_dir)
    if SIDECAR in survey(build_dir).foreign:
        raise OutputError(f"{build_dir / SIDECAR} was not written by capshard; move it away to hash this build")
    shards = {s["name"]: s["sha256"] for split in manifest["splits"].values() for s in split["shards"]}
    listed = manifest.get("sidecars", {}).get("phash")
    if listed and listed.get("flip") == flip and _intact(build_dir / SIDECAR, listed["sha256"]):
        return HashResult(build_dir, listed["images"], len(shards), len(shards))  # already hashed: a no-op
    parts_dir = build_dir / PARTS
    todo, parts = [], {}
    for name, digest in sorted(shards.items()):
        part = parts_dir / f"{name}.{digest[:16]}{'.flip' if flip else ''}.parquet"
        parts[name] = part
        if not part.is_file():
            todo.append(HashTask(str(build_dir / name), flip))
    reused = len(shards) - len(todo)
    with contextlib.closing(make_executor(executor, max(1, min(workers, len(todo) or 1)))) as ex:
        for task, rows in _with_task(ex, todo):
            table = pa.Table.from_pylist(rows, schema=SIDECAR_SCHEMA)
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            write_bytes_atomic(parts[Path(task.path).name], sink.getvalue().to_pybytes())
            on_progress(1)
    table = (
        pa.concat_tables([pq.read_table(parts[n]) for n in sorted(parts)]) if parts else SIDECAR_SCHEMA.empty_table()
    ).sort_by("key")
    sink = pa.BufferOutputStream()
    pq.write_table(table.cast(SIDECAR_SCHEMA), sink)
    record(build_dir, [SIDECAR])  # capshard's before it exists, until the manifest lists it
    write_bytes_atomic(build_dir / SIDECAR, sink.getvalue().to_pybytes())
    manifest.setdefault("sidecars", {})["phash"] = {
        "file": SIDECAR,
        "sha256": file_sha256(build_dir / SIDECAR)[0],
        "images": table.num_rows,
        "flip": flip,
        "definition": "imagehash.phash (docs/NEAR_DUPLICATES.md)",
    }
    write_manifest(build_dir, manifest)
    shutil.rmtree(parts_dir, ignore_errors=True)
    if not (build_dir / STATE / STATE_FILE).exists():  # a finished build keeps no state folder
        shutil.rmtree(build_dir / STATE, ignore_errors=True)
    return HashResult(build_dir, table.num_rows, len(shards), reused)


def _intact(path: Path, sha256: str) -> bool:
    return path.is_file() and file_sha256(path)[0] == sha256


def _with_task(ex: Any, tasks: list[HashTask]) -> Any:
    # Results arrive in completion order; each carries its task, hence its shard.
    return ex.map_unordered(_hash_with_task, tasks)


def _hash_with_task(context: Any, task: HashTask) -> tuple[HashTask, list[dict[str, Any]]]:
    return task, hash_shard(context, task)


def _manifest(build_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(build_dir) if build_dir.is_dir() else None
    if manifest is None:
        raise UsageError(f"{build_dir} holds no finished capshard build (no {MANIFEST})")
    return manifest.to_dict()


def load_hashes(build_dir: Path, *, need: bool = True) -> pa.Table:
    """The build's index with ``phash`` (and ``phash_flip`` when hashed with ``--flip``) columns.

    Raises :class:`UsageError` naming the fix when the build has no hashes and ``need``.
    """
    build_dir = Path(build_dir)
    manifest = _manifest(build_dir)
    index = pq.read_table(build_dir / INDEX)
    if "phash" in index.column_names:
        if "phash_flip" not in index.column_names:
            index = index.append_column("phash_flip", pa.nulls(index.num_rows, pa.int64()))
        return index
    listed = manifest.get("sidecars", {}).get("phash")
    if listed is None:
        if not need:
            return index
        raise UsageError(
            f"{build_dir} has no perceptual hashes; run `capshard hash {build_dir}` (or build with --phash)"
        )
    path = build_dir / listed["file"]
    if not path.is_file() or file_sha256(path)[0] != listed["sha256"]:
        raise IntegrityError(f"{path} is missing or does not match its sha256 in the manifest; run capshard hash again")
    sidecar = pq.read_table(path)
    joined = index.join(sidecar, "key", join_type="left outer", use_threads=False)
    return joined.sort_by([("shard", "ascending"), ("position", "ascending")])


def read_member(build_dir: Path, shard: str, key: str) -> bytes | None:
    """The image bytes of sample ``key`` in ``shard`` (for thumbnails), or None."""
    with tarfile.open(Path(build_dir) / shard, "r|") as tar:
        for member in tar:
            stem, _, ext = member.name.partition(".")
            if stem == key and ext in _IMAGE_EXTS and member.isfile():
                f = tar.extractfile(member)
                return f.read() if f is not None else None
    return None
