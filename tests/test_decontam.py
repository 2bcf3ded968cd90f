"""``build --phash / --exclude-near / --on-near-leak``: evaluation images kept out, every row accounted for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imagehash
import pyarrow.parquet as pq
import pytest
from PIL import Image
from synth import TRANSFORMS, encode, photo_csv, photo_like
from test_overlap import capshard

from pipeline.phash import hex_hash

SIZE = (160, 120)


def photo(seed: int, transform: str | None = None) -> bytes:
    img = photo_like(seed, SIZE)
    return encode(TRANSFORMS[transform](img) if transform else img)


def cli_build(
    root: Path, images: list[tuple[str, str, bytes]], *args: str
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    csv = photo_csv(root / "src", images)
    out = root / "out"
    result = capshard(
        "build",
        str(csv),
        "--images",
        str(root / "src" / "images"),
        "--split-column",
        "split",
        "--out",
        str(out),
        "--workers",
        "1",
        "--max-reject-fraction",
        "1",
        *args,
    )
    return out, result


@pytest.fixture(scope="module")
def eval_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    out, result = cli_build(root, [(f"x{s}.jpg", "test", photo(s)) for s in (200, 201, 202, 203)], "--phash")
    assert result.returncode == 0, result.stderr
    return out


def test_phash_column_equals_imagehash(eval_build: Path) -> None:
    index = pq.read_table(eval_build / "index.parquet").to_pylist()
    assert len(index) == 4
    for row in index:
        shard_img = Image.open(eval_build.parent / "src" / "images" / row["image_id"])
        assert hex_hash(row["phash"]) == str(imagehash.phash(shard_img))


#: Training rows: 6 distinct photos, 3 copies of eval images (one byte-identical), 1 eval-split image.
TRAIN = (
    [(f"p{s}.jpg", "train", photo(s)) for s in range(6)]
    + [
        ("e200.jpg", "train", photo(200, "jpeg60")),
        ("e201.jpg", "train", photo(201, "resize50")),
        ("e203.jpg", "train", photo(203)),
    ]
    + [("v202.jpg", "val", photo(202, "jpeg95"))]
)


def test_exclude_near_rejects_exactly_the_contaminated_training_images(eval_build: Path, tmp_path: Path) -> None:
    out, result = cli_build(tmp_path, TRAIN, "--exclude-near", str(eval_build))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"rows": 10, "images": 7, "captions": 7, "rejected_rows": 3}
    assert manifest["rejects"]["by_reason"] == {"near_duplicate_of_eval": 3}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["location"] for r in rejects] == ["captions.csv:8", "captions.csv:9", "captions.csv:10"]
    details = {r["location"]: r["detail"] for r in rejects}
    assert f"of image 'x200.jpg' (test) of build {eval_build}" in details["captions.csv:8"]
    assert "of image 'x203.jpg'" in details["captions.csv:10"] and "distance 0" in details["captions.csv:10"]
    # The val image is an evaluation split: kept, although it is a copy of an eval image.
    ids = {r["image_id"] for r in pq.read_table(out / "index.parquet").to_pylist()}
    assert ids == {f"p{s}.jpg" for s in range(6)} | {"v202.jpg"}
    assert manifest["resolution"]["near_duplicates"]["near_duplicate_of_eval"] == 3
    assert sorted(manifest["groups"]["captions_per_image"].values()) == [7]
    verified = capshard("verify", str(out))
    assert verified.returncode == 0, verified.stdout
    overlap = json.loads(capshard("overlap", str(out), str(eval_build), "--json").stdout)
    assert [p["a"]["image_id"] for p in overlap["pairs"] if p["scope"] == "contamination"] == ["v202.jpg"]


def test_exclude_near_needs_hashes_of_the_named_build(tmp_path: Path) -> None:
    plain, result = cli_build(tmp_path / "plain", [("x.jpg", "test", photo(1))])
    assert result.returncode == 0
    _, result = cli_build(tmp_path / "b", TRAIN[:2], "--exclude-near", str(plain))
    assert result.returncode == 2
    assert f"run `capshard hash {plain}`" in result.stderr


LEAKY = [("a.jpg", "test", photo(400)), ("b.jpg", "train", photo(400, "resize50")), ("c.jpg", "train", photo(401))]


def test_near_leak_report_counts_pairs_in_the_manifest(tmp_path: Path) -> None:
    out, result = cli_build(tmp_path, LEAKY, "--phash")
    assert result.returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resolution"]["near_duplicates"]["near_leaks"] == 1
    assert manifest["counts"]["images"] == 3


def test_near_leak_reject_keeps_the_evaluation_copy(tmp_path: Path) -> None:
    out, result = cli_build(tmp_path, LEAKY, "--phash", "--on-near-leak", "reject")
    assert result.returncode == 0
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["location"], r["reason"]) for r in rejects] == [("captions.csv:3", "near_leak")]
    assert capshard("verify", str(out)).returncode == 0


def test_near_leak_fail_names_the_pair(tmp_path: Path) -> None:
    _, result = cli_build(tmp_path, LEAKY, "--phash", "--on-near-leak", "fail")
    assert result.returncode == 1
    assert "1 near-duplicate pairs across splits" in result.stderr
    assert "a.jpg (test) ~ b.jpg (train)" in result.stderr


def test_exclude_near_may_not_name_the_builds_own_out(tmp_path: Path) -> None:
    """With --overwrite the clean-up would delete the very index --exclude-near reads."""
    first = subprocess.run([sys.executable, "-m", "pipeline", "build", "--sample-images", "12", "--out", "o"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "build", "--sample-images", "12", "--out", "o", "--overwrite",
         "--exclude-near", "./o"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "capshard: error: --exclude-near o is this build's own --out; name an evaluation build")
    assert (tmp_path / "o" / "index.parquet").is_file()
