"""Exact and near-duplicate images within and across builds: leaks, duplicates, contamination.

A pair is *exact* when the stored bytes have the same sha256, *near* when the pHashes
differ in at most ``threshold`` bits (and the bytes differ). Its *scope*:

* ``leak``: one build, two different splits (an evaluation image also in training);
* ``dup``: one build, one split (the same photo twice);
* ``contamination``: the first build against another one (an evaluation set's image in
  a training set).

Hashes come from :func:`pipeline.hashes.load_hashes`; the search is
:mod:`pipeline.nearsearch`, so a million hashes against a hundred thousand take seconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import UsageError
from .hashes import load_hashes
from .nearsearch import NearIndex, Pairs, self_pairs

SCOPES = ("leak", "dup", "contamination")
#: Default Hamming threshold, chosen from benchmarks/results/overlap.md.
DEFAULT_THRESHOLD = 8
_FIELDS = ("image_id", "split", "shard", "key")


@dataclass(frozen=True)
class Side:
    """One image of a pair."""

    build: str
    image_id: str
    split: str
    shard: str
    key: str

    def to_json(self) -> dict[str, str]:
        return {
            "build": self.build,
            "image_id": self.image_id,
            "split": self.split,
            "shard": self.shard,
            "key": self.key,
        }


@dataclass(frozen=True)
class Pair:
    """Two images that show the same photo."""

    scope: str
    kind: str  # exact | near
    distance: int
    flipped: bool
    a: Side
    b: Side

    def to_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "kind": self.kind,
            "distance": self.distance,
            "flipped": self.flipped,
            "a": self.a.to_json(),
            "b": self.b.to_json(),
        }


@dataclass(frozen=True)
class OverlapReport:
    """Every pair found, and how the search was run."""

    builds: tuple[str, ...]
    threshold: int
    near: bool
    pairs: tuple[Pair, ...]

    def counts(self) -> Counter[str]:
        return Counter(p.scope for p in self.pairs)

    def summary(self) -> list[dict[str, Any]]:
        """One row per (scope, build/split, build/split) with exact and near counts."""
        rows: dict[tuple[str, str, str], Counter[str]] = {}
        for p in self.pairs:
            key = (p.scope, f"{p.a.build}:{p.a.split}", f"{p.b.build}:{p.b.split}")
            rows.setdefault(key, Counter())[p.kind] += 1
        return [
            {"scope": s, "a": a, "b": b, "exact": c["exact"], "near": c["near"]}
            for (s, a, b), c in sorted(rows.items())
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "builds": list(self.builds),
            "threshold": self.threshold,
            "near": self.near,
            "counts": {s: self.counts()[s] for s in SCOPES},
            "summary": self.summary(),
            "pairs": [p.to_json() for p in self.pairs],
        }


def find_overlap(
    builds: list[Path], *, threshold: int = DEFAULT_THRESHOLD, near: bool = True, flip: bool = False
) -> OverlapReport:
    """Pairs within each build (leak, dup) and between the first build and each other (contamination)."""
    tables = [(str(b), load_hashes(b, need=near)) for b in builds]
    for name, table in tables:
        if near and flip and table["phash_flip"].null_count == table.num_rows > 0:
            raise UsageError(f"{name} has no mirrored hashes; run `capshard hash {name} --flip` to use --flip")
    pairs: list[Pair] = []
    for name, table in tables:
        pairs.extend(_within(name, table, threshold, near, flip))
    first_name, first = tables[0]
    for name, table in tables[1:]:
        pairs.extend(_between(first_name, first, name, table, threshold, near, flip))
    return OverlapReport(tuple(n for n, _ in tables), threshold, near, tuple(pairs))


def _sides(build: str, table: pa.Table) -> list[Side]:
    cols = [table[f].to_pylist() for f in _FIELDS]
    return [Side(build, *vals) for vals in zip(*cols, strict=True)]


def _hashes(table: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions of rows with a hash in ``column``, and those hashes."""
    valid = pc.is_valid(table[column]).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(valid)
    values = table[column].filter(pa.array(valid)).to_numpy(zero_copy_only=False).astype(np.int64)
    return rows, values


def _exact(sha_a: list[str], sha_b: list[str] | None) -> list[tuple[int, int]]:
    """Index pairs with equal sha256 (``i < j`` within one list when ``sha_b`` is None)."""
    by_sha: dict[str, list[int]] = {}
    for j, s in enumerate(sha_a if sha_b is None else sha_b):
        by_sha.setdefault(s, []).append(j)
    out: list[tuple[int, int]] = []
    for i, s in enumerate(sha_a):
        out.extend((i, j) for j in by_sha.get(s, ()) if sha_b is not None or i < j)
    return out


def _near(qa: tuple[np.ndarray, np.ndarray], qb: tuple[np.ndarray, np.ndarray], threshold: int, same: bool) -> Pairs:
    (rows_a, ha), (rows_b, hb) = qa, qb
    found = self_pairs(ha, threshold) if same else NearIndex(hb, threshold).search(ha)
    return Pairs(rows_a[found.i], rows_b[found.j], found.distance)


def _collect(
    scope_of: Any,
    sides_a: list[Side],
    sides_b: list[Side],
    exact: list[tuple[int, int]],
    near: list[tuple[Pairs, bool]],
    same: bool,
) -> list[Pair]:
    seen = set()
    out: list[Pair] = []
    for i, j in exact:
        seen.add((i, j))
        out.append(Pair(scope_of(sides_a[i], sides_b[j]), "exact", 0, False, sides_a[i], sides_b[j]))
    for found, flipped in near:
        for i, j, d in zip(found.i.tolist(), found.j.tolist(), found.distance.tolist(), strict=True):
            if same and i > j:
                i, j = j, i
            if (same and i == j) or (i, j) in seen:
                continue
            seen.add((i, j))
            out.append(Pair(scope_of(sides_a[i], sides_b[j]), "near", d, flipped, sides_a[i], sides_b[j]))
    return sorted(out, key=lambda p: (p.scope, p.a.split, p.b.split, p.a.image_id, p.b.image_id))


def _within(name: str, table: pa.Table, threshold: int, near: bool, flip: bool) -> list[Pair]:
    sides = _sides(name, table)
    exact = _exact(table["sha256"].to_pylist(), None)
    found: list[tuple[Pairs, bool]] = []
    if near:
        plain = _hashes(table, "phash")
        found.append((_near(plain, plain, threshold, same=True), False))
        if flip:
            found.append((_near(_hashes(table, "phash_flip"), plain, threshold, same=False), True))

    def scope(a: Side, b: Side) -> str:
        return "dup" if a.split == b.split else "leak"

    return _collect(scope, sides, sides, exact, found, same=True)


def _between(name_a: str, a: pa.Table, name_b: str, b: pa.Table, threshold: int, near: bool, flip: bool) -> list[Pair]:
    exact = _exact(a["sha256"].to_pylist(), b["sha256"].to_pylist())
    found: list[tuple[Pairs, bool]] = []
    if near:
        found.append((_near(_hashes(a, "phash"), _hashes(b, "phash"), threshold, same=False), False))
        if flip:
            found.append((_near(_hashes(a, "phash_flip"), _hashes(b, "phash"), threshold, same=False), True))
    return _collect(lambda x, y: "contamination", _sides(name_a, a), _sides(name_b, b), exact, found, same=False)
