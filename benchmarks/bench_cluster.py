"""Time one synthetic build three ways: the process pool, Ray on a two-node cluster on this
machine (tests/raycluster.py), and three `capshard write` slices in parallel; check the bytes match.

    python benchmarks/bench_cluster.py --images 600 --per-shard 50

Prints one Markdown table. Cluster start-up is timed apart. On a shared machine the numbers
move with the load; they say what the paths cost, not how fast a cluster is.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from raycluster import RayCluster  # noqa: E402
from synth import encode, flickr_token_file, photo_like  # noqa: E402


def run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(err.decode()[-2000:])


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name not in ("manifest.json", ".capshard.lock"):
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--per-shard", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="capbench-"))
    names = [f"{i:05d}.jpg" for i in range(args.images)]
    (tmp / "img").mkdir()
    for i, n in enumerate(names):
        (tmp / "img" / n).write_bytes(encode(photo_like(i)))
    flickr_token_file(tmp / "c.token", names, 5)
    common = ("c.token", "--images", "img", "--max-images-per-shard", str(args.per_shard))
    env = dict(os.environ)
    times: dict[str, float] = {}

    t = time.monotonic()
    wait(run(tmp, env, "build", *common, "--out", "pool", "--workers", "2"))
    times["pool (`build --workers 2`)"] = time.monotonic() - t

    t = time.monotonic()
    wait(run(tmp, env, "plan", *common, "--out", "slices", "--workers", "2"))
    planned = time.monotonic()
    wait(*[run(tmp, env, "write", "slices", "--task", str(i), "--tasks", "3", "--workers", "1") for i in range(3)])
    written = time.monotonic()
    wait(run(tmp, env, "finalize", "slices"))
    times[f"3 slices (plan {planned - t:.1f} s, write {written - planned:.1f} s, finalize "
          f"{time.monotonic() - written:.1f} s)"] = time.monotonic() - t

    cluster = RayCluster(pythonpath=ROOT).start()
    try:
        t = time.monotonic()
        wait(run(tmp, cluster.env(), "build", *common, "--out", "ray", "--executor", "ray", "--workers", "2"))
        times[f"Ray, 2 nodes x 1 CPU (`build --executor ray`; cluster start {cluster.start_seconds:.0f} s apart)"] = (
            time.monotonic() - t)
    finally:
        cluster.stop()
    same = len({digest(tmp / d) for d in ("pool", "slices", "ray")}) == 1
    print(f"{args.images} images, {args.images // args.per_shard} shards; bytes identical: {same}\n")
    print("| path | wall time |\n| --- | --- |")
    base = next(iter(times.values()))
    for name, secs in times.items():
        print(f"| {name} | {secs:.1f} s ({secs / base:.2f}x pool) |")


if __name__ == "__main__":
    main()
