"""pipeline.phash: the pHash equals imagehash.phash bit for bit (imagehash is a dev dependency only)."""

from __future__ import annotations

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
    assert hex_hash(phash_bytes(data)) == str(imagehash.phash(Image.open(__import__("io").BytesIO(data))))


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
