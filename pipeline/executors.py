"""Executors: run independent tasks (probe chunks, shard writes) in parallel.

An executor maps a picklable top-level function ``fn(context, task)`` over picklable
tasks and yields the results as they complete. The *context* (the build's reader, which
may hold a whole in-memory dataset) is sent to each worker once, when it starts, not
with every task. ``serial`` runs in-process (``--workers 1``), ``process`` uses a
spawn-started process pool on this machine, ``ray`` runs the same tasks on a Ray
cluster (``pip install 'capshard[ray]'``; ``RAY_ADDRESS`` selects the cluster as Ray
documents). Results are keyed by the task, so the order of completion never changes
what is written.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol, TypeVar

from .errors import UsageError

T = TypeVar("T")
R = TypeVar("R")
#: A task function: ``fn(context, task)``.
TaskFn = Callable[[Any, T], R]

#: The context of this worker process, installed once by the pool's initializer.
_worker_context: Any = None


class Executor(Protocol):
    """Maps ``fn(context, task)`` over ``tasks``, yielding results in completion order;
    ``close`` frees its workers."""

    def map_unordered(self, fn: TaskFn[T, R], tasks: Iterable[T]) -> Generator[R, None, None]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Runs every task in this process, in order."""

    def __init__(self, context: Any = None) -> None:
        self.context = context

    def map_unordered(self, fn: TaskFn[T, R], tasks: Iterable[T]) -> Generator[R, None, None]:
        for task in tasks:
            yield fn(self.context, task)

    def close(self) -> None:
        pass


class ProcessExecutor:
    """A pool of ``workers`` spawn-started processes, kept for every map until ``close``;
    at most ``2 * workers`` tasks in flight, so the task list is never pickled whole."""

    def __init__(self, workers: int, context: Any = None) -> None:
        self.workers = workers
        self.context = context
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the parent holds Arrow and datasets thread pools.
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(os.getpid(), self.context),
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _kill(self) -> None:
        """Stop now: drop queued tasks and kill the running ones (on error, interrupt or early close).

        ProcessPoolExecutor only waits for running tasks (``terminate_workers`` comes in
        Python 3.14), which can take minutes per shard; so its processes are killed, then
        reaped by ``shutdown``. Temporary files they leave are the caller's to remove, which
        is safe once this returns: no worker is left to write.
        """
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        processes = list(pool._processes.values())
        # Tasks still queued for the killed workers may fill the pipe; without this, Python
        # < 3.11.4 waits forever for the queue's feeder thread when the pool shuts down.
        pool._call_queue.cancel_join_thread()  # type: ignore[attr-defined]
        for process in processes:
            process.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        for process in processes:
            process.join()

    def map_unordered(self, fn: TaskFn[T, R], tasks: Iterable[T]) -> Generator[R, None, None]:
        pending: set[Future[R]] = set()
        todo = iter(tasks)
        pool = self._get_pool()
        try:
            while True:
                while len(pending) < 2 * self.workers:
                    task = next(todo, None)
                    if task is None:
                        break
                    pending.add(pool.submit(_run_in_worker, fn, task))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        except BaseException:
            self._kill()
            raise


def _run_in_worker(fn: TaskFn[T, R], task: T) -> R:
    return fn(_worker_context, task)


def _run_on_ray(fn: TaskFn[T, R], context: Any, task: T) -> R:
    return fn(context, task)


def _init_worker(parent: int, context: Any) -> None:
    """Pool worker set-up: signals are the parent's business.

    Ctrl-C reaches the whole process group and ``kill`` may too; the parent alone handles
    them (it kills its workers and removes their temporary files), so workers ignore
    SIGINT and SIGTERM. On Linux a worker also dies with its parent (``PR_SET_PDEATHSIG``),
    so a ``kill -9`` of the build leaves no orphan writing into the output folder.
    """
    global _worker_context
    _worker_context = context
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


class RayExecutor:
    """The same tasks as Ray remote functions on the cluster ``ray.init()`` connects to."""

    def __init__(self, workers: int, context: Any = None) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'capshard[ray]'") from None
        self.ray: Any = ray
        self.workers = workers
        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
        self.context_ref = ray.put(context)  # stored once in the object store

    def map_unordered(self, fn: TaskFn[T, R], tasks: Iterable[T]) -> Generator[R, None, None]:
        remote = self.ray.remote(_run_on_ray)
        pending: list[Any] = []
        todo = iter(tasks)
        limit = 2 * max(self.workers, int(self.ray.cluster_resources().get("CPU", 1)))
        try:
            while True:
                while len(pending) < limit:
                    task = next(todo, None)
                    if task is None:
                        break
                    pending.append(remote.remote(fn, self.context_ref, task))
                if not pending:
                    break
                done, pending = self.ray.wait(pending, num_returns=1)
                for ref in done:
                    yield self.ray.get(ref)
        finally:
            for ref in pending:
                self.ray.cancel(ref, force=True)

    def close(self) -> None:
        pass  # the Ray cluster outlives the build


def _local(workers: int, context: Any) -> Executor:
    return SerialExecutor(context) if workers <= 1 else ProcessExecutor(workers, context)


#: ``--executor`` name -> factory taking (workers, context).
EXECUTORS: dict[str, Callable[[int, Any], Executor]] = {"process": _local, "ray": RayExecutor}


def make_executor(name: str, workers: int, context: Any = None) -> Executor:
    """The executor for ``--executor NAME`` and ``--workers N``; tasks get ``context`` first."""
    try:
        factory = EXECUTORS[name]
    except KeyError:
        raise UsageError(f"unknown executor {name!r}; valid: {', '.join(EXECUTORS)}") from None
    return factory(workers, context)
