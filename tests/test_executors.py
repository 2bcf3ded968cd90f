"""Executors run the same shard tasks; where they run never changes the bytes."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from synth import nlphuji_dataset

from pipeline import executors
from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.errors import UsageError
from pipeline.executors import WorkerDied, make_executor
from pipeline.readers import SourceSpec
from pipeline.runtime import GC_THRESHOLD

ROOT = Path(__file__).resolve().parent.parent


def _square(_context: None, x: int) -> int:
    return x * x


def test_process_pool_returns_every_result() -> None:
    results = sorted(make_executor("process", 2).map_unordered(_square, range(20)))
    assert results == [x * x for x in range(20)]


def _heap() -> tuple[int, int]:
    """Where this process's ``[heap]`` mapping (glibc's main arena) starts and ends."""
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith("[heap]"):
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                return start, end
    return 0, 0


def _settings(_context: None, _task: int) -> tuple[str | None, int, int, str]:
    import numpy  # noqa: F401  (OpenBLAS starts its threads here)

    threads = len(os.listdir("/proc/self/task"))
    return os.environ.get("OPENBLAS_NUM_THREADS"), gc.get_threshold()[0], threads, _huge_pages()


def _heap_after(_context: None, _task: int) -> tuple[bool, bool]:
    """Whether a 10 MB block came from the heap, and whether the heap kept its size once the block was freed."""
    block = bytes(10_000_000)
    start, end = _heap()
    in_heap = start <= id(block) < end
    del block
    return in_heap, _heap()[1] == end


@pytest.fixture(params=["spawn", "fork"])
def start_method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Pool workers started either way (forked on Linux where the parent has no other Python thread)."""
    if request.param == "fork" and sys.platform != "linux":
        pytest.skip("pool workers are forked on Linux only")
    monkeypatch.setattr(executors, "_start_method", lambda: request.param)
    return str(request.param)


def _worker_settings(monkeypatch: pytest.MonkeyPatch, user: str | None) -> tuple[str | None, int, int, str]:
    if user is None:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", user)
    executor = make_executor("process", 2)
    try:
        seen = set(executor.map_unordered(_settings, range(4)))
    finally:
        executor.close()
    assert len(seen) == 1
    return seen.pop()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2, reason="counts threads in /proc")
