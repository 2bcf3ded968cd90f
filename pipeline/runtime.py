"""Process settings for capshard's batch jobs: the ``capshard`` command and its pool workers.

Four defaults that cost a build CPU for nothing (10,000 photos, 2 cores, ``--workers 2``, or
the resolution of 10M caption rows; interleaved rounds; the figures are in
benchmarks/results/etl_analysis.md):

- **One OpenBLAS thread.** ``import pyarrow`` imports NumPy, whose OpenBLAS starts a thread
  per core that spins while it waits: about 0.09 s of CPU per process (the command and each
  worker), taken from the cores the build runs on. capshard's only linear algebra is the
  32x32 DCT of ``--phash``. Set before NumPy loads, and only where the user has not set
  ``OPENBLAS_NUM_THREADS`` themselves; workers inherit it.
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
- **No transparent huge pages** (Linux, ``prctl(PR_SET_THP_DISABLE)``; workers inherit it).
  mimalloc, Arrow's allocator, asks for huge pages on its 1 GiB arenas and NumPy on its arrays
  of 4 MiB and more; each first touch of such a page has the kernel zero all 2 MiB of it. The
  resolution of 10M caption rows spent 30 % of its samples in that zeroing (``perf``,
  ``clear_page_erms`` under ``do_huge_pmd_anonymous_page``): 16.5-17.5 s, 6.4-7.5 s of it system
  CPU, peak 3,951-3,979 MiB; without huge pages 12.6-13.6 s, 2.9-3.5 s, 3,805-3,833 MiB, while
  1M rows and the build of 10,000 photos did not change. A user who set
  ``NUMPY_MADVISE_HUGEPAGE=1`` keeps them.

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
_PR_SET_THP_DISABLE = 41


def tune_batch_process() -> None:
    """One OpenBLAS thread, fewer collections and no transparent huge pages for this process
    and the processes it starts (idempotent)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    youngest, older, oldest = gc.get_threshold()
    if youngest < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, older, oldest)
    if sys.platform.startswith("linux") and os.environ.get("NUMPY_MADVISE_HUGEPAGE") != "1":
        _libc("prctl", (ctypes.c_int,) + (ctypes.c_ulong,) * 4, _PR_SET_THP_DISABLE, 1, 0, 0, 0)


def tune_image_worker() -> None:
    """:func:`tune_batch_process`, and freed memory kept for reuse: a pool worker's settings."""
    tune_batch_process()
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    if not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    _libc("mallopt", (ctypes.c_int, ctypes.c_int), _M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        _libc("mallopt", (ctypes.c_int, ctypes.c_int), _M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)


def _libc(name: str, argtypes: tuple[type, ...], *args: int) -> None:
    """Call the C library's function ``name`` (an ``int`` result, not looked at); nothing where
    the library has no such function (not glibc)."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    function(*args)
