"""The coco reader: annotation order, unknown image ids, split from the file name, real files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from synth import coco_json, write_images

from pipeline.errors import SourceError, UsageError
from pipeline.readers.base import SourceSpec
from pipeline.readers.coco import CocoReader
from pipeline.schema import CAPTION_ROWS

IMAGES = [(397133, "000000397133.jpg"), (37777, "000000037777.jpg")]


def read(path: Path, images: Path | None) -> pa.Table:
    reader = CocoReader(SourceSpec(path=str(path), images=images))
    return pa.Table.from_batches(list(reader.read()), schema=CAPTION_ROWS)


def test_rows_follow_annotation_order(tmp_path: Path) -> None:
    images = tmp_path / "val2017"
    write_images(images, [name for _, name in IMAGES])
    path = tmp_path / "captions_val2017.json"
    coco_json(
        path,
        IMAGES,
        [(9, 37777, "A kitchen ."), (3, 397133, " A man  skiing.\n"), (4, 37777, "Oven\n."), (1, 397133, "Snow")],
    )
    rows = read(path, images).to_pylist()
    assert [r["row_id"] for r in rows] == [0, 1, 2, 3]
    assert [(r["caption_id"], r["id_hint"], r["caption"]) for r in rows] == [
        ("9", "37777", "A kitchen ."),
        ("3", "397133", " A man  skiing.\n"),
        ("4", "37777", "Oven\n."),
        ("1", "397133", "Snow"),
    ]
    assert rows[1]["file_name"] == "000000397133.jpg"
    assert rows[1]["image_path"] == str((images / "000000397133.jpg").absolute())
    assert Path(rows[1]["image_path"]).is_file()
    assert [r["location"] for r in rows] == [f"captions_val2017.json:annotations[{i}]" for i in range(4)]
    assert {r["split"] for r in rows} == {"val"}
    assert {r["reject"] for r in rows} == {None}


def test_unknown_image_id_is_a_rejected_row(tmp_path: Path) -> None:
    path = tmp_path / "captions_train2014.json"
    coco_json(path, IMAGES, [(1, 397133, "A man ."), (2, 555, "Nobody's picture .")])
    rows = read(path, tmp_path).to_pylist()
    assert [(r["reject"], r["image_path"], r["file_name"], r["id_hint"]) for r in rows][1] == (
        "unknown_image_id",
        None,
        None,
        "555",
    )
    assert rows[0]["reject"] is None


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("captions_train2017.json", "train"),
        ("captions_val2014.json", "val"),
        ("captions_test2015.json", "test"),
        ("my_captions.json", "train"),
    ],
)
def test_split_is_inferred_from_the_file_name(tmp_path: Path, name: str, split: str) -> None:
    coco_json(tmp_path / name, IMAGES, [(1, 397133, "A man .")])
    assert read(tmp_path / name, tmp_path).column("split").to_pylist() == [split]


def test_caption_not_utf8_is_a_rejected_row(tmp_path: Path) -> None:
    path = tmp_path / "captions_val2017.json"
    path.write_bytes(
        b'{"images": [{"id": 1, "file_name": "a.jpg"}],\n'
        b'"annotations": [{"id": 5, "image_id": 1, "caption": "caf\xe9"},'
        b' {"id": 6, "image_id": 1, "caption": "caf\\u00e9"}]}'
    )
    rows = read(path, tmp_path).to_pylist()
    assert [(r["caption"], r["reject"]) for r in rows] == [(None, "caption_not_utf8"), ("café", None)]


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "captions_val2017.json"
    path.write_text('{"images": [],\n"annotations": [\n{"id": 1, "image_id": 2 "caption": "x"}]}')
    with pytest.raises(SourceError, match=r"captions_val2017\.json:3: not valid JSON"):
        read(path, tmp_path)


def test_annotation_without_caption_names_its_index(tmp_path: Path) -> None:
    path = tmp_path / "captions_val2017.json"
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "image_id": 1}]}
    path.write_text(json.dumps(doc))
    with pytest.raises(SourceError, match=r"captions_val2017\.json:annotations\[0\]: missing key 'caption'"):
        read(path, tmp_path)


def test_one_image_id_with_two_file_names_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "captions_val2017.json"
    coco_json(path, [(1, "a.jpg"), (1, "b.jpg")], [(1, 1, "A .")])
    with pytest.raises(SourceError, match=r"images\[1\]: image id 1 has two file names"):
        read(path, tmp_path)


def test_images_folder_is_required(tmp_path: Path) -> None:
    coco_json(tmp_path / "c.json", IMAGES, [(1, 397133, "A man .")])
    with pytest.raises(UsageError, match="--images DIR"):
        read(tmp_path / "c.json", None)


def test_sniff(tmp_path: Path) -> None:
    coco_json(tmp_path / "captions.json", IMAGES, [(i, 397133, "A man skiing .") for i in range(5000)])
    karpathy = {"images": [{"filename": "a.jpg", "sentences": [{"raw": "A .", "sentid": 0}]}], "dataset": "coco"}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    instances = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "image_id": 1, "bbox": []}]}
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "captions.txt").write_text("image,caption\n")
    found = {p.name for p in tmp_path.iterdir() if CocoReader.sniff(p)}
    assert found == {"captions.json"}


def test_reader_interface() -> None:
    reader = CocoReader(SourceSpec(path="captions_val2017.json"))
    assert reader.multi_caption() is True
    assert reader.id_column() == "image_id"


def test_real_val2017(real_data: Path, tmp_path: Path) -> None:
    path = real_data / "captions_val2017.json"
    assert CocoReader.sniff(path)
    table = read(path, tmp_path)
    assert table.num_rows == 25014
    per_image = Counter(table.column("id_hint").to_pylist())
    assert len(per_image) == 5000
    assert Counter(per_image.values()) == {5: 4987, 6: 12, 7: 1}
    assert per_image["431896"] == 7
    assert table.column("id_hint").to_pylist()[:6] == ["179765", "179765", "190236", "331352", "517069", "179765"]
    assert set(table.column("split").to_pylist()) == {"val"}
    assert table.column("reject").null_count == table.num_rows
    captions = table.column("caption").to_pylist()
    assert sum(c.endswith("\n") for c in captions) == 82
    assert sum(c != c.strip() for c in captions) == 3541
    embedded = table.filter(pc.equal(table.column("caption_id"), "555895")).to_pylist()[0]
    assert embedded["id_hint"] == "359219" and "cut\n." in embedded["caption"]
    first = table.slice(0, 1).to_pylist()[0]
    assert first["file_name"] == "000000179765.jpg"
    assert first["location"] == "captions_val2017.json:annotations[0]"


def test_real_val2014_subset(real_data: Path, tmp_path: Path) -> None:
    path = real_data / "variants/Elsa1024__ece285_final_project/captions_val2014.json"
    assert CocoReader.sniff(path)
    table = read(path, tmp_path)
    per_image = Counter(table.column("file_name").to_pylist())
    assert table.num_rows == 24019 and len(per_image) == 4800
    assert Counter(per_image.values()) == {5: 4781, 6: 19}
    assert all(name.startswith("COCO_val2014_") for name in per_image)
    assert set(table.column("split").to_pylist()) == {"val"}