def test_pool_workers_run_with_one_blas_thread_and_rare_collections(
    monkeypatch: pytest.MonkeyPatch, start_method: str
) -> None:
    """Spawned workers get the batch settings before NumPy loads (no OpenBLAS thread pool spinning on
    the build's cores; no huge pages); an OPENBLAS_NUM_THREADS the user set is kept, and then OpenBLAS
    starts its threads. A forked worker has NumPy from its parent and no thread but its own (OpenBLAS
    stops its pool for the fork), with the same settings."""
    blas, threshold, threads, huge_pages = _worker_settings(monkeypatch, None)
    assert (blas, threshold, huge_pages) == ("1", GC_THRESHOLD, "0")
    blas, threshold, threads_two, _ = _worker_settings(monkeypatch, "2")
    assert (blas, threshold) == ("2", GC_THRESHOLD)
    if start_method == "spawn":
        assert threads_two > threads
    else:
        assert threads == threads_two == 1


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc and /proc/self/maps")
def test_pool_workers_keep_freed_memory_for_the_next_image(monkeypatch: pytest.MonkeyPatch, start_method: str) -> None:
    """A worker's image-sized blocks come from its heap and stay there once freed (glibc's
    defaults would map a fresh 10 MB block and unmap it when it is freed)."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    executor = make_executor("process", 2)
    try:
        results = list(executor.map_unordered(_heap_after, range(2)))
    finally:
        executor.close()
    assert results == [(True, True), (True, True)]


def _huge_pages() -> str:
    """This process's ``THP_enabled`` (Linux's /proc/self/status): "0" once huge pages are off."""
    with open("/proc/self/status") as f:
        return next((line.split()[1] for line in f if line.startswith("THP_enabled:")), "?")


#: Prints the settings of a fresh interpreter that imports capshard, then those after the CLI ran.
_SETTINGS_BEFORE_AND_AFTER_MAIN = (
    "import ctypes, gc, os, sys\n"
    # a process started from a shell has huge pages on; the test process may have turned them off
    "if sys.platform == 'linux':\n"
    "    ctypes.CDLL(None).prctl(41, 0, 0, 0, 0)\n"
    "def _huge_pages():\n"
    "    if not os.path.exists('/proc/self/status'):\n"
    "        return '?'\n"
    "    return next((l.split()[1] for l in open('/proc/self/status') if l.startswith('THP_enabled:')), '?')\n"
    "import pipeline.build\n"
    "print(os.environ.get('OPENBLAS_NUM_THREADS'), gc.get_threshold()[0], _huge_pages())\n"
    "from pipeline.cli import main\n"
    "sys.argv = ['capshard', '--version']\n"
    "try:\n"
    "    main()\n"
    "except SystemExit:\n"
    "    pass\n"
    "print(os.environ.get('OPENBLAS_NUM_THREADS'), gc.get_threshold()[0], _huge_pages())\n"
)


def _settings_before_and_after_main(**env: str) -> tuple[list[str], list[str]]:
    environ = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "NUMPY_MADVISE_HUGEPAGE")}
    command = [sys.executable, "-c", _SETTINGS_BEFORE_AND_AFTER_MAIN]
    out = subprocess.run(command, capture_output=True, text=True, env=environ | env, check=True).stdout
    library, command = (line.split() for line in out.splitlines() if not line.startswith("capshard"))
    return library, command


#: Linux with transparent huge pages (without them /proc/self/status says 0 whatever a process asks).
HAS_HUGE_PAGES = sys.platform == "linux" and os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled")


def test_the_command_process_gets_the_batch_settings_and_a_library_user_does_not() -> None:
    (library_blas, library_gc, library_thp), (command_blas, command_gc, command_thp) = _settings_before_and_after_main()
    assert library_blas == "None" and int(library_gc) < GC_THRESHOLD  # Python's defaults, untouched
    assert (command_blas, int(command_gc)) == ("1", GC_THRESHOLD)
    if HAS_HUGE_PAGES:
        assert (library_thp, command_thp) == ("1", "0")


@pytest.mark.skipif(not HAS_HUGE_PAGES, reason="prctl and /proc/self/status, on a kernel with huge pages")
def test_a_user_who_asks_numpy_for_huge_pages_keeps_them() -> None:
    _, (_, _, command_thp) = _settings_before_and_after_main(NUMPY_MADVISE_HUGEPAGE="1")
    assert command_thp == "1"


@dataclass(frozen=True)
class _Named:
    name: str
    crash: bool = False


def _run_named(_context: None, task: _Named) -> str:
    if task.crash:
        os._exit(3)  # a worker killed mid-task (out of memory, segfault)
    if task.name == "bad":
        raise ValueError(f"cannot do {task.name}")
    return task.name


def test_a_worker_that_dies_fails_the_map_naming_its_task() -> None:
    tasks = [_Named(f"train-{i:06d}.tar") for i in range(6)] + [_Named("train-000006.tar", crash=True)]
    with pytest.raises(WorkerDied, match=r"died \(exit code 3\) while working on train-000006\.tar"):
        list(make_executor("process", 2).map_unordered(_run_named, tasks))


def test_a_task_error_is_raised_in_the_parent_and_the_pool_stops() -> None:
    executor = make_executor("process", 2)
    with pytest.raises(ValueError, match="cannot do bad"):
        list(executor.map_unordered(_run_named, [_Named("a"), _Named("bad"), _Named("c")]))
    # the executor starts fresh workers for the next map
    assert sorted(executor.map_unordered(_run_named, [_Named("x"), _Named("y")])) == ["x", "y"]
    executor.close()


def test_ray_executor_writes_the_same_shards_as_the_process_pool(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'capshard[ray]'")
    spec = SourceSpec(dataset=nlphuji_dataset(24))
    local = build(spec, BuildConfig(out=tmp_path / "local", workers=2, max_images_per_shard=3))
    try:
        cluster = build(spec, BuildConfig(out=tmp_path / "ray", workers=2, max_images_per_shard=3, executor="ray"))
    finally:
        ray.shutdown()
    names = sorted(p.name for p in local.out.glob("*.tar"))
    assert len(names) == 9
    assert names == sorted(p.name for p in cluster.out.glob("*.tar"))
    for name in names:
        assert (local.out / name).read_bytes() == (cluster.out / name).read_bytes()


def test_missing_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(UsageError, match=r"pip install 'capshard\[ray\]'"):
        make_executor("ray", 2)


def _context_and_pid(context: str, x: int) -> tuple[str, int, int]:
    return context, x, os.getpid()


def test_workers_started_early_get_the_context_set_later() -> None:
    # build starts the pool before the rows are read, and gives it the reader afterwards.
    executor = make_executor("process", 2, preload=("json", "pipeline.write"))
    try:
        executor.start()
        pids = {p.pid for p in multiprocessing.active_children()}
        executor.context = "the reader"
        results = sorted(executor.map_unordered(_context_and_pid, range(6)))
        assert [(c, x) for c, x, _ in results] == [("the reader", x) for x in range(6)]
        assert {pid for _, _, pid in results} <= pids  # the workers started early ran the tasks
    finally:
        executor.close()
    assert not multiprocessing.active_children()


def test_a_pool_started_and_closed_without_a_map_exits() -> None:
    # e.g. build finds the folder up to date after starting its workers
    executor = make_executor("process", 2, preload=("pipeline.probe",))
    executor.start()
    workers = multiprocessing.active_children()
    executor.close()
    assert not multiprocessing.active_children()
    # Not waited for while they import: they were given no work, so they are stopped.
    assert len(workers) == 2 and all(w.exitcode == -signal.SIGKILL for w in workers)


def test_workers_end_with_exit_code_0_and_what_they_printed_is_not_lost() -> None:
    # A worker ends without Python's shutdown (os._exit), so it flushes its output first: with
    # stdout a pipe (block-buffered, PYTHONUNBUFFERED unset) nothing printed in a task is lost.
    script = (
        "import multiprocessing, sys\n"
        "from pipeline.executors import make_executor\n"
        "executor = make_executor('process', 2)\n"
        "list(executor.map_unordered(print, range(6)))\n"  # print(context, task) in a worker
        "workers = multiprocessing.active_children()\n"
        "executor.close()\n"
        "sys.stderr.write(repr(sorted(w.exitcode for w in workers)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [f"None {i}" for i in range(6)]
    assert done.stderr.endswith("[0, 0]")


_STARTS = """
import sys, threading
from pipeline.executors import make_executor

def has_parents_module(context, task):
    return "xml.dom.minidom" in sys.modules

def started():
    executor = make_executor("process", 2)
    try:
        return sorted(set(executor.map_unordered(has_parents_module, range(4))))
    finally:
        executor.close()

if __name__ == "__main__":
    import xml.dom.minidom  # imported here only: a forked worker has it, a spawned one has not
    print("alone", started())
    stop = threading.Event()
    waiting = threading.Thread(target=stop.wait)
    waiting.start()
    print("with a thread", started())
    stop.set()
    waiting.join()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="pool workers are forked on Linux only")
def test_workers_are_forked_unless_a_python_thread_runs(tmp_path: Path) -> None:
    (tmp_path / "starts.py").write_text(_STARTS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "starts.py"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["alone [True]", "with a thread [False]"]
