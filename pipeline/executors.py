"""Executors: run independent tasks (probe chunks, shard writes) in parallel.

An executor maps a picklable top-level function ``fn(context, task)`` over picklable
tasks and yields the results as they complete. The *context* (the build's reader, which
may hold a whole in-memory dataset) is sent to each worker once, before its first task,
not with every task; it may be set after the executor is made (``executor.context = …``),
so that ``start()`` can start the workers early: a process pool's workers then start
Python and import their modules (``preload``) while the caller still reads its input.

``serial`` runs in-process (``--workers 1``), ``process`` uses a process pool on this
machine (forked where that is safe, see :func:`_start_method`), ``ray`` runs the same tasks on a Ray
cluster (``pip install 'capshard[ray]'``; the CLI passes ``--ray-address``, default
``RAY_ADDRESS``), spreading tasks over its nodes and retrying a task whose worker or node
died, or that hit an I/O error. Results are keyed by the task, so the order of completion
never changes what is written.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import itertools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from multiprocessing import connection
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Literal, NoReturn, Protocol, TypeVar

from .errors import BuildError, CapshardError, OutputError, UsageError
from .runtime import tune_image_worker

log = logging.getLogger(__name__)
#: How often Ray runs a task again after its worker or node died, or it raised one of RAY_RETRIED.
RAY_RETRIES = 3
#: Task errors worth a retry on another attempt (a node's disk or network), not a bad input.
RAY_RETRIED = (OSError, OutputError)

T = TypeVar("T")
R = TypeVar("R")
#: A task function: ``fn(context, task)``.
TaskFn = Callable[[Any, T], R]


class Executor(Protocol):
    """Maps ``fn(context, task)`` over ``tasks``, yielding results in completion order;
    ``start`` starts its workers ahead of the first map (where it has any to start); ``close``
    frees them. ``context`` may change until the first map."""

    context: Any

    def start(self) -> None: ...

    def map_unordered(self, fn: TaskFn[T, R], tasks: Iterable[T]) -> Generator[R, None, None]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Runs every task in this process, in order."""

    def __init__(self, context: Any = None) -> None:
        self.context = context

    def start(self) -> None:
        pass

    def map_unordered(self, fn: TaskFn[T, R], tasks: Iterable[T]) -> Generator[R, None, None]:
        for task in tasks:
            yield fn(self.context, task)

    def close(self) -> None:
        pass


class WorkerDied(BuildError):
    """A worker process ended (crash, out of memory, killed) while it ran a task."""


