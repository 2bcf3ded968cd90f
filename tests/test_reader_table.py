"""The table reader: CSV/TSV, JSON Lines and parquet caption tables."""

from __future__ import annotations

import csv
import json
import pickle
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import caption_text, image_bytes, write_images

from pipeline.errors import SourceError, UsageError
from pipeline.readers.base import ImageUnavailable, SourceSpec
from pipeline.readers.table import TableReader
from pipeline.schema import CAPTION_ROWS


def table_reader(path: Path, **kwargs: object) -> TableReader:
    return TableReader(SourceSpec(path=str(path), **kwargs))  # type: ignore[arg-type]


def read(reader: TableReader) -> pa.Table:
    return pa.Table.from_batches(list(reader.read()), schema=CAPTION_ROWS)


def write_csv(path: Path, header: list[str], rows: list[list[str]], lineterminator: str = "\n") -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator=lineterminator)
        writer.writerow(header)
        writer.writerows(rows)


# --- CSV --------------------------------------------------------------------------------------------


def test_csv_quoted_commas_crlf_and_relative_paths(tmp_path: Path) -> None:
    images = write_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    rows = [
        ["images/a.jpg", "A dog shakes its head near the shore , a red ball next to it ."],
        ["images/a.jpg", 'a "quoted" word'],
        ["images/b.jpg", "  kept as published "],
    ]
    write_csv(tmp_path / "captions.csv", ["image", "caption"], rows, lineterminator="\r\n")
    assert b"\r\n" in (tmp_path / "captions.csv").read_bytes()
    reader = table_reader(tmp_path / "captions.csv")
    table = read(reader)
    assert table.column("row_id").to_pylist() == [0, 1, 2]
    assert table.column("caption").to_pylist() == [r[1] for r in rows]
    assert table.column("location").to_pylist() == ["captions.csv:2", "captions.csv:3", "captions.csv:4"]
    assert table.column("image_path").to_pylist() == [str(tmp_path / r[0]) for r in rows]
    assert table.column("file_name").to_pylist() == ["a.jpg", "a.jpg", "b.jpg"]
    assert table.column("split").to_pylist() == ["train"] * 3
    assert table.column("image_index").to_pylist() == [None] * 3
    assert table.column("caption_id").to_pylist() == [None] * 3
    assert reader.multi_caption() is False
    assert reader.open_image(table.column("image_path")[2].as_py(), None) == images["b.jpg"]


def test_csv_paths_relative_to_images_and_absolute(tmp_path: Path) -> None:
    write_images(tmp_path / "pics", ["x.jpg"])
    absolute = tmp_path / "elsewhere" / "y.jpg"
    write_csv(
        tmp_path / "c.csv",
        ["file", "text", "key", "part"],
        [["x.jpg", "one", "7", "val"], [str(absolute), "two", "", "restval"]],
    )
    reader = table_reader(
        tmp_path / "c.csv",
        images=tmp_path / "pics",
        image_column="file",
        caption_column="text",
        id_column="key",
        split_column="part",
        restval="test",
    )
    table = read(reader)
    assert table.column("image_path").to_pylist() == [str(tmp_path / "pics" / "x.jpg"), str(absolute)]
    assert table.column("id_hint").to_pylist() == ["7", None]
    assert table.column("split").to_pylist() == ["val", "test"]
    assert reader.id_column() == "key"
    # With --images, every image must be inside that folder: an absolute path elsewhere is refused.
    with pytest.raises(ImageUnavailable) as err:
        reader.open_image(str(absolute), None)
    assert err.value.reason == "path_outside_images"
    assert table_reader(tmp_path / "c.csv", image_column="file", caption_column="text").open_image(
        str(tmp_path / "pics" / "x.jpg"), None
    ) == image_bytes(0)


def test_csv_wrong_field_count_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text('image,caption\na.jpg,"two\nlines"\nb.jpg,fine\nc.jpg,one,extra\n')
    with pytest.raises(
        SourceError, match=r"bad\.csv:5: expected 2 fields \(image, caption\), found 3"
    ) as err:
        read(table_reader(path))
    assert err.value.where == 5


