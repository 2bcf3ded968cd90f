"""The synthetic Flickr-style dataset both benchmarks read: a token file and photo-like JPEGs."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image


def make_dataset(root: Path, n_images: int, size: tuple[int, int], quality: int) -> tuple[Path, Path]:
    """``Flickr8k.token.txt`` (5 captions per image) and ``images/`` of noisy, tinted JPEGs."""
    rng = random.Random(0)
    images = root / "images"
    images.mkdir(parents=True)
    tint = Image.linear_gradient("L").resize(size).convert("RGB")
    lines = []
    for i in range(n_images):
        name = f"{1000000 + i}_{i:04x}.jpg"
        img = Image.effect_noise(size, 30 + i % 40).convert("RGB")
        img = Image.blend(img, Image.blend(tint, Image.new("RGB", size, (rng.randrange(256), 90, 160)), 0.5), 0.6)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        (images / name).write_bytes(buf.getvalue())
        lines += [f"{name}#{n}\tcaption {n} of picture {i} ." for n in range(5)]
    token = root / "Flickr8k.token.txt"
    token.write_text("\n".join(lines) + "\n")
    return token, images
