"""Who reads which sample, in which batch: the loader's epoch partition, as pure functions.

Everything here is a function of (shard sample counts, seed, epoch, rank, world size,
batch size, number of workers, shuffle window), so every rank of a job computes the
same plan on its own, without talking to the others, and a restarted process computes
it again. numpy only; no torch, no I/O.

The scheme, per epoch ``e``:

1. **Global order.** The shards are permuted with a generator seeded by
   ``(seed, e)`` (identity when ``shuffle=False``) and their samples concatenated in
   that order: ``N`` positions, each one (shard, offset in shard).
2. **Ranks.** Rank ``r`` of ``W`` owns the contiguous global range
   ``[r·L, (r+1)·L)`` with ``L = N // W``. The last ``N mod W`` (≤ ``W - 1``) positions
   of the order are left out this epoch; the shard permutation changes which. Ranges
   are disjoint, so no image is read twice in an epoch across ranks, and every rank
   owns the same number of samples, so every rank yields the same number of batches
   ``B`` (``L // batch_size`` with ``drop_last``, which leaves out the last
   ``L mod batch_size`` positions of the rank's range; else ``⌈L / batch_size⌉``).
3. **Workers.** The ``B`` batches are split into ``num_workers`` contiguous runs whose
   lengths differ by at most one (the longer runs first), and each worker owns the
   positions of its run: one contiguous stretch of the global order, read by it alone.
   torch's ``DataLoader`` takes one batch from each worker in turn, so the ``n``-th
   batch a rank yields is batch ``n // nw`` of worker ``n % nw``'s run: the mapping
   that lets a resumed loader skip exactly the first ``n`` batches. (A resumed loader's
   DataLoader starts its round again at worker 0, so there DataLoader worker ``i``
   plays worker ``(i + n) % nw`` of the plan.)
4. **Windows.** A worker's positions are cut into shuffle windows of ``k`` whole
   batches (``k·batch_size`` positions), each permuted with a generator seeded by
   ``(seed, e, W, r, nw, worker, window)``; a batch is a slice of one window, so it is
   known before anything is read, and a worker holds one window of undecoded samples.

So the batches depend on (seed, epoch, rank, world size, batch size, number of workers,
window); a resumed loader must use the same values.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

#: Seed-sequence tags, so the shard permutation and the window permutations never share a stream.
_SHARD_TAG = 0x5A4D
_WINDOW_TAG = 0x3149


@dataclass(frozen=True)
class PlanConfig:
    """The options that decide the partition (validated by the loader's constructor)."""

    seed: int
    rank: int
    world_size: int
    batch_size: int
    num_workers: int
    window_batches: int
    shuffle: bool
    drop_last: bool

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")
        if min(self.batch_size, self.num_workers, self.window_batches) < 1 or self.seed < 0:
            raise ValueError("batch_size, num_workers and window_batches must be >= 1, seed >= 0")


@dataclass(frozen=True)
class Segment:
    """A run of samples ``[start, stop)`` of shard ``shard`` (an index into the shard list)
    whose first sample sits at rank-local position ``position``."""

    shard: int
    start: int
    stop: int
    position: int


@dataclass(frozen=True)
class Window:
    """Shuffle window ``index`` of a worker: positions ``[lo, hi)``, holding ``batches``."""

    index: int
    lo: int
    hi: int
    batches: range


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker does in one epoch."""

    worker: int
    batches: range
    """Rank-local batch indices this worker yields, in order (resumed ones already skipped)."""
    windows: tuple[Window, ...]
    """Its windows from the one holding its first remaining batch on."""
    segments: tuple[Segment, ...]
    """The stretch of shards those windows cover, in order."""


def samples_per_rank(total: int, world_size: int) -> int:
    """Samples each rank owns per epoch: ``total // world_size``."""
    return total // world_size


def batches_per_rank(per_rank: int, batch_size: int, drop_last: bool) -> int:
    """Batches each rank yields per epoch."""
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)


def worker_batches(n_batches: int, num_workers: int, worker: int) -> range:
    """Worker ``worker``'s contiguous run of batch indices (lengths differ by ≤ 1, longer first)."""
    base, extra = divmod(n_batches, num_workers)
    start = worker * base + min(worker, extra)
    return range(start, start + base + (1 if worker < extra else 0))


