"""The hf reader: in-memory, save_to_disk, parquet/arrow files and cached hub datasets."""

from __future__ import annotations

import pickle
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import caption_text, flattened_dataset, image_bytes, nlphuji_dataset, write_images

from pipeline.errors import UsageError
from pipeline.readers.base import ImageUnavailable, SourceSpec
from pipeline.readers.hf import HFReader
from pipeline.readers.table import TableReader
from pipeline.schema import CAPTION_ROWS

SPLITS = ("train", "val", "test")


def read(reader: HFReader) -> pa.Table:
    return pa.Table.from_batches(list(reader.read()), schema=CAPTION_ROWS)


def hf(path: Path | str | None = None, **kwargs: object) -> HFReader:
    return HFReader(SourceSpec(path=None if path is None else str(path), **kwargs))  # type: ignore[arg-type]


def check_nlphuji(table: pa.Table, n_images: int, label: str = "test") -> None:
    """Every nlphuji caption, in order, with its sentid, split column, img_id and file name."""
    assert table.num_rows == n_images * 5
    assert table.column("row_id").to_pylist() == list(range(n_images * 5))
    rows = table.to_pylist()
    for i in range(n_images):
        for n in range(5):
            row = rows[i * 5 + n]
            assert row["caption"] == caption_text(i, n)
            assert row["caption_id"] == str(i * 5 + n)
            assert row["split"] == SPLITS[i % 3]  # the column, not the HF split "test"
            assert row["id_hint"] == str(i)
            assert row["file_name"] == f"{1000 + i}.jpg"
            assert row["image_index"] == i
            assert row["image_path"] is None
            assert row["location"] == f"{label}[{i}]#{n}"
            assert row["reject"] is None


# --- nlphuji/flickr30k layout --------------------------------------------------------------------


def test_in_memory_nlphuji_one_row_per_caption() -> None:
    reader = hf(dataset=nlphuji_dataset(6))
    check_nlphuji(read(reader), 6)
    assert reader.multi_caption() is True
    assert reader.id_column() == "img_id"


def test_save_to_disk_dataset(tmp_path: Path) -> None:
    nlphuji_dataset(4).save_to_disk(str(tmp_path / "flickr30k"))
    assert HFReader.sniff(tmp_path / "flickr30k")
    reader = hf(tmp_path / "flickr30k")
    check_nlphuji(read(reader), 4)
    assert [reader.open_image(None, i) for i in range(4)] == [image_bytes(i) for i in range(4)]


def test_open_image_after_pickling(tmp_path: Path) -> None:
    nlphuji_dataset(3).save_to_disk(str(tmp_path / "ds"))
    reader = hf(tmp_path / "ds")
    read(reader)  # opens the dataset in this process first
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._parts is None  # the open dataset is not shipped to workers
    assert clone.open_image(None, 2) == image_bytes(2)
    memory = pickle.loads(pickle.dumps(hf(dataset=nlphuji_dataset(3))))
    assert memory.open_image(None, 1) == image_bytes(1)


def test_save_to_disk_dataset_dict_maps_global_index(tmp_path: Path) -> None:
    whole = nlphuji_dataset(5).remove_columns("split")
    dd = datasets.DatasetDict({"train": whole.select(range(3)), "validation": whole.select(range(3, 5))})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert HFReader.sniff(tmp_path / "dd")
    for reader in (hf(tmp_path / "dd"), hf(dataset=dd)):  # saved, and in memory with an indices mapping
        table = read(reader)
        assert table.num_rows == 25
        assert table.column("split").to_pylist() == ["train"] * 15 + ["validation"] * 10
        assert table.column("caption").to_pylist() == [caption_text(i, n) for i in range(5) for n in range(5)]
        assert table.column("location").to_pylist()[15] == "validation[0]#0"
        indices = table.column("image_index").to_pylist()
        assert indices[::5] == [0, 1, 2, 3, 4]
        assert [reader.open_image(None, i) for i in indices[::5]] == [image_bytes(i) for i in range(5)]


def test_shuffled_dataset_follows_its_indices_mapping() -> None:
    ds = nlphuji_dataset(6).shuffle(seed=3)
    order = [int(i) for i in ds["img_id"]]
    assert order != sorted(order)
    reader = hf(dataset=ds)
    table = read(reader)
    assert table.column("id_hint").to_pylist()[::5] == [str(i) for i in order]
    assert [reader.open_image(None, k) for k in range(6)] == [image_bytes(i) for i in order]


