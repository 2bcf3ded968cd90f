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

from . import storage
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
    parse_manifest,
    read_manifest,
)
from .lock import OWNER
from .storage import Location, Options
from .write import TMP_MARK, fsync_dir

#: The files every build may write besides its shards.
BUILD_FILES = (REJECTS, INDEX, MANIFEST, INPUTS, SIZES)
#: How many foreign names a refusal lists.
SHOWN = 3


@dataclass(frozen=True)
class Folder:
    """What ``out`` holds: a finished build's manifest (or None), the entries capshard
    recorded as its own, and the entries it did not."""

    out: Location
    manifest: Manifest | None
    owned: tuple[str, ...]
    foreign: tuple[str, ...]


def survey(out: Location, options: Options = None) -> Folder:
    """Sort the entries of ``out`` (which may not exist) into owned and foreign.

    ``out`` may be a prefix of an object store: its entries are then the first ``/``-parts
    of its keys (a part followed by more is a folder). A ``manifest.json`` that is not a
    capshard manifest is an :class:`OutputError`: the folder is someone else's.
    """
    entries = _entries(out, options)
    if entries is None:
        return Folder(out, None, (), ())
    try:
        manifest = _manifest(out, options)
    except ManifestError as e:
        raise OutputError(f"{out}: not a capshard build ({MANIFEST} {e.detail}); choose another --out") from None
    recorded = set(_ledger(out, options)) | _done(out, options)
    if manifest is not None:
        recorded |= {*BUILD_FILES, *_listed(manifest)}
    owned: list[str] = []
    foreign: list[str] = []
    for name, is_dir in entries:
        (owned if _is_owned(name, is_dir, recorded) else foreign).append(name)
    return Folder(out, manifest, tuple(owned), tuple(foreign))


def _entries(out: Location, options: Options) -> list[tuple[str, bool]] | None:
    """``(name, is a folder)`` of each entry of ``out``, by name; None when there is no folder."""
    if not storage.is_url(out):
        path = Path(out)
        if not path.is_dir():
            return None
        # A link named like the state folder is not the state folder: only a real folder is.
        special = (STATE, HASH_PARTS)
        return [
            (p.name, p.is_dir() and not (p.name in special and p.is_symlink()))
            for p in sorted(path.iterdir(), key=lambda p: p.name)
        ]
    found: dict[str, bool] = {}
    for key in storage.list_prefix(out, options):
        head, sep, _ = key.partition("/")
        found[head] = found.get(head, False) or bool(sep)
    return sorted(found.items())


def _manifest(out: Location, options: Options) -> Manifest | None:
    if not storage.is_url(out):
        return read_manifest(out)
    where = storage.join(out, MANIFEST)
    if not storage.exists(where, options):
        return None
    return parse_manifest(storage.read_bytes(where, options), where)


def refuse_foreign(folder: Folder) -> None:
    """Stop with one line listing a few foreign entries, if there are any."""
    if not folder.foreign:
        return
    shown = ", ".join(_printable(n) for n in folder.foreign[:SHOWN])
    more = len(folder.foreign) - SHOWN
    listing = shown + (f" and {more} more" if more > 0 else "")
    if not set(folder.owned) - {LOCK}:
        raise OutputError(
            f"{folder.out} is not empty and holds no capshard build ({listing}); choose an empty or new --out"
        )
    raise OutputError(
        f"{folder.out} holds files capshard did not write ({listing}); capshard neither "
        "replaces nor removes them: move them away or choose another --out"
    )