class ProcessExecutor:
    """``workers`` processes (:func:`_start_method`), kept for every map until ``close``.

    Each worker has its own pipe and gets one task at a time, so the task list is never
    pickled whole and a worker that dies is known by the task it held. The context goes
    down the pipe before the first task; a worker imports the modules named in ``preload``
    as soon as it starts (:meth:`start`), before it waits for the context. Only public
    ``multiprocessing`` API: ``Process``, ``Pipe``, ``connection.wait`` on pipes and process
    sentinels, ``Process.kill``.
    """

    def __init__(self, workers: int, context: Any = None, preload: tuple[str, ...] = ()) -> None:
        self.workers = workers
        self.context = context
        self.preload = preload
        self._procs: list[_Worker] = []
        self._context_sent = False

    def start(self) -> None:
        """Start the worker processes now (idempotent); they get the context with the first map."""
        if self._procs:
            return
        method = _start_method()
        ctx = multiprocessing.get_context("fork") if method == "fork" else multiprocessing.get_context("spawn")
        for _ in range(self.workers):
            ours, theirs = ctx.Pipe()
            # A forked worker has the parent's end of its own pipe and of those of the workers before
            # it; it closes them, or a worker would never see its pipe closed (EOF) by the parent.
            parents = [w.conn.fileno() for w in self._procs] + [ours.fileno()] if method == "fork" else []
            process = ctx.Process(target=_worker_main, args=(os.getpid(), self.preload, theirs, parents))
            process.start()
            theirs.close()
            self._procs.append(_Worker(process, ours))

    def _ready(self) -> list[_Worker]:
        """The started workers, each sent the context once."""
        self.start()
        if not self._context_sent:
            for worker in self._procs:
                _send(worker, ("context", self.context), "its context")
            self._context_sent = True
        return self._procs

    def close(self) -> None:
        """Let every worker finish and exit; workers that never got work (a build found up to
        date after starting them) are stopped at once, not waited for while they import."""
        if not self._context_sent:
            self._kill()
            return
        procs, self._procs = self._procs, []
        self._context_sent = False
        for worker in procs:
            with contextlib.suppress(OSError):  # already gone
                worker.conn.send(None)
        for worker in procs:
            worker.process.join()
            worker.conn.close()

    def _kill(self) -> None:
        """Stop now: kill every worker (on error, interrupt or early close).

        Waiting for running tasks could take minutes per shard. Temporary files the workers
        leave are the caller's to remove, which is safe once this returns: no worker is left
        to write.
        """
        procs, self._procs = self._procs, []
        self._context_sent = False
        for worker in procs:
            worker.process.kill()
        for worker in procs:
            worker.process.join()
            worker.conn.close()

    def map_unordered(self, fn: TaskFn[T, R], tasks: Iterable[T]) -> Generator[R, None, None]:
        todo = iter(tasks)
        try:
            procs = self._ready()
            while True:
                for worker in procs:
                    if worker.task is _IDLE:
                        task = next(todo, _IDLE)
                        if task is _IDLE:
                            break
                        worker.task = task
                        _send(worker, ("task", fn, task), _describe(task))
                busy = [w for w in procs if w.task is not _IDLE]
                if not busy:
                    break
                ready = set(connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
                for worker in busy:
                    if worker.conn in ready or worker.process.sentinel in ready:
                        yield _collect(worker)
        except BaseException:
            self._kill()
            raise


_IDLE: Any = object()


def _start_method() -> Literal["fork", "spawn"]:
    """How a pool's workers start: ``fork`` on Linux from a process with no thread of Python's but
    its main one, else ``spawn``.

    A build starts its pool before it reads its input: forked then, a worker has every module
    the parent imported (pyarrow, numpy, Pillow) at once, where a spawned one starts Python and
    imports them, 0.45 s of CPU per worker taken from the parent's reading on this 2-core
    machine. The threads such a process has are those of libraries that make themselves safe
    to fork (``pthread_atfork``): OpenBLAS's pool, jemalloc's background thread, Arrow's pools,
    which a child starts anew. A thread of Python's (a ``datasets`` or user pool, a progress
    thread) may hold a lock the child would wait for forever: then ``spawn``, as on other systems.
    """
    if sys.platform == "linux" and threading.active_count() == 1:
        return "fork"
    return "spawn"


class _Worker:
    """One worker process, the parent's end of its pipe, and the task it runs (or ``_IDLE``)."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.task: Any = _IDLE


def _send(worker: _Worker, message: tuple[Any, ...], what: str) -> None:
    """Send ``message`` (``("context", context)`` or ``("task", fn, task)``) to ``worker``;
    ``what`` names it should the worker be dead."""
    try:
        worker.conn.send(message)
    except OSError:  # the worker died while idle; its pipe is closed
        worker.process.join()
        raise WorkerDied(f"a worker process died (exit code {worker.process.exitcode}) before it got {what}") from None


def _collect(worker: _Worker) -> Any:
    """The result of the worker's task; its exception re-raised here; a dead worker is an error."""
    task, worker.task = worker.task, _IDLE
    try:
        ok, value = worker.conn.recv()
    except (EOFError, OSError):
        worker.process.join()
        raise WorkerDied(
            f"a worker process died (exit code {worker.process.exitcode}) while working on {_describe(task)}"
        ) from None
    if ok:
        return value
    exc, remote_traceback = value
    raise exc from _RemoteTraceback(remote_traceback)


def _describe(task: Any) -> str:
    for attr in ("name", "path"):
        value = getattr(task, attr, None)
        if isinstance(value, str):
            return value
    return type(task).__name__


def _worker_main(parent: int, preload: tuple[str, ...], conn: Connection, parents: list[int]) -> None:
    """A worker: close ``parents`` (the parent's pipe ends a forked worker has), set up once, import
    ``preload``, then take a ``("context", context)`` message and run ``("task", fn, task)`` messages
    until ``None`` or a closed pipe; then :func:`_leave`."""
    for fd in parents:
        os.close(fd)
    _init_worker(parent)
    for module in preload:
        importlib.import_module(module)
    context: Any = None
    while True:
        try:
            message = conn.recv()
        except EOFError:
            _leave()
        if message is None:
            _leave()
        if message[0] == "context":
            context = message[1]
            continue
        _, fn, task = message
        try:
            reply: tuple[bool, Any] = (True, fn(context, task))
        except Exception as exc:  # sent to the parent, which raises it
            reply = (False, (exc, "".join(traceback.format_exception(exc))))
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable result or exception
            error = BuildError(f"a worker's reply for {_describe(task)} cannot be sent: {exc}")
            conn.send((False, (error, "")))


def _leave() -> NoReturn:
    """End a worker whose work is done, without Python's shutdown.

    Every result went down the pipe and every file a task wrote is closed; what is left for the
    interpreter to do at exit is tearing down modules and freeing the memory a worker keeps for
    its images (:func:`pipeline.runtime.tune_image_worker`), which the parent, joining its workers
    at the end of every build, waited for: 0.06-0.08 s of a ``--workers 2`` build of 10,000 photos."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


class _RemoteTraceback(Exception):
    """The worker's traceback, kept as the cause of an exception re-raised in the parent."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


def _run_on_ray(fn: TaskFn[T, R], context: Any, task: T) -> tuple[str, R]:
    """The task's result, and the id of the Ray node that ran it (for the log, never for the output)."""
    import ray

    return ray.get_runtime_context().get_node_id(), fn(context, task)


def _init_worker(parent: int) -> None:
    """Pool worker set-up: signals are the parent's business.

    Ctrl-C reaches the whole process group and ``kill`` may too; the parent alone handles
    them (it kills its workers and removes their temporary files), so workers ignore
    SIGINT and SIGTERM. On Linux a worker also dies with its parent (``PR_SET_PDEATHSIG``),
    so a ``kill -9`` of the build leaves no orphan writing into the output folder. It gets
    the command's batch settings and keeps freed memory (:func:`pipeline.runtime.tune_image_worker`).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_image_worker()
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


class RayExecutor:
    """The same tasks as Ray remote functions on the cluster at ``address`` (None: Ray's own default,
    ``RAY_ADDRESS`` or a new local one), spread over its nodes.

    A task whose worker or node dies, or that raises an I/O error, is run again up to
    :data:`RAY_RETRIES` times; one that keeps failing fails the map with an error naming it.
    ``nodes`` counts the tasks each node ran."""

    def __init__(self, workers: int, context: Any = None, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'capshard[ray]'") from None
        self.ray: Any = ray
        self.workers = workers
        self.nodes: Counter[str] = Counter()
        if not ray.is_initialized():
            try:
                ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
            except ConnectionError as e:
                raise UsageError(f"cannot reach the Ray cluster at {address}: {e}") from None
        self.context = context
        self._context_ref: tuple[Any, Any] | None = None

    def start(self) -> None:
        pass  # the cluster's workers are Ray's

    def _context(self) -> Any:
        """The context's reference in the object store, put there once (again if it was replaced)."""
        if self._context_ref is None or self._context_ref[0] is not self.context:
            self._context_ref = (self.context, self.ray.put(self.context))
        return self._context_ref[1]

    def map_unordered(self, fn: TaskFn[T, R], tasks: Iterable[T]) -> Generator[R, None, None]:
        remote = self.ray.remote(_run_on_ray)
        context_ref = self._context()
        slots = self._slots()
        pending: dict[Any, T] = {}
        todo = iter(tasks)
        limit = 2 * max(self.workers, len(slots))
        dealt = itertools.cycle(slots or ["SPREAD"])
        try:
            while True:
                while len(pending) < limit:
                    task = next(todo, _IDLE)
                    if task is _IDLE:
                        break
                    where = remote.options(
                        max_retries=RAY_RETRIES, retry_exceptions=list(RAY_RETRIED), scheduling_strategy=next(dealt)
                    )
                    pending[where.remote(fn, context_ref, task)] = task
                if not pending:
                    break
                done, _ = self.ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield self._result(ref, pending.pop(ref))
        finally:
            for ref in pending:
                self.ray.cancel(ref, force=True)

    def _slots(self) -> list[Any]:
        """Tasks are dealt to the live nodes in turn, each node as often as it has CPUs (soft
        affinity: a node gone runs its tasks elsewhere). Ray's own spreading would leave a node
        idle while its workers start; so every node works from the first task."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cpus = {n["NodeID"]: int(n.get("Resources", {}).get("CPU", 0)) for n in self.ray.nodes() if n["Alive"]}
        turns = [node for i in range(max(cpus.values(), default=0)) for node in sorted(cpus) if cpus[node] > i]
        return [NodeAffinitySchedulingStrategy(node, soft=True) for node in turns]

    def _result(self, ref: Any, task: Any) -> Any:
        """The task's value; its capshard error raised as it is; any other failure named by the task."""
        try:
            node, value = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, CapshardError):
                raise e.cause from None
            raise BuildError(f"{_describe(task)} failed on Ray: {type(e.cause).__name__}: {e.cause}") from e
        except self.ray.exceptions.RayError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BuildError(f"{_describe(task)} failed on Ray after {RAY_RETRIES} retries: {first}") from None
        self.nodes[node] += 1
        log.debug("%s ran on Ray node %s", _describe(task), node)
        return value

    def close(self) -> None:
        if self.nodes:
            log.info("Ray ran %d tasks on %d nodes", sum(self.nodes.values()), len(self.nodes))
        # the Ray cluster outlives the build


