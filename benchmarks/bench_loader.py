"""Loader benchmark: capshard's loader beside a plain webdataset pipeline and a plain
decode loop, in one run, with the same number of worker processes.

* **capshard**: ``make_loader(build, split="train", batch_size=B, num_workers=W,
  image_size=S)``: one caption per image, checksums verified, per-epoch plan, resume.
* **webdataset**: the pipeline people write by hand: shard list, ``split_by_worker``,
  ``tarfile_to_samples``, ``shuffle(1000)``, ``decode`` with the same image decoder,
  ``batched(B)`` into the same ``uint8 [B, 3, S, S]`` tensor, in a ``DataLoader`` with
  W persistent workers.
* **decode loop** (the limit): the same decoder over the same image bytes, already in
  memory, in W processes, without tars, batching or moving tensors between processes.
* **decode loop + batches** (the limit of a ``DataLoader`` that moves each batch): the same decoder over the
  same bytes in memory, batched into the same tensor and moved to the main process by a
  ``DataLoader`` with W workers: what a loader cannot avoid on top of the decode loop.

Every pipeline decodes JPEG at reduced scale where that still covers S, resizes to
cover S×S and centre-crops (``pipeline.loader.decode.decode_image``). Each pipeline
runs one untimed warm-up epoch (page cache, worker start, capshard's first-open
checksums), then the timed epochs, interleaved round by round.

    python benchmarks/bench_loader.py --images 4000 --workers 2 --out benchmarks/loader_results.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from flickr_like import make_dataset
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.loader import make_loader
from pipeline.loader.decode import decode_image
from pipeline.readers import SourceSpec

SIZE = 224


def decode(data: bytes) -> np.ndarray:
    return np.asarray(decode_image(data, "jpg", (SIZE, SIZE)))


def stack(arrays: list[np.ndarray]) -> torch.Tensor:
    out = torch.empty((len(arrays), 3, SIZE, SIZE), dtype=torch.uint8)
    for i, a in enumerate(arrays):
        out[i].permute(1, 2, 0).numpy()[...] = a
    return out


def _jpg(key: str, data: bytes) -> Any:
    return decode(data) if key == ".jpg" else None


def _json(key: str, data: bytes) -> Any:
    return json.loads(data) if key == ".json" else None


def _pair(sample: dict[str, Any]) -> tuple[np.ndarray, str]:
    return sample["jpg"], sample["json"]["captions"][0]


def _collate(samples: list[tuple[np.ndarray, str]]) -> dict[str, Any]:
    return {"image": stack([s[0] for s in samples]), "caption": [s[1] for s in samples]}


def _identity(x: Any) -> Any:
    return x


def webdataset_loader(urls: list[str], batch_size: int, workers: int) -> DataLoader[Any]:
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        wds.tarfile_to_samples(),
        wds.shuffle(1000),
        wds.decode(_jpg, _json),
        wds.map(_pair),
        wds.batched(batch_size, collation_fn=_collate, partial=True),
    )
    return batch_loader(pipeline, workers)


def batch_loader(dataset: IterableDataset[Any], workers: int) -> DataLoader[Any]:
    """A DataLoader over a dataset that yields whole batches, with ``workers`` persistent workers."""
    return DataLoader(dataset, batch_size=None, collate_fn=_identity, num_workers=workers,
                      persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None)


_BYTES: list[bytes] = []


class DecodedBatches(IterableDataset[dict[str, Any]]):
    """``_BYTES`` decoded and batched like the webdataset pipeline's, each DataLoader worker
    taking every W-th batch: no tars, no checks, only the decode and the move to the main process."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        starts = range(0, len(_BYTES), self.batch_size)
        for start in starts[worker::workers]:
            chunk = _BYTES[start : start + self.batch_size]
            yield _collate([(decode(data), "") for data in chunk])


def decoded_batches_loader(batch_size: int, workers: int) -> DataLoader[Any]:
    return batch_loader(DecodedBatches(batch_size), workers)


def _decode_range(bounds: tuple[int, int]) -> int:
    for data in _BYTES[bounds[0] : bounds[1]]:
        decode(data)
    return bounds[1] - bounds[0]


def image_bytes(urls: list[str]) -> list[bytes]:
    out = []
    for url in urls:
        with tarfile.open(url) as tar:
            for m in tar:
                if m.name.endswith(".jpg"):
                    f = tar.extractfile(m)
                    assert f is not None
                    out.append(f.read())
    return out


def count_epoch(batches: Iterator[dict[str, Any]]) -> int:
    return sum(len(b["image"]) for b in batches)


