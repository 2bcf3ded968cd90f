"""Process settings for capshard's batch jobs: the ``capshard`` command and its pool workers.

Three defaults that cost a build CPU for nothing (10,000 photos, 2 cores, ``--workers 2``,
interleaved rounds; the figures are in benchmarks/results/etl_analysis.md):

- **One OpenBLAS thread.** ``import pyarrow`` imports NumPy, whose OpenBLAS starts a thread
  per core that spins while it waits: about 0.09 s of CPU per process (the command and each
  worker), taken from the cores the build runs on. capshard's only linear algebra is the
  32x32 DCT of ``--phash``. Set before NumPy loads, and only where the user has not set
  ``OPENBLAS_NUM_THREADS`` themselves; spawned workers inherit it.
- **Fewer garbage collections.** A build allocates many small objects that are never
  cyclic garbage (rows of a plan, probe results, tar headers), and with Python's default
  threshold (700) every few thousand of them trigger a collection that walks everything
  alive, the imported modules of pyarrow and pandas included: 0.24-0.31 s of the command's
  serial time, 0.06 s in each worker. :data:`GC_THRESHOLD` collects the young generation
  30x less often (0.10 s and 0.02 s).
- **Freed memory kept for reuse, in pool workers** (glibc's ``malloc``;
  :func:`tune_image_worker`). Every image a worker reads is a new ``bytes`` object of about
  its file's size; by default glibc hands the free memory at the top of its heap back to
  the kernel once it exceeds 128 KiB, so the next image faults the same pages in again,
  each zeroed by the kernel: the write stage 1.35-1.41 -> 1.10-1.26 s, system CPU 1.41-1.56
  -> 0.94-1.16 s. :data:`MALLOC_TRIM_THRESHOLD` keeps up to 256 MiB of it (unless the user
  set ``MALLOC_TRIM_THRESHOLD_``); setting it also stops glibc raising its ``mmap``
  threshold, which :data:`MALLOC_MMAP_THRESHOLD` then sets to where glibc would raise it.
  Not in the command's own process: there the resolution's NumPy and Arrow arrays come
  and go, and the memory it holds at its peak is a target of its own.

Only for batch processes: a trainer that imports :mod:`pipeline.loader` keeps its own settings.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys

#: Allocations (net of frees) between collections of the youngest generation.
GC_THRESHOLD = 20_000
#: glibc ``M_TRIM_THRESHOLD``: free memory at the top of the heap kept before any is returned.
MALLOC_TRIM_THRESHOLD = 256 << 20
#: glibc ``M_MMAP_THRESHOLD``, its largest value: blocks below it come from the heap.
MALLOC_MMAP_THRESHOLD = 32 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_batch_process() -> None:
    """One OpenBLAS thread and fewer collections for this process (idempotent)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    youngest, older, oldest = gc.get_threshold()
    if youngest < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, older, oldest)


def tune_image_worker() -> None:
    """:func:`tune_batch_process`, and freed memory kept for reuse: a pool worker's settings."""
    tune_batch_process()
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
        if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
