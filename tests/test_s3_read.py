"""Reading a finished build from object storage: ``verify``, ``inspect``, ``diagnose`` and the loader
take an ``s3://`` URL (moto's real S3 API on loopback) and say what they say of a local copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from s3server import CREDENTIALS
from synth import flickr_token_file, write_images

from pipeline import storage
from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.diagnose import diagnose
from pipeline.errors import UsageError
from pipeline.loader import make_loader
from pipeline.readers import SourceSpec
from pipeline.write import TMP_MARK


def capshard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def local_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished build: 14 images (one missing, so rejects.jsonl has a line), 3 captions each, 4 per shard."""
    root = tmp_path_factory.mktemp("s3read")
    names = [f"{i}.jpg" for i in range(14)]
    write_images(root / "images", names[:13])
    flickr_token_file(root / "captions.token", names, 3)
    out = root / "build"
    build(
        SourceSpec(path=str(root / "captions.token"), images=root / "images"),
        BuildConfig(out=out, workers=1, max_images_per_shard=4),
    )
    return out


@pytest.fixture
def remote(local_build: Path, s3_bucket: str) -> str:
    """The local build uploaded with s3fs, as ``s3://BUCKET/builds/b``."""
    fs, bucket = storage.filesystem(s3_bucket)
    fs.put(str(local_build), f"{bucket}/builds/b", recursive=True)
    return storage.join(s3_bucket, "builds", "b")


