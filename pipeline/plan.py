"""Stage *plan*: assign images to shards, deterministically.

Input: the resolved images table. Output: the same table with ``shard`` (file name)
and ``position`` (order inside the shard). Per split, images sorted by id are shuffled
with a generator seeded by ``(seed, split)``, then cut into shards of at most
``max_images_per_shard`` images and ``max_shard_bytes`` bytes (estimated from the source
bytes plus tar and metadata overhead; with ``--resize`` the source bytes are an upper
bound in practice). The plan is data: every later stage can run anywhere from it.
"""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .config import BuildConfig
from .format import SHARD_NAME as SHARD_NAME  # the names this stage gives shards

#: Tar overhead of one sample (3 headers plus padding) and a generous JSON/text allowance.
SAMPLE_OVERHEAD = 3 * 512 + 3 * 511


def shard_name(split: str, number: int) -> str:
    """``{split}-{000000}.tar``"""
    return f"{split}-{number:06d}.tar"


def estimated_bytes(images: pa.Table) -> np.ndarray:
    """Bytes a sample will take in its tar: image, captions, metadata, headers."""
    # Captions are stored twice (JSON and text); 512 covers the JSON's other fields.
    text = pc.binary_length(pc.binary_join(images["captions"], "\n")).to_numpy(zero_copy_only=False)
    n_bytes = images["n_bytes"].to_numpy(zero_copy_only=False)
    return n_bytes + 2 * text + SAMPLE_OVERHEAD + 512


def plan_shards(images: pa.Table, config: BuildConfig) -> pa.Table:
    """Add ``shard`` and ``position`` columns; rows come out in shard order, then position."""
    parts = []
    for split in sorted(set(images["split"].to_pylist())):
        part = images.filter(pc.equal(images["split"], split)).sort_by("image_id")
        rng = np.random.default_rng([config.seed, zlib.crc32(split.encode())])
        part = part.take(pa.array(rng.permutation(part.num_rows)))
        sizes = estimated_bytes(part)
        numbers, positions = [], []
        number, count, used = 0, 0, 0
        for size in sizes.tolist():
            if count and (count >= config.max_images_per_shard or used + size > config.max_shard_bytes):
                number, count, used = number + 1, 0, 0
            numbers.append(number)
            positions.append(count)
            count += 1
            used += size
        names = pa.array([shard_name(split, k) for k in range(number + 1)], pa.string())
        part = part.append_column("shard", names.take(pa.array(numbers, pa.int64())))
        parts.append(part.append_column("position", pa.array(positions, pa.int64())))
    if not parts:
        return images.append_column("shard", pa.array([], pa.string())).append_column(
            "position", pa.array([], pa.int64())
        )
    return pa.concat_tables(parts)
