"""The one shared helper that builds test data: images, annotation files, datasets.

Every image made here is distinct (its pixels encode ``index``), so content hashing
never merges two test images by accident.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def comparable(name: str, data: bytes) -> bytes:
    """A build file's bytes as builds of the same input must reproduce them: a manifest without its
    ``stats`` (seconds and rates of that run, docs/FORMAT.md), every other file as it is."""
    if not name.endswith("manifest.json"):
        return data
    try:
        manifest = json.loads(data)
    except ValueError:  # not a capshard manifest (a user's file under that name): as it is
        return data
    if not isinstance(manifest, dict) or "stats" not in manifest:
        return data
    manifest.pop("stats")
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()  # as written


def manifest_bytes(folder: Path) -> bytes:
    """``folder/manifest.json`` as :func:`comparable` gives it."""
    return comparable("manifest.json", (folder / "manifest.json").read_bytes())


def image_bytes(index: int, fmt: str = "JPEG", size: tuple[int, int] = (32, 24)) -> bytes:
    """Encoded bytes of a small image unique to ``index``."""
    img = Image.new("RGB", size, ((index * 37) % 256, (index * 91 // 7) % 256, (index // 256) % 256))
    # A pixel pattern that encodes the index, so nearby indices never encode identically.
    for bit in range(24):
        if index >> bit & 1:
            img.putpixel((bit % size[0], (bit // size[0]) % size[1]), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_images(folder: Path, names: Iterable[str], fmt: str = "JPEG", start: int = 0) -> dict[str, bytes]:
    """Write one distinct image per name under ``folder``; returns name -> bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(names, start):
        data = image_bytes(i, fmt)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        out[name] = data
    return out


def flickr_token_file(path: Path, images: Sequence[str], captions_per_image: int = 5) -> list[str]:
    """A ``Flickr8k.token.txt``-style file; returns its lines."""
    lines = [
        f"{name}#{n}\t{caption_text(i, n)}" for i, name in enumerate(images) for n in range(captions_per_image)
    ]
    path.write_text("\n".join(lines) + "\n")
    return lines


def caption_text(image_index: int, n: int) -> str:
    """A caption unique to (image, n)."""
    return f"picture {image_index} described for the {n}th time ."


def coco_json(path: Path, images: Sequence[tuple[int, str]], captions: Sequence[tuple[int, int, str]]) -> None:
    """A COCO captions file from ``(id, file_name)`` images and ``(ann_id, image_id, caption)``."""
    doc = {
        "info": {"description": "synthetic"},
        "licenses": [],
        "images": [{"id": i, "file_name": f, "width": 32, "height": 24} for i, f in images],
        "annotations": [{"id": a, "image_id": i, "caption": c} for a, i, c in captions],
    }
    path.write_text(json.dumps(doc))


def nlphuji_dataset(n_images: int, splits: Sequence[str] = ("train", "val", "test"), captions: int = 5):  # type: ignore[no-untyped-def]
    """An in-memory ``datasets.Dataset`` in the nlphuji/flickr30k schema (HF split 'test')."""
    import datasets

    from pipeline import sample

    rows = {
        "image": [{"bytes": image_bytes(i), "path": f"{1000 + i}.jpg"} for i in range(n_images)],
        "caption": [[caption_text(i, n) for n in range(captions)] for i in range(n_images)],
        "sentids": [[str(i * captions + n) for n in range(captions)] for i in range(n_images)],
        "split": [splits[i % len(splits)] for i in range(n_images)],
        "img_id": [str(i) for i in range(n_images)],
        "filename": [f"{1000 + i}.jpg" for i in range(n_images)],
    }
    return datasets.Dataset.from_dict(rows, features=sample.FEATURES, split="test")


def flattened_dataset(n_images: int, captions: int = 5, seed: int = 0):  # type: ignore[no-untyped-def]
    """The layout of the original failure: one row per caption, the image repeated in
    every row, an ``id`` column that is just the row number, rows shuffled."""
    import random

    import datasets

    records = [(i, n) for i in range(n_images) for n in range(captions)]
    random.Random(seed).shuffle(records)
    rows = {
        "image": [{"bytes": image_bytes(i), "path": None} for i, _ in records],
        "caption": [caption_text(i, n) for i, n in records],
        "id": list(range(len(records))),
        "split": ["train"] * len(records),
    }
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "id": datasets.Value("int64"),
            "split": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


