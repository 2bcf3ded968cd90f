"""Near-duplicate search over 64-bit hashes: every pair within Hamming distance ``T``.

Multi-index hashing (Norouzi, Punjani & Fleet, 2012): the 64 bits are cut into ``m``
blocks. If two hashes differ in at most ``T`` bits, some block differs in at most
``r = T // m`` bits (pigeonhole), so every true pair is found by looking up, for each
block of a query, all values within ``r`` bits of it in that block's table of the base
hashes. Candidates are then verified with a popcount of the XOR; the result is exact,
never approximate. ``m`` is chosen so a block has about ``log2(N)`` bits (a few base
hashes per bucket); with ``m = T + 1`` this is the plain "some block equal" scheme.

Memory is bounded: queries are processed in chunks of at most ``MAX_PROBES`` probes,
and a bucket table has at most ``2**24`` entries (wider blocks use a sorted array).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

MAX_PROBES = 1 << 22
MAX_TABLE_BITS = 24
_POP8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    """Bits set in each uint64 of ``x``."""
    x = np.ascontiguousarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    return _POP8[x.view(np.uint8).reshape(-1, 8)].sum(axis=1, dtype=np.int64)


def as_hashes(values: object) -> np.ndarray:
    """Hashes (signed int64 as stored, or unsigned) as a uint64 array with the same bits."""
    arr = np.asarray(values)
    if arr.dtype == np.uint64:
        return arr
    return arr.astype(np.int64).view(np.uint64)


@dataclass(frozen=True)
class Pairs:
    """Matches: ``query[i]`` and ``base[j]`` at Hamming distance ``distance`` (all int64 arrays)."""

    i: np.ndarray
    j: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:
        return len(self.i)


def n_blocks(n_base: int, threshold: int) -> int:
    """Blocks for ``n_base`` hashes: about ``log2(n_base)`` bits each, never more than ``threshold + 1``."""
    bits = max(8, math.ceil(math.log2(max(n_base, 2))))
    return max(1, min(threshold + 1, round(64 / bits), 64))


class _Block:
    """The base hashes' values in one block, sorted, with a bucket table when it fits."""

    def __init__(self, base: np.ndarray, shift: int, width: int) -> None:
        self.shift, self.width = shift, width
        self.mask = np.uint64((1 << width) - 1)
        values = (base >> np.uint64(shift)) & self.mask
        self.order = np.argsort(values, kind="stable")
        self.sorted = values[self.order]
        self.starts: np.ndarray | None = None
        if width <= MAX_TABLE_BITS:
            counts = np.bincount(self.sorted.astype(np.int64), minlength=1 << width)
            self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def values(self, hashes: np.ndarray) -> np.ndarray:
        return (hashes >> np.uint64(self.shift)) & self.mask

    def ranges(self, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.starts is not None:
            p = probes.astype(np.int64)
            return self.starts[p], self.starts[p + 1]
        return np.searchsorted(self.sorted, probes, "left"), np.searchsorted(self.sorted, probes, "right")


def _flip_masks(width: int, radius: int) -> np.ndarray:
    masks = [0]
    for k in range(1, min(radius, width) + 1):
        masks.extend(sum(1 << b for b in combo) for combo in itertools.combinations(range(width), k))
    return np.array(masks, np.uint64)


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges ``[lo, hi)`` (one per probe row), the owner row and position of each element."""
    counts = (hi - lo).ravel()
    nz = np.flatnonzero(counts)
    counts, starts = counts[nz], lo.ravel()[nz]
    total = int(counts.sum())
    owner = np.repeat(nz, counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, np.repeat(starts, counts) + offsets


class NearIndex:
    """An index of base hashes answering "which base hashes are within ``threshold`` bits"."""

    def __init__(self, base: object, threshold: int, blocks: int | None = None) -> None:
        if not 0 <= threshold < 64:
            raise ValueError("threshold must be between 0 and 63")
        self.base = as_hashes(base)
        self.threshold = threshold
        m = blocks or n_blocks(len(self.base), threshold)
        self.radius = threshold // m
        edges = [round(k * 64 / m) for k in range(m + 1)]
        self.blocks = [_Block(self.base, lo, hi - lo) for lo, hi in itertools.pairwise(edges)]
        self.masks = [_flip_masks(b.width, self.radius) for b in self.blocks]

    def search(self, queries: object) -> Pairs:
        """Every (query, base) pair within the threshold, sorted by query then base position."""
        q = as_hashes(queries)
        parts = list(self._search_chunks(q))
        if not parts:
            empty = np.zeros(0, np.int64)
            return Pairs(empty, empty, empty)
        i = np.concatenate([p[0] for p in parts])
        j = np.concatenate([p[1] for p in parts])
        key = np.unique(i * max(len(self.base), 1) + j)  # a pair found through several blocks, once
        i, j = key // max(len(self.base), 1), key % max(len(self.base), 1)
        return Pairs(i, j, popcount(q[i] ^ self.base[j]))

    def _search_chunks(self, q: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if not len(q) or not len(self.base):
            return
        for block, masks in zip(self.blocks, self.masks, strict=True):
            step = max(1, MAX_PROBES // len(masks))
            for start in range(0, len(q), step):
                chunk = q[start : start + step]
                probes = block.values(chunk)[:, None] ^ masks[None, :]
                lo, hi = block.ranges(probes)
                owner, pos = _expand(lo, hi)
                qi = owner // len(masks) + start
                bj = block.order[pos]
                keep = popcount(q[qi] ^ self.base[bj]) <= self.threshold
                yield qi[keep].astype(np.int64), bj[keep].astype(np.int64)


def near_pairs(queries: object, base: object, threshold: int) -> Pairs:
    """Every pair (query ``i``, base ``j``) whose hashes differ in at most ``threshold`` bits."""
    return NearIndex(base, threshold).search(queries)


def self_pairs(hashes: object, threshold: int) -> Pairs:
    """Every pair ``i < j`` of ``hashes`` within ``threshold`` bits (duplicates within one set)."""
    found = NearIndex(hashes, threshold).search(hashes)
    keep = found.i < found.j
    return Pairs(found.i[keep], found.j[keep], found.distance[keep])


def brute_force_pairs(queries: object, base: object, threshold: int, chunk: int = 256) -> Pairs:
    """The same answer as :func:`near_pairs` by comparing every pair (the baseline, O(N*M))."""
    q, b = as_hashes(queries), as_hashes(base)
    out_i, out_j = [], []
    for start in range(0, len(q), chunk):
        d = (
            np.bitwise_count(q[start : start + chunk, None] ^ b[None, :])
            if hasattr(np, "bitwise_count")
            else (popcount((q[start : start + chunk, None] ^ b[None, :]).ravel()).reshape(-1, len(b)))
        )
        ii, jj = np.nonzero(d <= threshold)
        out_i.append(ii + start)
        out_j.append(jj)
    i = np.concatenate(out_i).astype(np.int64) if out_i else np.zeros(0, np.int64)
    j = np.concatenate(out_j).astype(np.int64) if out_j else np.zeros(0, np.int64)
    return Pairs(i, j, popcount(q[i] ^ b[j]) if len(i) else np.zeros(0, np.int64))
