"""The embedded sample: a small synthetic image-caption dataset in the nlphuji/flickr30k schema.

``capshard build`` with no SOURCE builds this, so every command can be tried without a
download. Each image is one simple shape (circle, square, triangle, diamond, cross, star)
in one colour, small or large, in one of five places, on a white, black or grey
background; its five captions, worded differently, name the colour and the shape (and
mostly the size, the place and the background), so a tiny CLIP can learn to match them.

Generation is deterministic: a seeded :class:`random.Random`, integer pixel geometry
and PNG encoding, so the same ``(n_images, seed)`` gives the same bytes on every run, in
every time zone, with the same Pillow/zlib build. No two images share their bytes.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import random
from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

#: Side of every sample image, in pixels.
IMAGE_SIZE = 64

#: Shape colour name -> RGB. No shape colour is also a background colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "orange": (250, 130, 10),
}

#: Background name -> RGB.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "black": (10, 10, 10),
    "grey": (128, 128, 128),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")

#: Second name of each shape, so captions do not all use the same word.
SHAPE_SYNONYMS: dict[str, str] = {
    "circle": "round disc",
    "square": "box",
    "triangle": "three-sided shape",
    "diamond": "rhombus",
    "cross": "plus sign",
    "star": "five-pointed star",
}

#: Size name -> half-width of the shape in pixels.
SIZES: dict[str, int] = {"small": 9, "large": 18}

#: Place name -> where the centre of the shape is on each axis: -1 near the low edge
#: (left, top), 0 in the middle, 1 near the high edge.
PLACES: dict[str, tuple[int, int]] = {
    "centre": (0, 0),
    "top left": (-1, -1),
    "top right": (1, -1),
    "bottom left": (-1, 1),
    "bottom right": (1, 1),
}

#: ``n_images`` of ``capshard build`` without SOURCE.
DEFAULT_IMAGES = 300

#: Largest ``n_images``: far below the number of distinct scenes (grid x jitter).
MAX_IMAGES = 10_000
_JITTER = 3

#: Unit five-pointed star (outer radius 1000, inner 400), y pointing down, as integers so
#: no libm rounding differs between machines.
_STAR = (
    (0, -1000), (235, -324), (951, -309), (380, 124), (588, 809),
    (0, 400), (-588, 809), (-380, 124), (-951, -309), (-235, -324),
)  # fmt: skip


@cache
def features() -> datasets.Features:
    """The sample's ``datasets`` features (nlphuji/flickr30k schema); also ``sample.FEATURES``.

    ``datasets`` is imported here, not with the module: the CLI reads ``MAX_IMAGES`` on every
    build and must not pay for ``datasets`` (over a second) unless it builds the sample.
    """
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Sequence(datasets.Value("string")),
            "sentids": datasets.Sequence(datasets.Value("string")),
            "split": datasets.Value("string"),
            "img_id": datasets.Value("string"),
            "filename": datasets.Value("string"),
        }
    )


def __getattr__(name: str) -> Any:
    if name == "FEATURES":
        return features()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Scene:
    """What one sample image shows; its captions are written from this."""

    shape: str
    colour: str
    size: str
    place: str
    background: str
    dx: int
    dy: int


def sample_dataset(n_images: int = DEFAULT_IMAGES, seed: int = 0) -> datasets.Dataset:
    """The embedded sample as a ``datasets.Dataset`` in the nlphuji/flickr30k schema.

    Columns ``image`` (PNG bytes, ``path`` = file name), ``caption`` (5 strings),
    ``sentids``, ``split`` (train/val/test, 80/10/10 by row), ``img_id`` and
    ``filename`` (``sample_000123.png``); every row is in the HF split ``test``.
    """
    if not 1 <= n_images <= MAX_IMAGES:
        raise ValueError(f"n_images must be between 1 and {MAX_IMAGES}, got {n_images}")
    rng = random.Random(seed)
    scenes = _scenes(n_images, rng)
    images, seen = [], set()
    for i, scene in enumerate(scenes):
        data = render(scene)
        # Jitter is drawn at random, so two rows could show the same scene: nudge until distinct.
        while (digest := hashlib.sha256(data).digest()) in seen:
            scene = replace(scene, dx=rng.randint(-_JITTER, _JITTER), dy=rng.randint(-_JITTER, _JITTER))
            scenes[i] = scene
            data = render(scene)
        seen.add(digest)
        images.append(data)
    names = [f"sample_{i:06d}.png" for i in range(n_images)]
    rows = {
        "image": [{"bytes": data, "path": name} for data, name in zip(images, names, strict=True)],
        "caption": [captions(scene, rng) for scene in scenes],
        "sentids": [[str(i * 5 + n) for n in range(5)] for i in range(n_images)],
        "split": [_split(i) for i in range(n_images)],
        "img_id": [str(i) for i in range(n_images)],
        "filename": names,
    }
    logger.debug("generated %d sample images (seed %d)", n_images, seed)
    import datasets

    return datasets.Dataset.from_dict(rows, features=features(), split="test")


def _scenes(n_images: int, rng: random.Random) -> list[Scene]:
    """``n_images`` scenes drawn from the attribute grid, each combination once per pass."""
    grid = list(itertools.product(SHAPES, COLOURS, SIZES, PLACES, BACKGROUNDS))
    order: list[tuple[str, str, str, str, str]] = []
    while len(order) < n_images:
        rng.shuffle(grid)
        order.extend(grid)
    return [
        Scene(shape, colour, size, place, bg, rng.randint(-_JITTER, _JITTER), rng.randint(-_JITTER, _JITTER))
        for shape, colour, size, place, bg in order[:n_images]
    ]


def _split(index: int) -> str:
    """80/10/10 by row number: the attribute order is shuffled, so the splits are too."""
    return {8: "val", 9: "test"}.get(index % 10, "train")


def render(scene: Scene) -> bytes:
    """PNG bytes of ``scene`` (``IMAGE_SIZE`` square, RGB)."""
    from PIL import ImageDraw  # here, not at the top: the CLI imports this module for MAX_IMAGES

    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    r = SIZES[scene.size]
    # Near an edge the shape keeps a margin wider than the jitter, so it never leaves the frame.
    reach = IMAGE_SIZE // 2 - r - _JITTER - 2
    fx, fy = PLACES[scene.place]
    cx, cy = IMAGE_SIZE // 2 + fx * reach + scene.dx, IMAGE_SIZE // 2 + fy * reach + scene.dy
    fill = COLOURS[scene.colour]
    box = (cx - r, cy - r, cx + r, cy + r)
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        draw.rectangle((cx - r * 4 // 5, cy - r * 4 // 5, cx + r * 4 // 5, cy + r * 4 // 5), fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 4 // 5), (cx - r, cy + r * 4 // 5)], fill=fill)
    elif scene.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 3 // 4, cy), (cx, cy + r), (cx - r * 3 // 4, cy)], fill=fill)
    elif scene.shape == "cross":
        w = max(2, r // 3)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif scene.shape == "star":
        draw.polygon([(cx + x * r // 1000, cy + y * r // 1000) for x, y in _STAR], fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r} (known: {', '.join(SHAPES)})")
    out = io.BytesIO()
    img.save(out, "PNG", optimize=False, compress_level=6)
    return out.getvalue()


def captions(scene: Scene, rng: random.Random) -> list[str]:
    """Five differently worded captions of ``scene``; each names its colour and shape."""
    s, c, z, p, b = scene.shape, scene.colour, scene.size, scene.place, scene.background
    alt = SHAPE_SYNONYMS[s]
    where = "in the middle" if p == "centre" else f"in the {p} corner"
    big = {"small": rng.choice(("small", "little", "tiny")), "large": rng.choice(("large", "big", "huge"))}[z]
    return [
        f"a {c} {s} on a {b} background",
        f"a {big} {c} {s} {where}",
        f"{_article(z)} {z} {s}, coloured {c}, {where} of the picture",
        f"a {c} {alt} drawn on {b}, a {s}",
        f"{b} background with one {c} {s} near the {p}",
    ]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
