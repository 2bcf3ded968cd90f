"""``capshard build --out s3://...``: real ``capshard build`` processes writing into moto's S3
server on loopback (tests/s3server.py), compared key by key with builds into local folders.

The manifest stays the commit marker on a store: a prefix holding a build that was killed
has no ``manifest.json``; the re-run resumes to the bytes of a clean local build. Only the
build's own keys are ever replaced or removed, and the driver checks every planned shard
before it writes the manifest.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image
from synth import caption_text, comparable, flickr_token_file, write_images

from pipeline import storage
from pipeline.errors import OutputError
from pipeline.finalize import check_shards
from pipeline.format import Manifest, parse_manifest
from pipeline.lock import OWNER
from pipeline.write import ShardResult

ROOT = Path(__file__).parent.parent
N_SLOW = 120
PER_SHARD = 5


def capshard(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Flickr-style source of 24 images, 2 captions each."""
    root = tmp_path_factory.mktemp("s3small")
    names = [f"{i}.jpg" for i in range(24)]
    write_images(root / "images", names)
    flickr_token_file(root / "captions.token", names, captions_per_image=2)
    return root


def build_args(root: Path, out: str, *extra: str) -> list[str]:
    return ["build", str(root / "captions.token"), "--format", "flickr", "--images", str(root / "images"),
            "--max-images-per-shard", "5", "--workers", "2", "--out", out, *extra]


def local_files(folder: Path) -> dict[str, bytes]:
    """Every file of a build folder, the manifest without its run's ``stats`` (:func:`synth.comparable`)."""
    files = (p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file())
    return {name: comparable(name, (folder / name).read_bytes()) for name in files}


def manifest_of(prefix: str) -> Manifest:
    """The manifest in ``prefix``, read now (not from a listing this process cached before the build)."""
    return parse_manifest(storage.read_bytes(storage.join(prefix, "manifest.json")))


def store_objects(prefix: str) -> dict[str, bytes]:
    return {key: comparable(key, storage.read_bytes(storage.join(prefix, key))) for key in storage.list_prefix(prefix)}


def test_a_build_to_s3_holds_exactly_the_bytes_of_a_local_build(small: Path, s3_bucket: str, tmp_path: Path) -> None:
    local = capshard(*build_args(small, str(tmp_path / "local")))
    assert local.returncode == 0, local.stderr
    prefix = f"{s3_bucket}/datasets/small"
    remote = capshard(*build_args(small, prefix))
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout.startswith(f"built {prefix}: 24 images, 48 captions")
    expected = local_files(tmp_path / "local")
    assert "manifest.json" in expected and sum(k.endswith(".tar") for k in expected) == 5
    # Every key is a file of the local build with the same bytes; no .capshard/ state, no temporary key.
    assert store_objects(prefix) == expected
    assert manifest_of(prefix).counts.images == 24
    again = capshard(*build_args(small, prefix))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"up to date: {prefix}")