def test_split_from_dataset_split_else_train() -> None:
    plain = flattened_dataset(2, 2).remove_columns("split")
    assert set(read(hf(dataset=plain)).column("split").to_pylist()) == {"train"}
    named = datasets.Dataset.from_dict(plain.to_dict(), features=plain.features, split="validation")
    assert set(read(hf(dataset=named)).column("split").to_pylist()) == {"validation"}


def test_restval_in_split_column_is_mapped() -> None:
    ds = nlphuji_dataset(3, splits=("restval", "test"))
    splits = read(hf(dataset=ds, restval="val")).column("split").to_pylist()
    assert splits[::5] == ["val", "test", "val"]


# --- the flattened layout of the original bug -----------------------------------------------------


def test_flattened_layout_read_faithfully() -> None:
    ds = flattened_dataset(4, captions=3, seed=7)
    reader = hf(dataset=ds)
    table = read(reader)
    assert table.num_rows == 12
    assert table.column("caption").to_pylist() == ds["caption"]  # shuffled order kept
    assert table.column("id_hint").to_pylist() == [str(i) for i in range(12)]  # the row counter, as published
    assert table.column("image_index").to_pylist() == list(range(12))
    assert table.column("caption_id").to_pylist() == [None] * 12
    assert reader.multi_caption() is False
    assert reader.id_column() == "id"
    for row in table.to_pylist():
        image = int(row["caption"].split()[1])  # "picture {i} described ..."
        assert reader.open_image(None, row["image_index"]) == image_bytes(image)


# --- other layouts --------------------------------------------------------------------------------


def test_single_caption_binary_image_and_alternate_names() -> None:
    ds = datasets.Dataset.from_dict(
        {
            "img": [image_bytes(i) for i in range(3)],
            "text": [f"cap {i}" for i in range(3)],
            "image_id": [7, 8, 9],
        }
    )
    reader = hf(dataset=ds)
    table = read(reader)
    assert table.column("caption").to_pylist() == ["cap 0", "cap 1", "cap 2"]
    assert table.column("id_hint").to_pylist() == ["7", "8", "9"]
    assert table.column("file_name").to_pylist() == [None] * 3
    assert reader.multi_caption() is False
    assert reader.open_image(None, 2) == image_bytes(2)


def test_path_column_resolved_against_images_or_dataset_folder(tmp_path: Path) -> None:
    images = write_images(tmp_path / "imgs", ["a.jpg", "sub/b.jpg"])
    ds = datasets.Dataset.from_dict({"image": ["a.jpg", "sub/b.jpg"], "caption": ["one", "two"]})
    table = read(hf(dataset=ds, images=tmp_path / "imgs"))
    assert table.column("image_path").to_pylist() == [str(tmp_path / "imgs" / n) for n in images]
    assert table.column("file_name").to_pylist() == ["a.jpg", "b.jpg"]
    assert table.column("image_index").to_pylist() == [None, None]
    # Without --images, relative paths are relative to the save_to_disk folder.
    ds.save_to_disk(str(tmp_path / "imgs" / "ds"))
    reader = hf(tmp_path / "imgs" / "ds")
    paths = read(reader).column("image_path").to_pylist()
    assert paths[0] == str(tmp_path / "imgs" / "ds" / "a.jpg")
    with pytest.raises(ImageUnavailable) as err:
        reader.open_image(paths[0], None)
    assert err.value.reason == "missing_image"


def test_image_struct_without_bytes_uses_its_path(tmp_path: Path) -> None:
    images = write_images(tmp_path / "imgs", ["x.jpg"])
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": None, "path": "x.jpg"}, {"bytes": image_bytes(5), "path": "y.jpg"}],
            "caption": ["a", "b"],
        },
        features=features,
    )
    reader = hf(dataset=ds, images=tmp_path / "imgs")
    rows = read(reader).to_pylist()
    assert rows[0]["image_path"] == str(tmp_path / "imgs" / "x.jpg") and rows[0]["image_index"] is None
    assert reader.open_image(rows[0]["image_path"], None) == images["x.jpg"]
    assert rows[1]["image_path"] is None and rows[1]["image_index"] == 1 and rows[1]["file_name"] == "y.jpg"
    assert reader.open_image(None, 1) == image_bytes(5)


def test_row_without_image_names_none() -> None:
    ds = datasets.Dataset.from_dict({"image": [image_bytes(0), None], "caption": ["a", "b"]})
    rows = read(hf(dataset=ds)).to_pylist()
    assert (rows[1]["image_path"], rows[1]["image_index"]) == (None, None)  # resolve rejects: missing_image


