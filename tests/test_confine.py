"""Confinement by real paths: symlinks cannot lead a build out of the image folder.

Every hostile target here is a FIFO unless the test says otherwise: opening one for reading
blocks until a writer comes, so a build that opened it would hang. Builds run as
subprocesses with a timeout and reader calls under ``pytest.mark.timeout``, so a
regression fails instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synth import caption_text, coco_json, image_bytes, write_images

import pipeline
from pipeline.readers import ImageUnavailable, Reader, SourceSpec
from pipeline.readers.coco import CocoReader
from pipeline.readers.flickr import FlickrReader
from pipeline.readers.hf import HFReader
from pipeline.readers.karpathy import KarpathyReader
from pipeline.readers.table import TableReader

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX symlinks and FIFOs")

GOOD = ["ok0.jpg", "ok1.jpg", "ok2.jpg", "ok3.jpg", "sub/ok4.jpg"]
#: Names in the annotations -> reject reason without --follow-symlinks (None: stored).
HOSTILE: dict[str, str | None] = {
    "alias.jpg": None,  # -> store/inside.jpg: a symlink that stays inside is fine
    "evil2.jpg": "path_outside_images",  # -> ../outside/secret.jpg
    "linkdir/x.jpg": "path_outside_images",  # linkdir -> ../outside/sub
    "evil.jpg": "path_outside_images",  # -> /etc/hostname
    "pipe.jpg": "not_a_file",  # a FIFO inside the folder
    "folder.jpg": "not_a_file",  # a directory
}
NAMES = GOOD + list(HOSTILE)
OUTSIDE_SECRET = image_bytes(501)
OUTSIDE_SUB = image_bytes(502)
INSIDE = image_bytes(503)
#: The CLI runs in tmp_path: it must import this checkout's ``pipeline``, whatever is installed.
ENV = {**os.environ, "PYTHONPATH": str(Path(pipeline.__file__).resolve().parents[1])}


def hostile_folder(root: Path, folder: str = "images", *, fifo_targets: bool = True) -> Path:
    """``root/folder`` holding GOOD images and the HOSTILE names; ``root/outside`` their targets."""
    images = root / folder
    write_images(images, GOOD)
    outside = root / "outside"
    (outside / "sub").mkdir(parents=True)
    for target, data in ((outside / "secret.jpg", OUTSIDE_SECRET), (outside / "sub" / "x.jpg", OUTSIDE_SUB)):
        if fifo_targets:
            os.mkfifo(target)
        else:
            target.write_bytes(data)
    (images / "store").mkdir()
    (images / "store" / "inside.jpg").write_bytes(INSIDE)
    os.symlink("store/inside.jpg", images / "alias.jpg")
    os.symlink(os.path.relpath(outside / "secret.jpg", images), images / "evil2.jpg")  # ../outside/secret.jpg
    os.symlink(os.path.relpath(outside / "sub", images), images / "linkdir", target_is_directory=True)
    os.symlink("/etc/hostname", images / "evil.jpg")
    os.mkfifo(images / "pipe.jpg")
    (images / "folder.jpg").mkdir()
    return images


def capshard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI; a build that blocks on a FIFO fails the test instead of hanging it."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"capshard {' '.join(args)} hung (it opened a FIFO?)")


def stored_images(out: Path) -> dict[str, bytes]:
    """image_id -> image bytes over every shard of a build."""
    found: dict[str, bytes] = {}
    for shard in sorted(out.glob("*.tar")):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()  # type: ignore[union-attr]
        for sample in members.values():
            found[json.loads(sample["json"])["image_id"]] = sample["jpg"]
    return found


def rejects_of(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def token_file(path: Path, names: list[str]) -> None:
    """A Flickr token file, two captions per image (line 2i+1 and 2i+2 name ``names[i]``)."""
    path.write_text("".join(f"{name}#{n}\t{caption_text(i, n)}\n" for i, name in enumerate(names) for n in range(2)))


def check_build(cwd: Path, out: str, names: list[str], expected: dict[str, str | None], images: Path) -> None:
    """Every row accounted for: stored with its own bytes, or in rejects.jsonl with its reason; verify passes."""
    manifest = json.loads((cwd / out / "manifest.json").read_text())
    rejects = rejects_of(cwd / out)
    by_line = {int(str(r["location"]).rsplit(":", 1)[1]): r for r in rejects}
    assert len(by_line) == len(rejects)
    got_reasons = {names[(line - 1) // 2]: r["reason"] for line, r in by_line.items()}
    assert got_reasons == {n: reason for n, reason in expected.items() if reason is not None}
    stored = stored_images(cwd / out)
    kept = [n for n in names if expected.get(n) is None]
    assert manifest["counts"]["rows"] == 2 * len(names)
    assert manifest["counts"]["captions"] + manifest["counts"]["rejected_rows"] == 2 * len(names)
    assert len(rejects) == manifest["counts"]["rejected_rows"]
    assert len(stored) == len(kept)
    assert sorted(stored.values()) == sorted((images / n).read_bytes() for n in kept)
    checked = capshard("verify", out, cwd=cwd)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- the real CLI ------------------------------------------------------------------------------


def test_cli_rejects_symlinks_out_of_images_without_opening_them(tmp_path: Path) -> None:
    images = hostile_folder(tmp_path)
    token_file(tmp_path / "captions.token", NAMES)
    proc = capshard(
        "build", "captions.token", "--format", "flickr", "--images", "images", "--out", "out",
        "--max-reject-fraction", "1", "--workers", "2", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    check_build(tmp_path, "out", NAMES, HOSTILE, images)
    details = {str(r["detail"]) for r in rejects_of(tmp_path / "out")}
    assert any("through a symlink to" in d and "--follow-symlinks" in d for d in details), details
    assert any("is a FIFO, not a regular file" in d for d in details), details
    assert any("is a directory, not a regular file" in d for d in details), details
    # Nothing read them: each FIFO would have blocked its reader; none was ever given a writer.
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"]["reading"]["follow_symlinks"] is False


def test_cli_follow_symlinks_reads_outside_regular_targets(tmp_path: Path) -> None:
    images = hostile_folder(tmp_path, fifo_targets=False)
    names = [n for n in NAMES if n != "evil.jpg"]  # /etc/hostname's content depends on the machine
    token_file(tmp_path / "captions.token", names)
    proc = capshard(
        "build", "captions.token", "--format", "flickr", "--images", "images", "--out", "out",
        "--max-reject-fraction", "1", "--follow-symlinks", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    expected = {**HOSTILE, "evil2.jpg": None, "linkdir/x.jpg": None}
    del expected["evil.jpg"]
    check_build(tmp_path, "out", names, expected, images)
    stored = set(stored_images(tmp_path / "out").values())
    assert {OUTSIDE_SECRET, OUTSIDE_SUB, INSIDE} <= stored
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"]["reading"]["follow_symlinks"] is True
    # The option is part of the build's identity: the same build without it is a different build.
    again = capshard(
        "build", "captions.token", "--format", "flickr", "--images", "images", "--out", "out",
        "--max-reject-fraction", "1", cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode != 0 and "up to date" not in again.stdout


def test_cli_table_relative_paths_are_confined_to_the_table_folder(tmp_path: Path) -> None:
    data = hostile_folder(tmp_path, "data")
    lines = ["image,caption"] + [f"{name},{caption_text(i, 0)}" for i, name in enumerate(NAMES)]
    (data / "pairs.csv").write_text("\n".join(lines) + "\n")
    proc = capshard(
        "build", "data/pairs.csv", "--format", "table", "--out", "out", "--max-reject-fraction", "1", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    rejects = rejects_of(tmp_path / "out")
    # CSV locations are pairs.csv:LINE with the header on line 1.
    got = {NAMES[int(str(r["location"]).rsplit(":", 1)[1]) - 2]: r["reason"] for r in rejects}
    assert got == {n: reason for n, reason in HOSTILE.items() if reason is not None}
    assert len(stored_images(tmp_path / "out")) == len(GOOD) + 1


def test_cli_follow_symlinks_still_never_opens_a_fifo(tmp_path: Path) -> None:
    hostile_folder(tmp_path)
    names = [*GOOD, "evil2.jpg", "linkdir/x.jpg"]
    token_file(tmp_path / "captions.token", names)
    proc = capshard(
        "build", "captions.token", "--format", "flickr", "--images", "images", "--out", "out",
        "--max-reject-fraction", "1", "--follow-symlinks", "--workers", "1", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert {str(r["reason"]) for r in rejects_of(tmp_path / "out")} == {"not_a_file"}
    assert len(rejects_of(tmp_path / "out")) == 4  # two images, two captions each


# --- every reader that reads files: one rule, in Reader.checked_image_path ---------------------


def flickr(root: Path) -> Reader:
    images = hostile_folder(root)
    token_file(root / "captions.token", NAMES)
    return FlickrReader(SourceSpec(path=str(root / "captions.token"), images=images))


def coco(root: Path) -> Reader:
    images = hostile_folder(root)
    coco_json(
        root / "captions_val2017.json",
        list(enumerate(NAMES)),
        [(100 + i, i, caption_text(i, 0)) for i in range(len(NAMES))],
    )
    return CocoReader(SourceSpec(path=str(root / "captions_val2017.json"), images=images))


def karpathy(root: Path) -> Reader:
    images = hostile_folder(root)
    entries = [
        {"imgid": i, "filename": n, "split": "train", "sentences": [{"raw": caption_text(i, 0), "sentid": i}]}
        for i, n in enumerate(NAMES)
    ]
    (root / "dataset_flickr8k.json").write_text(json.dumps({"images": entries, "dataset": "flickr8k"}))
    return KarpathyReader(SourceSpec(path=str(root / "dataset_flickr8k.json"), images=images))


def jsonl_relative(root: Path) -> Reader:
    """No --images: paths are relative to the table, whose folder is the root."""
    data = hostile_folder(root, "data")
    lines = [json.dumps({"image": n, "caption": caption_text(i, 0)}) for i, n in enumerate(NAMES)]
    (data / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return TableReader(SourceSpec(path=str(data / "pairs.jsonl")))


def parquet_with_images(root: Path) -> Reader:
    images = hostile_folder(root)
    table = pa.table({"image": NAMES, "caption": [caption_text(i, 0) for i in range(len(NAMES))]})
    pq.write_table(table, root / "pairs.parquet")
    return TableReader(SourceSpec(path=str(root / "pairs.parquet"), images=images))


def hf_saved_relative(root: Path) -> Reader:
    """No --images: paths are relative to the save_to_disk folder, which is the root."""
    ds = datasets.Dataset.from_dict({"image": NAMES, "caption": [caption_text(i, 0) for i in range(len(NAMES))]})
    ds.save_to_disk(str(root / "ds"))
    hostile_folder(root, "ds")
    return HFReader(SourceSpec(path=str(root / "ds")))


READERS: dict[str, Callable[[Path], Reader]] = {
    "flickr": flickr,
    "coco": coco,
    "karpathy": karpathy,
    "jsonl_relative": jsonl_relative,
    "parquet_images": parquet_with_images,
    "hf_saved_relative": hf_saved_relative,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", sorted(READERS))
def test_every_file_reader_confines_by_real_path(fmt: str, tmp_path: Path) -> None:
    reader = READERS[fmt](tmp_path)
    owner = {caption_text(i, n): name for i, name in enumerate(NAMES) for n in range(2)}
    rows = [r for b in reader.read() for r in b.to_pylist()]
    assert {owner[r["caption"]] for r in rows} == set(NAMES)
    outcome: dict[str, str] = {}
    for row in rows:
        name = owner[row["caption"]]
        try:
            data = reader.open_image(row["image_path"], row["image_index"])
        except ImageUnavailable as e:
            outcome[name] = e.reason
        else:
            outcome[name] = "read"
            assert data == (INSIDE if name == "alias.jpg" else image_bytes(GOOD.index(name)))
    assert outcome == {**{n: "read" for n in GOOD}, **{n: r or "read" for n, r in HOSTILE.items()}}


@pytest.mark.timeout(60)
def test_dotdot_stays_refused_with_follow_symlinks(tmp_path: Path) -> None:
    images = hostile_folder(tmp_path, fifo_targets=False)
    reader = FlickrReader(SourceSpec(path=str(tmp_path / "t.token"), images=images, follow_symlinks=True))
    with pytest.raises(ImageUnavailable) as err:
        reader.open_image(str(images / ".." / "outside" / "secret.jpg"), None)
    assert err.value.reason == "path_outside_images"
    assert reader.open_image(str(images / "evil2.jpg"), None) == OUTSIDE_SECRET


@pytest.mark.timeout(60)
def test_images_folder_that_is_itself_a_symlink_is_the_users_choice(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "images"
    write_images(real, ["a.jpg"])
    os.symlink(real, tmp_path / "images", target_is_directory=True)
    reader = FlickrReader(SourceSpec(path=str(tmp_path / "t.token"), images=tmp_path / "images"))
    assert reader.open_image(str(tmp_path / "images" / "a.jpg"), None) == image_bytes(0)


@pytest.mark.timeout(60)
def test_links_through_links_are_resolved_to_the_end(tmp_path: Path) -> None:
    images = hostile_folder(tmp_path, fifo_targets=False)
    os.symlink("store", images / "in")  # inside, to a folder...
    os.symlink("../../outside/secret.jpg", images / "store" / "out.jpg")  # ...holding a link out
    os.symlink("store/../../outside/sub", images / "dotted")  # a target that climbs with ..
    os.symlink("loop", images / "loop")
    reader = FlickrReader(SourceSpec(path=str(tmp_path / "t.token"), images=images))
    for name in ("in/out.jpg", "store/out.jpg", "dotted/x.jpg"):
        with pytest.raises(ImageUnavailable) as err:
            reader.open_image(str(images / name), None)
        assert err.value.reason == "path_outside_images", name
    assert reader.open_image(str(images / "in" / "inside.jpg"), None) == INSIDE
    with pytest.raises(ImageUnavailable) as err:
        reader.open_image(str(images / "loop"), None)
    assert err.value.reason == "unreadable_image"  # ELOOP: a loop is not followed forever either
