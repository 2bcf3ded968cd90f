"""Executors: run independent tasks (probe chunks, shard writes) in parallel.

An executor maps a picklable top-level function over picklable tasks and yields the
results as they complete. ``serial`` runs in-process (``--workers 1``), ``process`` uses a
spawn-started process pool on this machine, ``ray`` runs the same tasks on a Ray
cluster (``pip install 'capshard[ray]'``; ``RAY_ADDRESS`` selects the cluster as Ray
documents). Results are keyed by the task, so the order of completion never changes
what is written.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol, TypeVar

from .errors import UsageError

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Maps ``fn`` over ``tasks``, yielding results in completion order; ``close`` frees its workers."""

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Runs every task in this process, in order."""

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        for task in tasks:
            yield fn(task)

    def close(self) -> None:
        pass


class ProcessExecutor:
    """A pool of ``workers`` spawn-started processes, kept for every map until ``close``;
    at most ``2 * workers`` tasks in flight, so the task list is never pickled whole."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the parent holds Arrow and datasets thread pools.
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        pending: set[Future[R]] = set()
        todo = iter(tasks)
        pool = self._get_pool()
        try:
            while True:
                while len(pending) < 2 * self.workers:
                    task = next(todo, None)
                    if task is None:
                        break
                    pending.add(pool.submit(fn, task))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        except BaseException:
            # On error or interrupt: drop queued tasks, wait for running ones to stop.
            self.close()
            raise


class RayExecutor:
    """The same tasks as Ray remote functions on the cluster ``ray.init()`` connects to."""

    def __init__(self, workers: int) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'capshard[ray]'") from None
        self.ray: Any = ray
        self.workers = workers
        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        remote = self.ray.remote(fn)
        pending: list[Any] = []
        todo = iter(tasks)
        limit = 2 * max(self.workers, int(self.ray.cluster_resources().get("CPU", 1)))
        try:
            while True:
                while len(pending) < limit:
                    task = next(todo, None)
                    if task is None:
                        break
                    pending.append(remote.remote(task))
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


def make_executor(name: str, workers: int) -> Executor:
    """The executor for ``--executor NAME`` and ``--workers N``."""
    if name == "ray":
        return RayExecutor(workers)
    if name == "process":
        return SerialExecutor() if workers <= 1 else ProcessExecutor(workers)
    raise UsageError(f"unknown executor {name!r}; valid: process, ray")
