"""``capshard export``: lay a finished build out for the tools teams evaluate and train with.

One module per target; :data:`EXPORTERS` maps a target name to its function, which takes
the build folder, the output folder and keyword options, and returns a small summary dict.
"""

from __future__ import annotations

from .clip_benchmark import export_clip_benchmark
from .hf import export_hf

EXPORTERS = {
    "clip-benchmark": export_clip_benchmark,
    "hf": export_hf,
}

__all__ = ["EXPORTERS", "export_clip_benchmark", "export_hf"]
