"""Process settings for capshard's batch jobs: the ``capshard`` command and its pool workers.

Two defaults that cost a build CPU for nothing (measured on 10,000 photos, 2 cores,
``--workers 2``: interleaved, user CPU 5.6 → 5.0 s; see benchmarks/results/etl_analysis.md):

- **One OpenBLAS thread.** ``import pyarrow`` imports NumPy, whose OpenBLAS starts a thread
  per core that spins while it waits: about 0.09 s of CPU per process (the command and each
  worker), taken from the cores the build runs on. capshard's only linear algebra is the
  32x32 DCT of ``--phash``. Set before NumPy loads, and only where the user has not set
  ``OPENBLAS_NUM_THREADS`` themselves; spawned workers inherit it.
- **Fewer garbage collections.** A build allocates many small objects that are never
  cyclic garbage (rows of a plan, probe results, tar headers), and with Python's default
  threshold (700) every few thousand of them trigger a collection that walks everything
  alive, the imported modules of pyarrow and pandas included: about 0.25 s of the
  command's serial time. :data:`GC_THRESHOLD` collects the young generation 30x less often.

Only for batch processes: a trainer that imports :mod:`pipeline.loader` keeps its own settings.
"""

from __future__ import annotations

import gc
import os

#: Allocations (net of frees) between collections of the youngest generation.
GC_THRESHOLD = 20_000


def tune_batch_process() -> None:
    """Apply the settings above to this process (idempotent)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    youngest, older, oldest = gc.get_threshold()
    if youngest < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, older, oldest)