def cpu_per_image(out: Path, batch_size: int, epochs: int) -> tuple[float, float]:
    """CPU seconds per image, in this process (``num_workers=0``, so no transfer between processes),
    of ``make_loader`` and of the bare decode loop, interleaved; medians. CPU time, not wall time: the
    figure a loaded machine does not distort."""
    loader = make_loader(out, split="train", batch_size=batch_size, num_workers=0, image_size=SIZE)
    ours, bare = [], []
    for epoch in range(epochs + 1):
        loader.set_epoch(epoch)
        start = time.process_time()
        n = count_epoch(iter(loader))
        middle = time.process_time()
        for data in _BYTES:
            decode(data)
        if epoch > 0:  # epoch 0 warms up (first-open checksums)
            ours.append((middle - start) / n)
            bare.append((time.process_time() - middle) / len(_BYTES))
    return statistics.median(ours), statistics.median(bare)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000, help="4000 give 62 training batches of 64: 31 per worker")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs per pipeline")
    ap.add_argument("--per-shard", type=int, default=100)
    ap.add_argument("--out", type=Path, help="write the markdown table here too")
    args = ap.parse_args()
    workers, bs = args.workers, args.batch_size

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        token, images = make_dataset(root / "src", args.images, (500, 375), 90)
        out = root / "build"
        build(SourceSpec(path=str(token), images=images),
              BuildConfig(out=out, max_images_per_shard=args.per_shard, workers=os.cpu_count() or 1))
        manifest = json.loads((out / "manifest.json").read_text())
        urls = [str(out / s["name"]) for s in manifest["splits"]["train"]["shards"]]
        _BYTES.extend(image_bytes(urls))
        mean_kb = sum(map(len, _BYTES)) / len(_BYTES) / 1024

        ours = make_loader(out, split="train", batch_size=bs, num_workers=workers, image_size=SIZE)
        plain = webdataset_loader(urls, bs, workers)
        moved = decoded_batches_loader(bs, workers)  # forks its workers after _BYTES is filled
        pool = multiprocessing.get_context("fork").Pool(workers)
        chunks = [(i * len(_BYTES) // workers, (i + 1) * len(_BYTES) // workers) for i in range(workers)]

        def run_ours(epoch: int) -> int:
            ours.set_epoch(epoch)
            return count_epoch(iter(ours))

        def run_plain(epoch: int) -> int:
            return count_epoch(iter(plain))

        def run_limit(epoch: int) -> int:
            return sum(pool.map(_decode_range, chunks))

        def run_moved(epoch: int) -> int:
            return count_epoch(iter(moved))

        contestants: dict[str, Callable[[int], int]] = {
            "capshard make_loader": run_ours,
            "plain webdataset pipeline": run_plain,
            "decode loop + batches to the main process": run_moved,
            "decode loop (limit)": run_limit,
        }
        rates: dict[str, list[float]] = {name: [] for name in contestants}
        for epoch in range(args.epochs + 1):
            for name, run in contestants.items():
                start = time.perf_counter()
                n = run(epoch)
                seconds = time.perf_counter() - start
                if epoch > 0:  # epoch 0 warms up
                    rates[name].append(n / seconds)
        pool.close()
        cpu_ours, cpu_bare = cpu_per_image(out, bs, args.epochs)
        n_batches = len(ours)

    speed = {name: statistics.median(r) for name, r in rates.items()}
    base, limit = speed["plain webdataset pipeline"], speed["decode loop (limit)"]
    busiest = -(-n_batches // workers)
    lines = [
        "# Loader benchmark",
        "",
        f"Command: `python benchmarks/bench_loader.py --images {args.images} --workers {workers} "
        f"--batch-size {bs} --epochs {args.epochs} --per-shard {args.per_shard}"
        + (f" --out {args.out}`" if args.out else "`"),
        "",
        f"{args.images} images of 500×375 JPEG (mean {mean_kb:.0f} KiB), 5 captions each, "
        f"{len(urls)} shards; decoded and resized to {SIZE}×{SIZE} uint8; batch {bs}; "
        f"{workers} worker processes each; median of {args.epochs} timed epochs after one warm-up; "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, webdataset {wds.__version__}",
        "",
        f"make_loader's epoch: {n_batches} batches; a worker builds whole batches, so the busiest of "
        f"the {workers} builds {busiest} of them, {n_batches / workers / busiest:.2f} of an even share (the "
        "bare decode loop splits the images evenly; in a long epoch the one-batch tail is negligible).",
        "",
        f"Run on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d at %H:%M} UTC; load average at the end "
        + " / ".join(f"{x:.1f}" for x in os.getloadavg())
        + " on this machine's cores (the absolute figures fall with the load, the ratios much less).",
        "",
        "| pipeline | images/s (median) | epochs min–max | vs plain webdataset | vs decode loop |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, s in speed.items():
        spread = f"{min(rates[name]):,.0f}–{max(rates[name]):,.0f}"
        lines.append(f"| {name} | {s:,.0f} | {spread} | {s / base:.2f} | {s / limit:.2f} |")
    ours_speed, with_batches = speed["capshard make_loader"], speed["decode loop + batches to the main process"]
    lines += [
        "",
        f"make_loader / decode loop: **{ours_speed / limit:.2f}**; make_loader / decode loop "
        f"+ batches to the main process: **{ours_speed / with_batches:.2f}** (moving the batches alone "
        f"costs the decode loop {1 - with_batches / limit:.0%} of its speed here).",
        "",
        f"CPU per image in one process (`num_workers=0`: reading, checks, decode, captions and collate, "
        f"no transfer between processes): make_loader {cpu_ours * 1e3:.2f} ms, bare decode loop "
        f"{cpu_bare * 1e3:.2f} ms: **{cpu_bare / cpu_ours:.2f}** of the decode loop's speed. CPU time, so "
        "the load of a shared machine does not move it as it moves the wall-clock figures above.",
        "",
        "The loaders do the same decode and resize per image; the gap to the decode loop is tar",
        "reading, batching and moving each batch to the main process (which also needs CPU); the",
        "decode loop with batches pays only the last two: the most a DataLoader moving each batch reaches.",
        "capshard also plans the epoch (equal batches per rank, resumable order), verifies",
        "shard checksums on first open, and picks the epoch's caption of each image. The",
        "min–max column shows epoch-to-epoch spread on a machine shared with other jobs; the",
        "ratios use the medians.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
