"""Near-duplicate benchmark: search time (multi-index hashing vs brute force) and pHash quality.

    PYTHONPATH=.:tests python benchmarks/bench_overlap.py --out benchmarks/results/overlap.md

Part 1 times ``pipeline.nearsearch`` on N base hashes x M queries (uniform random 64-bit
hashes with planted near copies) per threshold and per N, against a brute-force numpy
XOR+popcount baseline timed on a slice of the queries and scaled to all of them.
Part 2 makes photo-like images (``tests/synth.photo_like``), copies each under the
transforms of ``tests/synth.TRANSFORMS``, and reports per threshold the recall of each
transform and the false-positive rate among distinct images.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.nearsearch import NearIndex, brute_force_pairs
from pipeline.phash import phash_image, to_int64

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synth import TRANSFORMS, encode, photo_like


def planted(n_base: int, n_query: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, n_base, dtype=np.uint64, endpoint=False)
    query = rng.integers(0, 2**64, n_query, dtype=np.uint64, endpoint=False)
    k = n_query // 10  # a tenth of the queries are copies of a base hash with 0-8 bits flipped
    flips = np.zeros(k, np.uint64)
    for _ in range(8):
        bit = rng.integers(0, 64, k).astype(np.uint64)
        flips ^= np.where(rng.random(k) < 0.5, np.uint64(1) << bit, np.uint64(0))
    query[:k] = base[:k] ^ flips
    return base, query


def time_search(base: np.ndarray, query: np.ndarray, threshold: int) -> tuple[float, int]:
    start = time.perf_counter()
    found = NearIndex(base, threshold).search(query)
    return time.perf_counter() - start, len(found)


def time_brute(base: np.ndarray, query: np.ndarray, threshold: int, sample: int) -> float:
    start = time.perf_counter()
    brute_force_pairs(query[:sample], base, threshold, chunk=64)
    return (time.perf_counter() - start) * len(query) / sample


def search_section(n_base: int, n_query: int, thresholds: list[int], sizes: list[int], brute_sample: int) -> list[str]:
    base, query = planted(n_base, n_query)
    lines = [
        f"### Search: {n_base:,} base x {n_query:,} query hashes",
        "",
        "| threshold | blocks x radius | MIH time (s) | pairs | brute force (s, scaled) | speed-up |",
        "| ---: | :---: | ---: | ---: | ---: | ---: |",
    ]
    for t in thresholds:
        mih, pairs = time_search(base, query, t)
        brute = time_brute(base, query, t, brute_sample)
        lines.append(f"| {t} | {_shape(n_base, t)} | {mih:.1f} | {pairs:,} | {brute:.0f} | {brute / mih:.0f}x |")
        print(lines[-1], flush=True)
    lines += [
        "",
        f"Growth with N at threshold 8 ({n_query:,} queries):",
        "",
        "| N base | MIH time (s) |",
        "| ---: | ---: |",
    ]
    for n in sizes:
        t, _ = time_search(base[:n], query, 8)
        lines.append(f"| {n:,} | {t:.1f} |")
        print(lines[-1], flush=True)
    return lines


def _shape(n_base: int, threshold: int) -> str:
    from pipeline.nearsearch import n_blocks

    m = n_blocks(n_base, threshold)
    return f"{m} x {threshold // m}"


def quality_section(
    n_originals: int, n_distinct: int, thresholds: list[int], size: tuple[int, int], layout: float
) -> list[str]:
    originals = [photo_like(s, size, layout) for s in range(n_originals)]
    base = np.array([to_int64(phash_image(im)) for im in originals], np.int64).view(np.uint64)
    dist: dict[str, np.ndarray] = {}
    for name, fn in TRANSFORMS.items():
        copies = np.array([to_int64(phash_image(_decoded(fn(im)))) for im in originals], np.int64).view(np.uint64)
        dist[name] = np.bitwise_count(base ^ copies)
        print(name, np.bincount(dist[name], minlength=20)[:20], flush=True)
    distinct = np.array(
        [to_int64(phash_image(photo_like(1_000_000 + s, size, layout))) for s in range(n_distinct)], np.int64
    ).view(np.uint64)
    n_pairs = n_distinct * (n_distinct - 1) // 2
    lines = [
        f"### Quality: {n_originals} photo-like originals ({size[0]}x{size[1]}), "
        f"each copied under every transform; {n_distinct:,} distinct images for false positives",
        "",
        "Recall = share of copies within the threshold of their original. False positives: among the "
        f"{n_pairs:,} pairs of distinct images, the share within the threshold, and the share of distinct "
        "images that have at least one false match among the others.",
        "",
        "| threshold | " + " | ".join(TRANSFORMS) + " | FP pairs | FP images |",
        "| ---: | " + " | ".join("---:" for _ in TRANSFORMS) + " | ---: | ---: |",
    ]
    for t in thresholds:
        found = NearIndex(distinct, t).search(distinct)
        off = found.i != found.j
        fp_pairs = int(off.sum()) // 2
        fp_images = len(np.unique(found.i[off]))
        recall = " | ".join(f"{(dist[n] <= t).mean():.3f}" for n in TRANSFORMS)
        lines.append(f"| {t} | {recall} | {fp_pairs / n_pairs:.2e} | {fp_images / n_distinct:.2%} |")
        print(lines[-1], flush=True)
    return lines


def _decoded(img: object) -> object:
    # Copies are stored and read back as JPEG q95, as a crawl would store them.
    import io

    from PIL import Image

    return Image.open(io.BytesIO(encode(img, quality=95)))  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--thresholds", default="4,6,8,10")
    parser.add_argument("--brute-sample", type=int, default=500)
    parser.add_argument("--originals", type=int, default=200)
    parser.add_argument("--distinct", type=int, default=10_000)
    parser.add_argument("--layout", type=float, default=1.0, help="weight of the shared sky/ground layout")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    search_t = [int(t) for t in args.thresholds.split(",")]
    sizes = [n for n in (args.base // 10, args.base * 3 // 10, args.base) if n]
    lines = [
        "# Near-duplicate search and pHash quality",
        "",
        f"Command: `PYTHONPATH=.:tests python benchmarks/bench_overlap.py {' '.join(sys.argv[1:])}`",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}, "
        f"numpy {np.__version__}; single thread; shared with other jobs while measured.",
        "",
    ]
    lines += quality_section(args.originals, args.distinct, list(range(0, 15, 2)), (320, 240), args.layout)
    lines += ["", *search_section(args.base, args.queries, search_t, sizes, args.brute_sample)]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
