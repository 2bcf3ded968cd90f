"""Executors run the same shard tasks; where they run never changes the bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from synth import nlphuji_dataset

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.errors import UsageError
from pipeline.executors import make_executor
from pipeline.readers import SourceSpec


def _square(_context: None, x: int) -> int:
    return x * x


def test_process_pool_returns_every_result() -> None:
    results = sorted(make_executor("process", 2).map_unordered(_square, range(20)))
    assert results == [x * x for x in range(20)]


def test_ray_executor_writes_the_same_shards_as_the_process_pool(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'capshard[ray]'")
    spec = SourceSpec(dataset=nlphuji_dataset(24))
    local = build(spec, BuildConfig(out=tmp_path / "local", workers=2, max_images_per_shard=3))
    try:
        cluster = build(spec, BuildConfig(out=tmp_path / "ray", workers=2, max_images_per_shard=3, executor="ray"))
    finally:
        ray.shutdown()
    names = sorted(p.name for p in local.out.glob("*.tar"))
    assert len(names) == 9
    assert names == sorted(p.name for p in cluster.out.glob("*.tar"))
    for name in names:
        assert (local.out / name).read_bytes() == (cluster.out / name).read_bytes()


def test_missing_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(UsageError, match=r"pip install 'capshard\[ray\]'"):
        make_executor("ray", 2)
