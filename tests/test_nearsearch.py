"""pipeline.nearsearch: multi-index hashing finds exactly the pairs brute force finds."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.nearsearch import NearIndex, brute_force_pairs, near_pairs, self_pairs


def _with_near_copies(seed: int, n_base: int, n_query: int, max_flips: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(-(2**63), 2**63 - 1, n_base, dtype=np.int64, endpoint=True)
    query = rng.integers(-(2**63), 2**63 - 1, n_query, dtype=np.int64, endpoint=True)
    for k in range(min(n_query, n_base)):
        if k % 2 == 0:  # half the queries: a base hash with a few bits flipped
            flips = rng.choice(64, rng.integers(0, max_flips + 1), replace=False)
            query[k] = base[k] ^ np.int64(sum(1 << int(b) for b in flips) - (1 << 64 if 63 in flips else 0))
    return query, base


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 400), st.integers(0, 120), st.integers(0, 16), st.integers(0, 10))
def test_equals_brute_force(seed: int, n_base: int, n_query: int, threshold: int, blocks: int) -> None:
    query, base = _with_near_copies(seed, n_base, n_query, max_flips=threshold + 2)
    blocks = max(blocks, threshold // 3 + 1) if blocks else 0  # radius <= 2: few probes
    got = NearIndex(base, threshold, blocks=blocks or None).search(query)
    want = brute_force_pairs(query, base, threshold)
    assert sorted(zip(got.i.tolist(), got.j.tolist(), got.distance.tolist(), strict=True)) == sorted(
        zip(want.i.tolist(), want.j.tolist(), want.distance.tolist(), strict=True)
    )


def test_self_pairs_lists_each_pair_once() -> None:
    hashes = np.array([0b1011, 0b1010, 0b1011, -1, 2**40], np.int64)
    found = self_pairs(hashes, 1)
    assert sorted(zip(found.i.tolist(), found.j.tolist(), found.distance.tolist(), strict=True)) == [
        (0, 1, 1),
        (0, 2, 0),
        (1, 2, 1),
    ]


def test_large_base_finds_planted_copies() -> None:
    query, base = _with_near_copies(1, 50_000, 2_000, max_flips=8)
    found = near_pairs(query, base, 8)
    assert set(range(0, 2_000, 2)) <= set(found.i[found.i == found.j].tolist())
    assert (found.distance <= 8).all()
