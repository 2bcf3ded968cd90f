"""Builds over the real published annotation files in ../shared/data/real.

The images themselves are not published there, so each test writes one distinct
placeholder JPEG per file name the annotations expect, in the real folder layout.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from synth import REAL_DATA, write_images

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.readers import SourceSpec

pytestmark = pytest.mark.skipif(
    not REAL_DATA.is_dir(), reason=f"real annotation files not present at {REAL_DATA} (they ship beside the repo in CI)"
)


def flickr8k_names() -> list[str]:
    names = []
    for line in (REAL_DATA / "Flickr8k.token.txt").read_text().splitlines():
        name = line.split("#", 1)[0]
        if name not in names[-1:]:
            names.append(name)
    return list(dict.fromkeys(names))


@pytest.fixture(scope="module")
def flickr8k_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Flicker8k_Dataset/ as published: 8,091 JPEGs (the phantom `.jpg.1` key has no file)."""
    folder = tmp_path_factory.mktemp("flickr8k") / "Flicker8k_Dataset"
    write_images(folder, [n for n in flickr8k_names() if n.endswith(".jpg")])
    return folder


def captions_per_image(out: Path) -> dict[str, list[str]]:
    result = {}
    for shard in out.glob("*.tar"):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    f = tar.extractfile(m)
                    assert f is not None
                    meta = json.loads(f.read())
                    result[meta["image_id"]] = meta["captions"]
    return result


@pytest.mark.slow
def test_flickr8k_token_file_with_split_lists(tmp_path: Path, flickr8k_images: Path) -> None:
    assert len(list(flickr8k_images.iterdir())) == 8091
    spec = SourceSpec(
        path=str(REAL_DATA / "Flickr8k.token.txt"),
        images=flickr8k_images,
        split_files=(
            ("train", REAL_DATA / "Flickr_8k.trainImages.txt"),
            ("val", REAL_DATA / "Flickr_8k.devImages.txt"),
            ("test", REAL_DATA / "Flickr_8k.testImages.txt"),
        ),
    )
    m = build(spec, BuildConfig(out=tmp_path / "b", workers=2)).manifest
    assert m["source"]["format"] == "flickr"
    assert m["counts"] == {"rows": 40460, "images": 8000, "captions": 40000, "rejected_rows": 460}
    assert {s: v["images"] for s, v in m["splits"].items()} == {"train": 6000, "val": 1000, "test": 1000}
    assert m["groups"]["captions_per_image"] == {"5": 8000}
    assert m["rejects"]["by_reason"] == {"not_in_split_lists": 460}
    assert [len(v["shards"]) for _, v in sorted(m["splits"].items())] == [1, 6, 1]
    captions = captions_per_image(tmp_path / "b")
    # Within-image duplicates are kept (#2 and #3 of this image are the same sentence).
    dup = captions["2305437797_e6c3460190.jpg"]
    assert len(dup) == 5 and dup[2] == dup[3]


@pytest.mark.slow
def test_flickr8k_without_split_lists_rejects_the_phantom_key(tmp_path: Path, flickr8k_images: Path) -> None:
    spec = SourceSpec(path=str(REAL_DATA / "Flickr8k.token.txt"), images=flickr8k_images)
    m = build(spec, BuildConfig(out=tmp_path / "b", workers=2)).manifest
    assert m["counts"] == {"rows": 40460, "images": 8091, "captions": 40455, "rejected_rows": 5}
    rejects = [json.loads(line) for line in (tmp_path / "b" / "rejects.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in rejects} == {"missing_image"}
    assert all("2258277193_586949ec62.jpg.1" in r["detail"] for r in rejects)
    assert [r["location"] for r in rejects] == [f"Flickr8k.token.txt:{n}" for n in range(6731, 6736)]


@pytest.mark.slow
def test_kaggle_captions_csv(tmp_path: Path, flickr8k_images: Path) -> None:
    spec = SourceSpec(path=str(REAL_DATA / "captions.txt"), images=flickr8k_images)
    m = build(spec, BuildConfig(out=tmp_path / "b", workers=2)).manifest
    assert m["counts"] == {"rows": 40455, "images": 8091, "captions": 40455, "rejected_rows": 0}
    assert m["groups"]["captions_per_image"] == {"5": 8091}
    captions = captions_per_image(tmp_path / "b")
    assert captions["1012212859_01547e3f17.jpg"][0] == "A dog shakes its head near the shore , a red ball next to it ."


@pytest.mark.slow
def test_coco_val2017(tmp_path: Path) -> None:
    doc = json.loads((REAL_DATA / "captions_val2017.json").read_text())
    images = tmp_path / "val2017"
    write_images(images, sorted(i["file_name"] for i in doc["images"]))
    spec = SourceSpec(path=str(REAL_DATA / "captions_val2017.json"), images=images)
    m = build(spec, BuildConfig(out=tmp_path / "b", workers=2)).manifest
    assert m["counts"] == {"rows": 25014, "images": 5000, "captions": 25014, "rejected_rows": 0}
    assert m["groups"]["captions_per_image"] == {"5": 4987, "6": 12, "7": 1}
    assert m["splits"]["val"]["images"] == 5000
    captions = captions_per_image(tmp_path / "b")
    assert len(captions["431896"]) == 7
    # Surrounding whitespace is stripped; the one embedded newline is kept in the JSON.
    assert all(c == c.strip() for cs in captions.values() for c in cs)
    assert any("cut\n." in c for c in captions["359219"])
