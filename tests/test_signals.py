"""Crashes and signals on real ``capshard build`` processes: SIGTERM, SIGINT and SIGKILL mid-write,
a read-only output folder and a full disk. Each ends with one clear outcome, no temporary or
half-written file under a final name, and a re-run that finishes byte-identical to a clean build."""

from __future__ import annotations

import ctypes
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from synth import caption_text, manifest_bytes

from pipeline.verify import verify
from pipeline.write import file_sha256

N_IMAGES = 200
PER_SHARD = 5
SHARDS = N_IMAGES // PER_SHARD


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images slow enough to re-encode (1600x1200, ``--resize``) that a signal lands mid-write."""
    root = tmp_path_factory.mktemp("signals")
    size = (1600, 1200)
    bands = [Image.linear_gradient("L").resize(size), Image.radial_gradient("L").resize(size),
             Image.linear_gradient("L").rotate(90).resize(size)]
    buf = io.BytesIO()
    Image.merge("RGB", bands).save(buf, "JPEG", quality=90)
    (root / "images").mkdir()
    lines = []
    for i in range(N_IMAGES):
        # Bytes after the JPEG end marker: every file distinct, every one a valid image.
        (root / "images" / f"{i}.jpg").write_bytes(buf.getvalue() + f"capshard test image {i}".encode())
        lines += [f"{i}.jpg#{n}\t{caption_text(i, n)}\n" for n in range(2)]
    (root / "captions.token").write_text("".join(lines))
    clean = run(root, "clean")
    assert clean.returncode == 0, clean.stderr
    return root


def command(root: Path, out: str, resize: bool = True) -> list[str]:
    return [sys.executable, "-m", "pipeline", "build", str(root / "captions.token"), "--format", "flickr",
            "--images", str(root / "images"), *(["--resize", "64"] if resize else []),
            "--max-images-per-shard", str(PER_SHARD), "--workers", "2", "--out", str(root / out)]


def run(
    root: Path, out: str, preexec: Callable[[], None] | None = None, resize: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(root, out, resize), capture_output=True, text=True, timeout=300, preexec_fn=preexec)


#: How a build writes: each image read once, its shard written as it is probed (the default), or
#: every image probed first and the shards written after the plan (``--two-pass``).
PASSES = ["--one-pass", "--two-pass"]


def start_and_wait_for_writes(root: Path, out: str, passes: str) -> subprocess.Popen[str]:
    """Start a build and return once some shards are done and others are being written (by the
    one-pass build: in ``.capshard/ahead/``, its shards before the plan; else under ``out``)."""
    # Ctrl-C as on a terminal: a runner that started us in the background (bash's `cmd &`)
    # passes SIGINT down ignored, and Python keeps an ignored SIGINT ignored.
    proc = subprocess.Popen([*command(root, out), passes], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=_default_sigint)
    done, writing = (root / out / ".capshard" / "done", root / out)
    if passes == "--one-pass":
        done = writing = root / out / ".capshard" / "ahead"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if done.is_dir() and len(list(done.glob("*.tar.json"))) >= 3 and list(writing.glob(".*.tmp-*")):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the build ended before it could be interrupted; make it bigger"
    return proc


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".tmp-" in p.name]


def assert_no_half_written_shard(out: Path) -> int:
    """Every shard under its final name matches its done record, every one written ahead its record;
    returns how many there are."""
    shards = sorted(out.glob("*.tar"))
    for shard in shards:
        record = json.loads((out / ".capshard" / "done" / f"{shard.name}.json").read_text())
        assert file_sha256(shard) == (record["sha256"], record["bytes"]), shard.name
    # A shard written ahead counts with its record (the next run believes nothing else).
    ahead = sorted((out / ".capshard" / "ahead").glob("*.tar.json"))
    for path in ahead:
        record = json.loads(path.read_text())["result"]
        assert file_sha256(path.with_suffix("")) == (record["sha256"], record["bytes"]), path.name
    assert not (shards and ahead), "shards are committed after the pass"
    return len(shards) + len(ahead)


def assert_resumes_to_the_clean_bytes(
    root: Path, out: str, clean_out: str = "clean", resize: bool = True, status: str = "finished (resumed)"
) -> None:
    again = run(root, out, resize=resize)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"{status} {root / out}")
    clean = {p.name: p.read_bytes() for p in sorted((root / clean_out).glob("*.tar"))}
    assert len(clean) == SHARDS
    assert {p.name: p.read_bytes() for p in sorted((root / out).glob("*.tar"))} == clean
    assert manifest_bytes(root / out) == manifest_bytes(root / clean_out)
    assert not temporaries(root / out) and not (root / out / ".capshard").exists()
    assert verify(root / out).ok


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize(
    ("sig", "code", "message", "group"),
    [
        (signal.SIGTERM, 143, "capshard: terminated", False),  # docker stop: PID 1 only
        (signal.SIGINT, 130, "capshard: interrupted", True),  # Ctrl-C: the whole process group
    ],
)
def test_a_signal_mid_write_stops_cleanly_and_the_same_command_finishes(
    source: Path, sig: signal.Signals, code: int, message: str, group: bool, passes: str
) -> None:
    out = f"interrupted-{sig.name}{passes}"
    proc = start_and_wait_for_writes(source, out, passes)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    # Progress lines (stderr is not a terminal), then the message: no blank line before it.
    assert stderr.splitlines()[-1] == message and stdout == "", stderr
    assert all(line.startswith("progress: ") for line in stderr.splitlines()[:-1]), stderr
    assert not (source / out / "manifest.json").exists()
    assert not temporaries(source / out)
    assert 0 < assert_no_half_written_shard(source / out) < SHARDS
    assert_resumes_to_the_clean_bytes(source, out)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the workers")
@pytest.mark.parametrize("passes", PASSES)
def test_kill_9_of_a_pooled_build_leaves_no_worker_and_resumes(source: Path, passes: str) -> None:
    out = f"killed{passes}"
    proc = start_and_wait_for_writes(source, out, passes)
    workers = children_of(proc.pid)
    assert workers, "the build runs a process pool"
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.01)
    alive = [w for w in workers if Path(f"/proc/{w}/stat").exists()
             and Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive, "orphaned workers still running after the build was killed"
    assert not (source / out / "manifest.json").exists()
    assert_no_half_written_shard(source / out)
    assert_resumes_to_the_clean_bytes(source, out)


@pytest.mark.parametrize("passes", PASSES)
def test_a_full_disk_is_one_error_and_a_rerun_finishes(source: Path, passes: str) -> None:
    """RLIMIT_FSIZE makes every write past 200 kB fail as a full disk does (EFBIG, not ENOSPC):
    the plan fits, a shard of five 90 kB source images does not."""

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    clean = source / "clean-stored"
    if not clean.exists():
        assert run(source, clean.name, resize=False).returncode == 0
    out = f"full{passes}"
    proc = subprocess.run([*command(source, out, resize=False), passes], capture_output=True, text=True,
                          timeout=300, preexec_fn=small_disk)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("progress: ")]
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert errors[0].startswith("capshard: error: cannot write shard train-0000") and "File too large" in errors[0]
    assert not (source / out / "manifest.json").exists()
    assert not temporaries(source / out)
    assert not list((source / out).glob("*.tar"))
    # The two-pass build failed after its plan was saved: the re-run resumes from it. The one-pass
    # build failed in its pass, before any shard was whole: nothing to resume from.
    status = "finished (resumed)" if passes == "--two-pass" else "built"
    assert_resumes_to_the_clean_bytes(source, out, "clean-stored", resize=False, status=status)


def drop_dac_override() -> None:
    """As root, give up the capabilities that ignore file modes (so a 0o555 folder is read-only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search, cap_fowner = 24, 1, 2, 3
    for cap in (cap_dac_override, cap_dac_read_search, cap_fowner):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_read_only_output_folder_is_one_error_and_leaves_nothing(source: Path, tmp_path: Path) -> None:
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    proc = subprocess.run(
        [*command(source, "unused")[:-1], str(readonly)], capture_output=True, text=True, timeout=300,
        preexec_fn=drop_dac_override if os.geteuid() == 0 else None,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("progress: ")]
    assert errors == [f"capshard: error: cannot write to {readonly}: Permission denied"], proc.stderr
    assert list(readonly.iterdir()) == []


def test_an_output_path_under_a_file_is_one_error(source: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    proc = subprocess.run(
        [*command(source, "unused")[:-1], str(tmp_path / "a-file" / "out")], capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"capshard: error: cannot write to {tmp_path / 'a-file' / 'out'}: Not a directory"
    assert (tmp_path / "a-file").read_text() == "not a folder"