def test_karpathy_style_sentences_use_raw() -> None:
    sentences = [
        [{"raw": f"img {i} cap {n}", "sentid": 10 * i + n, "tokens": ["x"]} for n in range(2)]
        for i in range(2)
    ]
    ds = datasets.Dataset.from_dict(
        {"image": [image_bytes(i) for i in range(2)], "sentences": sentences, "cocoid": [5, 6]}
    )
    reader = hf(dataset=ds)
    table = read(reader)
    assert table.column("caption").to_pylist() == ["img 0 cap 0", "img 0 cap 1", "img 1 cap 0", "img 1 cap 1"]
    assert table.column("caption_id").to_pylist() == ["0", "1", "0", "1"]
    assert table.column("id_hint").to_pylist() == ["5", "5", "6", "6"]
    assert reader.multi_caption() is True and reader.id_column() == "cocoid"


def test_fixed_length_caption_sequence() -> None:
    features = datasets.Features(
        {"image": datasets.Value("binary"), "caption": datasets.Sequence(datasets.Value("string"), length=2)}
    )
    ds = datasets.Dataset.from_dict({"image": [image_bytes(0)], "caption": [["a", "b"]]}, features=features)
    reader = hf(dataset=ds)
    assert read(reader).column("caption").to_pylist() == ["a", "b"]
    assert reader.multi_caption() is True


def test_caption_not_utf8_is_rejected_row() -> None:
    ds = datasets.Dataset.from_dict(
        {"image": [image_bytes(0), image_bytes(1)], "caption": [b"fine", b"\xff\xfe broken"]},
        features=datasets.Features({"image": datasets.Value("binary"), "caption": datasets.Value("binary")}),
    )
    rows = read(hf(dataset=ds)).to_pylist()
    assert (rows[0]["caption"], rows[0]["reject"]) == ("fine", None)
    assert (rows[1]["caption"], rows[1]["reject"]) == (None, "caption_not_utf8")


def test_captions_not_stripped_and_empty_list_kept() -> None:
    ds = datasets.Dataset.from_dict(
        {"image": [image_bytes(0), image_bytes(1)], "caption": [["  a dog \n"], []]}
    )
    rows = read(hf(dataset=ds)).to_pylist()
    assert [r["caption"] for r in rows] == ["  a dog \n", None]  # resolve strips / rejects missing_caption
    assert rows[1]["image_index"] == 1


# --- columns --------------------------------------------------------------------------------------


def test_missing_image_column_lists_columns() -> None:
    ds = datasets.Dataset.from_dict({"picture": [b"x"], "caption": ["c"]})
    with pytest.raises(
        UsageError, match=r"no image column .*image, img, jpg, png.*columns: picture, caption"
    ):
        read(hf(dataset=ds))