def batches_done_by_worker(done: int, num_workers: int, worker: int) -> int:
    """How many of the first ``done`` batches of a rank came from ``worker``."""
    return max(0, (done - worker + num_workers - 1) // num_workers)


def plan_worker(loader_worker: int, done: int, num_workers: int) -> int:
    """The plan's worker that DataLoader worker ``loader_worker`` plays after ``done``
    batches: the DataLoader asks worker 0 first, and batch ``done`` is due from plan
    worker ``done % num_workers``."""
    return (loader_worker + done) % num_workers


def yield_order(n_batches: int, num_workers: int) -> list[int]:
    """Rank-local batch indices in the order the ``DataLoader`` yields them."""
    runs = [worker_batches(n_batches, num_workers, w) for w in range(num_workers)]
    return [runs[w][i] for i in range(len(runs[0])) for w in range(num_workers) if i < len(runs[w])]


def shard_order(n_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The permutation of shard indices for ``epoch``."""
    if not shuffle:
        return np.arange(n_shards)
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, _SHARD_TAG]))
    return rng.permutation(n_shards)


class EpochPlan:
    """The partition of one epoch for one rank; cheap to build (O(number of shards))."""

    def __init__(self, counts: Sequence[int], config: PlanConfig, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.config = config
        self.epoch = epoch
        self.counts = list(counts)
        self.total = sum(self.counts)
        self.order = shard_order(len(self.counts), config.seed, epoch, config.shuffle)
        self._starts = [0, *accumulate(self.counts[int(i)] for i in self.order)]
        self.per_rank = samples_per_rank(self.total, config.world_size)
        self.n_batches = batches_per_rank(self.per_rank, config.batch_size, config.drop_last)
        self.samples_used = min(self.per_rank, self.n_batches * config.batch_size)
        """Samples this rank yields this epoch (before any read errors)."""
        self._offset = config.rank * self.per_rank

    @property
    def left_out(self) -> int:
        """Samples of the split that no rank yields this epoch."""
        return self.total - self.config.world_size * self.samples_used

    def worker_of(self, batch: int) -> int:
        """The worker whose run holds ``batch``."""
        if not 0 <= batch < self.n_batches:
            raise IndexError(f"batch {batch} is not in [0, {self.n_batches})")
        base, extra = divmod(self.n_batches, self.config.num_workers)
        long_runs = extra * (base + 1)
        return batch // (base + 1) if batch < long_runs else extra + (batch - long_runs) // base

    def window(self, worker: int, index: int) -> Window:
        """Window ``index`` of ``worker``'s run."""
        c = self.config
        run = worker_batches(self.n_batches, c.num_workers, worker)
        first = run.start + index * c.window_batches
        batches = range(first, min(first + c.window_batches, run.stop))
        if not batches:
            raise IndexError(f"worker {worker} has no window {index}")
        return Window(index, first * c.batch_size, min(batches.stop * c.batch_size, self.samples_used), batches)

    def window_permutation(self, worker: int, window: Window) -> np.ndarray:
        """Rank-local positions of ``window`` in the order its batches take them."""
        if not self.config.shuffle:
            return np.arange(window.lo, window.hi)
        c = self.config
        key = [c.seed, self.epoch, c.world_size, c.rank, c.num_workers, worker, window.index, _WINDOW_TAG]
        return window.lo + np.random.default_rng(np.random.SeedSequence(key)).permutation(window.hi - window.lo)

    def batch_positions(self, batch: int, permutation: np.ndarray | None = None) -> np.ndarray:
        """Rank-local positions of batch ``batch`` (pass its window's permutation to reuse it)."""
        worker = self.worker_of(batch)
        run = worker_batches(self.n_batches, self.config.num_workers, worker)
        index, slot = divmod(batch - run.start, self.config.window_batches)
        perm = self.window_permutation(worker, self.window(worker, index)) if permutation is None else permutation
        lo = slot * self.config.batch_size
        return perm[lo : lo + self.config.batch_size]

    def locate(self, position: int) -> tuple[int, int]:
        """(shard index, offset in shard) of rank-local ``position``."""
        g = self._offset + position
        i = bisect.bisect_right(self._starts, g) - 1
        return int(self.order[i]), g - self._starts[i]

    def segments(self, lo: int, hi: int) -> tuple[Segment, ...]:
        """The shard runs that hold rank-local positions ``[lo, hi)``, in order."""
        out = []
        g, end = self._offset + lo, self._offset + hi
        i = bisect.bisect_right(self._starts, g) - 1
        while g < end:
            stop = min(end, self._starts[i + 1])
            if stop > g:
                out.append(Segment(int(self.order[i]), g - self._starts[i], stop - self._starts[i], g - self._offset))
            g = stop
            i += 1
        return tuple(out)

    def worker(self, worker: int, done: int = 0) -> WorkerPlan:
        """Plan worker ``worker``'s batches, windows and reads, after the rank yielded ``done`` batches."""
        c = self.config
        run = worker_batches(self.n_batches, c.num_workers, worker)
        skip = min(len(run), batches_done_by_worker(done, c.num_workers, worker))
        batches = range(run.start + skip, run.stop)
        if not batches:
            return WorkerPlan(worker, batches, (), ())
        first = skip // c.window_batches
        windows = tuple(self.window(worker, j) for j in range(first, (len(run) - 1) // c.window_batches + 1))
        return WorkerPlan(worker, batches, windows, self.segments(windows[0].lo, windows[-1].hi))


def _stable_hash(seed: int, text: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest(), "little")


def caption_indices(n: int, k: int | None, *, epoch: int, seed: int, image_id: str, repeat: bool) -> list[int]:
    """Which of an image's ``n`` captions a batch carries in ``epoch``.

    ``k=None`` ("all"): every caption, in order. Otherwise a window of ``k`` consecutive
    captions (cyclically) that starts at an image-specific offset and moves on by ``k``
    each epoch, so one caption per epoch (``k=1``) visits all ``n`` in ``n`` epochs and
    ``k ≤ n`` captions of one batch are always distinct. When ``n < k`` the image gives
    its ``n`` captions (``repeat=False``) or cycles through them to make ``k``
    (``repeat=True``: each caption ``⌊k/n⌋`` or ``⌈k/n⌉`` times).
    """
    if n < 1:
        raise ValueError("an image needs at least one caption")
    if k is None:
        return list(range(n))
    start = (_stable_hash(seed, image_id) + epoch * k) % n
    return [(start + j) % n for j in range(k if repeat else min(k, n))]
