"""The build end to end: identity resolution, shard contents, manifest, determinism, resume."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from synth import (
    caption_text,
    flattened_dataset,
    flickr_token_file,
    image_bytes,
    manifest_bytes,
    nlphuji_dataset,
    write_images,
)

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.errors import BuildError, OutputError
from pipeline.readers import SourceSpec


def read_shard(path: Path) -> dict[str, dict[str, bytes]]:
    """Samples of a shard, key -> {extension: bytes}, in tar order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            f = tar.extractfile(m)
            assert f is not None
            samples.setdefault(key, {})[ext] = f.read()
    return samples


def all_samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("*.tar")):
        samples.update(read_shard(shard))
    return samples


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def test_nlphuji_schema_builds_one_sample_per_image_with_all_captions(tmp_path: Path) -> None:
    ds = nlphuji_dataset(30)
    result = build(SourceSpec(dataset=ds), BuildConfig(out=tmp_path / "b", workers=1, max_images_per_shard=4))
    m = result.manifest
    assert result.status == "built"
    assert m["format"] == "capshard/1"
    assert m["counts"] == {"rows": 150, "images": 30, "captions": 150, "rejected_rows": 0}
    assert {s: v["images"] for s, v in m["splits"].items()} == {"train": 10, "val": 10, "test": 10}
    assert m["groups"]["captions_per_image"] == {"5": 30}
    assert m["resolution"]["id_source"] == "column:img_id"
    assert m["resolution"]["merged_ids"] == 0
    assert sorted(p.name for p in result.out.glob("*.tar")) == sorted(
        s["name"] for v in m["splits"].values() for s in v["shards"]
    )
    assert [s["images"] for s in m["splits"]["train"]["shards"]] == [4, 4, 2]

    samples = all_samples(result.out)
    assert len(samples) == 30
    groups = set()
    for key, members in samples.items():
        assert "." not in key
        assert set(members) == {"jpg", "json", "txt"}
        meta = json.loads(members["json"])
        i = int(meta["image_id"])
        assert meta["captions"] == [caption_text(i, n) for n in range(5)]
        assert meta["caption_ids"] == [str(i * 5 + n) for n in range(5)]
        assert meta["split"] == ("train", "val", "test")[i % 3]
        assert members["jpg"] == image_bytes(i)
        assert meta["sha256"] == hashlib.sha256(members["jpg"]).hexdigest()
        assert members["txt"].decode().splitlines() == meta["captions"]
        assert meta["source"]["row_ids"] == list(range(i * 5, i * 5 + 5))
        groups.add(meta["group"])
    assert groups == set(range(30))

    index = pq.read_table(result.out / "index.parquet").to_pylist()
    assert len(index) == 30
    assert {r["captions"] for r in index} == {5}
    assert (result.out / "rejects.jsonl").read_text() == ""
    assert not (result.out / ".capshard").exists()


def test_flattened_loop_counter_layout_resolves_to_real_images(tmp_path: Path) -> None:
    """One row per caption, image repeated, id = row number, rows shuffled: the original bug."""
    ds = flattened_dataset(12, captions=5, seed=3)
    result = build(SourceSpec(dataset=ds), BuildConfig(out=tmp_path / "b", workers=1))
    m = result.manifest
    assert m["counts"]["images"] == 12
    assert m["counts"]["captions"] == 60
    assert m["groups"]["captions_per_image"] == {"5": 12}
    assert m["resolution"]["merged_ids"] == 48
    assert any("loop-counter" in n for n in m["resolution"]["notes"])
    for members in all_samples(result.out).values():
        meta = json.loads(members["json"])
        # All captions of one picture, in source (row) order, whatever the row order was.
        picture = next(i for i in range(12) if image_bytes(i) == members["jpg"])
        assert sorted(meta["captions"]) == sorted(caption_text(picture, n) for n in range(5))
        assert meta["source"]["row_ids"] == sorted(meta["source"]["row_ids"])
        assert len(meta["source"]["ids"]) == 5


def test_trusting_a_row_counter_fails_with_an_explanation(tmp_path: Path) -> None:
    ds = flattened_dataset(6)
    with pytest.raises(BuildError, match="exactly one caption"):
        build(SourceSpec(dataset=ds), BuildConfig(out=tmp_path / "b", workers=1, id="column:id"))
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_one_id_with_different_bytes_is_a_conflict_kept_apart(tmp_path: Path) -> None:
    ds = nlphuji_dataset(6, splits=("train",))
    ids = list(ds["img_id"])
    ids[1] = ids[0]  # two different pictures claim id "0"
    ds = ds.remove_columns("img_id").add_column("img_id", ids)
    result = build(SourceSpec(dataset=ds), BuildConfig(out=tmp_path / "b", workers=1))
    m = result.manifest
    assert m["counts"]["images"] == 6
    assert m["resolution"]["conflicts"] == 1
    image_ids = sorted(json.loads(s["json"])["image_id"] for s in all_samples(result.out).values())
    assert sum(i.startswith("0~") for i in image_ids) == 2
    with pytest.raises(BuildError, match="different image bytes"):
        build(SourceSpec(dataset=ds), BuildConfig(out=tmp_path / "c", workers=1, id="column:img_id"))


