"""One writer per build folder: an OS file lock on ``OUT/.capshard.lock``.

``build`` (and so ``--overwrite``) holds the lock in **exclusive** mode from before it
reads anything in ``OUT`` until its last file is written, so the identity a manifest
records is that of the one process that wrote every shard it lists; ``capshard hash``
holds it too while it rewrites the manifest. **Shared** mode is ready (and tested) for
the slices of a split build that share one plan but never a shard: any number of shared holders exclude
every exclusive one, and an exclusive holder excludes everyone. ``capshard write --task I
--tasks N`` holds it shared; ``plan``, ``finalize`` and ``build`` exclusive.

The lock is ``flock(2)``: the kernel releases it when its holder dies, however it dies
(``kill -9`` included), so a lock file whose lock can be taken belongs to nobody alive.
The file records its holder (host, pid, start time, command) for the one-line message a
second writer gets; a file still holding a record when its lock is free was left by a
holder that died, and is taken over with a warning that names it. A holder that ends
normally removes the file while it still holds the lock; whoever opened the old file in
the meantime notices (the path no longer names the file it locked) and starts over, so
two holders can never lock two different files.

Local disks (and NFSv4, where the kernel maps ``flock`` onto NFS locks) only.

**Object stores have no lock.** A build into a URL (``s3://``, ``gs://``) instead
*claims* it (:func:`claim`): before it plans, it stores ``OUT/.capshard/owner.json``
(whole, like every object) holding its holder record and ``build``, a digest of the
build's identity. A build that finds a claim of a *different* build refuses, naming
the holder, unless ``--overwrite``; a claim of the *same* build (the same input and
options: a re-run after a kill, which resumes) is taken over. The claim goes when the
build ends (with ``.capshard/`` once the manifest is written, or removed if still ours
on a failure); a killed build's claim stays until a re-run takes it over. This is a
convention, not mutual exclusion: two builds started at the same moment can both find
no claim and both write. Two runs of the *same* build then write the same bytes under
the same keys, and the manifest is still written last, after every shard is checked;
two *different* builds interleave, and what the prefix holds is undefined until one
of them is re-run (with ``--overwrite``) alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from . import storage
from .errors import OutputError
from .format import LOCK, STATE
from .storage import Options

log = logging.getLogger(__name__)

#: A holder record longer than this is not read (the file is ours; this bounds a damaged one).
MAX_RECORD = 4096
#: How long a shared taker tries again while the lock is held exclusively (see :func:`hold`).
SHARED_RETRY_SECONDS = 2.0


class LockHeld(OutputError):
    """Another capshard process holds the build folder."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a build folder's lock."""

    host: str
    pid: int
    started: str
    command: str
    mode: str

    def describe(self) -> str:
        return f"capshard {self.command} (pid {self.pid} on {self.host}, started {self.started})"


def lock_path(folder: Path) -> Path:
    """The lock file of build folder ``folder``."""
    return Path(folder) / LOCK


@contextlib.contextmanager
def hold(folder: Path, command: str, *, shared: bool = False) -> Iterator[Holder]:
    """Hold ``folder``'s lock for the ``with`` block; ``folder`` must exist.

    Raises :class:`LockHeld`, naming the holder, when the lock is taken in a conflicting
    mode: at once, except that a shared taker tries again for up to
    :data:`SHARED_RETRY_SECONDS`, since another shared taker holds the lock exclusively for
    the moment it takes to write its record (N slices started together would fail otherwise).
    """
    path = lock_path(folder)
    me = Holder(socket.gethostname(), os.getpid(), _now(), command, "shared" if shared else "exclusive")
    fd = _acquire(path, me)
    try:
        yield me
    finally:
        _release(path, fd, shared)


