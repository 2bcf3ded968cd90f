"""One writer per build folder: real processes racing into one ``--out``, a second writer
refused in one line naming the holder, a dead holder's lock taken over, shared slices."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from race import Inputs, command, folder_bytes, make_inputs, outcome, race

from pipeline.lock import LOCK, LockHeld, hold

TRIALS = 8


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("race"))


@pytest.fixture(scope="module")
def clean(inputs: Inputs) -> dict[tuple[str, int], dict[str, bytes]]:
    """The bytes of a clean build of each (caption file, seed) the races use."""
    builds = {}
    for token, seed in ((inputs.a, 0), (inputs.b, 0), (inputs.a, 1)):
        out = inputs.images.parent / f"clean-{token.stem}-{seed}"
        subprocess.run(command(inputs, token, out, seed), check=True, capture_output=True, timeout=240)
        builds[(token.name, seed)] = folder_bytes(out)
    return builds


@pytest.mark.parametrize("kind", ["inputs", "seeds"])
def test_racing_builds_leave_one_consistent_build(
    inputs: Inputs, clean: dict[tuple[str, int], dict[str, bytes]], tmp_path: Path, kind: str
) -> None:
    """Two builds into one fresh ``--out`` at once: of other captions over the same images, or
    of another ``--seed``. Without the lock, 21 of 40 such trials (``python tests/race.py 10``,
    twice) went wrong: a manifest naming one input over another's shards, a build dying with
    "No such file or directory" or a traceback, or the loser told to "re-run that build"."""
    for trial in range(TRIALS):
        out = tmp_path / f"{kind}-{trial}"
        a = command(inputs, inputs.a, out)
        b = command(inputs, inputs.b, out) if kind == "inputs" else command(inputs, inputs.a, out, seed=1)
        runs = race(a, b) if trial % 2 == 0 else race(b, a)
        assert outcome(out, runs, clean) == "ok", f"trial {trial}: " + " | ".join(r.stderr for r in runs)
        assert not (out / LOCK).exists() and not (out / ".capshard").exists()


HOLDER = """
import sys
from pathlib import Path
from pipeline.lock import hold
with hold(Path(sys.argv[1]), "build"):
    print("held", flush=True)
    sys.stdin.read()
"""


def start_holder(out: Path) -> subprocess.Popen[str]:
    """Another process that holds ``out``'s lock until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "held"
    out.mkdir()
    holder = start_holder(out)
    try:
        second = subprocess.run(command(inputs, inputs.a, out), capture_output=True, text=True, timeout=240)
    finally:
        holder.communicate("", timeout=60)
    assert second.returncode == 1
    line = second.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, second.stderr
    assert line.startswith(f"capshard: error: {out} is in use by capshard build (pid {holder.pid} on "
                           f"{socket.gethostname()}, started 20")
    assert line.endswith("); wait for it to end or choose another --out")
    # The holder removed its lock file on leaving; the refused build wrote nothing.
    assert sorted(p.name for p in out.iterdir()) == []

    again = subprocess.run(command(inputs, inputs.a, out), capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr


def test_a_dead_holders_lock_is_taken_over_with_a_warning(
    inputs: Inputs, clean: dict[tuple[str, int], dict[str, bytes]], tmp_path: Path
) -> None:
    out = tmp_path / "stale"
    out.mkdir()
    holder = start_holder(out)
    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate(timeout=60)
    record = json.loads((out / LOCK).read_text())
    assert record["pid"] == holder.pid and record["host"] == socket.gethostname()

    build = subprocess.run(command(inputs, inputs.a, out), capture_output=True, text=True, timeout=240)
    assert build.returncode == 0, build.stderr
    warning = f"{out}: taking over the lock left by capshard build (pid {holder.pid} on {socket.gethostname()}"
    assert warning in build.stderr and "which is no longer running" in build.stderr
    assert folder_bytes(out) == clean[(inputs.a.name, 0)]
    assert not (out / LOCK).exists()


def test_shared_holders_coexist_and_exclude_an_exclusive_one(tmp_path: Path) -> None:
    with hold(tmp_path, "write", shared=True), hold(tmp_path, "write", shared=True):
        with pytest.raises(LockHeld, match=r"is in use by capshard write \(pid \d+ on .*\) and 1 more; wait"), \
                hold(tmp_path, "plan"):
            pass
        assert (tmp_path / LOCK).exists()
    assert not (tmp_path / LOCK).exists()
    with hold(tmp_path, "plan"):
        with pytest.raises(LockHeld, match=r"is in use by capshard plan \(pid"), hold(tmp_path, "write", shared=True):
            pass
        with pytest.raises(LockHeld), hold(tmp_path, "finalize"):
            pass
    assert not (tmp_path / LOCK).exists()
    with hold(tmp_path, "finalize"):
        pass


def test_a_refused_build_never_cleans_up_the_winners_folder(tmp_path: Path) -> None:
    """The losing build of a race created --out too (it did not exist when it started); its
    clean-up after the refusal must leave the winner's state alone (found by the race test:
    the winner lost its .capshard/ mid-plan). Without a holder, the same folder goes."""
    from pipeline.cli.build import remove_created_if_unused

    out = tmp_path / "shards" / "new"
    out.mkdir(parents=True)
    with hold(out, "build"):  # the winner, still planning: a ledger, no state.json yet
        (out / ".capshard").mkdir()
        (out / ".capshard" / "ledger.txt").write_text('"rejects.jsonl"\n')
        remove_created_if_unused([out, out.parent])
        assert (out / ".capshard" / "ledger.txt").is_file()
    remove_created_if_unused([out, out.parent])
    assert not out.parent.exists()
