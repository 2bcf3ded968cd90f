"""``--format auto``: each published layout goes to its reader; unknown files are refused with the list."""

from __future__ import annotations

from pathlib import Path

import pytest
from synth import coco_json, flickr_token_file, nlphuji_dataset

from pipeline.errors import UsageError
from pipeline.readers import SourceSpec, detect


def test_each_layout_goes_to_its_reader(tmp_path: Path) -> None:
    flickr_token_file(tmp_path / "Flickr8k.token.txt", ["a.jpg"])
    (tmp_path / "captions.txt").write_text('image,caption\na.jpg,"one, two"\n')
    (tmp_path / "pairs.csv").write_text("image,caption\na.jpg,one\n")
    (tmp_path / "results.csv").write_text("image_name| comment_number| comment\na.jpg| 0| one\n")
    coco_json(tmp_path / "captions_val2017.json", [(1, "a.jpg")], [(9, 1, "one")])
    (tmp_path / "dataset_flickr8k.json").write_text(
        '{"images": [{"filename": "a.jpg", "imgid": 0, "sentences": [{"raw": "one", "sentid": 0}], '
        '"split": "train", "sentids": [0]}], "dataset": "flickr8k"}'
    )
    nlphuji_dataset(3).save_to_disk(str(tmp_path / "hf"))
    expected = {
        "Flickr8k.token.txt": "flickr",
        "captions.txt": "flickr",
        "results.csv": "flickr",
        "pairs.csv": "table",
        "captions_val2017.json": "coco",
        "dataset_flickr8k.json": "karpathy",
        "hf": "hf",
    }
    assert {name: detect(SourceSpec(path=str(tmp_path / name))) for name in expected} == expected


def test_an_unknown_file_lists_the_formats(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("# hello\n")
    with pytest.raises(UsageError, match="pass --format with one of: coco, flickr, hf, karpathy, table"):
        detect(SourceSpec(path=str(tmp_path / "notes.md")))


def test_a_missing_file_is_named_and_a_bare_name_is_a_hub_name(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"captions\.json does not exist"):
        detect(SourceSpec(path=str(tmp_path / "captions.json")))
    assert detect(SourceSpec(path="nlphuji/flickr30k")) == "hf"