def img2dataset_folder(
    folder: Path, n_images: int, captions_per_image: int = 5, per_shard: int = 10, failed: int = 2
) -> list[dict[str, object]]:
    """Shards as img2dataset writes them from a one-row-per-caption URL list: every image
    repeated once per caption (same bytes, its own key), ``KEY.jpg``/``.txt``/``.json``
    written by ``webdataset.ShardWriter``, plus the ``NNNNN.parquet`` and
    ``NNNNN_stats.json`` sidecars (with ``failed`` failed downloads). Returns the json of
    every sample written, in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, object]] = []
    records = [(i, n) for i in range(n_images) for n in range(captions_per_image)]
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for position, (i, n) in enumerate(records):
            shard, index = divmod(position, per_shard)
            key = f"{shard:05d}{index:04d}"
            meta = {
                "url": f"https://img.example.com/photos/{1000 + i}.jpg",
                "key": key,
                "status": "success",
                "error_message": None,
                "width": 32,
                "height": 24,
                "caption": caption_text(i, n),
            }
            sink.write({"__key__": key, "jpg": image_bytes(i), "txt": caption_text(i, n), "json": meta})
            written.append(meta)
    shards = sorted(folder.glob("*.tar"))
    for number, _ in enumerate(shards):
        rows = [m for m in written if str(m["key"]).startswith(f"{number:05d}")]
        bad = [
            {"url": f"https://img.example.com/gone/{number}-{k}.jpg", "key": None, "status": "failed_to_download",
             "error_message": "HTTP Error 404", "caption": f"lost {k}"}
            for k in range(failed)
        ]
        table = pa.Table.from_pylist(
            [{k: r.get(k) for k in ("url", "key", "status", "error_message", "caption")} for r in rows + bad]
        )
        pq.write_table(table, folder / f"{number:05d}.parquet")
        stats = {"count": len(rows) + failed, "successes": len(rows), "failed_to_download": failed}
        (folder / f"{number:05d}_stats.json").write_text(json.dumps(stats))
    return written


def mixed_format_dataset(n_images: int, splits: Sequence[str] = ("train", "val", "test"), captions: int = 3):  # type: ignore[no-untyped-def]
    """Like :func:`nlphuji_dataset`, but odd images are PNG and even ones JPEG (mixed extensions in a build)."""
    import datasets

    from pipeline import sample

    fmts = ["JPEG" if i % 2 == 0 else "PNG" for i in range(n_images)]
    names = [f"{1000 + i}.{'jpg' if f == 'JPEG' else 'png'}" for i, f in enumerate(fmts)]
    rows = {
        "image": [{"bytes": image_bytes(i, f), "path": n} for i, (f, n) in enumerate(zip(fmts, names, strict=True))],
        "caption": [[caption_text(i, n) for n in range(captions)] for i in range(n_images)],
        "sentids": [[str(i * captions + n) for n in range(captions)] for i in range(n_images)],
        "split": [splits[i % len(splits)] for i in range(n_images)],
        "img_id": [str(i) for i in range(n_images)],
        "filename": names,
    }
    return datasets.Dataset.from_dict(rows, features=sample.FEATURES, split="test")


def photo_like(seed: int, size: tuple[int, int] = (320, 240), layout: float = 0.0) -> Image.Image:
    """A photo-like RGB image unique to ``seed``: structure at several scales plus grain, not flat colour.

    ``layout`` > 0 adds what most photos share, a bright top (sky) over a darker bottom split
    at a random horizon, so distinct images are as alike at low frequencies as real ones.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    w, h = size
    acc = np.zeros((h, w, 3), np.float32)
    if layout:
        horizon = rng.uniform(0.3, 0.7) * h
        rows = np.arange(h, dtype=np.float32)[:, None, None]
        acc += layout * 2.15 * np.where(rows < horizon, 200.0 - rows / h * 60, 70.0 + rows / h * 30)
    for cells, weight in ((3, 1.0), (6, 0.6), (14, 0.35), (40, 0.2)):
        small = rng.random((max(2, cells * h // w), cells, 3), dtype=np.float32)
        layer = Image.fromarray((small * 255).astype("uint8")).resize(size, Image.Resampling.BICUBIC)
        acc += weight * np.asarray(layer, np.float32)
    acc = acc / (2.15 * (1 + layout)) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(acc, 0, 255).astype("uint8"))


def encode(img: Image.Image, fmt: str = "JPEG", quality: int = 92) -> bytes:
    """``img`` encoded as ``fmt``."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _crop(img: Image.Image, frac: float) -> Image.Image:
    w, h = img.size
    dx, dy = round(w * frac), round(h * frac)
    return img.crop((dx, dy, w - dx, h - dy))


def _text(img: Image.Image) -> Image.Image:
    from PIL import ImageDraw

    out = img.copy()
    w, h = out.size
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, h - h // 8, w, h), fill=(0, 0, 0))
    draw.text((4, h - h // 8 + 2), "(c) stock photo 2026 www.example.com", fill=(255, 255, 255))
    return out


def _logo(img: Image.Image) -> Image.Image:
    from PIL import ImageDraw

    out = img.copy()
    w = out.width
    ImageDraw.Draw(out).ellipse((w - w // 5, 4, w - 4, 4 + w // 5 - 8), fill=(250, 40, 40))
    return out


def _brightness(img: Image.Image) -> Image.Image:
    from PIL import ImageEnhance

    return ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(1.1)).enhance(0.9)


def _resize(img: Image.Image, frac: float) -> Image.Image:
    return img.resize((round(img.width * frac), round(img.height * frac)), Image.Resampling.BICUBIC)


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    return Image.open(io.BytesIO(encode(img, quality=quality)))


#: The copies a web crawl makes of a photo, by name (the issue's list); each returns a new image.
TRANSFORMS = {
    "resize50": lambda im: _resize(im, 0.5),
    "resize25": lambda im: _resize(im, 0.25),
    "jpeg95": lambda im: _jpeg(im, 95),
    "jpeg60": lambda im: _jpeg(im, 60),
    "brightness": _brightness,
    "crop2": lambda im: _crop(im, 0.02),
    "crop5": lambda im: _crop(im, 0.05),
    "crop10": lambda im: _crop(im, 0.10),
    "text": _text,
    "logo": _logo,
    "flip": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
}


def photo_csv(root: Path, images: Sequence[tuple[str, str, bytes]]) -> Path:
    """``root/captions.csv`` (columns image, caption, split) and ``root/images/`` from ``(name, split, bytes)``."""
    import csv

    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    path = root / "captions.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "split"])
        for i, (name, split, data) in enumerate(images):
            (folder / name).write_bytes(data)
            writer.writerow([name, caption_text(i, 0), split])
    return path
