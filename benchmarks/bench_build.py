"""ETL benchmark: `capshard build` beside the script people write by hand, in one run.

The hand-written alternative groups a Flickr token file's captions by file name in a
dict and writes one sample per image with ``webdataset.ShardWriter``, in one process,
with no validation, hashing, resume or accounting. capshard also decodes every image
(at reduced scale) to reject corrupt ones, hashes every image to resolve identity, and
writes atomically. Both get the same generated Flickr-style dataset.

    python benchmarks/bench_build.py --images 3000 --out benchmarks/build_results.md
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flickr_like import make_dataset

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.readers import SourceSpec


def hand_written(token: Path, images: Path, out: Path) -> None:
    import webdataset as wds

    captions: dict[str, list[str]] = {}
    with open(token, newline="") as f:
        for name_n, caption in csv.reader(f, delimiter="\t"):
            captions.setdefault(name_n.split("#")[0], []).append(caption)
    out.mkdir()
    with wds.ShardWriter(str(out / "train-%06d.tar"), maxcount=1000, verbose=0) as sink:
        for i, (name, caps) in enumerate(captions.items()):
            sink.write(
                {
                    "__key__": f"{i:08d}",
                    "jpg": (images / name).read_bytes(),
                    "json": {"image_id": name, "captions": caps},
                    "txt": "\n".join(caps),
                }
            )


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--out", type=Path, help="Write the markdown table here too.")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        token, images = make_dataset(root, args.images, (320, 240), 85)
        spec = SourceSpec(path=str(token), images=images)
        hand_written(token, images, root / "warm")  # warm the page cache for everyone
        shutil.rmtree(root / "warm")
        runs = {
            "hand-written webdataset.ShardWriter loop (1 process)": timed(
                lambda: hand_written(token, images, root / "hand")
            ),
            "capshard build --workers 1": timed(lambda: build(spec, BuildConfig(out=root / "c1", workers=1))),
            f"capshard build --workers {cores}": timed(
                lambda: build(spec, BuildConfig(out=root / "cN", workers=cores))
            ),
        }
    base = runs["hand-written webdataset.ShardWriter loop (1 process)"]
    lines = [
        f"{args.images} images × 5 captions, 320×240 JPEG; {platform.processor() or platform.machine()}, {cores} cores",
        "",
        "| method | seconds | images/s | speed vs hand-written |",
        "| --- | ---: | ---: | ---: |",
    ]
    for method, seconds in runs.items():
        lines.append(f"| {method} | {seconds:.2f} | {args.images / seconds:,.0f} | {base / seconds:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(
            "# Build benchmark\n\nCommand: `python benchmarks/bench_build.py "
            f"--images {args.images} --out {args.out}`\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