@dataclass(frozen=True)
class ExecutorChoice:
    """``--executor``, ``--workers`` and ``--ray-address``, to make an executor once its context is known."""

    name: str = "process"
    workers: int = 1
    ray_address: str | None = None

    def make(self, context: Any = None, preload: tuple[str, ...] = ()) -> Executor:
        return make_executor(self.name, self.workers, context, address=self.ray_address, preload=preload)


def _local(workers: int, context: Any, address: str | None, preload: tuple[str, ...]) -> Executor:
    return SerialExecutor(context) if workers <= 1 else ProcessExecutor(workers, context, preload)


def _ray(workers: int, context: Any, address: str | None, preload: tuple[str, ...]) -> Executor:
    return RayExecutor(workers, context, address)


#: ``--executor`` name -> factory taking (workers, context, address, preload); only Ray uses the
#: address, only the process pool the modules its workers import as they start.
EXECUTORS: dict[str, Callable[[int, Any, str | None, tuple[str, ...]], Executor]] = {"process": _local, "ray": _ray}


def make_executor(
    name: str, workers: int, context: Any = None, *, address: str | None = None, preload: tuple[str, ...] = ()
) -> Executor:
    """The executor for ``--executor NAME`` and ``--workers N`` (``--ray-address``: ``address``);
    tasks get ``context`` first; a process pool's workers import ``preload`` when they start."""
    try:
        factory = EXECUTORS[name]
    except KeyError:
        raise UsageError(f"unknown executor {name!r}; valid: {', '.join(EXECUTORS)}") from None
    return factory(workers, context, address, preload)
