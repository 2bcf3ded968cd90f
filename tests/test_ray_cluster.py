"""``--executor ray`` on a real two-node Ray cluster on this machine (tests/raycluster.py).

The cluster is started once per session (about 35 s on 2 cores) and stopped at the end,
also when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from raycluster import RayCluster
from s3server import S3Server
from synth import comparable, flickr_token_file, write_images

from pipeline.format import LOCK

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


def _build(tmp_path: Path, out: str, env: dict[str, str], *extra: str) -> str:
    """Build with paths relative to ``tmp_path``: the Ray workers run elsewhere, so the build must
    ship them absolute. Its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *extra[:1], "build", "captions.token", "--images", "img", "--out", out,
         "--workers", "2", "--max-images-per-shard", "3", *extra[1:]],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): comparable(p.name, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file() and ".capshard" not in p.parts}


def test_a_build_on_the_two_node_cluster_is_byte_identical_to_the_process_pool(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    names = [f"{i}.jpg" for i in range(24)]
    write_images(tmp_path / "img", names)
    flickr_token_file(tmp_path / "captions.token", names, 5)
    _build(tmp_path, "pool", dict(os.environ), "-v")
    log = _build(tmp_path, "ray", ray_cluster.env(), "-vv", "--executor", "ray")
    # The driver logs where each task ran (the shards do not say): shard tasks ran on both nodes.
    where = dict(re.findall(r"(train-\d{6}\.tar) ran on Ray node ([0-9a-f]+)", log))
    assert len(where) == 8 and len(set(where.values())) == 2, log[-3000:]
    pool, ray = _files(tmp_path / "pool"), _files(tmp_path / "ray")
    assert sorted(pool) == sorted(ray)
    assert len([n for n in pool if n.endswith(".tar")]) == 8 and "index.parquet" in pool
    manifests = [json.loads(files.pop("manifest.json")) for files in (pool, ray)]
    for manifest in manifests:
        manifest.pop("stats", None)  # timings and memory, as identity_compare.sh
    assert manifests[0] == manifests[1]
    for name in pool:
        assert pool[name] == ray[name], name


# Ray runs a task again when its worker dies; a task that dies every time fails the map naming it.
RETRIES = textwrap.dedent(
    """
    import os, sys
    from dataclasses import dataclass
    from pipeline.errors import BuildError
    from pipeline.executors import make_executor

    MARKS = sys.argv[1]  # sent with the function: a Ray worker has its own sys.argv

    @dataclass(frozen=True)
    class Task:
        name: str

    def die_first(context, task):
        mark = os.path.join(MARKS, task.name)
        if task.name.startswith("always") or not os.path.exists(mark):
            open(mark, "w").close()
            os._exit(1)  # the worker process dies: a node lost, out of memory
        return task.name

    # What it found goes to a file: Ray's driver prints its workers' logs to stdout from a thread,
    # which once cut into the middle of a line printed here.
    executor = make_executor("ray", 2, None, address=os.environ["RAY_ADDRESS"])
    with open(os.path.join(MARKS, "found.txt"), "w") as found:
        found.write(f"{sorted(executor.map_unordered(die_first, [Task('a.tar'), Task('b.tar')]))}\\n")
        try:
            list(executor.map_unordered(die_first, [Task("always-000003.tar")]))
        except BuildError as e:
            found.write(f"error: {e}\\n")
    """
)


def test_a_task_whose_worker_dies_is_retried_and_one_that_always_dies_fails_naming_it(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    proc = subprocess.run([sys.executable, "-c", RETRIES, str(tmp_path)], capture_output=True, text=True,
                          env={**ray_cluster.env(), "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (tmp_path / "found.txt").read_text().splitlines()
    assert lines[0] == "['a.tar', 'b.tar']"
    assert lines[1].startswith("error: always-000003.tar failed on Ray after 3 retries: ")


def test_pool_ray_across_two_nodes_and_indexed_slices_give_the_same_keys_locally_and_in_the_bucket(
    ray_cluster: RayCluster, s3_bucket: str, s3_server: S3Server, tmp_path: Path
) -> None:
    """Issue 10's done-when: the three paths, locally and in the moto bucket, byte for byte.

    The Ray workers were started without the bucket's AWS_* variables: ``--storage-options``
    is how the endpoint and credentials reach them, as on a real cluster."""
    names = [f"{i}.jpg" for i in range(15)]
    write_images(tmp_path / "img", names)
    flickr_token_file(tmp_path / "captions.token", names, 3)
    creds = s3_server.env()
    store = json.dumps({"endpoint_url": creds["AWS_ENDPOINT_URL"], "key": creds["AWS_ACCESS_KEY_ID"],
                        "secret": creds["AWS_SECRET_ACCESS_KEY"]})
    _build(tmp_path, "pool", dict(os.environ))
    local = _files(tmp_path / "pool")
    want = {name: data for name, data in local.items() if name != LOCK}  # a store has no lock file
    assert len([n for n in want if n.endswith(".tar")]) == 5 and "manifest.json" in want

    prefix = f"{s3_bucket}/ray"
    log = _build(tmp_path, prefix, ray_cluster.env(), "-vv", "--executor", "ray", "--storage-options", store)
    where = dict(re.findall(r"(train-\d{6}\.tar) ran on Ray node ([0-9a-f]+)", log))
    assert len(where) == 5 and len(set(where.values())) == 2, log[-3000:]
    assert _store_files(prefix) == want

    _build(tmp_path, f"{s3_bucket}/pool", dict(os.environ))
    assert _store_files(f"{s3_bucket}/pool") == want

    for out, check in ((str(tmp_path / "sliced"), lambda: _files(tmp_path / "sliced")),
                       (f"{s3_bucket}/sliced", lambda: _store_files(f"{s3_bucket}/sliced"))):
        _capshard(tmp_path, "plan", "captions.token", "--images", "img", "--out", out, "--max-images-per-shard", "3")
        for task in (2, 0, 1, 1):  # any order; slice 1 twice
            _capshard(tmp_path, "write", out, "--task", str(task), "--tasks", "3", "--workers", "1")
        _capshard(tmp_path, "finalize", out)
        got = check()
        got.pop(LOCK, None)
        assert got == want, out


def _capshard(cwd: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _store_files(prefix: str) -> dict[str, bytes]:
    """Every key under ``prefix`` as :func:`_files` gives a folder's (``.capshard/`` must be gone)."""
    from pipeline import storage

    keys = storage.list_prefix(prefix)
    return {key: comparable(key, storage.read_bytes(storage.join(prefix, key))) for key in keys}