def test_missing_caption_column_lists_columns(tmp_path: Path) -> None:
    datasets.Dataset.from_dict({"image": [b"x"], "label": [1]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(UsageError, match=r"ds: no caption column .*columns: image, label"):
        hf(tmp_path / "ds").multi_caption()


def test_named_column_overrides_detection() -> None:
    ds = datasets.Dataset.from_dict(
        {"image": [image_bytes(0)], "caption": ["auto"], "alt": ["chosen"], "key": ["k1"], "part": ["val"]}
    )
    table = read(hf(dataset=ds, caption_column="alt", id_column="key", split_column="part"))
    row = table.to_pylist()[0]
    assert (row["caption"], row["id_hint"], row["split"]) == ("chosen", "k1", "val")
    with pytest.raises(
        UsageError, match=r"no caption column 'nope'; columns: image, caption, alt, key, part"
    ):
        read(hf(dataset=ds, caption_column="nope"))


def test_unusable_column_type_is_named() -> None:
    ds = datasets.Dataset.from_dict({"image": [image_bytes(0)], "caption": [3]})
    with pytest.raises(UsageError, match=r"column 'caption' has type int64"):
        read(hf(dataset=ds))


# --- files: parquet and arrow ---------------------------------------------------------------------


def test_parquet_file_from_to_parquet(tmp_path: Path) -> None:
    nlphuji_dataset(4).to_parquet(str(tmp_path / "train.parquet"))
    assert HFReader.sniff(tmp_path / "train.parquet")
    reader = hf(tmp_path / "train.parquet")
    check_nlphuji(read(reader), 4, label="train.parquet")
    clone = pickle.loads(pickle.dumps(reader))
    assert [clone.open_image(None, i) for i in range(4)] == [image_bytes(i) for i in range(4)]


def test_parquet_folder_splits_from_file_names(tmp_path: Path) -> None:
    ds = nlphuji_dataset(5).remove_columns("split")
    (tmp_path / "data").mkdir()
    ds.select(range(3)).to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    ds.select(range(3, 5)).to_parquet(str(tmp_path / "data" / "test-00000-of-00001.parquet"))
    (tmp_path / "README.md").write_text("# card\n")
    assert HFReader.sniff(tmp_path)
    reader = hf(tmp_path)
    table = read(reader)
    assert table.column("split").to_pylist() == ["train"] * 15 + ["test"] * 10
    assert table.column("location").to_pylist()[15] == "data/test-00000-of-00001.parquet[0]#0"
    assert reader.open_image(None, 4) == image_bytes(4)


def test_plain_parquet_belongs_to_table(tmp_path: Path) -> None:
    pq.write_table(pa.table({"image": ["a.jpg"], "caption": ["c"]}), tmp_path / "plain.parquet")
    assert not HFReader.sniff(tmp_path / "plain.parquet")
    assert not HFReader.sniff(tmp_path)
    assert TableReader.sniff(tmp_path / "plain.parquet")


def test_arrow_file(tmp_path: Path) -> None:
    nlphuji_dataset(3).save_to_disk(str(tmp_path / "ds"))
    arrow = next((tmp_path / "ds").glob("*.arrow"))
    assert HFReader.sniff(arrow)
    reader = hf(arrow)
    table = read(reader)
    assert table.num_rows == 15
    assert table.column("location").to_pylist()[0] == f"{arrow.name}[0]#0"
    assert reader.open_image(None, 2) == image_bytes(2)


def test_sniff_rejects_other_things(tmp_path: Path) -> None:
    (tmp_path / "captions.csv").write_text("image,caption\n")
    assert not HFReader.sniff(tmp_path / "captions.csv")
    assert not HFReader.sniff(tmp_path)


# --- hub names ------------------------------------------------------------------------------------


def test_uncached_hub_name_is_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UsageError, match=r"'nobody/no-such-dataset' is neither a local path nor a cached"):
        read(hf("nobody/no-such-dataset"))
    for path in (
        str(tmp_path / "missing.csv"),
        "./missing",
        "csv",
    ):  # never a hub name, never the cwd's files
        with pytest.raises(
            UsageError, match=r"is neither a local path nor a cached .*no such file or folder"
        ):
            read(hf(path))


def test_cached_hub_name_loads_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "capshard_tiny"
    repo.mkdir()
    nlphuji_dataset(3).to_parquet(str(repo / "test-00000-of-00001.parquet"))
    datasets.load_dataset(str(repo))  # fills the cache the way a first online load would
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the name is not a local path here
    reader = hf("capshard_tiny")
    check_nlphuji(read(reader), 3)
    assert reader.open_image(None, 1) == image_bytes(1)
    assert reader.fingerprint() == hf("capshard_tiny").fingerprint()


# --- fingerprints ---------------------------------------------------------------------------------


def test_fingerprint_from_dataset_fingerprints(tmp_path: Path) -> None:
    a, b = nlphuji_dataset(3), nlphuji_dataset(4)
    assert hf(dataset=a).fingerprint() == hf(dataset=a).fingerprint()
    assert hf(dataset=a).fingerprint() != hf(dataset=b).fingerprint()
    assert hf(dataset=a).fingerprint() != hf(dataset=a.select([2, 1, 0])).fingerprint()  # same rows, new order
    a.save_to_disk(str(tmp_path / "a"))
    b.save_to_disk(str(tmp_path / "b"))
    saved = hf(tmp_path / "a").fingerprint()
    assert saved.startswith("sha256:") and saved == hf(tmp_path / "a").fingerprint()
    assert saved != hf(tmp_path / "b").fingerprint()
    assert hf(tmp_path / "a").annotation_files() == [
        tmp_path / "a" / "dataset_info.json",
        tmp_path / "a" / "state.json",
    ]


# --- any table round-trips ------------------------------------------------------------------------

captions = st.text(st.characters(codec="utf-8"), max_size=20)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(captions, max_size=4) | captions, min_size=1, max_size=8))
def test_any_dataset_round_trips(records: list[list[str] | str]) -> None:
    if any(isinstance(r, list) for r in records):  # a column is all lists or all strings
        records = [r if isinstance(r, list) else [r] for r in records]
    ds = datasets.Dataset.from_dict({"image": [image_bytes(0)] * len(records), "caption": records})
    table = read(hf(dataset=ds))
    expected: list[str | None] = []
    for r in records:
        expected.extend((r if isinstance(r, list) else [r]) or [None])  # an empty list: one null caption
    assert table.column("caption").to_pylist() == expected
    assert table.column("row_id").to_pylist() == list(range(len(expected)))
