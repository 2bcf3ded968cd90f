"""``benchmarks/bench_loader.py``, the README's loader benchmark, end to end on a few images: the
report it writes (the four pipelines, the batches per worker, the ratios and the CPU line).

The figures of so small a run mean nothing; what is checked is that the documented command runs
and reports what it says it does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the loader benchmark needs the loader extra (torch)")

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks" / "bench_loader.py"
PIPELINES = [
    "capshard make_loader",
    "plain webdataset pipeline",
    "decode loop + batches to the main process",
    "decode loop (limit)",
]


def test_the_loader_benchmark_reports_every_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "loader.md"
    args = ["--images", "300", "--epochs", "1", "--per-shard", "50", "--batch-size", "32", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out.read_text()
    assert report == proc.stdout.rstrip("\n") + "\n"
    assert f"--images 300 --workers 2 --batch-size 32 --epochs 1 --per-shard 50 --out {out}" in report

    speeds = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5 and cells[1].replace(",", "").isdigit():
            speeds[cells[0]] = float(cells[1].replace(",", ""))
            assert float(cells[4]) > 0
    assert list(speeds) == PIPELINES
    assert all(s > 0 for s in speeds.values())

    batches = re.search(r"make_loader's epoch: (\d+) batches; .* the busiest of the 2 builds (\d+) of them", report)
    assert batches is not None, report
    n, busiest = int(batches[1]), int(batches[2])
    # 300 images, nearly all in the training split, in batches of 32; a worker builds whole batches.
    assert 8 <= n <= 10 and busiest == -(-n // 2)
    ratio = re.search(r"make_loader / decode loop: \*\*([0-9.]+)\*\*", report)
    assert ratio is not None and abs(float(ratio[1]) - speeds[PIPELINES[0]] / speeds[PIPELINES[3]]) < 0.01
    assert re.search(r"make_loader [0-9.]+ ms, bare decode loop [0-9.]+ ms", report)