def test_verify_passes_on_the_bucket_and_names_a_corrupted_shard_object(local_build: Path, remote: str) -> None:
    assert storage.exists(storage.join(remote, "manifest.json"))
    ok = capshard("verify", remote, "--workers", "2")
    assert ok.returncode == 0, ok.stderr
    local = capshard("verify", str(local_build))
    assert ok.stdout.replace(remote, "BUILD") == local.stdout.replace(str(local_build), "BUILD")
    assert "4 shards intact, 13 images, 39 captions + 3 rejected rows = 42 rows" in ok.stdout

    shard = storage.join(remote, "train-000001.tar")
    data = bytearray(storage.read_bytes(shard))
    data[len(data) // 2] ^= 0xFF
    fs, key = storage.filesystem(shard)
    fs.pipe_file(key, bytes(data))
    bad = capshard("verify", remote, "--workers", "1")
    assert bad.returncode == 1
    assert "train-000001.tar: damaged: sha256" in bad.stdout
    assert "train-000001.tar" in bad.stderr.strip() and len(bad.stderr.strip().splitlines()) == 1
    assert "train-000000.tar" not in bad.stdout


def test_verify_names_foreign_and_temporary_keys_and_missing_shards_in_the_bucket(remote: str) -> None:
    fs, key = storage.filesystem(remote)
    fs.pipe_file(f"{key}/stray-000009.tar", b"x")
    fs.pipe_file(f"{key}/.train-000003.tar{TMP_MARK}1234", b"x")  # an upload left behind
    fs.rm_file(f"{key}/train-000002.tar")
    report = capshard("verify", remote, "--json")
    assert report.returncode == 1
    shards = {s["name"]: s["status"] for s in json.loads(report.stdout)["shards"]}
    assert shards["stray-000009.tar"] == "extra"
    assert shards["train-000002.tar"] == "missing"
    extra = sorted(n for n, s in shards.items() if s == "extra")
    assert extra == [f".train-000003.tar{TMP_MARK}1234", "stray-000009.tar"]
    assert [shards[f"train-00000{i}.tar"] for i in (0, 1, 3)] == ["ok", "ok", "ok"]


def test_inspect_says_the_same_of_the_bucket_as_of_the_local_copy(
    local_build: Path, remote: str, tmp_path: Path
) -> None:
    here, there = capshard("inspect", str(local_build), "--json"), capshard("inspect", remote, "--json")
    assert here.returncode == 0 and there.returncode == 0, there.stderr
    assert json.loads(there.stdout) == json.loads(here.stdout)
    assert json.loads(there.stdout)["counts"] == {"rows": 42, "images": 13, "captions": 39, "rejected_rows": 3}
    text = capshard("inspect", remote)
    assert text.stdout.startswith(f"{remote}: ") and "rows 42  images 13  captions 39" in text.stdout

    pages = []
    for build_dir, name in ((str(local_build), "local.html"), (remote, "remote.html")):
        run = capshard("inspect", build_dir, "--html", str(tmp_path / name), "--samples", "5")
        assert run.returncode == 0, run.stderr
        pages.append((tmp_path / name).read_text().replace(build_dir, "BUILD"))
    assert pages[0] == pages[1] and pages[0].count("<div class=card") == 5


def test_diagnose_reports_the_same_for_the_bucket(local_build: Path, remote: str) -> None:
    here = diagnose(str(local_build), split="train", batch_size=4, captions_per_image="all")
    there = diagnose(remote, split="train", batch_size=4, captions_per_image="all")
    assert {**there.to_dict(), "source": ""} == {**here.to_dict(), "source": ""}
    assert there.images == 12 and there.ok
    run = capshard("diagnose", remote, "--batch-size", "4", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["images"] == 12


def batches(source: str, workers: int, **options: Any) -> Iterator[dict[str, Any]]:
    loader = make_loader(
        source, split="train", batch_size=3, captions_per_image=2, seed=7, num_workers=workers,
        image_size=16, drop_last=False, **options,
    )
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        yield from loader


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_yields_the_same_batches_from_the_bucket(local_build: Path, remote: str, workers: int) -> None:
    here = list(batches(str(local_build), workers))
    there = list(batches(remote, workers, storage_options={"default_block_size": 1 << 20}))
    assert len(here) == len(there) >= 8  # 13 images in batches of 3, two epochs
    assert {"image", "caption", "image_id", "caption_id", "match_id"} <= set(here[0])
    assert all(same(a, b) for a, b in zip(here, there, strict=True))
    # Shard URLs in the bucket (a glob) give the same batches as the build folder.
    globbed = list(batches(storage.join(remote, "train-*.tar"), workers))
    assert all(same(a, b) for a, b in zip(here, globbed, strict=True))


def test_a_bucket_prefix_without_a_manifest_is_one_line(s3_bucket: str) -> None:
    empty = storage.join(s3_bucket, "nothing-here")
    for command in ("verify", "inspect", "diagnose"):
        run = capshard(command, empty)
        assert run.returncode != 0
        assert run.stderr.strip().count("\n") == 0 and "manifest.json" in run.stderr, (command, run.stderr)
        assert "Traceback" not in run.stderr
    with pytest.raises(UsageError, match=r"manifest\.json"):
        make_loader(empty, split="train", batch_size=2, num_workers=0)


BLOCKED_GCSFS = (
    "import runpy, sys; sys.modules['gcsfs'] = None; sys.argv = ['capshard', *sys.argv[1:]]; "
    "runpy.run_module('pipeline', run_name='__main__', alter_sys=True)"
)


@pytest.mark.parametrize("command", ["verify", "inspect", "diagnose"])
def test_a_gs_url_without_its_backend_is_one_line_naming_the_extra(command: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", BLOCKED_GCSFS, command, "gs://some-bucket/build"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode != 0
    assert run.stderr.strip().count("\n") == 0, run.stderr
    assert "capshard[gcs]" in run.stderr and "Traceback" not in run.stderr


def test_storage_options_reach_the_backend(remote: str) -> None:
    """Endpoint and credentials given only by --storage-options (none in the environment)."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", *CREDENTIALS)}
    options = json.dumps({
        "endpoint_url": endpoint,
        "key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "client_kwargs": {"region_name": "us-east-1"},
    })
    for command in ("verify", "inspect"):
        run = subprocess.run(
            [sys.executable, "-m", "pipeline", command, remote, "--storage-options", options],
            capture_output=True, text=True, timeout=300, env=env,
        )
        assert run.returncode == 0, run.stderr
    assert "4 shards intact" in run.stdout or "rows 42" in run.stdout


def test_export_clip_benchmark_from_the_bucket_gives_the_local_export(
    local_build: Path, remote: str, tmp_path: Path
) -> None:
    for build_dir, out in ((str(local_build), tmp_path / "here"), (remote, tmp_path / "there")):
        run = capshard("export", "clip-benchmark", build_dir, str(out), "--split", "train")
        assert run.returncode == 0, run.stderr
    here = sorted(p.relative_to(tmp_path / "here") for p in (tmp_path / "here").rglob("*") if p.is_file())
    there = sorted(p.relative_to(tmp_path / "there") for p in (tmp_path / "there").rglob("*") if p.is_file())
    assert here == there and len([p for p in here if p.suffix == ".tar"]) == 4
    for rel in here:
        if rel.name != "capshard.json":  # names the build it came from
            assert (tmp_path / "there" / rel).read_bytes() == (tmp_path / "here" / rel).read_bytes(), rel
    assert json.loads((tmp_path / "there" / "train" / "capshard.json").read_text())["build"] == remote


def test_export_hf_from_the_bucket_holds_the_local_rows(local_build: Path, remote: str, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    for build_dir, out in ((str(local_build), tmp_path / "here"), (remote, tmp_path / "there")):
        run = capshard("export", "hf", build_dir, str(out))
        assert run.returncode == 0, run.stderr
    here, there = datasets.load_from_disk(str(tmp_path / "here")), datasets.load_from_disk(str(tmp_path / "there"))
    assert len(there) == len(here) == 13
    assert there.to_dict() == here.to_dict()


def test_hash_of_a_url_is_one_line_asking_for_a_local_copy() -> None:
    run = capshard("hash", "s3://some-bucket/build")
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0
    assert "local copy" in run.stderr and "Traceback" not in run.stderr
