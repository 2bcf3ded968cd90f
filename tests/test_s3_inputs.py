"""Building from object storage: SOURCE, --images and --split-file as s3:// URLs on a real
S3 API (moto's server on loopback, tests/s3server.py), OUT local.

Every build runs the real CLI in a subprocess (so images are fetched in pool workers) and
is compared file by file with a build of the same files from local disk. What must name
the location differs, and only that: the manifest's ``source.path`` (the URL) and its
``source.inputs.stat`` digest (objects have an ETag where files have an mtime), and so
``inputs.parquet``'s ``mtime_ns``/``etag`` columns, and the ``detail`` sentence of a
reject whose image is missing (it names the file or the object). Shards,
``index.parquet``, every other field of ``rejects.jsonl`` and everything else in the
manifest are byte-identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from synth import caption_text, coco_json, comparable, flickr_token_file, image_bytes, img2dataset_folder, write_images

REPO = Path(__file__).resolve().parents[1]
#: Manifest fields that name where the inputs are (see the module docstring).
LOCATION_FIELDS = {("source", "path"), ("source", "inputs", "stat")}


def _upload(folder: Path, url: str) -> None:
    """Every file below ``folder`` to the prefix ``url``, same relative keys."""
    import s3fs

    fs = s3fs.S3FileSystem()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{url.removeprefix('s3://')}/{path.relative_to(folder).as_posix()}", path.read_bytes())


def _put(url: str, data: bytes) -> None:
    import s3fs

    s3fs.S3FileSystem().pipe_file(url.removeprefix("s3://"), data)


def _capshard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=full_env, timeout=300
    )


def _build(source: str, out: Path, *options: str, env: dict[str, str] | None = None) -> str:
    proc = _capshard("build", source, "--out", str(out), "--workers", "2", "--json", *options, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return str(json.loads(proc.stdout.strip().splitlines()[-1])["status"])


def _flat(doc: object, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    if isinstance(doc, dict):
        out: dict[tuple[str, ...], object] = {}
        for key, value in doc.items():
            out.update(_flat(value, (*prefix, key)))
        return out
    return {prefix: doc}


def _assert_same_build(local: Path, remote: Path) -> None:
    """Every output file byte-identical, except the manifest fields and listing columns that name the location."""
    names = sorted(p.relative_to(local).as_posix() for p in local.iterdir() if p.is_file() and p.name != ".lock")
    assert names == sorted(
        p.relative_to(remote).as_posix() for p in remote.iterdir() if p.is_file() and p.name != ".lock"
    )
    for name in names:
        if name in ("manifest.json", "inputs.parquet", "rejects.jsonl"):
            continue
        assert (local / name).read_bytes() == (remote / name).read_bytes(), name
    a = _flat(json.loads((local / "manifest.json").read_text()))
    b = _flat(json.loads((remote / "manifest.json").read_text()))
    differing = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k[0] != "stats"}  # stats: this run's
    assert differing <= LOCATION_FIELDS, differing
    assert str(b[("source", "path")]).startswith("s3://")
    listing_a, listing_b = pq.read_table(local / "inputs.parquet"), pq.read_table(remote / "inputs.parquet")
    for column in ("path", "size", "sha256"):
        assert listing_a[column].to_pylist() == listing_b[column].to_pylist(), column
    sizes, etags = listing_b["size"].to_pylist(), listing_b["etag"].to_pylist()
    assert all(etag for size, etag in zip(sizes, etags, strict=True) if size is not None)
    rejects_a, rejects_b = (_reject_rows(out) for out in (local, remote))
    assert [{k: v for k, v in r.items() if k != "detail"} for r in rejects_a] == [
        {k: v for k, v in r.items() if k != "detail"} for r in rejects_b
    ]


def _reject_rows(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def _rejects(out: Path) -> list[tuple[str, str]]:
    lines = (out / "rejects.jsonl").read_text().splitlines()
    return sorted((str(r.get("location")), str(r["reason"])) for r in map(json.loads, lines))


@pytest.fixture
def flickr_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    names = [f"{1000 + i}_abc.jpg" for i in range(8)]
    write_images(src / "Images", names)
    flickr_token_file(src / "Flickr8k.token.txt", names)
    (src / "train.txt").write_text("\n".join(names[:6]) + "\n")
    (src / "test.txt").write_text("\n".join(names[6:]) + "\n")
    return src


def test_flickr_from_s3_matches_local_and_reruns_up_to_date(
    flickr_source: Path, s3_bucket: str, tmp_path: Path
) -> None:
    prefix = f"{s3_bucket}/flickr"
    _upload(flickr_source, prefix)

    def args(root: str) -> list[str]:
        return [
            f"{root}/Flickr8k.token.txt",
            "--images",
            f"{root}/Images",
            "--split-file",
            f"train={root}/train.txt",
            "--split-file",
            f"test={root}/test.txt",
        ]

    source, *options = args(str(flickr_source))
    assert _build(source, tmp_path / "local", *options) == "built"
    source, *options = args(prefix)
    assert _build(source, tmp_path / "remote", *options) == "built"
    _assert_same_build(tmp_path / "local", tmp_path / "remote")
    assert _build(source, tmp_path / "one-pass", *options, "--one-pass") == "built"  # each object read once
    _assert_same_build(tmp_path / "local", tmp_path / "one-pass")
    assert _build(source, tmp_path / "remote", *options) == "up_to_date"
    assert _build(source, tmp_path / "remote", *options, "--check-inputs", "content") == "up_to_date"

    verify = ("verify", str(tmp_path / "remote"), "--inputs", source, *options)
    assert _capshard(*verify).returncode == 0

    _put(f"{prefix}/Images/1003_abc.jpg", image_bytes(99))  # one object changes in the bucket
    proc = _capshard("build", source, "--out", str(tmp_path / "remote"), *options)
    assert proc.returncode != 0
    assert "1 image changed: 1003_abc.jpg" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _capshard(*verify)
    assert proc.returncode == 1
    assert "1003_abc.jpg" in proc.stdout + proc.stderr


def test_coco_from_s3_missing_object_and_escaping_key(s3_bucket: str, tmp_path: Path) -> None:
    """A missing object is ``missing_image`` as a missing file is; a ``..`` key is
    ``path_outside_images`` as a ``..`` path is, and never read, though the object it names
    exists. An absolute key (``/secret.jpg``) is refused too (on disk it means IMAGES/secret.jpg)."""
    src = tmp_path / "src"
    names = [f"COCO_val2014_{i:012d}.jpg" for i in range(8)]
    write_images(src / "val2014", names)
    (src / "val2014" / names[7]).unlink()  # missing here and in the bucket
    (src / "secret.jpg").write_bytes(image_bytes(77))  # beside the image folder, not in it
    images = [(i, n) for i, n in enumerate(names)] + [(8, "../secret.jpg")]
    captions = [(100 + 10 * i + n, i, caption_text(i, n)) for i in range(9) for n in range(3)]
    coco_json(src / "captions_val2014.json", images, captions)
    prefix = f"{s3_bucket}/coco"
    _upload(src, prefix)
    lenient = ("--max-reject-fraction", "0.5")

    _build(str(src / "captions_val2014.json"), tmp_path / "local", "--images", str(src / "val2014"), *lenient)
    _build(f"{prefix}/captions_val2014.json", tmp_path / "remote", "--images", f"{prefix}/val2014", *lenient)
    _assert_same_build(tmp_path / "local", tmp_path / "remote")
    reasons = [reason for _, reason in _rejects(tmp_path / "remote")]
    assert reasons == ["missing_image"] * 3 + ["path_outside_images"] * 3
    missing = [r for r in _reject_rows(tmp_path / "remote") if r["reason"] == "missing_image"]
    assert f"{prefix}/val2014/{names[7]}" in str(missing[0]["detail"])
    manifest = json.loads((tmp_path / "remote" / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 7

    coco_json(src / "absolute.json", [*images[:7], (9, "/secret.jpg")], [*captions[:21], (999, 9, "absolute")])
    _upload(src, prefix)
    _build(f"{prefix}/absolute.json", tmp_path / "absolute", "--images", f"{prefix}/val2014", *lenient)
    assert [reason for _, reason in _rejects(tmp_path / "absolute")] == ["path_outside_images"]


def test_table_csv_from_s3_matches_local(s3_bucket: str, tmp_path: Path) -> None:
    """Image paths relative to the table's folder (no --images) resolve below its URL prefix."""
    src = tmp_path / "src"
    names = [f"photos/{i:03d}.png" for i in range(6)]
    write_images(src, names, fmt="PNG")
    rows = ["image,caption,split"] + [
        f"{name},{caption_text(i, n)},{'val' if i == 5 else 'train'}" for i, name in enumerate(names) for n in range(2)
    ]
    (src / "captions.csv").write_text("\n".join(rows) + "\n")
    prefix = f"{s3_bucket}/table"
    _upload(src, prefix)

    _build(str(src / "captions.csv"), tmp_path / "local", "--split-column", "split")
    _build(f"{prefix}/captions.csv", tmp_path / "remote", "--split-column", "split")
    _assert_same_build(tmp_path / "local", tmp_path / "remote")


