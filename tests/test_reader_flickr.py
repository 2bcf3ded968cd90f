"""The flickr reader: token, Kaggle captions.txt and results.csv layouts, split lists, real files."""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import caption_text, flickr_token_file, write_images

from pipeline.errors import SourceError, UsageError
from pipeline.readers.base import SourceSpec
from pipeline.readers.flickr import FlickrReader
from pipeline.schema import CAPTION_ROWS

NAMES = ["1000.jpg", "1001.jpg", "1002.jpg"]


def read(path: Path, images: Path | None, split_files: tuple[tuple[str, Path], ...] = ()) -> pa.Table:
    reader = FlickrReader(SourceSpec(path=str(path), images=images, split_files=split_files))
    return pa.Table.from_batches(list(reader.read()), schema=CAPTION_ROWS)


def real_splits(real: Path) -> tuple[tuple[str, Path], ...]:
    return (
        ("train", real / "Flickr_8k.trainImages.txt"),
        ("val", real / "Flickr_8k.devImages.txt"),
        ("test", real / "Flickr_8k.testImages.txt"),
    )


def per_image(table: pa.Table) -> Counter[str]:
    return Counter(table.column("file_name").to_pylist())


# --- token layout ------------------------------------------------------------------------------


def test_token_file_rows_reference_images(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_images(images, NAMES)
    lines = flickr_token_file(tmp_path / "Flickr8k.token.txt", NAMES, captions_per_image=5)
    table = read(tmp_path / "Flickr8k.token.txt", images)
    assert table.num_rows == len(lines) == 15
    assert table.column("row_id").to_pylist() == list(range(15))
    rows = table.to_pylist()
    assert rows[7]["caption"] == caption_text(1, 2)
    assert rows[7]["caption_id"] == "2"
    assert rows[7]["file_name"] == "1001.jpg"
    assert rows[7]["image_path"] == str((images / "1001.jpg").absolute())
    assert Path(rows[7]["image_path"]).is_file()
    assert rows[7]["location"] == "Flickr8k.token.txt:8"
    assert {r["split"] for r in rows} == {"train"}
    assert {r["id_hint"] for r in rows} == {None}
    assert {r["reject"] for r in rows} == {None}
    assert {r["image_index"] for r in rows} == {None}


def test_crlf_and_space_separator_are_read_like_tabs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "Flickr8k.token.txt"
    path.write_bytes(b"a.jpg#0 A dog  runs .\r\na.jpg#1\t\tTwo tabs\r\nb.jpg#0\tA cat\tsits .\r\n")
    with caplog.at_level(logging.WARNING):
        rows = read(path, tmp_path).to_pylist()
    assert [(r["file_name"], r["caption_id"], r["caption"]) for r in rows] == [
        ("a.jpg", "0", "A dog  runs ."),
        ("a.jpg", "1", "\tTwo tabs"),
        ("b.jpg", "0", "A cat\tsits ."),
    ]
    assert "space instead of a tab (lines 1)" in caplog.text


def test_phantom_key_is_kept_as_published(tmp_path: Path) -> None:
    path = tmp_path / "Flickr8k.token.txt"
    path.write_text("2258277193_586949ec62.jpg.1#0\tA dog .\n")
    row = read(path, tmp_path).to_pylist()[0]
    assert row["file_name"] == "2258277193_586949ec62.jpg.1"
    assert row["image_path"].endswith("/2258277193_586949ec62.jpg.1")
    assert row["reject"] is None  # the missing file is found, and rejected, when images are read


def test_caption_not_utf8_is_a_rejected_row(tmp_path: Path) -> None:
    path = tmp_path / "Flickr8k.token.txt"
    path.write_bytes(b"a.jpg#0\tcaf\xe9 au lait\na.jpg#1\tcaf\xc3\xa9 .\n")
    rows = read(path, tmp_path).to_pylist()
    assert [(r["caption"], r["reject"]) for r in rows] == [(None, "caption_not_utf8"), ("café .", None)]
    assert rows[0]["location"] == "Flickr8k.token.txt:1"


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "Flickr8k.token.txt"
    path.write_text("a.jpg#0\tA dog .\na.jpg#1\tA cat .\nthis line has no number\n")
    with pytest.raises(SourceError, match=r"Flickr8k\.token\.txt:3: expected NAME#N<TAB>caption"):
        read(path, tmp_path)


def test_first_line_of_no_layout_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("some notes\n")
    with pytest.raises(SourceError, match=r"notes\.txt:1: fits no Flickr layout"):
        read(path, tmp_path)


def test_images_folder_is_required(tmp_path: Path) -> None:
    path = tmp_path / "Flickr8k.token.txt"
    flickr_token_file(path, NAMES)
    with pytest.raises(UsageError, match="--images DIR"):
        read(path, None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.lists(
        st.tuples(
            st.text(
                st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), exclude_characters="/\ufeff"),
                min_size=1,
                max_size=12,
            ).filter(lambda s: not any(c.isspace() for c in s)),
            st.lists(
                st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=30),
                min_size=1,
                max_size=4,
            ),
        ),
        min_size=1,
        max_size=8,
    ),
    crlf=st.booleans(),
)
def test_token_file_round_trips(entries: list[tuple[str, list[str]]], crlf: bool) -> None:
    expected = [(name, str(n), caption) for name, captions in entries for n, caption in enumerate(captions)]
    text = "".join(f"{name}#{n}\t{caption}\n" for name, n, caption in expected)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "captions.token"
        path.write_bytes(text.replace("\n", "\r\n" if crlf else "\n").encode())
        rows = read(path, Path(tmp)).to_pylist()
    assert [(r["image_path"].rpartition("/")[2], r["caption_id"], r["caption"]) for r in rows] == expected
    assert [r["location"] for r in rows] == [f"captions.token:{i}" for i in range(1, len(expected) + 1)]