def test_same_image_in_two_splits_is_a_leak(tmp_path: Path) -> None:
    import datasets

    ds = nlphuji_dataset(6, splits=("train",))
    rows = ds.cast_column("image", datasets.Image(decode=False)).to_dict()
    rows["image"][5] = rows["image"][0]  # the same picture again, under id "5", in test
    rows["split"][5] = "test"
    ds = datasets.Dataset.from_dict(rows, features=ds.features)
    with pytest.raises(BuildError, match=r"more than one split \(0 in test, train"):
        build(SourceSpec(dataset=ds), BuildConfig(out=tmp_path / "b", workers=1))
    assert not (tmp_path / "b" / "manifest.json").exists()

    result = build(
        SourceSpec(dataset=ds), BuildConfig(out=tmp_path / "c", workers=1, on_leak="reject", max_reject_fraction=0.5)
    )
    m = result.manifest
    assert m["splits"]["test"]["images"] == 1
    assert m["rejects"]["by_reason"] == {"split_leak": 5}
    rejects = [json.loads(line) for line in (result.out / "rejects.jsonl").read_text().splitlines()]
    assert [r["row_id"] for r in rejects] == list(range(5))
    assert m["counts"]["captions"] + m["counts"]["rejected_rows"] == m["counts"]["rows"]


def flickr_source(root: Path, n_images: int, captions: int = 5) -> tuple[Path, Path]:
    names = [f"{1000 + i}_abc.jpg" for i in range(n_images)]
    write_images(root / "images", names)
    token = root / "Flickr8k.token.txt"
    flickr_token_file(token, names, captions)
    return token, root / "images"


def test_same_input_gives_identical_bytes_whatever_the_workers(tmp_path: Path) -> None:
    token, images = flickr_source(tmp_path, 60)
    spec = SourceSpec(path=str(token), images=images)
    one = build(spec, BuildConfig(out=tmp_path / "w1", workers=1, max_images_per_shard=7))
    two = build(spec, BuildConfig(out=tmp_path / "w2", workers=2, max_images_per_shard=7))
    assert len(shard_bytes(one.out)) == 9
    assert shard_bytes(one.out) == shard_bytes(two.out)
    assert manifest_bytes(one.out) == manifest_bytes(two.out)
    assert (one.out / "index.parquet").read_bytes() == (two.out / "index.parquet").read_bytes()
    other_seed = build(spec, BuildConfig(out=tmp_path / "s1", workers=1, max_images_per_shard=7, seed=1))
    assert shard_bytes(other_seed.out) != shard_bytes(one.out)


def test_rerun_is_a_noop_and_different_options_need_overwrite(tmp_path: Path) -> None:
    token, images = flickr_source(tmp_path, 10)
    spec = SourceSpec(path=str(token), images=images)
    first = build(spec, BuildConfig(out=tmp_path / "b", workers=1))
    before = {p.name: p.stat().st_mtime_ns for p in first.out.iterdir()}
    again = build(spec, BuildConfig(out=tmp_path / "b", workers=2))
    assert again.status == "up_to_date"
    assert {p.name: p.stat().st_mtime_ns for p in first.out.iterdir()} == before
    with pytest.raises(OutputError, match="different input or options"):
        build(spec, BuildConfig(out=tmp_path / "b", workers=1, seed=5))
    replaced = build(spec, BuildConfig(out=tmp_path / "b", workers=1, seed=5, overwrite=True))
    assert replaced.status == "built"
    assert replaced.manifest["options"]["seed"] == 5


def test_refuses_a_folder_that_is_not_a_build(tmp_path: Path) -> None:
    token, images = flickr_source(tmp_path, 3)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        build(SourceSpec(path=str(token), images=images), BuildConfig(out=tmp_path / "busy", workers=1))