def test_csv_embedded_newline_location_is_first_line(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('image,caption\na.jpg,"two\nlines"\n\nb.jpg,fine\n')
    table = read(table_reader(path))
    assert table.column("caption").to_pylist() == ["two\nlines", "fine"]  # the blank line is skipped
    assert table.column("location").to_pylist() == ["c.csv:2", "c.csv:5"]


def test_csv_missing_column_lists_columns(tmp_path: Path) -> None:
    write_csv(tmp_path / "c.csv", ["image", "text"], [["a.jpg", "x"]])
    with pytest.raises(UsageError, match=r"c\.csv:1: no caption column 'caption'; columns: image, text"):
        read(table_reader(tmp_path / "c.csv"))


def test_csv_empty_file_needs_header(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("")
    with pytest.raises(SourceError, match="header row"):
        read(table_reader(tmp_path / "c.csv"))


def test_csv_caption_not_utf8_is_rejected_row(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_bytes(b"image,caption\na.jpg,caf\xe9\nb.jpg,ok\n")
    rows = read(table_reader(tmp_path / "c.csv")).to_pylist()
    assert [(r["caption"], r["reject"]) for r in rows] == [(None, "caption_not_utf8"), ("ok", None)]


def test_tsv_has_no_quoting(tmp_path: Path) -> None:
    (tmp_path / "c.tsv").write_text('image\tcaption\na.jpg\ta "lone quote\nb.jpg\tnext\n')
    table = read(table_reader(tmp_path / "c.tsv"))
    assert table.column("caption").to_pylist() == ['a "lone quote', "next"]


def test_real_kaggle_captions_csv(real_data: Path) -> None:
    table = read(table_reader(real_data / "captions.txt"))  # Kaggle's CSV under a .txt name
    assert table.num_rows == 40_455
    assert (
        "A dog shakes its head near the shore , a red ball next to it ."
        in table.column("caption").to_pylist()
    )
    assert len(set(table.column("file_name").to_pylist())) == 8_091


# --- JSON Lines -------------------------------------------------------------------------------------


def test_jsonl_caption_lists(tmp_path: Path) -> None:
    write_images(tmp_path, ["a.jpg", "b.jpg"])
    lines = [
        {"image": "a.jpg", "caption": [caption_text(0, n) for n in range(3)], "split": "val", "id": 1},
        {"image": "b.jpg", "caption": [caption_text(1, 0)], "split": "test", "id": 2},
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    reader = table_reader(tmp_path / "c.jsonl", split_column="split", id_column="id")
    table = read(reader)
    assert table.column("caption").to_pylist() == [caption_text(0, n) for n in range(3)] + [
        caption_text(1, 0)
    ]
    assert table.column("caption_id").to_pylist() == ["0", "1", "2", "0"]
    assert table.column("location").to_pylist() == [
        "c.jsonl:1#0",
        "c.jsonl:1#1",
        "c.jsonl:1#2",
        "c.jsonl:2#0",
    ]
    assert table.column("split").to_pylist() == ["val"] * 3 + ["test"]
    assert table.column("id_hint").to_pylist() == ["1"] * 3 + ["2"]
    assert reader.multi_caption() is True


def test_jsonl_broken_line_names_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "x"}\n\n{"image": "b.jpg", "caption": "y"\n')
    with pytest.raises(SourceError, match=r"c\.jsonl:3: invalid JSON") as err:
        read(table_reader(path))
    assert err.value.where == 3


def test_jsonl_non_object_and_missing_key(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('["a.jpg", "x"]\n')
    with pytest.raises(SourceError, match=r"a\.jsonl:1: expected a JSON object, found list"):
        read(table_reader(tmp_path / "a.jsonl"))
    (tmp_path / "b.jsonl").write_text('{"image": "a.jpg", "caption": "x"}\n{"image": "b.jpg", "text": "y"}\n')
    with pytest.raises(UsageError, match=r"b\.jsonl:2: no caption column 'caption'; columns: image, text"):
        read(table_reader(tmp_path / "b.jsonl"))
    (tmp_path / "c.jsonl").write_text('{"image": "a.jpg", "caption": 5}\n')
    with pytest.raises(SourceError, match=r"c\.jsonl:1: caption is a int"):
        read(table_reader(tmp_path / "c.jsonl"))


# --- parquet ----------------------------------------------------------------------------------------


def test_parquet_bytes_column_and_caption_lists(tmp_path: Path) -> None:
    data = pa.table(
        {
            "image": pa.array([image_bytes(i) for i in range(3)], pa.binary()),
            "caption": [["a", "b"], ["c"], ["d", "e", "f"]],
        }
    )
    pq.write_table(data, tmp_path / "t.parquet", row_group_size=2)
    reader = table_reader(tmp_path / "t.parquet")
    table = read(reader)
    assert table.column("caption").to_pylist() == list("abcdef")
    assert table.column("image_index").to_pylist() == [0, 0, 1, 2, 2, 2]
    assert table.column("image_path").to_pylist() == [None] * 6
    assert table.column("location").to_pylist()[3] == "t.parquet[2]#0"
    assert reader.multi_caption() is True
    clone = pickle.loads(pickle.dumps(reader))
    assert [clone.open_image(None, i) for i in (2, 0, 1)] == [image_bytes(i) for i in (2, 0, 1)]


def test_parquet_folder_of_path_tables(tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", ["a.jpg", "b.jpg"])
    (tmp_path / "t").mkdir()
    pq.write_table(pa.table({"image": ["imgs/a.jpg"], "caption": ["one"]}), tmp_path / "t" / "0.parquet")
    pq.write_table(pa.table({"image": ["imgs/b.jpg"], "caption": ["two"]}), tmp_path / "t" / "1.parquet")
    assert TableReader.sniff(tmp_path / "t")
    reader = table_reader(tmp_path / "t", images=tmp_path)
    table = read(reader)
    assert table.column("caption").to_pylist() == ["one", "two"]
    assert table.column("image_path").to_pylist() == [str(tmp_path / "imgs" / n) for n in ("a.jpg", "b.jpg")]
    assert table.column("location").to_pylist() == ["0.parquet[0]", "1.parquet[0]"]
    assert reader.multi_caption() is False


def test_parquet_missing_column_lists_columns(tmp_path: Path) -> None:
    pq.write_table(pa.table({"img": [b"x"], "caption": ["c"]}), tmp_path / "t.parquet")
    with pytest.raises(UsageError, match=r"t\.parquet: no image column 'image'; columns: img, caption"):
        read(table_reader(tmp_path / "t.parquet"))


def test_sniff(tmp_path: Path) -> None:
    for name in ("a.csv", "a.tsv", "a.jsonl", "a.parquet"):
        (tmp_path / name).write_text("")
        assert TableReader.sniff(tmp_path / name)
    (tmp_path / "a.json").write_text("{}")
    assert not TableReader.sniff(tmp_path / "a.json")


# --- any table round-trips --------------------------------------------------------------------------

texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)


def write_table(folder: Path, fmt: str, records: list[tuple[str, list[str] | str]]) -> Path:
    path = folder / f"captions.{fmt}"
    if fmt == "csv":
        # "\r\n" terminators make csv.writer quote any caption holding "\r" or "\n".
        write_csv(path, ["image", "caption"], [[image, str(caption)] for image, caption in records], "\r\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in records))
    else:
        pq.write_table(pa.table({"image": [i for i, _ in records], "caption": [c for _, c in records]}), path)
    return path


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(["csv", "jsonl", "parquet"]),
    captions=st.lists(texts, min_size=1, max_size=12),
    lists=st.booleans(),
)
def test_any_table_round_trips(fmt: str, captions: list[str], lists: bool) -> None:
    lists = lists and fmt != "csv"
    records: list[tuple[str, list[str] | str]] = [
        (f"img{i // 2}.jpg", [c, c + "!"] if lists else c) for i, c in enumerate(captions)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        table = read(table_reader(write_table(Path(tmp), fmt, records)))
    expected = [c for _, cap in records for c in (cap if isinstance(cap, list) else [cap])]
    assert table.column("caption").to_pylist() == expected
    assert table.column("row_id").to_pylist() == list(range(len(expected)))
    images = [image for image, cap in records for _ in (cap if isinstance(cap, list) else [cap])]
    assert table.column("file_name").to_pylist() == images


def test_paths_that_leave_the_images_folder_are_refused(tmp_path: Path) -> None:
    write_images(tmp_path / "images", ["ok.jpg"])
    (tmp_path / "secret.jpg").write_bytes(image_bytes(99))
    write_csv(tmp_path / "pairs.csv", ["image", "caption"], [["ok.jpg", "fine"], ["../secret.jpg", "sneaky"]])
    reader = table_reader(tmp_path / "pairs.csv", images=tmp_path / "images")
    rows = read(reader).to_pylist()
    assert reader.open_image(rows[0]["image_path"], None) == image_bytes(0)
    with pytest.raises(ImageUnavailable) as err:
        reader.open_image(rows[1]["image_path"], None)
    assert err.value.reason == "path_outside_images"
