"""The build folder before planning, and its clean-up: lock it, judge what it holds, make room.

Used by :mod:`pipeline.build`'s phases: ``build`` and ``plan`` lock ``OUT`` exclusively and
call :func:`prepare_out`; ``finalize`` and a failed slice remove the temporary files a killed
writer left (:func:`remove_temporary`).
"""

from __future__ import annotations

import contextlib
import glob
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from . import plan_store
from .config import BuildConfig
from .errors import OutputError
from .inputs import INPUTS, read_listing
from .lock import hold
from .outputs import BUILD_FILES, clean, record, refuse_foreign, survey
from .write import TMP_MARK

#: ``differs(old_identity, old_listing)``: what differs from an earlier build (see ``identity.input_check``).
InputCheck = Callable[[dict[str, Any], "pa.Table | None"], list[str]]


def prepare_out(
    out: Path, differs: InputCheck, config: BuildConfig, lock: contextlib.ExitStack, command: str
) -> dict[str, Any] | None:
    """Lock ``out`` (exclusive, for ``command``), then check what it holds: same finished build → its
    manifest; else make room or refuse.

    ``differs(old_identity, old_listing)`` lists what differs from the build in ``out``."""
    overwrite = config.overwrite
    with output_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        lock.enter_context(hold(out, command))
    folder = survey(out)
    manifest = folder.manifest
    state_file = plan_store.state_dir(out) / plan_store.IDENTITY
    if manifest is not None:
        diffs = [] if overwrite else differs(manifest.identity.to_dict(), read_listing(out / INPUTS))
        if not overwrite and not diffs:
            return manifest.to_dict()
        refuse_foreign(folder)
        if not overwrite:
            raise OutputError(
                f"{out} holds a finished build of different input or options ({'; '.join(diffs)}); "
                "choose another --out or pass --overwrite to replace it"
            )
        clean(folder)
    elif state_file.is_file():
        refuse_foreign(folder)
        if not overwrite:
            with open(state_file, encoding="utf-8") as f:
                diffs = differs(json.load(f), read_listing(plan_store.state_dir(out) / INPUTS))
            if diffs:
                raise OutputError(
                    f"{out} holds an unfinished build of different input or options ({'; '.join(diffs)}); "
                    "pass --overwrite to start over from the current input, or restore that input to finish it"
                )
        else:
            clean(folder)
    else:
        clean(folder)  # what a run killed while planning, or stopped by the reject budget, left
    with output_errors(out):
        remove_temporary(out, None)
        record(out, BUILD_FILES)
    return None


@contextlib.contextmanager
def output_errors(out: Path) -> Iterator[None]:
    """Turn an OS error while writing into ``out`` (full disk, read-only folder) into one OutputError."""
    try:
        yield
    except OSError as e:
        if e.errno is None:
            raise
        raise OutputError(f"cannot write to {out}: {e.strerror}") from None


def remove_temporary(out: Path, shards: list[str] | None) -> None:
    """Remove the temporary files (shard and done record) of ``shards`` (None: of every shard) a killed writer left."""
    done = plan_store.done_dir(out)
    if shards is None:
        stale = [*out.glob(f".*{TMP_MARK}*"), *done.glob(f".*{TMP_MARK}*")]
    else:
        names = [glob.escape(n) for n in shards]
        stale = [p for n in names for p in (*out.glob(f".{n}{TMP_MARK}*"), *done.glob(f".{n}.json{TMP_MARK}*"))]
    for path in stale:
        path.unlink(missing_ok=True)