def test_wrong_images_folder_trips_the_reject_budget(tmp_path: Path) -> None:
    token, _ = flickr_source(tmp_path, 10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match=r"50 of 50 rows rejected .*missing_image: 50.*Is --images the right folder"):
        build(SourceSpec(path=str(token), images=tmp_path / "empty"), BuildConfig(out=tmp_path / "b", workers=1))
    assert len((tmp_path / "b" / "rejects.jsonl").read_text().splitlines()) == 50
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_resize_reencodes_upright_without_upscaling(tmp_path: Path) -> None:
    from PIL import Image

    names = ["big.jpg", "small.png"]
    (tmp_path / "images").mkdir()
    big = Image.new("RGB", (300, 200), (200, 10, 10))
    exif = big.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    big.save(tmp_path / "images" / "big.jpg", exif=exif.tobytes())
    Image.new("RGB", (40, 30), (0, 0, 200)).save(tmp_path / "images" / "small.png")
    token = tmp_path / "t.token.txt"
    flickr_token_file(token, names, 2)
    result = build(
        SourceSpec(path=str(token), images=tmp_path / "images"), BuildConfig(out=tmp_path / "b", workers=1, resize=64)
    )
    samples = {json.loads(s["json"])["image_id"]: s for s in all_samples(result.out).values()}
    big_meta = json.loads(samples["big.jpg"]["json"])
    assert (big_meta["width"], big_meta["height"]) == (64, 96)  # rotated, shorter side 64
    assert Image.open(io.BytesIO(samples["big.jpg"]["jpg"])).size == (64, 96)
    assert big_meta["sha256"] == hashlib.sha256(samples["big.jpg"]["jpg"]).hexdigest()
    assert big_meta["source"]["sha256"] == hashlib.sha256((tmp_path / "images" / "big.jpg").read_bytes()).hexdigest()
    small_meta = json.loads(samples["small.png"]["json"])
    assert (small_meta["width"], small_meta["height"]) == (40, 30)