def test_img2dataset_shards_from_s3_regroup_per_image(s3_bucket: str, tmp_path: Path) -> None:
    """Issue 11's repeated-image layout read from the bucket: one sample per image with all its
    captions, every row accounted for, the same bytes as from local files."""
    src = tmp_path / "shards"
    written = img2dataset_folder(src, n_images=6, captions_per_image=4, per_shard=7)
    prefix = f"{s3_bucket}/shards"  # the build is named after the folder: the same name as the local one
    _upload(src, prefix)

    _build(str(src), tmp_path / "local")
    _build(prefix, tmp_path / "remote", "--format", "wds")
    _assert_same_build(tmp_path / "local", tmp_path / "remote")
    manifest = json.loads((tmp_path / "remote" / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 6
    index = pq.read_table(tmp_path / "remote" / "index.parquet").to_pylist()
    assert [r["captions"] for r in index] == [4] * 6
    rejected = len((tmp_path / "remote" / "rejects.jsonl").read_text().splitlines())
    assert sum(r["captions"] for r in index) + rejected == len(written)


def test_bounded_fetch_and_storage_options_reach_the_workers(
    flickr_source: Path, s3_bucket: str, s3_server: object, tmp_path: Path
) -> None:
    """One fetch thread and a one-byte read-ahead give the same bytes as the defaults; the
    endpoint given only by --storage-options reaches the pool workers (no AWS_ENDPOINT_URL);
    a bad limit is a one-line error."""
    prefix = f"{s3_bucket}/flickr"
    _upload(flickr_source, prefix)
    source, images = f"{prefix}/Flickr8k.token.txt", f"{prefix}/Images"
    _build(source, tmp_path / "default", "--images", images)

    endpoint = os.environ.pop("AWS_ENDPOINT_URL")
    try:
        narrow = {"CAPSHARD_FETCH_THREADS": "1", "CAPSHARD_FETCH_BYTES": "1"}
        options = json.dumps({"endpoint_url": endpoint})
        _build(source, tmp_path / "narrow", "--images", images, "--storage-options", options, env=narrow)
    finally:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
    for name in ("train-000000.tar", "index.parquet", "inputs.parquet", "manifest.json"):
        default, narrow = ((tmp_path / run / name).read_bytes() for run in ("default", "narrow"))
        assert comparable(name, default) == comparable(name, narrow), name

    proc = _capshard(
        "build", source, "--images", images, "--out", str(tmp_path / "bad"), env={"CAPSHARD_FETCH_THREADS": "0"}
    )
    assert proc.returncode != 0
    assert "CAPSHARD_FETCH_THREADS='0': must be a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_open_images_keeps_order_past_a_missing_object(s3_bucket: str) -> None:
    """Reader.open_images: fetched together, in input order; a missing object and an escaping
    key become their reject reasons without stopping the others."""
    from pipeline.readers import ImageUnavailable, SourceSpec
    from pipeline.readers.flickr import FlickrReader

    prefix = f"{s3_bucket}/imgs"
    for i in (0, 1, 3):
        _put(f"{prefix}/{i}.jpg", image_bytes(i))
    spec = SourceSpec(path=f"{s3_bucket}/tok.txt", images=prefix, fetch_threads=2, fetch_bytes=1)
    refs = [(f"{prefix}/{i}.jpg", None) for i in range(4)] + [(f"{prefix}/../x.jpg", None), (f"{prefix}/1.jpg", None)]
    got = list(FlickrReader(spec).open_images(refs))
    assert got[0] == image_bytes(0) and got[1] == image_bytes(1) and got[3] == image_bytes(3)
    assert got[5] == image_bytes(1)
    assert isinstance(got[2], ImageUnavailable) and got[2].reason == "missing_image"
    assert isinstance(got[4], ImageUnavailable) and got[4].reason == "path_outside_images"


def test_karpathy_with_filepath_from_s3_matches_local(s3_bucket: str, tmp_path: Path) -> None:
    """Karpathy's ``filepath`` folders: a nested image found below the prefix, a flat one used
    when only that one exists, as on disk."""
    src = tmp_path / "src"
    nested = [f"{i}.jpg" for i in range(3)]
    flat = [f"{i}.jpg" for i in range(3, 6)]
    write_images(src / "images" / "val2014", nested)
    write_images(src / "images", flat, start=3)
    doc = {
        "dataset": "coco",
        "images": [
            {
                "filepath": "val2014",
                "filename": name,
                "cocoid": i,
                "split": "restval" if i % 2 else "test",
                "sentences": [{"raw": caption_text(i, n), "sentid": 10 * i + n} for n in range(2)],
            }
            for i, name in enumerate(nested + flat)
        ],
    }
    (src / "dataset_coco.json").write_text(json.dumps(doc))
    prefix = f"{s3_bucket}/karpathy"
    _upload(src, prefix)

    _build(str(src / "dataset_coco.json"), tmp_path / "local", "--images", str(src / "images"))
    _build(f"{prefix}/dataset_coco.json", tmp_path / "remote", "--images", f"{prefix}/images")
    _assert_same_build(tmp_path / "local", tmp_path / "remote")
    assert json.loads((tmp_path / "remote" / "manifest.json").read_text())["counts"]["images"] == 6
