"""What a benchmark's markdown report says first: the command that made it, when, and on what."""

from __future__ import annotations

import datetime
import os
import platform
import sys


def command(script: str) -> str:
    """The line naming the command that made the report: ``script`` with this run's arguments."""
    return f"Command: `python benchmarks/{script} " + " ".join(sys.argv[1:]) + "`"


def when_and_where() -> list[str]:
    """The date (UTC) and the machine: architecture, cores, Python, load average now (at the end)."""
    load = os.getloadavg()
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
    ]
