"""The loader package is light: importing it loads no build stage (a fresh interpreter checks)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

FORBIDDEN = ("pipeline.plan", "pipeline.executors", "pipeline.resolve", "pipeline.readers", "pipeline.config",
             "pyarrow.dataset", "datasets")

PROBE = """
import json, sys
import pipeline.loader
from pipeline.loader import make_loader, positive_mask, LoaderOptions, CaptionsPerImage
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_the_loader_loads_no_build_stage() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    loaded = json.loads(proc.stdout)
    dragged = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert dragged == []
    assert "pipeline.loader.core" in loaded and "pipeline.format" in loaded
