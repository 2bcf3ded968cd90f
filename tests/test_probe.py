"""Stage probe (pipeline.probe): every distinct image reference once, each with a hash or a reason."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pyarrow as pa
import pytest
from synth import image_bytes, write_images

from pipeline.executors import make_executor
from pipeline.probe import distinct_refs, probe_images
from pipeline.readers import SourceSpec, get_reader
from pipeline.schema import batches_from_rows


def rows_naming(paths: list[str | None]) -> pa.Table:
    records = [{"location": f"c:{n}", "caption": "a caption", "split": "train", "image_path": p}
               for n, p in enumerate(paths)]
    return pa.Table.from_batches(list(batches_from_rows(records)))


@pytest.mark.parametrize("workers", [1, 2])
def test_each_reference_is_probed_once_with_its_hash_or_its_reason(tmp_path: Path, workers: int) -> None:
    images = tmp_path / "images"
    good = write_images(images, ["a.jpg", "b.jpg"])
    (images / "empty.jpg").write_bytes(b"")
    (images / "page.jpg").write_bytes(b"<html>not here</html>")
    (images / "folder.jpg").mkdir()
    paths = [str(images / n) for n in ("a.jpg", "b.jpg", "a.jpg", "empty.jpg", "page.jpg", "folder.jpg", "gone.jpg")]
    rows = rows_naming([*paths, None])
    refs = distinct_refs(rows)
    assert refs.num_rows == 6  # a.jpg once, the row without a reference not at all

    reader = get_reader("table")(SourceSpec(path=str(tmp_path / "c.csv"), images=images))
    with contextlib.closing(make_executor("process", workers, context=reader)) as executor:
        seen: list[int] = []
        probed = probe_images(refs, reader, executor, formats=("JPEG",), max_pixels=10**6, on_progress=seen.append)
    assert sum(seen) == 6
    by_name = {Path(r["image_path"]).name: r for r in probed.to_pylist()}
    assert list(by_name) == sorted(by_name)  # sorted by path, whatever the workers' order
    for name in ("a.jpg", "b.jpg"):
        assert by_name[name]["image_reason"] is None and by_name[name]["n_bytes"] == len(good[name])
        assert (by_name[name]["format"], by_name[name]["width"], by_name[name]["height"]) == ("JPEG", 32, 24)
    assert {n: r["image_reason"] for n, r in by_name.items() if r["image_reason"]} == {
        "empty.jpg": "empty_image",
        "page.jpg": "not_an_image",
        "folder.jpg": "not_a_file",
        "gone.jpg": "missing_image",
    }
    assert "gone.jpg" in by_name["gone.jpg"]["image_detail"]


def test_phash_is_computed_only_when_asked(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "p.png").write_bytes(image_bytes(2, "PNG", (40, 40)))
    refs = distinct_refs(rows_naming([str(images / "p.png")]))
    reader = get_reader("table")(SourceSpec(path=str(tmp_path / "c.csv"), images=images))
    with contextlib.closing(make_executor("process", 1, context=reader)) as executor:
        plain = probe_images(refs, reader, executor, formats=("PNG",), max_pixels=10**6)
        hashed = probe_images(refs, reader, executor, formats=("PNG",), max_pixels=10**6, phash=True)
    assert plain["phash"].to_pylist() == [None]
    assert isinstance(hashed["phash"].to_pylist()[0], int)
