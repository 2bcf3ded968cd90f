"""Shared fixtures. Test data is built by ``tests/synth.py``; real files come from ../shared."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from synth import REAL_DATA


@pytest.fixture
def real_data() -> Path:
    """The real annotation files in ../shared/data/real; skips where that folder is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real annotation files not present at {REAL_DATA} (they ship beside the repo in CI)")
    return REAL_DATA