def clean(folder: Folder, options: Options = None, *, keep: tuple[str, ...] = ()) -> None:
    """Remove every owned file of ``folder`` and capshard's state (but the entries ``keep`` names in
    a local state folder), nothing else.

    The files about to go are written to the ledger first, and the manifest goes first:
    a clean-up cut short leaves no finished build and nothing unrecorded.
    """
    refuse_foreign(folder)
    out = folder.out
    files = [n for n in folder.owned if n not in (LOCK, STATE, HASH_PARTS)]
    if not files and STATE not in folder.owned and HASH_PARTS not in folder.owned:
        return
    record(out, files, options)
    if storage.is_url(out):
        storage.remove([storage.join(out, n) for n in sorted(files, key=lambda n: n != MANIFEST)], options)
        for prefix in (HASH_PARTS, STATE):  # the state (with its ledger) last; the build's claim stays
            where = storage.join(out, prefix)
            keys = [k for k in storage.list_prefix(where, options) if prefix != STATE or k != OWNER]
            storage.remove([storage.join(where, k) for k in keys], options)
        return
    out = Path(out)
    for name in sorted(files, key=lambda n: n != MANIFEST):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / HASH_PARTS, ignore_errors=True)  # an interrupted `capshard hash`'s parts
    state = out / STATE
    if keep and state.is_dir() and not state.is_symlink():
        for entry in state.iterdir():
            if entry.name in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    else:
        shutil.rmtree(state, ignore_errors=True)
    fsync_dir(out)


def record(out: Location, names: Iterable[str], options: Options = None) -> None:
    """Add ``names`` (entries of ``out``) to the ledger, durably, before they are created.

    On an object store (no append) the ledger is rewritten whole with the new names added."""
    known = _ledger(out, options)
    seen = set(known)
    new = [n for n in dict.fromkeys(names) if n not in seen]
    if not new:
        return
    lines = "".join(json.dumps(n) + "\n" for n in new)
    if storage.is_url(out):
        text = "".join(json.dumps(n) + "\n" for n in known) + lines
        storage.put_whole(storage.join(out, STATE, LEDGER), text.encode("utf-8"), options)
        return
    state = Path(out) / STATE
    state.mkdir(parents=True, exist_ok=True)
    with open(state / LEDGER, "a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(state)


def check_location(out: Location, images: Path | str | None, source: str | None, options: Options = None) -> None:
    """Refuse an ``out`` that is or lies inside ``images``, or that is the source's folder
    (or lies inside a source that is a folder): capshard does not write among its inputs.
    An ``out`` on object storage is checked against inputs given as URLs of the same store, and
    its backend must be installed (a one-line error naming the extra, before anything is read)."""
    if storage.is_url(out):
        storage.filesystem(out, options)
        _check_url_location(str(out), images, source)
        return
    target = Path(os.path.realpath(out))
    if images is not None and not storage.is_url(images):
        folder = Path(os.path.realpath(images))
        if target == folder or folder in target.parents:
            raise UsageError(f"--out {out} is inside --images {images}; choose an --out outside the input images")
    if source is not None and not storage.is_url(source) and os.path.exists(source):
        path = Path(os.path.realpath(source))
        if path.is_dir() and (target == path or path in target.parents):
            raise UsageError(f"--out {out} is inside the source folder {source}; choose an --out outside it")
        if not path.is_dir() and target == path.parent:
            raise UsageError(f"--out {out} is the folder of the source {source}; choose another --out")


def _check_url_location(out: str, images: Path | str | None, source: str | None) -> None:
    inside = [str(loc).rstrip("/") for loc in (images, source) if loc is not None and storage.is_url(loc)]
    for loc in inside:
        if out == loc or out.startswith(loc + "/") or storage.parent(loc) == out:
            raise UsageError(f"--out {out} is an input location or lies inside one ({loc}); choose another --out")


def _is_owned(name: str, is_dir: bool, recorded: set[str]) -> bool:
    """The lock, the state folder, and files (never folders) recorded or temporaries of those."""
    if name in (LOCK, STATE, HASH_PARTS):
        return name == LOCK or is_dir
    return not is_dir and (name in recorded or _temporary_of(name) in recorded)


def _ledger(out: Location, options: Options = None) -> list[str]:
    try:
        text = storage.read_bytes(storage.join(out, STATE, LEDGER), options).decode("utf-8")
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


def _done(out: Location, options: Options = None) -> set[str]:
    """Shards with a ``done`` record: written by a build that has not finished."""
    names = [key for key in storage.list_prefix(storage.join(out, STATE, DONE), options) if "/" not in key]
    return {n.removesuffix(".json") for n in names if n.endswith(".json") and SHARD_NAME.fullmatch(n[:-5])}


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
