"""Reading time (wall and CPU) of caption files: ``reader.read()`` into one table, as ``build`` reads them.

Times the real annotation files of ``../shared/data/real`` (Flickr8k token file with its
split lists, Kaggle ``captions.txt``, COCO ``captions_val2017.json``) and a synthetic
token file of ``--synthetic-rows`` rows, each in a fresh subprocess (best of ``--rounds``).
No image is opened: reading produces references only.

    python benchmarks/bench_read.py [--repo CHECKOUT] [--synthetic-rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REAL = REPO.parent / "shared" / "data" / "real"

CHILD = """
import sys, time, json
sys.path.insert(0, {repo!r})
from pathlib import Path
import pyarrow as pa
from pipeline.readers import get_reader
from pipeline.readers.base import SourceSpec
from pipeline.schema import CAPTION_ROWS
spec = SourceSpec(path={path!r}, images=Path({images!r}), split_files=tuple((s, Path(f)) for s, f in {splits!r}))
t0, c0 = time.perf_counter(), time.process_time()
rows = pa.Table.from_batches(list(get_reader({fmt!r})(spec).read()), schema=CAPTION_ROWS)
print(json.dumps({{"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0, "rows": rows.num_rows}}))
"""


def synthetic_token_file(path: Path, n_rows: int) -> Path:
    """A Flickr8k-like token file: 5 captions per image, ``NAME#N<TAB>caption``."""
    if not path.exists():
        with open(path, "w", encoding="utf-8") as f:
            for i in range(n_rows):
                f.write(
                    f"{1000000000 + i // 5}_{(i // 5) * 7919 % 10**10:x}.jpg#{i % 5}\t"
                    f"A person in a red jacket walks a dog along the beach number {i} .\n"
                )
    return path


def time_read(repo: Path, fmt: str, path: Path, splits: list[tuple[str, str]], rounds: int, images: Path) -> dict:
    code = CHILD.format(repo=str(repo), path=str(path), images=str(images), splits=splits, fmt=fmt)
    runs = []
    for _ in range(rounds):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{path}: {done.stderr.strip().splitlines()[-1]}")
        out = done.stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "rows": runs[0]["rows"],
        "seconds": round(min(r["seconds"] for r in runs), 3),
        "cpu_seconds": round(min(r["cpu"] for r in runs), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=REPO, help="Checkout whose readers are timed.")
    ap.add_argument("--synthetic-rows", type=int, default=1_000_000)
    ap.add_argument("--synthetic-dir", type=Path, default=Path("/tmp"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    splits = [
        (s, str(REAL / f"Flickr_8k.{f}Images.txt")) for s, f in (("train", "train"), ("val", "dev"), ("test", "test"))
    ]
    cases = [
        ("Flickr8k.token.txt + split lists", "flickr", REAL / "Flickr8k.token.txt", splits),
        ("Kaggle captions.txt", "flickr", REAL / "captions.txt", []),
        ("COCO captions_val2017.json", "coco", REAL / "captions_val2017.json", []),
    ]
    synthetic = synthetic_token_file(
        args.synthetic_dir / f"synthetic-{args.synthetic_rows}.token.txt", args.synthetic_rows
    )
    cases.append((f"synthetic token file, {args.synthetic_rows:,} rows", "flickr", synthetic, []))
    for name, fmt, path, split_files in cases:
        images = args.synthetic_dir / "bench-read-images"  # an empty folder: no image is opened
        images.mkdir(exist_ok=True)
        r = time_read(args.repo, fmt, path, split_files, args.rounds, images)
        print(json.dumps({"case": name, **r}))


if __name__ == "__main__":
    main()
