"""The build's ``OUT`` before planning, and its clean-up: lock it, judge what it holds, make room.

Used by :mod:`pipeline.build`'s phases: ``build`` and ``plan`` lock ``OUT`` exclusively (on an
object store: claim it, :func:`.lock.claim`) and call :func:`prepare_out`; ``finalize`` and a
failed slice remove the temporary files a killed writer left (:func:`remove_temporary`; an
object store has none: a shard is uploaded whole or not at all).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from . import plan_store, write_ahead
from .config import BuildConfig
from .errors import OutputError
from .format import AHEAD
from .identity import differences
from .lock import claim, hold
from .outputs import BUILD_FILES, clean, record, refuse_foreign, survey
from .storage import Location, Options, is_url
from .write import TMP_MARK

#: ``differs(old_identity, old_listing)``: what differs from an earlier build (see ``identity.input_check``).
InputCheck = Callable[[dict[str, Any], "pa.Table | None"], list[str]]


def prepare_out(
    out: Location,
    differs: InputCheck,
    config: BuildConfig,
    lock: contextlib.ExitStack,
    command: str,
    identity: dict[str, Any],
) -> dict[str, Any] | None:
    """Lock ``out`` (exclusive, for ``command``; an object store is claimed for the build of
    ``identity``), then check what it holds: same finished build → its manifest; else make room or refuse.

    ``differs(old_identity, old_listing)`` lists what differs from the build in ``out``."""
    overwrite, opts = config.overwrite, config.storage_options
    with output_errors(out):
        take_out(out, command, lock, claimant(identity), overwrite=overwrite, options=opts)
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
                raise _unfinished(out, diffs)
        else:
            clean(folder, opts)
    elif not is_url(out) and (ahead := write_ahead.saved_identity(out)) is not None:
        # A one-pass build stopped before its plan: its shards written so far are kept for a run of the
        # same build (pipeline.write_ahead), compared by the inputs' paths, sizes and mtimes. Under
        # --check-inputs content it starts over: only reading every image again could check that pass.
        refuse_foreign(folder)
        diffs = [] if overwrite else differences(ahead, identity)
        if diffs:
            raise _unfinished(out, diffs)
        clean(folder, opts, keep=() if overwrite or config.check_inputs != "stat" else (AHEAD,))
    else:
        clean(folder, opts)  # what a run killed while planning, or stopped by the reject budget, left
    with output_errors(out):
        remove_temporary(out, None)
        record(out, BUILD_FILES, opts)
    return None


def _unfinished(out: Location, diffs: list[str]) -> OutputError:
    return OutputError(
        f"{out} holds an unfinished build of different input or options ({'; '.join(diffs)}); "
        "pass --overwrite to start over from the current input, or restore that input to finish it"
    )


def take_out(
    out: Location, command: str, lock: contextlib.ExitStack, build_id: str, *, overwrite: bool, options: Options
) -> None:
    """Hold the lock of a local ``out`` (created), or claim an object-store ``out``, until ``lock`` closes."""
    if is_url(out):
        lock.enter_context(claim(str(out), command, build_id, overwrite=overwrite, options=options))
    else:
        Path(out).mkdir(parents=True, exist_ok=True)
        lock.enter_context(hold(Path(out), command))


def claimant(identity: dict[str, Any]) -> str:
    """What a claim on an object store records as the build: a digest of its identity."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def output_errors(out: Location) -> Iterator[None]:
    """Turn an OS error while writing into ``out`` (full disk, read-only folder; on a store: a missing
    bucket, denied access) into one OutputError."""
    try:
        yield
    except OSError as e:
        if e.errno is None and not is_url(out):
            raise
        raise OutputError(f"cannot write to {out}: {e.strerror or e}") from None


def remove_temporary(out: Location, shards: list[str] | None) -> None:
    """Remove the temporary files (shard and done record) of ``shards`` (None: of every shard) a killed
    writer left in a local ``out``."""
    if is_url(out):
        return
    folder = Path(out)
    done = Path(plan_store.done_dir(folder))
    if shards is None:
        stale = [*folder.glob(f".*{TMP_MARK}*"), *done.glob(f".*{TMP_MARK}*")]
    else:
        names = [glob.escape(n) for n in shards]
        stale = [p for n in names for p in (*folder.glob(f".{n}{TMP_MARK}*"), *done.glob(f".{n}.json{TMP_MARK}*"))]
    for path in stale:
        path.unlink(missing_ok=True)
