"""What a second core gives plain work on this machine, with no build in the way.

The same total work done by 1 process and by 2 processes (half each), interleaved, for three
kinds of work a build's pass is made of: the Python interpreter's own loop, sha256 of an
in-memory MiB (SHA extensions: the core's arithmetic), and copies of a 64 MiB buffer (memory
bandwidth, as reading a file from the page cache and writing one into it are). The ratio
1-process seconds / 2-process seconds is what ``--workers 2`` / ``--workers 1`` can at best
reach for work of that kind here (``bench_etl.py`` measures the whole build split in two).

    python benchmarks/bench_cores.py --rounds 3 --out benchmarks/results/cores.md
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import report_head


def python_loop(n: int) -> None:
    total = 0
    for i in range(n):
        total += i * i % 7


def sha256_mib(n: int) -> None:
    data = b"\x5a" * (1 << 20)  # made in microseconds, so that nearly all the time is the work
    for _ in range(n):
        hashlib.sha256(data).digest()


def copy_64_mib(n: int) -> None:
    data = bytearray(b"\x5a" * (64 << 20))  # every page written: a copy reads real memory
    for _ in range(n):
        bytes(data)


#: name -> (function, total units of work); each takes a few seconds in one process here.
WORK: dict[str, tuple[Callable[[int], None], int]] = {
    "Python loop (the interpreter)": (python_loop, 40_000_000),
    "sha256 of 1 MiB in memory (the core's arithmetic)": (sha256_mib, 4_000),
    "copy of 64 MiB (memory bandwidth)": (copy_64_mib, 200),
}


def timed(fn: Callable[[int], None], units: int, procs: int) -> float:
    """Seconds for ``procs`` processes (fork-started: no imports) to do ``units`` between them."""
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=fn, args=(units // procs,)) for _ in range(procs)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise SystemExit(f"{fn.__name__} failed in a worker (exit code {w.exitcode})")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="Interleaved rounds of 1 and 2 processes per kind of work.")
    ap.add_argument("--out", type=Path, help="Write the markdown report here.")
    args = ap.parse_args()
    seconds: dict[str, dict[int, list[float]]] = {name: {1: [], 2: []} for name in WORK}
    for r in range(args.rounds):
        for name, (fn, units) in WORK.items():
            for procs in (1, 2):
                seconds[name][procs].append(timed(fn, units, procs))
            print(f"round {r + 1}: {name}: {seconds[name][1][-1]:.2f} / {seconds[name][2][-1]:.2f} s", file=sys.stderr)
    lines = [
        "# A second core on this machine",
        "",
        report_head.command("bench_cores.py"),
        "",
        *report_head.when_and_where(),
        f"- {args.rounds} interleaved rounds; the same total work in 1 process and in 2 (half each)",
        "",
        "| work | 1 process, s (median) | 2 processes, s (median) | 1 / 2 per round | 1 / 2 (medians) |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for name, by in seconds.items():
        one, two = statistics.median(by[1]), statistics.median(by[2])
        each = ", ".join(f"{a / b:.2f}" for a, b in zip(by[1], by[2], strict=True))
        lines.append(f"| {name} | {one:.2f} | {two:.2f} | {each} | **{one / two:.2f}** |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