# --- split lists -------------------------------------------------------------------------------


def test_split_lists_assign_splits_and_reject_unlisted(tmp_path: Path) -> None:
    path = tmp_path / "Flickr8k.token.txt"
    flickr_token_file(path, [*NAMES, "9.jpg"], captions_per_image=2)
    (tmp_path / "train.txt").write_bytes(b"1000.jpg\r\n1001.jpg")  # CRLF, no final newline
    (tmp_path / "test.txt").write_text("1002.jpg\n\n")
    splits = (("train", tmp_path / "train.txt"), ("test", tmp_path / "test.txt"))
    rows = read(path, tmp_path, splits).to_pylist()
    assert [(r["file_name"], r["split"], r["reject"]) for r in rows[::2]] == [
        ("1000.jpg", "train", None),
        ("1001.jpg", "train", None),
        ("1002.jpg", "test", None),
        ("9.jpg", None, "not_in_split_lists"),
    ]


def test_image_in_two_split_lists_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "Flickr8k.token.txt"
    flickr_token_file(path, NAMES)
    (tmp_path / "train.txt").write_text("1000.jpg\n1001.jpg\n")
    (tmp_path / "val.txt").write_text("1001.jpg\n")
    with pytest.raises(UsageError, match=r"image 1001\.jpg is in two split lists: .*train\.txt.*val\.txt"):
        read(path, tmp_path, (("train", tmp_path / "train.txt"), ("val", tmp_path / "val.txt")))


# --- Kaggle captions.txt -----------------------------------------------------------------------


def test_kaggle_captions_csv(tmp_path: Path) -> None:
    path = tmp_path / "captions.txt"
    path.write_text(
        "image,caption\n"
        'a.jpg,"A dog , a ball ."\n'
        "a.jpg,A dog runs .\n"
        'b.jpg,"Two lines\nin one caption"\n'
        "a.jpg, leading space kept\n"
    )
    rows = read(path, tmp_path).to_pylist()
    assert [(r["file_name"], r["caption_id"], r["caption"], r["location"]) for r in rows] == [
        ("a.jpg", "0", "A dog , a ball .", "captions.txt:2"),
        ("a.jpg", "1", "A dog runs .", "captions.txt:3"),
        ("b.jpg", "0", "Two lines\nin one caption", "captions.txt:4"),
        ("a.jpg", "2", " leading space kept", "captions.txt:6"),
    ]


