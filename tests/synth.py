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
