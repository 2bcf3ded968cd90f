"""The README's loader snippet runs as written on the sample that ``capshard build`` writes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_snippet() -> str:
    """The first Python block of the README's "Loading shards for training" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Loading shards for training", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the loader section has no python block"
    return match.group(1)


def test_the_readme_loader_snippet_runs_on_the_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    built = subprocess.run([sys.executable, "-m", "pipeline", "build"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "shards" / "sample" / "manifest.json").is_file()
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*suggested max number of worker")
        exec(compile(readme_snippet(), "README.md", "exec"), namespace)  # the README's own code
    loader, batch, mask = namespace["loader"], namespace["batch"], namespace["mask"]
    assert len(loader) == 3  # 240 training images in batches of 64
    assert mask.shape == (64, 5 * 64) and mask.sum() == 5 * 64
    assert len(batch["image_id"]) == 64 and loader.counters == {}
