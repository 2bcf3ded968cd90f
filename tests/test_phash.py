"""pipeline.phash: the pHash equals imagehash.phash bit for bit (imagehash is a dev dependency only)."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from synth import TRANSFORMS, encode, photo_like

from pipeline.phash import hex_hash, phash_bytes, phash_image, to_int64, to_uint64


@st.composite
def images(draw: st.DrawFn) -> Image.Image:
    """Random-content images of any size and mode (random pixels leave no exact ties at the median)."""
    # At least 8x8: a narrower image resizes to identical rows or columns, whose DCT
    # coefficients tie at 0 exactly, where rounding noise decides the bit (documented).
    w = draw(st.integers(8, 160))
    h = draw(st.integers(8, 160))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA"]))
    seed = draw(st.integers(0, 2**32 - 1))
    bands = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, bands), dtype=np.uint8)
    return Image.fromarray(pixels[:, :, 0] if bands == 1 else pixels, mode)


@settings(max_examples=300, deadline=None)
@given(images())
def test_equals_imagehash_on_random_images(img: Image.Image) -> None:
    assert hex_hash(phash_image(img)) == str(imagehash.phash(img))


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_equals_imagehash_on_photo_like_copies(name: str) -> None:
    img = TRANSFORMS[name](photo_like(7))
    data = encode(img)
    assert hex_hash(phash_bytes(data)) == str(imagehash.phash(Image.open(io.BytesIO(data))))


def test_mirror_hashes_the_flipped_image() -> None:
    img = photo_like(3)
    flipped = encode(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG")
    assert phash_bytes(encode(img, "PNG"), mirror=True) == phash_bytes(flipped)


def test_signed_storage_keeps_the_bits() -> None:
    for h in (0, 1, 2**63 - 1, 2**63, 2**64 - 1):
        stored = to_int64(h)
        assert -(2**63) <= stored < 2**63
        assert to_uint64(stored) == h


def test_distinct_photos_are_far_apart() -> None:
    a, b = (phash_image(photo_like(s)) for s in (1, 2))
    assert bin(a ^ b).count("1") > 12


CAUGHT = ("resize50", "resize25", "jpeg95", "jpeg60", "brightness", "crop2")
NOT_CAUGHT = ("crop10", "flip")  # documented in docs/NEAR_DUPLICATES.md


def test_recall_at_the_default_threshold_matches_the_benchmark() -> None:
    """benchmarks/results/overlap.md at 8: these copies are found, crop10 and flip are not."""
    from pipeline.overlap import DEFAULT_THRESHOLD

    originals = [photo_like(1000 + s, (320, 240), layout=1.0) for s in range(20)]
    hashes = [phash_image(im) for im in originals]
    recall = {}
    for name in CAUGHT + NOT_CAUGHT:
        copies = [phash_image(Image.open(io.BytesIO(encode(TRANSFORMS[name](im), quality=95)))) for im in originals]
        recall[name] = sum(bin(a ^ b).count("1") <= DEFAULT_THRESHOLD for a, b in zip(hashes, copies, strict=True))
    assert all(recall[n] >= 19 for n in CAUGHT), recall
    assert all(recall[n] <= 2 for n in NOT_CAUGHT), recall
