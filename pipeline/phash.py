"""Perceptual hash (64-bit DCT pHash) of an image, bit for bit the value of ``imagehash.phash``.

Definition (docs/NEAR_DUPLICATES.md): decode the bytes with Pillow (no EXIF rotation),
convert to 8-bit grayscale (``"L"``), resize to 32x32 with Lanczos, take the 2-D DCT-II
of the pixels, keep its top-left 8x8 (lowest frequencies, DC included), and set bit
``i = 8*row + col`` when that coefficient is above the median of the 64. Bit 0 (row 0,
col 0) is the most significant bit of the 64-bit value, so ``format(h, "016x")`` is the
string ``imagehash`` prints. Stored as ``int64`` holding the same 64 bits
(two's complement): ``h & (2**64 - 1)`` is the unsigned value.

Implemented with numpy and Pillow only (a matrix DCT), so capshard does not depend on
imagehash or scipy.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

HASH_SIZE = 8
IMG_SIZE = 32
#: Bit weights, most significant first: element (0, 0) of the 8x8 block is bit 63.
_WEIGHTS = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)).reshape(HASH_SIZE, HASH_SIZE)


def _dct_matrix(n: int) -> np.ndarray:
    # Unnormalised DCT-II as scipy.fftpack.dct(type=2) computes it: 2 * sum x[j] cos(pi k (2j+1) / 2n).
    k = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * j + 1) / (2 * n))


_DCT = _dct_matrix(IMG_SIZE)[:HASH_SIZE]


def phash_image(img: Image.Image) -> int:
    """The 64-bit pHash of a Pillow image as an unsigned int (see the module docstring)."""
    gray = img.convert("L").resize((IMG_SIZE, IMG_SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float64)
    low = _DCT @ pixels @ _DCT.T  # only the 8 lowest frequencies of each axis are needed
    bits = low > np.median(low)
    return int((_WEIGHTS * bits).sum(dtype=np.uint64))


def phash_bytes(data: bytes, *, mirror: bool = False) -> int:
    """The pHash of encoded image bytes (of the horizontally mirrored image with ``mirror``)."""
    with Image.open(io.BytesIO(data)) as img:
        if mirror:
            return phash_image(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
        return phash_image(img)


def to_int64(h: int) -> int:
    """The unsigned 64-bit hash as the signed value stored in parquet (same bits)."""
    return h - (1 << 64) if h >= 1 << 63 else h


def to_uint64(h: int) -> int:
    """The stored signed value back to the unsigned hash."""
    return h & ((1 << 64) - 1)


def hex_hash(h: int) -> str:
    """16 hex digits, as ``str(imagehash.phash(img))`` prints the same hash."""
    return format(to_uint64(h), "016x")
