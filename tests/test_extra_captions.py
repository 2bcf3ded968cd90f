"""``--captions FILE --join-on …``: extra caption tables joined to the resolved images, for every reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synth import caption_text, coco_json, flickr_token_file, img2dataset_folder, nlphuji_dataset, write_images
from test_format_doc import documented, field_paths

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.errors import OutputError
from pipeline.readers import CaptionSource, SourceSpec
from pipeline.verify import verify

REPO = Path(__file__).resolve().parents[1]


def samples(out: Path) -> dict[str, dict[str, Any]]:
    """``image_id -> KEY.json`` of every sample of a build."""
    found = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    f = tar.extractfile(m)
                    assert f is not None
                    meta = json.load(f)
                    found[meta["image_id"]] = meta
    return found


def rejects(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def check_accounting(out: Path, manifest: dict[str, Any]) -> None:
    """Every row in a shard or in the rejects; the index column matches every sample; verify agrees."""
    counts = manifest["counts"]
    assert counts["captions"] + counts["rejected_rows"] == counts["rows"]
    row_ids = sorted(
        [r for s in samples(out).values() for r in s["source"]["row_ids"]] + [r["row_id"] for r in rejects(out)]
    )
    assert row_ids == list(range(counts["rows"]))
    index = {r["image_id"]: r for r in pq.read_table(out / "index.parquet").to_pylist()}
    for image_id, meta in samples(out).items():
        assert len(meta["caption_sources"]) == len(meta["captions"]) == index[image_id]["captions"]
        assert index[image_id]["caption_sources"] == meta["caption_sources"]
    assert verify(out).ok


def flickr(tmp_path: Path, n: int = 3) -> SourceSpec:
    names = [f"{1000 + i}.jpg" for i in range(n)]
    write_images(tmp_path / "img", names)
    flickr_token_file(tmp_path / "captions.token", names, 2)
    return SourceSpec(path=str(tmp_path / "captions.token"), images=tmp_path / "img")


def with_captions(spec: SourceSpec, *sources: CaptionSource) -> SourceSpec:
    return SourceSpec(**{**spec.__dict__, "captions": sources})


def config(out: Path, **kwargs: Any) -> BuildConfig:
    return BuildConfig(out=out, workers=1, max_reject_fraction=0.5, **kwargs)


# --- flickr: filename, two files in order ---------------------------------------------------------


def test_flickr_two_files_join_on_filename_in_order(tmp_path: Path) -> None:
    pq.write_table(
        pa.table(
            {
                "filename": ["1001.jpg", "nope.jpg", "1000.jpg", "1001.jpg"],
                "caption": [["long 1", "short 1"], ["orphan"], ["long 0"], []],
            }
        ),
        tmp_path / "recaps.parquet",
    )
    (tmp_path / "more.csv").write_text("filename,caption\n1001.jpg,from csv\nsub/1000.jpg,  \n1000.jpg,csv 0\n")
    spec = with_captions(
        flickr(tmp_path),
        CaptionSource(str(tmp_path / "recaps.parquet"), "filename"),
        CaptionSource(str(tmp_path / "more.csv"), "filename"),
    )
    result = build(spec, config(tmp_path / "out", format="flickr"))
    out = tmp_path / "out"
    found = samples(out)
    own = [caption_text(1, 0), caption_text(1, 1)]
    assert found["1001.jpg"]["captions"] == [*own, "long 1", "short 1", "from csv"]
    assert found["1001.jpg"]["caption_sources"] == ["source", "source", "recaps.parquet", "recaps.parquet", "more.csv"]
    assert found["1001.jpg"]["caption_ids"] == ["0", "1", None, None, None]
    assert found["1000.jpg"]["captions"][2:] == ["long 0", "csv 0"]
    assert found["1002.jpg"]["caption_sources"] == ["source", "source"]
    assert [(r["location"], r["reason"], r["detail"]) for r in rejects(out)] == [
        ("recaps.parquet[1]#0", "unknown_join_key", "recaps.parquet row 1: filename 'nope.jpg' matches no image"),
        ("recaps.parquet[3]", "missing_caption", "recaps.parquet row 3: missing caption"),
        ("more.csv[1]", "empty_caption", "more.csv row 1: caption is empty after stripping whitespace"),
    ]
    # 6 own rows + 5 parquet captions (one list empty) + 3 csv rows
    assert result.manifest["counts"] == {"rows": 14, "images": 3, "captions": 11, "rejected_rows": 3}
    assert [c["file"] for c in result.manifest["source"]["reading"]["captions"]] == ["recaps.parquet", "more.csv"]
    check_accounting(out, result.manifest)


def test_the_new_fields_are_in_the_format_spec(tmp_path: Path) -> None:
    (tmp_path / "re.csv").write_text("filename,caption\n1000.jpg,more\nnope.jpg,less\n")
    spec = with_captions(flickr(tmp_path), CaptionSource(str(tmp_path / "re.csv"), "filename", "caption"))
    result = build(spec, config(tmp_path / "out", format="flickr"))
    missing = field_paths(result.manifest) - documented("`manifest.json`")
    assert not missing, sorted(missing)
    assert "caption_sources" in documented("`index.parquet`")
    meta = samples(tmp_path / "out")["1000.jpg"]
    assert not field_paths(meta) - documented("Shards"), sorted(field_paths(meta) - documented("Shards"))


def test_without_captions_nothing_changes_shape(tmp_path: Path) -> None:
    build(flickr(tmp_path), config(tmp_path / "out", format="flickr"))
    assert "caption_sources" not in next(iter(samples(tmp_path / "out").values()))
    assert "caption_sources" not in pq.read_schema(tmp_path / "out" / "index.parquet").names
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "captions" not in manifest["source"]["reading"]


# --- coco: image_id ----------------------------------------------------------------------------------


def test_coco_join_on_image_id(tmp_path: Path) -> None:
    write_images(tmp_path / "img", ["a.jpg", "b.jpg"])
    coco_json(
        tmp_path / "captions_val2014.json",
        [(7, "a.jpg"), (9, "b.jpg")],
        [(1, 7, "a cat"), (2, 7, "a cat sitting"), (3, 9, "a dog")],
    )
    (tmp_path / "re.jsonl").write_text(
        "\n".join(json.dumps(r) for r in [{"image_id": 9, "text": "a dog, recaptioned"}, {"image_id": 8, "text": "x"}])
    )
    spec = SourceSpec(
        path=str(tmp_path / "captions_val2014.json"),
        images=tmp_path / "img",
        captions=(CaptionSource(str(tmp_path / "re.jsonl"), "image_id"),),
    )
    result = build(spec, config(tmp_path / "out", format="coco"))
    found = samples(tmp_path / "out")
    assert found["9"]["captions"] == ["a dog", "a dog, recaptioned"]
    assert found["7"]["caption_sources"] == ["source", "source"]
    assert [r["detail"] for r in rejects(tmp_path / "out")] == ["re.jsonl row 1: image_id '8' matches no image"]
    check_accounting(tmp_path / "out", result.manifest)


# --- table and hf: key (the source's id column) ---------------------------------------------------------


def test_table_and_hf_join_on_key(tmp_path: Path) -> None:
    write_images(tmp_path / "images", ["p.jpg", "q.jpg"])
    rows = ["image,caption,split,photo", "p.jpg,one,train,P1", "q.jpg,two,train,Q2", "p.jpg,three,train,P1"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "re.csv").write_text("key,recap\nQ2,two again\nP1,one again\n")
    spec = SourceSpec(
        path=str(tmp_path / "t.csv"),
        images=tmp_path / "images",
        id_column="photo",
        captions=(CaptionSource(str(tmp_path / "re.csv"), "key", "recap"),),
    )
    result = build(spec, config(tmp_path / "out", format="table"))
    found = samples(tmp_path / "out")
    assert found["P1"]["captions"] == ["one", "three", "one again"]
    assert found["Q2"]["captions"] == ["two", "two again"]
    check_accounting(tmp_path / "out", result.manifest)

    pq.write_table(pa.table({"key": ["2", "0"], "caption": ["hf two", "hf zero"]}), tmp_path / "hf.parquet")
    hf = SourceSpec(
        dataset=nlphuji_dataset(3, splits=("train",), captions=2),
        name="hfset",
        captions=(CaptionSource(str(tmp_path / "hf.parquet"), "key"),),
    )
    result = build(hf, config(tmp_path / "hf", format="hf"))
    found = samples(tmp_path / "hf")
    assert found["2"]["captions"] == [caption_text(2, 0), caption_text(2, 1), "hf two"]
    assert found["0"]["caption_sources"] == ["source", "source", "hf.parquet"]
    check_accounting(tmp_path / "hf", result.manifest)


# --- wds: key and url, img2dataset's repeated layout ---------------------------------------------------


def test_wds_repeated_layout_join_on_key_and_url(tmp_path: Path) -> None:
    written = img2dataset_folder(tmp_path / "d", n_images=3, captions_per_image=2, failed=1)
    # Keys as img2dataset writes them ("000000001"), in a CSV: they must stay text.
    keys = [str(w["key"]) for w in written]
    assert keys[1].startswith("0")
    (tmp_path / "by_key.csv").write_text(f"key,caption\n{keys[1]},by key 0\n{keys[4]},by key 2\n000000099,nobody\n")
    with open(tmp_path / "by_url.jsonl", "w") as f:
        f.write(json.dumps({"url": written[2]["url"], "captions": ["by url 1", "by url 1 again"]}) + "\n")
    spec = SourceSpec(
        path=str(tmp_path / "d"),
        captions=(
            CaptionSource(str(tmp_path / "by_key.csv"), "key"),
            CaptionSource(str(tmp_path / "by_url.jsonl"), "url"),
        ),
    )
    result = build(spec, config(tmp_path / "out"))
    found = samples(tmp_path / "out")
    assert len(found) == 3  # one sample per image, its repeated rows regrouped
    by_image = {meta["source"]["urls"][0]: meta for meta in found.values()}
    first, second, third = (by_image[f"https://img.example.com/photos/{1000 + i}.jpg"] for i in range(3))
    assert first["captions"] == [caption_text(0, 0), caption_text(0, 1), "by key 0"]
    assert second["captions"] == [caption_text(1, 0), caption_text(1, 1), "by url 1", "by url 1 again"]
    assert second["caption_sources"] == ["source", "source", "by_url.jsonl", "by_url.jsonl"]
    assert third["caption_sources"] == ["source", "source", "by_key.csv"]
    assert [r["detail"] for r in rejects(tmp_path / "out")] == ["by_key.csv row 2: key '000000099' matches no image"]
    assert result.manifest["counts"]["rows"] == 6 + 3 + 2
    check_accounting(tmp_path / "out", result.manifest)


def test_captions_file_by_url_and_identity(tmp_path: Path) -> None:
    spec = flickr(tmp_path, n=2)
    path = tmp_path / "re.parquet"
    pq.write_table(pa.table({"filename": ["1000.jpg"], "caption": ["first"]}), path)
    spec = with_captions(spec, CaptionSource(path.as_uri(), "filename"))  # file:// through fsspec
    first = build(spec, config(tmp_path / "out", format="flickr"))
    assert samples(tmp_path / "out")["1000.jpg"]["captions"][-1] == "first"
    assert build(spec, config(tmp_path / "out", format="flickr")).status == "up_to_date"

    pq.write_table(pa.table({"filename": ["1000.jpg"], "caption": ["second"]}), path)
    with pytest.raises(OutputError, match="captions: "):
        build(spec, config(tmp_path / "out", format="flickr"))
    again = build(spec, config(tmp_path / "out", format="flickr", overwrite=True))
    assert again.status == "built" and again.manifest["version"] != first.manifest["version"]
    assert samples(tmp_path / "out")["1000.jpg"]["captions"][-1] == "second"
    assert (
        again.manifest["source"]["reading"]["captions"][0]["sha256"]
        != first.manifest["source"]["reading"]["captions"][0]["sha256"]
    )


def test_one_value_matching_two_images_is_ambiguous(tmp_path: Path) -> None:
    write_images(tmp_path / "img", ["a/x.jpg", "b/x.jpg"])
    (tmp_path / "t.csv").write_text("image,caption,split\na/x.jpg,one,train\nb/x.jpg,two,train\n")
    (tmp_path / "re.csv").write_text("filename,caption\nx.jpg,which one\n")
    spec = SourceSpec(
        path=str(tmp_path / "t.csv"),
        images=tmp_path / "img",
        captions=(CaptionSource(str(tmp_path / "re.csv"), "filename"),),
    )
    result = build(spec, config(tmp_path / "out", format="table", id="content"))
    assert [(r["reason"], r["detail"]) for r in rejects(tmp_path / "out")] == [
        ("ambiguous_join_key", "re.csv row 0: filename 'x.jpg' matches 2 images")
    ]
    check_accounting(tmp_path / "out", result.manifest)


# --- the command line ---------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_cli_repeated_captions_and_user_errors(tmp_path: Path) -> None:
    flickr(tmp_path, n=2)
    (tmp_path / "a.csv").write_text("filename,text\n1000.jpg,from a\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"filename": "1000.jpg", "recap": "from b"}) + "\n")
    base = ("build", "captions.token", "--images", "img", "--format", "flickr", "--workers", "1")
    done = run_cli(
        *base, "--out", "out", "--captions", "a.csv", "--captions", "b.jsonl", "--join-on", "filename",
        "--captions-column", "text", "--captions-column", "recap", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert samples(tmp_path / "out")["1000.jpg"]["captions"][-2:] == ["from a", "from b"]

    for extra, message in [
        (("--captions", "a.csv", "--join-on", "name"), "--join-on must be one of key, url, filename, image_id"),
        (("--captions", "a.csv"), "--captions needs --join-on"),
        (("--captions", "a.csv", "--join-on", "url"), "a.csv: no 'url' column to join on (--join-on url)"),
        (("--captions", "b.jsonl", "--join-on", "filename"), "b.jsonl: no caption column"),
        (("--captions", "a.csv", "--join-on", "filename", "--captions-column", "nope"), "no column 'nope'"),
        (
            ("--captions", "a.csv", "--captions", "b.jsonl", "--join-on", "filename", "--captions-column", "a",
             "--captions-column", "b", "--captions-column", "c"),
            "2 --captions files and 3 --captions-column",
        ),
        (("--captions", "missing.parquet", "--join-on", "key"), "missing.parquet: no such file"),
    ]:  # fmt: skip
        failed = run_cli(*base, "--out", "o2", *extra, cwd=tmp_path)
        assert failed.returncode == 2, (extra, failed.stderr)
        assert message in failed.stderr and "Traceback" not in failed.stderr, (extra, failed.stderr)
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
