"""``benchmarks/bench_etl.py``, the README's ETL benchmark, end to end on a few images: the report
it writes (rows, counts, targets table, how long it took) with and without ``--explain``.

The figures of so small a run mean nothing; what is checked is that the documented command runs
and reports what it says it does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks" / "bench_etl.py"

COMPARED = [
    "`tar cf` of the same files",
    "hand-written single-process `webdataset.ShardWriter` loop",
    "capshard `--workers 1`",
    "capshard `--workers 2`",
    "capshard `--workers 1` on each half of the images at once (a perfect split)",
    "Pillow loop: draft + resize 256 + JPEG q95, 2 processes",
    "capshard `--resize 256 --workers 2`",
]
EXPLAINING = [
    "`tar cf` of the same files, then `sync` of the tar",
    "floor of a durable verified build: read + sha256 once, tar + sha256, fsync per 1,000; 2 processes",
    "the pass's I/O alone: read + sha256, tar + sha256, no fsync; 1 process",
    "capshard `--workers 2 --two-pass`",
]


def bench(tmp_path: Path, *extra: str) -> str:
    out = tmp_path / "etl.md"
    args = ["--images", "24", "--rounds", "1", "--slow-rounds", "1", "--out", str(out), *extra]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.with_suffix(".png").stat().st_size > 0
    return out.read_text()


def rows(report: str) -> dict[str, tuple[float, float]]:
    """The methods table: method -> (images/s, seconds of its one round)."""
    found = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[1].replace(",", "").isdigit():
            found[cells[0]] = (float(cells[1].replace(",", "")), float(cells[2]))
    return found


def test_documented_command_times_what_the_targets_compare(tmp_path: Path) -> None:
    report = bench(tmp_path, "--resize-images", "8", "--resolve-rows", "2000")
    table = rows(report)
    assert set(COMPARED) <= set(table)
    assert not set(EXPLAINING) & set(table)
    assert "the resize pair on the first 8 of them" in report
    assert re.search(r"- the whole benchmark took \d+ min \d+ s", report)
    # images/s is of the images each method was given: 8 for the resize pair, 24 for the rest
    # (within the rounding of the report: images/s to 1, seconds to 0.1)
    for method, (rate, seconds) in table.items():
        n = 8 if "resize" in method else 24
        assert abs(rate * seconds - n) <= 0.05 * rate + 0.5 * seconds + 0.2, method
    targets = report.split("## Targets (issue #9), this run", 1)[1]
    for figure in (
        "passthrough `--workers 2` / hand-written loop",
        "passthrough `--workers 2` / `tar cf`",
        "| `--workers 2` / `--workers 1` |",
        "`--resize 256 --workers 2` / Pillow loop",
    ):
        assert figure in targets
    assert "resolution of 10M rows" not in targets  # only when --resolve-rows has 10M
    assert "## Resolution at scale" in report and "| 2,000 |" in report


def test_explain_adds_the_rows_that_explain(tmp_path: Path) -> None:
    report = bench(tmp_path, "--explain", "--resize-images", "0", "--resolve-rows", "--scale-images", "16")
    table = rows(report)
    assert set(COMPARED + EXPLAINING) <= set(table)
    assert "the resize pair on the first 24 of them" in report
    assert "the floor's 2 processes / 1 process" in report
    assert "`--workers 2 --two-pass` / hand-written loop" in report
    assert "## `--workers 2` / `--workers 1` on 16 images: the pass and the rest" in report
    assert report.count("- The pass's I/O alone") == 2  # at 24 images and at 16
    assert "## Resolution at scale" not in report


def test_resolution_table_of_a_size_too_small_to_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first size whose run took no measurable system time (a few thousand rows; CI saw it):
    its per-row column says so instead of dividing by zero."""
    monkeypatch.syspath_prepend(str(BENCH.parent))
    import bench_etl

    small = {"rows": 2000, "images": 400, "seconds": 0.1, "peak_rss_mib": 120, "rss_after_generate_mib": 110}
    results = [
        {**small, "cpu_s": 0.1, "user_s": 0.1, "system_s": 0.0},
        {**small, "rows": 4000, "images": 800, "cpu_s": 0.3, "user_s": 0.2, "system_s": 0.1},
    ]
    table = bench_etl.render_resolution(results)
    assert "| 1.00 (1.00, –) |" in table
    assert "| 1.50 (1.00, –) |" in table
