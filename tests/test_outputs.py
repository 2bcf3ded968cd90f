"""capshard deletes or overwrites only what it wrote: user files in ``--out`` survive every
flag byte for byte, ``--out`` may not be among the inputs, ``--overwrite`` removes exactly
the previous build's files, and a killed build can still be resumed or replaced."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from synth import comparable, flickr_token_file, write_images

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.errors import BuildError, OutputError, UsageError
from pipeline.readers import SourceSpec
from pipeline.verify import verify


def user_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("beach.jpg")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"beach"))
    return buf.getvalue()


#: Files a user may keep where they point ``--out``, under the names capshard writes.
USER_FILES = {
    "holiday-000001.tar": user_tar(),
    "rejects.jsonl": b'{"photo": "IMG_0001.jpg", "reason": "blurry"}\n',
    "manifest.json": b'{"album": "holiday 2026", "photos": 412}\n',
    "train-000000.tar": user_tar(),
}


def source(root: Path, n_images: int = 12) -> SourceSpec:
    names = [f"{2000 + i}_out.jpg" for i in range(n_images)]
    write_images(root / "images", names)
    (root / "captions").mkdir()
    flickr_token_file(root / "captions" / "c.token.txt", names, 2)
    return SourceSpec(path=str(root / "captions" / "c.token.txt"), images=root / "images")


def config(out: Path, **options: object) -> BuildConfig:
    return BuildConfig(out=out, format="flickr", workers=1, max_images_per_shard=2, **options)  # type: ignore[arg-type]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every entry of ``folder``, hidden ones included; a directory is marked, not read; a manifest
    without its run's ``stats`` (:func:`synth.comparable`)."""
    return {p.name: (comparable(p.name, p.read_bytes()) if p.is_file() else b"<dir>") for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("name", sorted(USER_FILES))
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_user_file_under_a_capshard_name_is_never_touched(tmp_path: Path, name: str, overwrite: bool) -> None:
    spec = source(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_bytes(USER_FILES[name])
    with pytest.raises(OutputError) as refused:
        build(spec, config(out, overwrite=overwrite))
    message = str(refused.value)
    assert "\n" not in message
    if name == "manifest.json":
        assert message.startswith(f"{out}: not a capshard build (manifest.json is not a capshard/1 manifest (missing ")
    else:
        assert message == (f"{out} is not empty and holds no capshard build ({name}); choose an empty or new --out")
    assert snapshot(out) == {name: USER_FILES[name]}


def test_a_manifest_that_is_not_json_is_not_a_capshard_build(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.json").write_text("holiday photos, see the album\n")
    (tmp_path / "none.csv").write_text("image,caption\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "build", str(tmp_path / "none.csv"), "--format", "table", "--out", str(out),
         "--overwrite"], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr == (f"capshard: error: {out}: not a capshard build (manifest.json cannot be read: Expecting "
                           "value: line 1 column 1 (char 0)); choose another --out\n")
    assert snapshot(out) == {"manifest.json": b"holiday photos, see the album\n"}


def test_user_files_beside_a_finished_build_stop_overwrite_and_stay(tmp_path: Path) -> None:
    spec = source(tmp_path)
    out = tmp_path / "b"
    build(spec, config(out))
    for name, data in USER_FILES.items():
        if not (out / name).exists():
            (out / name).write_bytes(data)
    (out / "notes").mkdir()
    before = snapshot(out)
    with pytest.raises(OutputError, match=r"holds files capshard did not write \(holiday-000001\.tar, notes\); "
                       "capshard neither replaces nor removes them: move them away or choose another --out$"):
        build(spec, config(out, seed=1, overwrite=True))
    assert snapshot(out) == before
    # The same build again touches nothing, so it is still up to date.
    assert build(spec, config(out)).status == "up_to_date"
    assert snapshot(out) == before


@pytest.mark.parametrize("where", ["images", "inside images", "link to images", "source folder", "source dataset"])
def test_an_out_among_the_inputs_is_refused(tmp_path: Path, where: str) -> None:
    spec = source(tmp_path)
    (tmp_path / "images" / "holiday-000001.tar").write_bytes(USER_FILES["holiday-000001.tar"])
    (tmp_path / "captions" / "rejects.jsonl").write_bytes(USER_FILES["rejects.jsonl"])
    (tmp_path / "link").symlink_to(tmp_path / "images")
    out = {
        "images": tmp_path / "images",
        "inside images": tmp_path / "images" / "shards",
        "link to images": tmp_path / "link",
        "source folder": tmp_path / "captions",
        "source dataset": tmp_path / "captions" / "shards",
    }[where]
    if where == "source dataset":
        spec = SourceSpec(path=str(tmp_path / "captions"), images=None)
    images, captions = snapshot(tmp_path / "images"), snapshot(tmp_path / "captions")
    with pytest.raises(UsageError, match=r"^--out .* is (inside|the folder of) (--images|the source)") as refused:
        build(spec, config(out, overwrite=True))
    assert "\n" not in str(refused.value)
    assert snapshot(tmp_path / "images") == images and snapshot(tmp_path / "captions") == captions
    assert not (tmp_path / "images" / "shards").exists()


def test_an_out_inside_the_annotation_files_folder_is_allowed(tmp_path: Path) -> None:
    spec = source(tmp_path)
    assert build(spec, config(tmp_path / "captions" / "shards")).status == "built"


def test_overwrite_removes_exactly_the_previous_builds_files(tmp_path: Path) -> None:
    spec = source(tmp_path)
    out = tmp_path / "b"
    first = build(spec, config(out))
    assert len(list(out.glob("*.tar"))) == 6
    # A shard the plan no longer has, a temporary left by a killed writer: both capshard's.
    (out / ".train-000001.tar.tmp-999").write_bytes(b"half")
    replaced = build(spec, BuildConfig(out=out, format="flickr", workers=1, max_images_per_shard=5, overwrite=True))
    assert replaced.status == "built" and replaced.manifest != first.manifest
    fresh = build(spec, BuildConfig(out=tmp_path / "fresh", format="flickr", workers=1, max_images_per_shard=5))
    assert snapshot(out) == snapshot(fresh.out)
    assert sorted(p.name for p in out.iterdir()) == [
        "index.parquet", "inputs.parquet", "manifest.json", "rejects.jsonl", "sizes.json",
        "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert verify(out).ok


def test_a_run_stopped_by_the_reject_budget_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    spec = source(tmp_path)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "b"
    with pytest.raises(BuildError, match="rows rejected"):
        build(SourceSpec(path=spec.path, images=tmp_path / "empty"), config(out))
    assert (out / "rejects.jsonl").stat().st_size > 0
    assert build(spec, config(out)).status == "built"
    assert (out / "rejects.jsonl").read_bytes() == b""
    assert verify(out).ok


def cli(spec: SourceSpec, out: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "build", str(spec.path), "--format", "flickr", "--images",
            str(spec.images), "--max-images-per-shard", "4", "--workers", "1", "--out", str(out), *options]


def kill_mid_write(args: list[str], out: Path) -> None:
    """SIGKILL the build once 5 shards are written (by a one-pass build: ahead of its plan)."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = [out / ".capshard" / "done", out / ".capshard" / "ahead"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(len(list(r.glob("*.tar.json"))) >= 5 for r in records):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the build finished before it could be killed; make it bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists() and (out / ".capshard.lock").exists()


@pytest.mark.parametrize("passes", ["--one-pass", "--two-pass"])
def test_a_killed_build_can_be_replaced_or_resumed(tmp_path: Path, passes: str) -> None:
    spec = source(tmp_path, 240)
    clean = {s: tmp_path / f"clean-{s}" for s in ("0", "1")}
    for seed, folder in clean.items():
        done = subprocess.run(cli(spec, folder, "--seed", seed), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    out = tmp_path / "killed"

    kill_mid_write(cli(spec, out, passes), out)
    other = subprocess.run(cli(spec, out, "--seed", "1"), capture_output=True, text=True, timeout=300)
    assert other.returncode == 1
    assert "taking over the lock left by capshard build" in other.stderr
    assert other.stderr.strip().splitlines()[-1] == (
        f"capshard: error: {out} holds an unfinished build of different input or options (seed: 0 -> 1); "
        "pass --overwrite to start over from the current input, or restore that input to finish it")
    replaced = subprocess.run(cli(spec, out, "--seed", "1", "--overwrite"), capture_output=True, text=True,
                              timeout=300)
    assert replaced.returncode == 0, replaced.stderr
    assert snapshot(out) == snapshot(clean["1"])

    kill_mid_write(cli(spec, out, "--overwrite", passes), out)
    resumed = subprocess.run(cli(spec, out), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(f"finished (resumed) {out}")
    assert snapshot(out) == snapshot(clean["0"])


def test_overwrite_after_an_interrupted_hash_run(tmp_path: Path) -> None:
    """``capshard hash`` killed midway leaves its parts folder; --overwrite removes it with
    the rest of the build instead of failing on a folder."""
    spec = source(tmp_path)
    out = tmp_path / "b"
    build(spec, config(out))
    (out / ".capshard-hash").mkdir()
    (out / ".capshard-hash" / "train-000000.tar.0123.parquet").write_bytes(b"part")
    assert build(spec, config(out, overwrite=True, seed=1)).status == "built"
    assert not (out / ".capshard-hash").exists()
    assert verify(out).ok


def test_hash_refuses_a_foreign_sidecar_and_records_its_own(tmp_path: Path) -> None:
    from pipeline.hashes import hash_build

    spec = source(tmp_path)
    out = tmp_path / "b"
    build(spec, config(out))
    (out / "phash.parquet").write_bytes(b"the user's own file")
    with pytest.raises(OutputError, match=r"phash\.parquet was not written by capshard"):
        hash_build(out)
    assert (out / "phash.parquet").read_bytes() == b"the user's own file"
    (out / "phash.parquet").unlink()
    hash_build(out)
    assert not (out / ".capshard").exists()  # the ledger went once the manifest listed the sidecar
    assert build(spec, config(out, overwrite=True, seed=1)).status == "built"  # the sidecar is capshard's
    assert not (out / "phash.parquet").exists()
