"""Where the time of ``--workers 1`` and ``--workers 2`` goes: wall, CPU of the parent and of the workers.

On a machine shared with other work, wall-clock ratios say more about the neighbours than
about capshard. This benchmark also reads the CPU seconds of each process tree (the parent's
own and its reaped workers'), the time the parent waited for a CPU (``/proc/self/schedstat``)
and the per-stage figures of the manifest's ``stats``, and from them the best ratio two
workers could reach on two otherwise idle cores (Amdahl): the parent's serial CPU plus half
of the workers' CPU, against the CPU of ``--workers 1``.

    python benchmarks/bench_scaling.py --images 3000 --rounds 3
    python benchmarks/bench_scaling.py --data /tmp/d6k --rounds 3   # reuse bench_etl's images
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_etl import REPO, make_dataset

#: Runs ``capshard build`` in-process and prints its CPU accounting as JSON on the last line.
TIMED = """
import json, os, runpy, sys, time

def main():
    start = time.perf_counter()
    sys.argv = ["capshard", "build", *sys.argv[1:]]
    try:
        runpy.run_module("pipeline", run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
    t = os.times()
    runq = int(open("/proc/self/schedstat").read().split()[1]) / 1e9
    print(json.dumps({"wall": time.perf_counter() - start, "parent_cpu": t.user + t.system,
                      "workers_cpu": t.children_user + t.children_system, "parent_runq": runq}))

if __name__ == "__main__":
    main()
"""


def timed_build(token: Path, images: Path, out: Path, workers: int) -> dict[str, float]:
    cmd = [sys.executable, "-c", TIMED, str(token), "--format", "flickr", "--images", str(images),
           "--out", str(out), "--workers", str(workers)]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    figures.update({f"{s}_s": stats[s]["seconds"] for s in ("probe", "write")})
    shutil.rmtree(out)
    return figures


def report(times: dict[int, list[dict[str, float]]], n_images: int) -> str:
    med = {w: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for w, runs in times.items()}
    one, two = med[1], med[2]
    cpu_one = one["parent_cpu"] + one["workers_cpu"]
    bound = cpu_one / (two["parent_cpu"] + two["workers_cpu"] / 2)
    lines = [f"{n_images} images, medians of {len(times[1])} interleaved rounds", "",
             "| workers | wall s | parent CPU s | workers CPU s | parent waited for a CPU s | probe s | write s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for w, m in med.items():
        lines.append(f"| {w} | {m['wall']:.2f} | {m['parent_cpu']:.2f} | {m['workers_cpu']:.2f} | "
                     f"{m['parent_runq']:.2f} | {m['probe_s']:.2f} | {m['write_s']:.2f} |")
    lines += ["", f"- wall `--workers 2` / `--workers 1`: {one['wall'] / two['wall']:.2f}",
              f"- CPU of `--workers 1`: {cpu_one:.2f} s; serial in the parent with 2 workers: "
              f"{two['parent_cpu']:.2f} s ({two['parent_cpu'] / cpu_one:.0%}); worker start-up and task "
              f"overhead: {two['parent_cpu'] + two['workers_cpu'] - cpu_one:.2f} s CPU",
              f"- best `--workers 2` / `--workers 1` on two idle cores (Amdahl, from the CPU above): {bound:.2f}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--data", type=Path, help="A folder bench_etl made (Flickr8k.token.txt, images/); else generated.")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.data:
            token, images = args.data / "Flickr8k.token.txt", args.data / "images"
        else:
            token, images = make_dataset(root, args.images)
        n_images = len({line.split("#", 1)[0] for line in token.read_text().splitlines()})
        times: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for r in range(args.rounds):
            for w in times:
                times[w].append(timed_build(token, images, root / f"out-{r}-{w}", w))
                print(f"round {r + 1}, --workers {w}: {times[w][-1]}", file=sys.stderr)
    print(report(times, n_images))


if __name__ == "__main__":
    main()
