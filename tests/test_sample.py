"""The embedded sample: schema, counts, determinism, distinct images, truthful captions."""

from __future__ import annotations

import hashlib
import io
from collections import Counter

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from synth import nlphuji_dataset

from pipeline.sample import BACKGROUNDS, COLOURS, SHAPES, sample_dataset


@pytest.fixture(scope="module")
def sample() -> datasets.Dataset:
    return sample_dataset()


def _raw(ds: datasets.Dataset) -> datasets.Dataset:
    return ds.cast_column("image", datasets.Image(decode=False))


def test_schema_is_the_nlphuji_flickr30k_one(sample: datasets.Dataset) -> None:
    reference = nlphuji_dataset(3)
    assert sample.features == reference.features
    assert str(sample.split) == "test"


def test_counts_and_splits(sample: datasets.Dataset) -> None:
    assert sample.num_rows == 300
    assert all(len(c) == 5 for c in sample["caption"])
    assert all(len(s) == 5 for s in sample["sentids"])
    assert len({s for ids in sample["sentids"] for s in ids}) == 1500
    assert Counter(sample["split"]) == {"train": 240, "val": 30, "test": 30}
    assert len(set(sample["img_id"])) == 300
    assert sample[123]["filename"] == "sample_000123.png"


def test_image_path_is_the_file_name_and_bytes_are_png(sample: datasets.Dataset) -> None:
    raw = _raw(sample)
    for row in raw.select(range(10)):
        assert row["image"]["path"] == row["filename"]
        with Image.open(io.BytesIO(row["image"]["bytes"])) as img:
            assert img.format == "PNG"
            assert img.size == (64, 64)
            assert img.mode == "RGB"


def test_same_arguments_give_the_same_bytes() -> None:
    a, b = _raw(sample_dataset(60, seed=3)), _raw(sample_dataset(60, seed=3))
    assert a.to_dict() == b.to_dict()
    assert a.data.to_pydict() == b.data.to_pydict()


def test_another_seed_gives_another_dataset() -> None:
    a, b = _raw(sample_dataset(20, seed=0)), _raw(sample_dataset(20, seed=1))
    assert a["caption"] != b["caption"]


def test_every_image_is_distinct_in_bytes() -> None:
    # More images than attribute combinations: distinctness then rests on the jitter.
    raw = _raw(sample_dataset(1500))
    digests = {hashlib.sha256(img["bytes"]).hexdigest() for img in raw["image"]}
    assert len(digests) == 1500


def test_captions_name_the_colour_and_shape_shown(sample: datasets.Dataset) -> None:
    for row in sample.select(range(60)):
        pixels = row["image"].convert("RGB").getcolors(64 * 64)
        shown = {rgb for _, rgb in pixels}
        colours = [name for name, rgb in COLOURS.items() if rgb in shown]
        backgrounds = [name for name, rgb in BACKGROUNDS.items() if rgb in shown]
        assert len(colours) == 1 and len(backgrounds) == 1, row["filename"]
        words = [set(c.replace(",", "").split()) for c in row["caption"]]
        shapes = {s for s in SHAPES if all(s in w for w in words)}
        assert len(shapes) == 1, row["caption"]
        for caption_words in words:
            assert colours[0] in caption_words, row["caption"]
            assert not (caption_words & (set(COLOURS) - {colours[0]})), row["caption"]
        assert len(set(row["caption"])) == 5


def test_captions_name_the_shape_drawn() -> None:
    # The shape word agrees with the pixels: a circle fills about pi/4 of its box, a square all of it.
    fill: dict[str, list[float]] = {s: [] for s in SHAPES}
    for row in sample_dataset(120):
        shape = next(s for s in SHAPES if s in row["caption"][0].split())
        img = row["image"].convert("RGB")
        colour = next(rgb for _, rgb in img.getcolors(64 * 64) if rgb in COLOURS.values())
        points = [(x, y) for x in range(64) for y in range(64) if img.getpixel((x, y)) == colour]
        xs, ys = [x for x, _ in points], [y for _, y in points]
        box = (max(xs) - min(xs) + 1) * (max(ys) - min(ys) + 1)
        fill[shape].append(len(points) / box)
    mean = {s: sum(v) / len(v) for s, v in fill.items()}
    assert mean["square"] > 0.95
    assert 0.7 < mean["circle"] < 0.85
    assert 0.4 < mean["triangle"] < 0.6
    assert 0.4 < mean["diamond"] < 0.6
    assert mean["cross"] < 0.6 and mean["star"] < 0.6


def test_rejects_a_bad_size() -> None:
    with pytest.raises(ValueError, match="n_images"):
        sample_dataset(0)


@settings(max_examples=15, deadline=None)
@given(n_images=st.integers(1, 40), seed=st.integers(0, 2**32))
def test_any_size_and_seed_gives_distinct_captioned_images(n_images: int, seed: int) -> None:
    raw = _raw(sample_dataset(n_images, seed=seed))
    assert raw.num_rows == n_images
    assert len({img["bytes"] for img in raw["image"]}) == n_images
    for caps in raw["caption"]:
        assert all(any(c in cap.replace(",", "").split() for c in COLOURS) for cap in caps)
