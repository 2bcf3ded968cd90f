"""The karpathy reader: image paths, restval, ids, rejects, errors, and a file built from real captions."""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from synth import caption_text, write_images

from pipeline.errors import SourceError, UsageError
from pipeline.readers.base import SourceSpec
from pipeline.readers.karpathy import KarpathyReader
from pipeline.schema import CAPTION_ROWS


def read(path: Path, images: Path | None, restval: str = "train") -> pa.Table:
    reader = KarpathyReader(SourceSpec(path=str(path), images=images, restval=restval))
    return pa.Table.from_batches(list(reader.read()), schema=CAPTION_ROWS)


def entry(imgid: int, filename: str, split: str, n: int = 2, **extra: Any) -> dict[str, Any]:
    """One Karpathy image entry, in the published key order."""
    sentids = [imgid * 10 + k for k in range(n)]
    sentences = [
        {"tokens": ["x"], "raw": caption_text(imgid, k), "imgid": imgid, "sentid": s} for k, s in enumerate(sentids)
    ]
    return {"sentids": sentids, "imgid": imgid, "sentences": sentences, "split": split, "filename": filename, **extra}


def write(path: Path, images: list[dict[str, Any]], dataset: str = "flickr8k") -> Path:
    path.write_text(json.dumps({"images": images, "dataset": dataset}))
    return path


def test_flickr_style_file(tmp_path: Path) -> None:
    images = tmp_path / "Flicker8k_Dataset"
    write_images(images, ["a.jpg", "b.jpg", "c.jpg"])
    path = write(
        tmp_path / "dataset_flickr8k.json",
        [entry(0, "a.jpg", "train"), entry(1, "b.jpg", "restval", n=1), entry(2, "c.jpg", "test", n=3)],
    )
    rows = read(path, images).to_pylist()
    assert [r["row_id"] for r in rows] == list(range(6))
    assert [(r["file_name"], r["split"], r["caption_id"], r["id_hint"]) for r in rows] == [
        ("a.jpg", "train", "0", "0"),
        ("a.jpg", "train", "1", "0"),
        ("b.jpg", "train", "10", "1"),
        ("c.jpg", "test", "20", "2"),
        ("c.jpg", "test", "21", "2"),
        ("c.jpg", "test", "22", "2"),
    ]
    assert rows[4]["caption"] == caption_text(2, 1)
    assert rows[4]["location"] == "dataset_flickr8k.json:images[2].sentences[1]"
    assert rows[4]["image_path"] == str((images / "c.jpg").absolute())
    assert {r["reject"] for r in rows} == {None}


def test_restval_maps_to_the_option(tmp_path: Path) -> None:
    path = write(tmp_path / "dataset_coco.json", [entry(0, "a.jpg", "restval"), entry(1, "b.jpg", "val")])
    assert read(path, tmp_path, restval="extra").column("split").to_pylist() == ["extra", "extra", "val", "val"]


def test_coco_filepath_and_flat_fallback(tmp_path: Path) -> None:
    images = tmp_path / "coco"
    write_images(images, ["val2014/COCO_val2014_1.jpg", "COCO_train2014_2.jpg"])
    path = write(
        tmp_path / "dataset_coco.json",
        [
            entry(0, "COCO_val2014_1.jpg", "test", filepath="val2014", cocoid=1),
            entry(1, "COCO_train2014_2.jpg", "train", filepath="train2014", cocoid=2),  # only flat exists
            entry(2, "COCO_train2014_3.jpg", "train", filepath="train2014", cocoid=3),  # neither exists
        ],
        dataset="coco",
    )
    reader = KarpathyReader(SourceSpec(path=str(path), images=images))
    rows = pa.Table.from_batches(list(reader.read())).to_pylist()
    root = images.absolute()
    assert [r["image_path"] for r in rows[::2]] == [
        str(root / "val2014/COCO_val2014_1.jpg"),
        str(root / "COCO_train2014_2.jpg"),
        str(root / "train2014/COCO_train2014_3.jpg"),
    ]
    assert [r["id_hint"] for r in rows[::2]] == ["1", "2", "3"]
    assert reader.id_column() == "cocoid"


def test_id_column_before_reading(tmp_path: Path) -> None:
    coco = write(tmp_path / "dataset_coco.json", [entry(0, "a.jpg", "val", cocoid=7)], dataset="coco")
    flickr = write(tmp_path / "dataset_flickr8k.json", [entry(0, "a.jpg", "val")])
    assert KarpathyReader(SourceSpec(path=str(coco))).id_column() == "cocoid"
    assert KarpathyReader(SourceSpec(path=str(flickr))).id_column() == "imgid"
    assert KarpathyReader(SourceSpec(path=str(flickr))).multi_caption() is True


