"""Whose files are in a build folder: capshard deletes or overwrites only what it wrote.

Every file a build creates in ``OUT`` is recorded before it is created: its name goes
into ``OUT/.capshard/ledger.txt`` (appended and fsynced). A finished build's manifest
lists its shards and its sidecars (``phash.parquet``), and the fixed build files
(``manifest.json``, ``index.parquet``, ``rejects.jsonl``, ``inputs.parquet``,
``sizes.json``: ``BUILD_FILES``) are always its own, so the ledger can go with the rest
of ``.capshard/`` once the manifest is written. The ``done`` record of a shard (written
before its rename) also marks it as ours, and so does the temporary name of any file
that is ours.

:func:`survey` sorts the entries of ``OUT`` into those and the rest. Anything capshard
did not record is *foreign*: a folder holding foreign files is never written into or
cleaned, whatever the flags (only a finished build of the same input, which is left
untouched, is reported up to date). ``--overwrite`` and the clean-up of a failed run
remove exactly the recorded files. :func:`check_location` refuses an ``--out`` that is
(or lies inside) ``--images``, or is the folder of the source.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError, UsageError
from .format import (
    DONE,
    HASH_PARTS,
    INDEX,
    INPUTS,
    LEDGER,
    LOCK,
    MANIFEST,
    REJECTS,
    SHARD_NAME,
    SIZES,
    STATE,
    Manifest,
    ManifestError,
    read_manifest,
)
from .write import TMP_MARK, fsync_dir

#: The files every build may write besides its shards.
BUILD_FILES = (REJECTS, INDEX, MANIFEST, INPUTS, SIZES)
#: How many foreign names a refusal lists.
SHOWN = 3


@dataclass(frozen=True)
class Folder:
    """What ``out`` holds: a finished build's manifest (or None), the entries capshard
    recorded as its own, and the entries it did not."""

    out: Path
    manifest: Manifest | None
    owned: tuple[str, ...]
    foreign: tuple[str, ...]


def survey(out: Path) -> Folder:
    """Sort the entries of ``out`` (which may not exist) into owned and foreign.

    A ``manifest.json`` that is not a capshard manifest is an :class:`OutputError`:
    the folder is someone else's.
    """
    if not out.is_dir():
        return Folder(out, None, (), ())
    try:
        manifest = read_manifest(out)
    except ManifestError as e:
        raise OutputError(f"{out}: not a capshard build ({MANIFEST} {e.detail}); choose another --out") from None
    recorded = set(_ledger(out)) | _done(out)
    if manifest is not None:
        recorded |= {*BUILD_FILES, *_listed(manifest)}
    owned: list[str] = []
    foreign: list[str] = []
    for entry in sorted(out.iterdir(), key=lambda p: p.name):
        (owned if _is_owned(entry, recorded) else foreign).append(entry.name)
    return Folder(out, manifest, tuple(owned), tuple(foreign))


def refuse_foreign(folder: Folder) -> None:
    """Stop with one line listing a few foreign entries, if there are any."""
    if not folder.foreign:
        return
    shown = ", ".join(_printable(n) for n in folder.foreign[:SHOWN])
    more = len(folder.foreign) - SHOWN
    listing = shown + (f" and {more} more" if more > 0 else "")
    if not set(folder.owned) - {LOCK}:
        raise OutputError(f"{folder.out} is not empty and holds no capshard build ({listing}); "
                          "choose an empty or new --out")
    raise OutputError(f"{folder.out} holds files capshard did not write ({listing}); capshard neither "
                      "replaces nor removes them: move them away or choose another --out")


def clean(folder: Folder) -> None:
    """Remove every owned file of ``folder`` and capshard's state, nothing else.

    The files about to go are written to the ledger first, and the manifest goes first:
    a clean-up cut short leaves no finished build and nothing unrecorded.
    """
    refuse_foreign(folder)
    out = folder.out
    files = [n for n in folder.owned if n not in (LOCK, STATE, HASH_PARTS)]
    if not files and STATE not in folder.owned and HASH_PARTS not in folder.owned:
        return
    record(out, files)
    for name in sorted(files, key=lambda n: n != MANIFEST):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / HASH_PARTS, ignore_errors=True)  # an interrupted `capshard hash`'s parts
    shutil.rmtree(out / STATE, ignore_errors=True)
    fsync_dir(out)


def record(out: Path, names: Iterable[str]) -> None:
    """Add ``names`` (entries of ``out``) to the ledger, durably, before they are created."""
    known = set(_ledger(out))
    new = [n for n in dict.fromkeys(names) if n not in known]
    if not new:
        return
    state = out / STATE
    state.mkdir(parents=True, exist_ok=True)
    with open(state / LEDGER, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(n) + "\n" for n in new))
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(state)


def check_location(out: Path, images: Path | None, source: str | None) -> None:
    """Refuse an ``out`` that is or lies inside ``images``, or that is the source's folder
    (or lies inside a source that is a folder): capshard does not write among its inputs."""
    target = Path(os.path.realpath(out))
    if images is not None:
        folder = Path(os.path.realpath(images))
        if target == folder or folder in target.parents:
            raise UsageError(f"--out {out} is inside --images {images}; choose an --out outside the input images")
    if source is not None and os.path.exists(source):
        path = Path(os.path.realpath(source))
        if path.is_dir() and (target == path or path in target.parents):
            raise UsageError(f"--out {out} is inside the source folder {source}; choose an --out outside it")
        if not path.is_dir() and target == path.parent:
            raise UsageError(f"--out {out} is the folder of the source {source}; choose another --out")


def _is_owned(entry: Path, recorded: set[str]) -> bool:
    """The lock, the state folder, and files (never folders) recorded or temporaries of those."""
    name = entry.name
    if name in (LOCK, STATE, HASH_PARTS):
        return name == LOCK or (entry.is_dir() and not entry.is_symlink())
    return not entry.is_dir() and (name in recorded or _temporary_of(name) in recorded)


def _ledger(out: Path) -> list[str]:
    try:
        text = (out / STATE / LEDGER).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    names = []
    for line in text.splitlines():
        # A line cut short by a crash was never followed by its file's creation.
        with contextlib.suppress(ValueError):
            name = json.loads(line)
            if isinstance(name, str) and _plain(name):
                names.append(name)
    return names


def _done(out: Path) -> set[str]:
    """Shards with a ``done`` record: written by a build that has not finished."""
    done = out / STATE / DONE
    if not done.is_dir():
        return set()
    return {p.name.removesuffix(".json") for p in done.glob("*.json") if SHARD_NAME.fullmatch(p.name[:-5])}


def _listed(manifest: Manifest) -> set[str]:
    names = {s.name for s in manifest.shards}
    sidecars = manifest.extra.get("sidecars")
    for sidecar in sidecars.values() if isinstance(sidecars, dict) else ():
        name = sidecar.get("file") if isinstance(sidecar, dict) else None
        if isinstance(name, str) and _plain(name):
            names.add(name)  # written by a later command (capshard hash) and listed by it
    return names


def _temporary_of(name: str) -> str | None:
    """The final name whose temporary ``name`` is (``.NAME.tmp-PID``), else None."""
    if not name.startswith(".") or TMP_MARK not in name:
        return None
    return name[1:].rsplit(TMP_MARK, 1)[0]


def _plain(name: str) -> bool:
    return bool(name) and name not in (".", "..", STATE, LOCK) and "/" not in name and "\0" not in name


def _printable(name: str) -> str:
    return name if name.isprintable() else ascii(name)