def test_a_file_url_out_is_the_local_folder(small: Path, tmp_path: Path) -> None:
    plain = capshard(*build_args(small, str(tmp_path / "plain")))
    url = capshard(*build_args(small, f"file://{tmp_path}/url"))
    assert plain.returncode == 0 and url.returncode == 0, url.stderr
    assert local_files(tmp_path / "url") == local_files(tmp_path / "plain")


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images slow enough to re-encode (1600x1200, ``--resize``) that a kill lands mid-write,
    and the clean local build of them."""
    root = tmp_path_factory.mktemp("s3slow")
    size = (1600, 1200)
    bands = [Image.linear_gradient("L").resize(size), Image.radial_gradient("L").resize(size),
             Image.linear_gradient("L").rotate(90).resize(size)]
    buf = io.BytesIO()
    Image.merge("RGB", bands).save(buf, "JPEG", quality=90)
    (root / "images").mkdir()
    lines = []
    for i in range(N_SLOW):
        (root / "images" / f"{i}.jpg").write_bytes(buf.getvalue() + f"capshard s3 image {i}".encode())
        lines += [f"{i}.jpg#{n}\t{caption_text(i, n)}\n" for n in range(2)]
    (root / "captions.token").write_text("".join(lines))
    clean = capshard(*build_args(root, str(root / "clean"), "--resize", "64"))
    assert clean.returncode == 0, clean.stderr
    return root


def start_and_kill_mid_write(root: Path, prefix: str) -> None:
    """Start a build into ``prefix``, SIGKILL it (and its workers) once some shards are uploaded."""
    command = [sys.executable, "-m", "pipeline", *build_args(root, prefix, "--resize", "64")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    done = storage.join(prefix, ".capshard", "done")
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if len(storage.list_prefix(done)) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before it could be killed; make it bigger"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


def test_a_build_to_s3_killed_mid_write_has_no_manifest_and_resumes_to_the_clean_bytes(
    slow: Path, s3_bucket: str
) -> None:
    prefix = f"{s3_bucket}/killed"
    start_and_kill_mid_write(slow, prefix)
    keys = storage.list_prefix(prefix)
    assert "manifest.json" not in keys  # the prefix holds no finished build
    assert {".capshard/state.json", ".capshard/plan.json", f".capshard/{OWNER}"} <= set(keys)
    shards = [k for k in keys if k.endswith(".tar")]
    assert 0 < len(shards) < N_SLOW // PER_SHARD
    for shard in shards:  # a shard under its final key is whole and matches its done record
        record = json.loads(storage.read_bytes(storage.join(prefix, ".capshard", "done", f"{shard}.json")))
        assert storage.sha256(storage.join(prefix, shard)) == (record["sha256"], record["bytes"])
    again = capshard(*build_args(slow, prefix, "--resize", "64"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"finished (resumed) {prefix}")
    assert store_objects(prefix) == local_files(slow / "clean")


def test_a_different_build_over_an_unfinished_one_is_refused_unless_overwrite(slow: Path, s3_bucket: str) -> None:
    prefix = f"{s3_bucket}/unfinished"
    start_and_kill_mid_write(slow, prefix)
    other = capshard(*build_args(slow, prefix, "--resize", "64", "--seed", "1"))
    assert other.returncode != 0
    last = other.stderr.strip().splitlines()[-1]
    assert last.startswith(f"capshard: error: {prefix} is claimed by capshard build (pid "), last
    assert last.endswith("for a different build; wait for it to end, choose another --out, or pass --overwrite to "
                         "replace it")
    assert "manifest.json" not in storage.list_prefix(prefix)
    replaced = capshard(*build_args(slow, prefix, "--resize", "64", "--seed", "1", "--overwrite"))
    assert replaced.returncode == 0, replaced.stderr
    assert manifest_of(prefix).identity.to_dict()["options"]["seed"] == 1
    assert not [k for k in storage.list_prefix(prefix) if k.startswith(".capshard/")]


def test_overwrite_on_s3_removes_only_the_builds_own_keys(small: Path, s3_bucket: str) -> None:
    prefix = f"{s3_bucket}/ds"
    first = capshard(*build_args(small, prefix))  # 5 shards
    assert first.returncode == 0, first.stderr
    neighbours = [f"{s3_bucket}/keep.txt", f"{s3_bucket}/ds-notes/keep.txt", f"{s3_bucket}/dsx.txt"]
    for key in neighbours:
        storage.put_whole(key, b"not capshard's")
    second = capshard(*build_args(small, prefix, "--max-images-per-shard", "12", "--overwrite"))
    assert second.returncode == 0, second.stderr
    keys = storage.list_prefix(prefix)
    assert sum(k.endswith(".tar") for k in keys) < 5
    manifest = manifest_of(prefix)
    assert {k for k in keys if k.endswith(".tar")} == {s.name for s in manifest.shards}  # the old shards are gone
    assert all(storage.read_bytes(key) == b"not capshard's" for key in neighbours)
    # A key capshard did not write inside the prefix: never removed, the build refused.
    storage.put_whole(f"{prefix}/notes.txt", b"mine")
    third = capshard(*build_args(small, prefix, "--seed", "3", "--overwrite"))
    assert third.returncode != 0
    assert "holds files capshard did not write (notes.txt)" in third.stderr
    assert storage.read_bytes(f"{prefix}/notes.txt") == b"mine"
    assert manifest_of(prefix) == manifest


def test_the_driver_names_missing_and_different_shards_before_any_manifest(small: Path, s3_bucket: str,
                                                                            tmp_path: Path) -> None:
    for out in (str(tmp_path / "local"), f"{s3_bucket}/checked"):
        done = capshard(*build_args(small, out))
        assert done.returncode == 0, done.stderr
        manifest = manifest_of(out)
        results = {s.name: ShardResult(s.name, s.images, s.captions, s.bytes, s.sha256, ()) for s in manifest.shards}
        names = sorted(results)
        check_shards(out, names, results)  # every shard as recorded: no error
        storage.remove([storage.join(out, names[0])])
        storage.put_whole(storage.join(out, names[1]), b"not the shard")
        with pytest.raises(OutputError, match=rf"^2 of 5 planned shards are missing from {out} or differ from "
                           rf"their done record \({names[0]}, {names[1]}\); no manifest written"):
            check_shards(out, names, results)


def test_an_out_whose_backend_is_missing_is_one_line_naming_the_extra(small: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["gcsfs"] = None  # as if capshard[gcs] were not installed
        sys.argv = ["capshard", *{build_args(small, "gs://bucket/out")!r}]
        from pipeline.cli import main
        main()
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "capshard: error: gs://bucket/out: gs:// needs its storage backend: pip install 'capshard[gcs]'"
    )
    assert "Traceback" not in proc.stderr


def test_storage_options_reach_every_worker(small: Path, s3_bucket: str, tmp_path: Path) -> None:
    """The endpoint given only as --storage-options (not in the environment): the driver and the
    pool's workers all write through it."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"} | {"PYTHONPATH": str(ROOT)}
    prefix = f"{s3_bucket}/with-options"
    args = build_args(small, prefix, "--storage-options", json.dumps({"endpoint_url": endpoint}))
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    local = capshard(*build_args(small, str(tmp_path / "local")))
    assert local.returncode == 0, local.stderr
    assert store_objects(prefix) == local_files(tmp_path / "local")


def test_a_missing_bucket_is_one_line(small: Path, s3_bucket: str) -> None:
    proc = capshard(*build_args(small, "s3://capshard-no-such-bucket/out"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "capshard: error: cannot write to s3://capshard-no-such-bucket/out: The specified bucket does not exist"
    )
    assert "Traceback" not in proc.stderr
