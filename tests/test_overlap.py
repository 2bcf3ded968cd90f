"""``capshard hash`` and ``capshard overlap``: leaks, duplicates and contamination found, shards untouched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from browser import dump_dom, render
from PIL import Image
from synth import TRANSFORMS, encode, photo_csv, photo_like

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.readers import SourceSpec

SIZE = (160, 120)


def capshard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def photo(seed: int, transform: str | None = None) -> bytes:
    img = photo_like(seed, SIZE)
    return encode(TRANSFORMS[transform](img) if transform else img)


def make_build(root: Path, images: list[tuple[str, str, bytes]], **options: object) -> Path:
    csv = photo_csv(root / "src", images)
    out = root / "out"
    build(
        SourceSpec(path=str(csv), images=root / "src" / "images", split_column="split"),
        BuildConfig(out=out, format="table", workers=1, **options),
    )  # type: ignore[arg-type]
    return out


#: Eval build: four test images. Main build: ten distinct training photos, three test photos,
#: copies of those test photos in train (leaks), one duplicate within train, and copies of
#: eval images in train (two near, one byte-identical: contamination).
EXPECTED = {
    ("leak", "near", "c100", "t100"),
    ("leak", "near", "c101", "t101"),
    ("leak", "near", "c102", "t102"),
    ("dup", "near", "d5", "p5"),
    ("contamination", "near", "e200", "x200"),
    ("contamination", "near", "e201", "x201"),
    ("contamination", "exact", "e203", "x203"),
}


def eval_images() -> list[tuple[str, str, bytes]]:
    return [(f"x{s}.jpg", "test", photo(s)) for s in (200, 201, 202, 203)]


def main_images() -> list[tuple[str, str, bytes]]:
    return (
        [(f"p{s}.jpg", "train", photo(s)) for s in range(10)]
        + [(f"t{s}.jpg", "test", photo(s)) for s in (100, 101, 102)]
        + [
            ("c100.jpg", "train", photo(100, "resize50")),
            ("c101.jpg", "train", photo(101, "jpeg60")),
            ("c102.jpg", "train", photo(102, "brightness")),
            ("d5.jpg", "train", photo(5, "resize50")),
            ("e200.jpg", "train", photo(200, "jpeg95")),
            ("e201.jpg", "train", photo(201, "crop2")),
            ("e203.jpg", "train", photo(203)),
        ]
    )


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("overlap")
    return make_build(root / "main", main_images()), make_build(root / "eval", eval_images())


@pytest.fixture(scope="module")
def hashed(builds: tuple[Path, Path]) -> tuple[Path, Path]:
    for b in builds:
        result = capshard("hash", str(b), "--workers", "2")
        assert result.returncode == 0, result.stderr
    return builds


def shard_digests(build_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(build_dir.glob("*.tar"))}


def stem(image_id: str) -> str:
    return image_id.split(".")[0]


def found(payload: dict) -> set[tuple[str, str, str, str]]:
    out = set()
    for p in payload["pairs"]:
        a, b = stem(p["a"]["image_id"]), stem(p["b"]["image_id"])
        if p["scope"] != "contamination":
            a, b = sorted((a, b))
        out.add((p["scope"], p["kind"], a, b))
    return out


def test_overlap_without_hashes_names_the_fix(builds: tuple[Path, Path], tmp_path: Path) -> None:
    plain = make_build(tmp_path, eval_images())
    result = capshard("overlap", str(plain))
    assert result.returncode == 2
    assert f"run `capshard hash {plain}`" in result.stderr and "Traceback" not in result.stderr
    exact = capshard("overlap", str(plain), "--exact-only", "--json")
    assert exact.returncode == 0 and json.loads(exact.stdout)["pairs"] == []


def test_hash_writes_a_listed_sidecar_and_leaves_every_shard_byte(tmp_path: Path) -> None:
    out = make_build(tmp_path, main_images())
    before = shard_digests(out)
    result = capshard("hash", str(out), "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "hashed 20 images of 2 shards" in result.stdout
    assert shard_digests(out) == before
    manifest = json.loads((out / "manifest.json").read_text())
    listed = manifest["sidecars"]["phash"]
    assert listed["file"] == "phash.parquet" and listed["images"] == 20
    assert hashlib.sha256((out / "phash.parquet").read_bytes()).hexdigest() == listed["sha256"]
    assert capshard("verify", str(out)).returncode == 0
    assert not (out / ".capshard-hash").exists()
    again = capshard("hash", str(out))
    assert again.returncode == 0 and "(2 shards from an earlier run)" in again.stdout
    assert shard_digests(out) == before


def test_hash_resumes_from_the_shards_already_hashed(tmp_path: Path) -> None:
    out = make_build(tmp_path, eval_images())
    digest = json.loads((out / "manifest.json").read_text())["splits"]["test"]["shards"][0]["sha256"]
    parts = out / ".capshard-hash"
    parts.mkdir()
    # A part left by an interrupted run (marked with a hash value no image has): reused, not recomputed.
    pq.write_table(
        pa.table({"key": ["x200"], "phash": [7], "phash_flip": pa.nulls(1, pa.int64())}),
        parts / f"test-000000.tar.{digest[:16]}.parquet",
    )
    result = capshard("hash", str(out))
    assert result.returncode == 0 and "(1 shards from an earlier run)" in result.stdout
    assert pq.read_table(out / "phash.parquet").to_pylist()[0]["phash"] == 7


def test_overlap_finds_leaks_dups_and_contamination(hashed: tuple[Path, Path]) -> None:
    main, other = hashed
    result = capshard("overlap", str(main), str(other), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert found(payload) == EXPECTED  # and nothing else: the distinct photos give no pair
    assert payload["counts"] == {"leak": 3, "dup": 1, "contamination": 3}
    leak = next(p for p in payload["pairs"] if p["scope"] == "leak")
    assert {leak["a"]["split"], leak["b"]["split"]} == {"train", "test"}
    assert leak["a"]["shard"].endswith(".tar") and 0 <= leak["distance"] <= 8
    text = capshard("overlap", str(main), str(other)).stdout
    assert "3 leak, 1 dup, 3 contamination pairs" in text


def test_threshold_zero_keeps_only_identical_hashes(hashed: tuple[Path, Path]) -> None:
    main, other = hashed
    payload = json.loads(capshard("overlap", str(main), str(other), "--threshold", "0", "--json").stdout)
    assert all(p["distance"] == 0 for p in payload["pairs"])
    assert ("contamination", "exact", "e203", "x203") in found(payload)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--fail-on", "leak"], 1, "3 leak pairs found (--fail-on leak)"),
        (["--fail-on", "any"], 1, "7 pairs found (--fail-on any)"),
        (["--fail-on", "contamination"], 1, "3 contamination pairs found"),
    ],
)
def test_fail_on_exits_1(hashed: tuple[Path, Path], args: list[str], code: int, message: str) -> None:
    main, other = hashed
    result = capshard("overlap", str(main), str(other), *args)
    assert result.returncode == code and message in result.stderr


def test_fail_on_contamination_passes_a_clean_pair_of_builds(hashed: tuple[Path, Path]) -> None:
    other = hashed[1]
    assert capshard("overlap", str(other), "--fail-on", "contamination").returncode == 0
    assert capshard("overlap", str(other), "--fail-on", "any").returncode == 0


def test_flip_matches_mirrored_copies(tmp_path: Path) -> None:
    images = [("a.jpg", "test", photo(300)), ("b.jpg", "train", photo(300, "flip")), ("c.jpg", "train", photo(301))]
    out = make_build(tmp_path, images)
    assert capshard("hash", str(out), "--flip").returncode == 0
    unflipped = make_build(tmp_path / "unflipped", images)
    assert capshard("hash", str(unflipped)).returncode == 0
    refused = capshard("overlap", str(unflipped), "--flip")
    assert refused.returncode == 2 and f"run `capshard hash {unflipped} --flip`" in refused.stderr
    plain = json.loads(capshard("overlap", str(out), "--json").stdout)
    assert plain["pairs"] == []  # pHash does not survive a mirror (documented)
    mirrored = json.loads(capshard("overlap", str(out), "--flip", "--json").stdout)
    assert [(p["scope"], p["flipped"]) for p in mirrored["pairs"]] == [("leak", True)]


def test_html_shows_each_pair_with_loaded_thumbnails(hashed: tuple[Path, Path], tmp_path: Path) -> None:
    main, other = hashed
    page = tmp_path / "overlap.html"
    assert capshard("overlap", str(main), str(other), "--html", str(page)).returncode == 0
    dom = dump_dom(page)
    assert 'data-thumbnails="loaded"' in dom
    assert dom.count('<tr class="pair') == 7
    for _, _, a, b in EXPECTED:
        assert a in dom and b in dom
    png = render(page, tmp_path / "overlap.png")
    with Image.open(png) as shot:
        extrema = shot.convert("L").getextrema()
    assert extrema[1] - extrema[0] > 100  # not a blank page: thumbnails and text drawn