def _acquire(path: Path, me: Holder) -> int:
    shared = me.mode == "shared"
    deadline = time.monotonic() + SHARED_RETRY_SECONDS
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            # Exclusive first even for a shared holder: only a holder alone may judge the
            # record stale and rewrite it.
            alone = _try_flock(fd, fcntl.LOCK_EX)
            if not alone and not (shared and _try_flock(fd, fcntl.LOCK_SH)):
                if shared and time.monotonic() < deadline:
                    os.close(fd)  # perhaps another shared taker, writing its record: try again
                    time.sleep(0.05)
                    continue
                raise _held(path, fd)
            if not _is_current(fd, path):
                os.close(fd)  # its last holder removed it after we opened it: open the new one
                continue
            _write_record(path, fd, me, alone)
            # Downgrading is not atomic: an exclusive taker may slip in between; then we fail at once.
            if alone and shared and not _try_flock(fd, fcntl.LOCK_SH):
                raise _held(path, fd)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


def _write_record(path: Path, fd: int, me: Holder, alone: bool) -> None:
    """Add ``me`` to the record; a holder alone first drops the records of holders that died."""
    if alone:
        dead = _records(fd)
        if dead:
            log.warning("%s: taking over the lock left by %s, which is no longer running",
                        path.parent, " and ".join(h.describe() for h in dead[-3:]))
        os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_END)
    os.write(fd, (json.dumps(asdict(me)) + "\n").encode())
    os.fsync(fd)


def _held(path: Path, fd: int) -> LockHeld:
    return LockHeld(f"{path.parent} is in use by {_describe_holders(fd)}; wait for it to end or choose another --out")


def _release(path: Path, fd: int, shared: bool) -> None:
    """Remove the lock file while still holding it exclusively (the last holder), then unlock."""
    try:
        if not shared or _try_flock(fd, fcntl.LOCK_EX):
            with contextlib.suppress(FileNotFoundError):
                if _is_current(fd, path):
                    path.unlink()
    finally:
        os.close(fd)


def _try_flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _records(fd: int) -> list[Holder]:
    """The holders recorded in the lock file (shared holders add a line each)."""
    data = os.pread(fd, MAX_RECORD, 0)
    holders = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            raw = json.loads(line)
            holders.append(Holder(str(raw["host"]), int(raw["pid"]), str(raw["started"]), str(raw["command"]),
                                  str(raw.get("mode", "exclusive"))))
        except (ValueError, KeyError, TypeError):
            continue
    return holders


def _describe_holders(fd: int) -> str:
    holders = _records(fd)
    if not holders:
        return "another capshard process (it has not recorded itself yet)"
    last = holders[-1].describe()
    return last if len(holders) == 1 else f"{last} and {len(holders) - 1} more"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


#: The claim object of a build on object storage, under ``OUT/.capshard/``.
OWNER = "owner.json"


@contextlib.contextmanager
def claim(out: str, command: str, build: str, *, overwrite: bool, options: Options = None) -> Iterator[Holder]:
    """Claim the object-store prefix ``out`` for build ``build`` (see the module docstring).

    Raises :class:`LockHeld` naming the holder when ``out`` is claimed by a different build
    and ``overwrite`` is false.
    """
    where = storage.join(out, STATE, OWNER)
    previous = _read_claim(where, options)
    if previous is not None and previous.get("build") != build and not overwrite:
        raise LockHeld(
            f"{out} is claimed by {_claim_holder(previous)} for a different build; wait for it to end, "
            "choose another --out, or pass --overwrite to replace it"
        )
    if previous is not None:
        log.warning("%s: taking over the claim of %s", out, _claim_holder(previous))
    me = Holder(socket.gethostname(), os.getpid(), _now(), command, "exclusive")
    mine = {**asdict(me), "build": build}
    storage.put_whole(where, (json.dumps(mine, sort_keys=True) + "\n").encode(), options)
    try:
        yield me
    finally:
        with contextlib.suppress(OSError):
            if _read_claim(where, options) == mine:
                storage.remove([where], options)


def _read_claim(where: str, options: Options) -> dict[str, object] | None:
    try:
        data = json.loads(storage.read_bytes(where, options)[:MAX_RECORD])
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # a damaged claim: nobody's build, taken over only with --overwrite
    return data if isinstance(data, dict) else {}


def _claim_holder(data: dict[str, object]) -> str:
    try:
        return Holder(str(data["host"]), int(str(data["pid"])), str(data["started"]), str(data["command"]),
                      "exclusive").describe()
    except (KeyError, ValueError):
        return "a capshard build (its claim cannot be read)"
