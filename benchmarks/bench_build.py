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
import io
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.readers import SourceSpec


def make_dataset(root: Path, n_images: int) -> tuple[Path, Path]:
    """A Flickr8k-style token file and a folder of 320x240 photos-like JPEGs (~15 KB)."""
    rng = random.Random(0)
    images = root / "images"
    images.mkdir(parents=True)
    lines = []
    for i in range(n_images):
        name = f"{1000000 + i}_{i:04x}.jpg"
        img = Image.effect_noise((320, 240), 40 + i % 30).convert("RGB")
        img = Image.blend(img, Image.new("RGB", img.size, (rng.randrange(256), 90, 160)), 0.6)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        (images / name).write_bytes(buf.getvalue())
        lines += [f"{name}#{n}\tcaption {n} of picture {i} ." for n in range(5)]
    token = root / "Flickr8k.token.txt"
    token.write_text("\n".join(lines) + "\n")
    return token, images


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
        token, images = make_dataset(root, args.images)
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