def test_kaggle_captions_row_with_extra_field_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "captions.txt"
    path.write_text("image,caption\na.jpg,A dog .\na.jpg,A dog , unquoted .\n")
    with pytest.raises(SourceError, match=r"captions\.txt:3: expected 2 fields"):
        read(path, tmp_path)


# --- Kaggle Flickr30k results.csv --------------------------------------------------------------


def test_results_csv_with_its_malformed_row(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "results.csv"
    path.write_text(
        "image_name| comment_number| comment\n"
        "2199200615.jpg| 3| A dog on grass .\n"
        "2199200615.jpg| 4   A dog runs across the grass .\n"
        "1000092795.jpg| 0| Two guys | one yard .\n"
    )
    with caplog.at_level(logging.WARNING):
        rows = read(path, tmp_path).to_pylist()
    assert [(r["file_name"], r["caption_id"], r["caption"], r["location"]) for r in rows] == [
        ("2199200615.jpg", "3", "A dog on grass .", "results.csv:2"),
        ("2199200615.jpg", "4", "A dog runs across the grass .", "results.csv:3"),
        ("1000092795.jpg", "0", "Two guys | one yard .", "results.csv:4"),
    ]
    assert "results.csv:3: row lacks the '|'" in caplog.text


def test_results_csv_row_of_no_shape_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("image_name|comment_number|comment\na.jpg|0|A dog .\nb.jpg|x|A cat .\n")
    with pytest.raises(SourceError, match=r"results\.csv:3: expected 'image_name\| comment_number\| comment'"):
        read(path, tmp_path)


# --- sniff and interface -----------------------------------------------------------------------


def test_sniff_knows_the_three_layouts(tmp_path: Path) -> None:
    files = {
        "Flickr8k.token.txt": "a.jpg#0\tA dog .\n",
        "results_20130124.token": "1000092795.jpg#0\tTwo guys .\n",
        "captions.txt": "image,caption\na.jpg,A dog .\n",
        "results.csv": "image_name| comment_number| comment\na.jpg| 0| A dog .\n",
        "notes.txt": "Issue #1 fixed\n",
        "table.csv": "image,caption,split\na.jpg,A dog .,train\n",
        "captions.json": '{"images": []}',
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    found = {name for name in files if FlickrReader.sniff(tmp_path / name)}
    assert found == {"Flickr8k.token.txt", "results_20130124.token", "captions.txt", "results.csv"}


def test_reader_interface() -> None:
    reader = FlickrReader(SourceSpec(path="Flickr8k.token.txt"))
    assert reader.multi_caption() is True
    assert reader.id_column() is None


# --- the real files ----------------------------------------------------------------------------


def test_real_token_file(real_data: Path, tmp_path: Path) -> None:
    table = read(real_data / "Flickr8k.token.txt", tmp_path)
    counts = per_image(table)
    assert table.num_rows == 40460
    assert len(counts) == 8092 and set(counts.values()) == {5}
    assert "2258277193_586949ec62.jpg.1" in counts and "2258277193_586949ec62.jpg" not in counts
    phantom = table.filter(pc.equal(table.column("file_name"), "2258277193_586949ec62.jpg.1"))
    assert phantom.column("location").to_pylist() == [f"Flickr8k.token.txt:{n}" for n in range(6731, 6736)]
    assert table.column("caption").null_count == 0


def test_real_token_file_with_split_lists(real_data: Path, tmp_path: Path) -> None:
    table = read(real_data / "Flickr8k.token.txt", tmp_path, real_splits(real_data))
    rows = Counter(table.column("split").to_pylist())
    assert rows == {"train": 30000, "val": 5000, "test": 5000, None: 460}
    unlisted = table.filter(pc.equal(table.column("reject"), "not_in_split_lists"))
    assert unlisted.num_rows == 460 and len(per_image(unlisted)) == 92
    assert "2258277193_586949ec62.jpg.1" in per_image(unlisted)
    images_per_split = {s: len(per_image(table.filter(pc.equal(table["split"], s)))) for s in rows if s}
    assert images_per_split == {"train": 6000, "val": 1000, "test": 1000}


def test_real_space_instead_of_tab_variant(real_data: Path, tmp_path: Path) -> None:
    table = read(real_data / "variants/Karan14-11__image_caption_generator/Flickr8k.token.txt", tmp_path)
    counts = per_image(table)
    assert table.num_rows == 40460 and len(counts) == 8092 and set(counts.values()) == {5}
    first = table.slice(0, 1).to_pylist()[0]
    assert (first["file_name"], first["caption_id"]) == ("1000268201_693b08cb0e.jpg", "0")
    assert first["caption"] == "A child in a pink dress is climbing up a set of stairs in an entry way ."


def test_real_partial_phantom_fix_variant(real_data: Path, tmp_path: Path) -> None:
    counts = per_image(read(real_data / "variants/prakhar-dhakar__Image-Captioning/Flickr8k.token.txt", tmp_path))
    assert len(counts) == 8093
    assert counts["2258277193_586949ec62.jpg.1"] == 1 and counts["2258277193_586949ec62.jpg"] == 4


def test_real_crlf_variant(real_data: Path, tmp_path: Path) -> None:
    table = read(real_data / "variants/Sadika1212__Image-Caption-Generator/Flickr8k.token.txt", tmp_path)
    assert table.num_rows == 40450 and len(per_image(table)) == 8090
    assert not any(c.endswith("\r") for c in table.column("caption").to_pylist())


def test_real_crlf_split_list_without_final_newline(real_data: Path, tmp_path: Path) -> None:
    splits = (("train", real_data / "variants/CRamyasree__image_caption/Flickr_8k.trainImages.txt"),)
    table = read(real_data / "Flickr8k.token.txt", tmp_path, splits)
    train = table.filter(pc.equal(table.column("split"), "train"))
    assert len(per_image(train)) == 6000 and train.num_rows == 30000


def test_real_kaggle_captions_match_the_token_file(real_data: Path, tmp_path: Path) -> None:
    kaggle = read(real_data / "captions.txt", tmp_path)
    counts = per_image(kaggle)
    assert kaggle.num_rows == 40455 and len(counts) == 8091 and set(counts.values()) == {5}
    quoted = "A dog shakes its head near the shore , a red ball next to it ."
    assert quoted in kaggle.column("caption").to_pylist()
    token = read(real_data / "Flickr8k.token.txt", tmp_path).to_pylist()
    token_caps = [(r["file_name"], r["caption"]) for r in token if not r["file_name"].endswith(".1")]
    assert [(r["file_name"], r["caption"]) for r in kaggle.to_pylist()] == token_caps
    assert [r["caption_id"] for r in kaggle.to_pylist()[:6]] == ["0", "1", "2", "3", "4", "0"]


def test_real_spell_corrected_kaggle_captions(real_data: Path, tmp_path: Path) -> None:
    table = read(real_data / "variants/Harsh011000__Image-Captioning/captions.txt", tmp_path)
    counts = per_image(table)
    assert table.num_rows == 40455 and len(counts) == 8091 and set(counts.values()) == {5}


def test_real_files_are_sniffed(real_data: Path) -> None:
    assert FlickrReader.sniff(real_data / "Flickr8k.token.txt")
    assert FlickrReader.sniff(real_data / "captions.txt")
    assert not FlickrReader.sniff(real_data / "Flickr_8k.trainImages.txt")
    assert not FlickrReader.sniff(real_data / "captions_val2017.json")
