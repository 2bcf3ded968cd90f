"""Shared fixtures. Test data is built by ``tests/synth.py``; real files come from ../shared."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from s3server import S3Server
from synth import REAL_DATA


@pytest.fixture
def real_data() -> Path:
    """The real annotation files in ../shared/data/real; skips where that folder is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real annotation files not present at {REAL_DATA} (they ship beside the repo in CI)")
    return REAL_DATA


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's real S3 API on 127.0.0.1 (tests/s3server.py), one per session; skips without moto[server] and s3fs."""
    for module in ("moto.server", "s3fs", "boto3"):
        pytest.importorskip(module, reason=f"{module} not installed (the dev extra has moto[server] and s3fs)")
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the moto server, as ``s3://NAME``; AWS_* point this test and its subprocesses at it."""
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_server.create_bucket()}"