def test_image_without_sentences_gives_no_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "dataset_flickr8k.json", [entry(0, "a.jpg", "train", n=0), entry(1, "b.jpg", "val")])
    with caplog.at_level(logging.WARNING):
        rows = read(path, tmp_path).to_pylist()
    assert [r["file_name"] for r in rows] == ["b.jpg", "b.jpg"]
    assert "1 images have no sentences" in caplog.text and "a.jpg" in caplog.text


def test_caption_not_utf8_is_a_rejected_row(tmp_path: Path) -> None:
    path = tmp_path / "dataset_flickr8k.json"
    path.write_bytes(
        b'{"images": [{"imgid": 0, "split": "train", "filename": "a.jpg", "sentences": '
        b'[{"raw": "caf\xe9", "sentid": 0}, {"raw": "caf\xc3\xa9", "sentid": 1}]}]}'
    )
    rows = read(path, tmp_path).to_pylist()
    assert [(r["caption"], r["reject"], r["caption_id"]) for r in rows] == [
        (None, "caption_not_utf8", "0"),
        ("café", None, "1"),
    ]


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text('{"images": [\n{"filename": "a.jpg",\n"sentences": [}]}')
    with pytest.raises(SourceError, match=r"dataset_flickr8k\.json:3: not valid JSON"):
        read(path, tmp_path)


def test_sentence_without_raw_names_its_place(tmp_path: Path) -> None:
    bad = entry(1, "b.jpg", "train")
    del bad["sentences"][1]["raw"]
    path = write(tmp_path / "dataset_flickr8k.json", [entry(0, "a.jpg", "train"), bad])
    with pytest.raises(SourceError, match=r"json:images\[1\]\.sentences\[1\]: missing key 'raw'"):
        read(path, tmp_path)


def test_images_folder_is_required(tmp_path: Path) -> None:
    path = write(tmp_path / "dataset_flickr8k.json", [entry(0, "a.jpg", "train")])
    with pytest.raises(UsageError, match="--images DIR"):
        read(path, None)


def test_sniff(tmp_path: Path) -> None:
    write(tmp_path / "dataset_flickr8k.json", [entry(0, "a.jpg", "train")])
    (tmp_path / "no_sentences.json").write_text(json.dumps({"images": [], "dataset": "flickr30k"}))
    coco = {"info": {}, "images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []}
    (tmp_path / "captions_val2017.json").write_text(json.dumps(coco))
    (tmp_path / "dataset.txt").write_text(json.dumps({"images": [], "dataset": "x"}))
    found = {p.name for p in tmp_path.iterdir() if KarpathyReader.sniff(p)}
    assert found == {"dataset_flickr8k.json", "no_sentences.json"}


def test_real_captions_as_karpathy_json(real_data: Path, tmp_path: Path) -> None:
    """``dataset_flickr8k.json`` rebuilt from the real token file and split lists."""
    captions: dict[str, list[str]] = defaultdict(list)
    for line in (real_data / "Flickr8k.token.txt").read_text().splitlines():
        key, caption = line.split("\t", 1)
        captions[key.rpartition("#")[0]].append(caption)
    images: list[dict[str, Any]] = []
    for split, name in (("train", "train"), ("val", "dev"), ("test", "test")):
        for filename in (real_data / f"Flickr_8k.{name}Images.txt").read_text().split():
            imgid = len(images)
            # Every tenth training image as "restval", as in Karpathy's COCO file.
            image_split = "restval" if split == "train" and imgid % 10 == 0 else split
            sentences = [
                {"tokens": c.lower().split(), "raw": c, "imgid": imgid, "sentid": imgid * 5 + k}
                for k, c in enumerate(captions[filename])
            ]
            images.append(
                {
                    "sentids": [s["sentid"] for s in sentences],
                    "imgid": imgid,
                    "sentences": sentences,
                    "split": image_split,
                    "filename": filename,
                }
            )
    path = write(tmp_path / "dataset_flickr8k.json", images)
    assert KarpathyReader.sniff(path)

    table = read(path, tmp_path)
    assert table.num_rows == 40000
    assert Counter(table.column("split").to_pylist()) == {"train": 30000, "val": 5000, "test": 5000}
    per_image = Counter(table.column("file_name").to_pylist())
    assert len(per_image) == 8000 and set(per_image.values()) == {5}
    first = table.slice(0, 1).to_pylist()[0]
    assert first["file_name"] == "2513260012_03d33305cf.jpg"
    assert first["caption"] == "A black dog is running after a white dog in the snow ."
    assert table.column("caption").to_pylist() == [c for image in images for c in captions[image["filename"]]]

    restval = Counter(read(path, tmp_path, restval="restval").column("split").to_pylist())
    assert restval == {"train": 30000 - 3000, "restval": 3000, "val": 5000, "test": 5000}
