"""``--executor ray`` on a real two-node Ray cluster on this machine (tests/raycluster.py).

The cluster is started once per session (about 35 s on 2 cores) and stopped at the end,
also when a test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from raycluster import RayCluster
from synth import comparable, flickr_token_file, write_images

pytest.importorskip("ray", reason="Ray is optional: pip install 'capshard[ray]'")

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A head and a worker node, one CPU each, running this checkout's code."""
    cluster = RayCluster(pythonpath=ROOT).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        assert cluster.leftover_pids() == [], "a process of the test Ray cluster outlived it"


# Two one-CPU tasks that each wait until both have started: they can only both run on
# two different nodes, so the printed node ids show where the cluster schedules.
BOTH_NODES = textwrap.dedent(
    """
    import os, sys, time, ray
    ray.init(log_to_driver=False)  # the cluster of RAY_ADDRESS
    meeting = sys.argv[1]

    @ray.remote(num_cpus=1)
    def where(i):
        node = ray.get_runtime_context().get_node_id()
        open(os.path.join(meeting, f"{i}-{node}"), "w").close()
        deadline = time.monotonic() + 120
        while len(os.listdir(meeting)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        return node

    print(len({n["NodeID"] for n in ray.nodes() if n["Alive"]}), len(set(ray.get([where.remote(0), where.remote(1)]))))
    """
)


def test_tasks_run_on_both_nodes(ray_cluster: RayCluster, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", BOTH_NODES, str(tmp_path)], capture_output=True, text=True,
                          env=ray_cluster.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["2", "2"]  # two live nodes; the two tasks ran one on each


def _build(tmp_path: Path, out: str, env: dict[str, str], *extra: str) -> None:
    # Absolute paths: Ray workers do not run in the driver's folder (relative ones are a known gap).
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "build", str(tmp_path / "captions.token"), "--images",
         str(tmp_path / "img"), "--out", str(tmp_path / out),
         "--workers", "2", "--max-images-per-shard", "3", *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): comparable(p.name, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file() and ".capshard" not in p.parts}


def test_a_build_on_the_two_node_cluster_is_byte_identical_to_the_process_pool(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    names = [f"{i}.jpg" for i in range(24)]
    write_images(tmp_path / "img", names)
    flickr_token_file(tmp_path / "captions.token", names, 5)
    _build(tmp_path, "pool", dict(os.environ))
    _build(tmp_path, "ray", ray_cluster.env(), "--executor", "ray")
    pool, ray = _files(tmp_path / "pool"), _files(tmp_path / "ray")
    assert sorted(pool) == sorted(ray)
    assert len([n for n in pool if n.endswith(".tar")]) == 8 and "index.parquet" in pool
    manifests = [json.loads(files.pop("manifest.json")) for files in (pool, ray)]
    for manifest in manifests:
        manifest.pop("stats", None)  # timings and memory, as identity_compare.sh
    assert manifests[0] == manifests[1]
    for name in pool:
        assert pool[name] == ray[name], name