def _run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_killed_build_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    token, images = flickr_source(tmp_path, 240, captions=2)
    args = ["build", str(token), "--images", str(images), "--max-images-per-shard", "4", "--workers", "1"]
    clean = _run_cli(*args, "--out", str(tmp_path / "clean"), cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args, "--out", str(out)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done = out / ".capshard" / "done"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if done.is_dir() and len(list(done.iterdir())) >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the build finished before it could be killed; make it bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    finished_before = len(list(done.iterdir()))

    resumed = _run_cli(*args, "--out", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    assert finished_before < 60
    assert shard_bytes(out) == shard_bytes(tmp_path / "clean")
    assert manifest_bytes(out) == manifest_bytes(tmp_path / "clean")
    assert not list(out.glob(".*tmp*")) and not (out / ".capshard").exists()


def test_time_zone_does_not_change_the_bytes(tmp_path: Path) -> None:
    token, images = flickr_source(tmp_path, 8)
    args = ["build", str(token), "--images", str(images), "--workers", "1"]
    utc = _run_cli(*args, "--out", str(tmp_path / "utc"), cwd=tmp_path, env={"TZ": "UTC"})
    tokyo = _run_cli(*args, "--out", str(tmp_path / "tokyo"), cwd=tmp_path, env={"TZ": "Asia/Tokyo"})
    assert utc.returncode == tokyo.returncode == 0, utc.stderr + tokyo.stderr
    assert shard_bytes(tmp_path / "utc") == shard_bytes(tmp_path / "tokyo")


def test_the_etl_never_imports_torch_and_a_file_build_not_datasets(tmp_path: Path) -> None:
    from pipeline.cli.build import SAMPLE_MAX_IMAGES
    from pipeline.sample import MAX_IMAGES

    assert SAMPLE_MAX_IMAGES == MAX_IMAGES
    token, images = flickr_source(tmp_path, 4)
    code = (
        "import sys; from pipeline.cli import main\n"
        f"try:\n    main(['build', {str(token)!r}, '--images', {str(images)!r}, '--out', {str(tmp_path / 'b')!r},"
        " '--workers', '2'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'datasets' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "False False", proc.stderr


def test_reading_options_are_part_of_the_build_identity(tmp_path: Path) -> None:
    write_images(tmp_path / "img", ["a.jpg", "b.jpg"])
    (tmp_path / "pairs.csv").write_text("path,text,text2\na.jpg,cap a,other a\nb.jpg,cap b,other b\n")
    spec = SourceSpec(
        path=str(tmp_path / "pairs.csv"), images=tmp_path / "img", image_column="path", caption_column="text"
    )
    build(spec, BuildConfig(out=tmp_path / "b", workers=1))
    other = SourceSpec(
        path=str(tmp_path / "pairs.csv"), images=tmp_path / "img", image_column="path", caption_column="text2"
    )
    with pytest.raises(OutputError, match="different input or options"):
        build(other, BuildConfig(out=tmp_path / "b", workers=1))
    rebuilt = build(other, BuildConfig(out=tmp_path / "b", workers=1, overwrite=True))
    assert rebuilt.manifest["source"]["reading"]["caption_column"] == "text2"
    captions = sorted(c for s in all_samples(rebuilt.out).values() for c in json.loads(s["json"])["captions"])
    assert captions == ["other a", "other b"]


def test_splits_that_cannot_name_shards_are_rejected_rows(tmp_path: Path) -> None:
    write_images(tmp_path / "img", [f"{i}.jpg" for i in range(12)])
    splits = ["train"] * 10 + ["../escape", "my split"]
    rows = "".join(f"{i}.jpg,caption {i},{s}\n" for i, s in enumerate(splits))
    (tmp_path / "pairs.csv").write_text("image,caption,split\n" + rows)
    spec = SourceSpec(path=str(tmp_path / "pairs.csv"), images=tmp_path / "img", split_column="split")
    m = build(spec, BuildConfig(out=tmp_path / "b", workers=1, max_reject_fraction=0.5)).manifest
    assert m["rejects"]["by_reason"] == {"bad_split_name": 2}
    assert set(m["splits"]) == {"train"}
    assert not (tmp_path / "escape-000000.tar").exists()


def test_karpathy_image_without_split_is_a_rejected_row(tmp_path: Path) -> None:
    write_images(tmp_path / "img", ["a.jpg", "b.jpg"])
    images = [
        {"filename": "a.jpg", "imgid": 0, "split": "train", "sentences": [{"raw": "x", "sentid": 0}]},
        {"filename": "b.jpg", "imgid": 1, "sentences": [{"raw": "y", "sentid": 1}]},
    ]
    (tmp_path / "dataset_x.json").write_text(json.dumps({"images": images, "dataset": "x"}))
    spec = SourceSpec(path=str(tmp_path / "dataset_x.json"), images=tmp_path / "img")
    m = build(spec, BuildConfig(out=tmp_path / "b", workers=1, max_reject_fraction=0.5)).manifest
    assert m["rejects"]["by_reason"] == {"no_split": 1}


def test_an_id_column_the_source_does_not_have_is_a_usage_error(tmp_path: Path) -> None:
    from pipeline.errors import UsageError

    token, images = flickr_source(tmp_path, 3)
    with pytest.raises(UsageError, match="no id column 'img_id'"):
        build(
            SourceSpec(path=str(token), images=images), BuildConfig(out=tmp_path / "b", workers=1, id="column:img_id")
        )


def test_a_damaged_manifest_is_one_clear_error(tmp_path: Path) -> None:
    token, images = flickr_source(tmp_path, 3)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{")
    with pytest.raises(OutputError, match=r"b: not a capshard build \(manifest\.json cannot be read: Expecting"):
        build(SourceSpec(path=str(token), images=images), BuildConfig(out=tmp_path / "b", workers=1))
    (tmp_path / "b" / "manifest.json").write_text('{"format": "capshard/1"}')
    with pytest.raises(OutputError, match=r"not a capshard build \(manifest\.json is not a capshard/1 manifest "
                       r"\(missing name"):
        build(SourceSpec(path=str(token), images=images), BuildConfig(out=tmp_path / "b", workers=1, overwrite=True))
    assert (tmp_path / "b" / "manifest.json").read_text() == '{"format": "capshard/1"}'


def test_finalize_reads_back_no_shard_this_build_wrote_but_still_checks_each_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import finalize, storage
    from pipeline.write import ShardResult

    read_back: list[str] = []
    real_sha256 = storage.sha256

    def counted(path: str, options: object = None) -> tuple[str, int]:
        read_back.append(str(path))
        return real_sha256(path, options)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "sha256", counted)
    spec = SourceSpec(dataset=nlphuji_dataset(12))
    result = build(spec, BuildConfig(out=tmp_path / "out", workers=1, max_images_per_shard=4))
    shards = {s["name"]: s for split in result.manifest["splits"].values() for s in split["shards"]}
    assert len(shards) == 3
    assert read_back == []  # the writer hashed each shard as it wrote it: no second read

    hashed = {n: ShardResult(n, s["images"], s["captions"], s["bytes"], s["sha256"], ()) for n, s in shards.items()}
    first = sorted(shards)[0]
    (result.out / first).unlink()
    with pytest.raises(OutputError, match=rf"1 of 3 planned shards are missing .*\({first}\)"):
        finalize.check_shards(result.out, sorted(shards), hashed, hashed=hashed)
