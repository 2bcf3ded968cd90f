"""pipeline.format: the manifest round-trips through its types, and every bad manifest is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
from synth import flickr_token_file, write_images

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.errors import SourceError
from pipeline.finalize import write_manifest
from pipeline.format import (
    MANIFEST,
    MAX_JSON_DEPTH,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    parse_manifest,
    read_manifest,
)
from pipeline.readers import SourceSpec


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("format")
    names = [f"{1000 + i}_abc.jpg" for i in range(9)]
    write_images(root / "images", names)
    flickr_token_file(root / "Flickr8k.token.txt", names, 3)
    spec = SourceSpec(path=str(root / "Flickr8k.token.txt"), images=root / "images")
    return build(spec, BuildConfig(out=root / "out", workers=1, max_images_per_shard=4)).out


def test_the_manifest_round_trips_through_its_types(built: Path) -> None:
    doc = json.loads((built / MANIFEST).read_text())
    manifest = Manifest.from_dict(doc)
    assert manifest.to_dict() == doc
    assert list(manifest.to_dict()) == [
        "format", "name", "version", "tool", "source", "options", "counts", "splits", "groups", "resolution", "rejects",
        "stats",
    ]
    assert [s.name for s in manifest.shards] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert manifest.counts.images == 9 and manifest.splits["train"].captions == 27
    assert manifest.resolution.strategy == "auto" and manifest.identity.format_version == "capshard/1"
    # Sections written after the build (capshard hash's sidecars) are kept as they are.
    later = {**doc, "sidecars": {"phash": {"file": "phash.parquet", "sha256": "ab", "images": 9}}}
    assert Manifest.from_dict(later).to_dict() == later


def test_the_written_manifest_is_byte_identical(built: Path, tmp_path: Path) -> None:
    written = (built / MANIFEST).read_bytes()
    write_manifest(tmp_path, parse_manifest(written).to_dict())
    assert (tmp_path / MANIFEST).read_bytes() == written


def test_the_identity_is_read_from_the_manifest_types(built: Path) -> None:
    doc = json.loads((built / MANIFEST).read_text())
    identity = read_manifest(built).identity.to_dict()  # type: ignore[union-attr]
    assert identity == {
        "format_version": doc["format"],
        "format": doc["source"]["format"],
        "fingerprint": doc["source"]["fingerprint"],
        "inputs": doc["source"]["inputs"],
        "reading": doc["source"]["reading"],
        "options": doc["options"],
    }


def test_a_url_is_read_through_fsspec(built: Path) -> None:
    with fsspec.open("memory://capshard-format/b/manifest.json", "wb") as f:
        f.write((built / MANIFEST).read_bytes())
    assert read_manifest("memory://capshard-format/b") == read_manifest(built)
    assert read_manifest("memory://capshard-format/none") is None
    assert read_manifest(built.parent / "no-such-build") is None


def _bad(doc: dict, **change: object) -> bytes:  # type: ignore[type-arg]
    return json.dumps({**doc, **change}).encode()


def test_each_bad_manifest_is_one_line_naming_the_file(built: Path, tmp_path: Path) -> None:
    doc = json.loads((built / MANIFEST).read_text())
    bad_shard = json.loads(json.dumps(doc))
    bad_shard["splits"]["train"]["shards"][1]["name"] = "../x.tar"
    bad_count = json.loads(json.dumps(doc))
    bad_count["counts"]["images"] = -1
    cases = {
        "not JSON": (b"holiday photos", "cannot be read: Expecting value: line 1 column 1 (char 0)"),
        "too deep": (b"[" * 10_000, f"nests deeper than {MAX_JSON_DEPTH} levels"),
        "wrong version": (_bad(doc, format="capshard/0"), "is not a capshard/1 manifest (format 'capshard/0')"),
        "missing keys": (b'{"format": "capshard/1", "name": "x"}',
                         "is not a capshard/1 manifest (missing version, source, options, counts, splits, groups, "
                         "resolution, rejects)"),
        "not an object": (b"[1]", "is not a capshard/1 manifest (not a JSON object)"),
        "bad shard name": (json.dumps(bad_shard).encode(), "is damaged at splits.train.shards[1]: "
                           "not a shard entry named SPLIT-NNNNNN.tar ('../x.tar')"),
        "bad count": (json.dumps(bad_count).encode(), "is damaged at counts.images: -1 is not a count"),
    }
    for case, (data, detail) in cases.items():
        folder = tmp_path / case.replace(" ", "-")
        folder.mkdir()
        (folder / MANIFEST).write_bytes(data)
        with pytest.raises(ManifestError) as raised:
            read_manifest(folder)
        assert str(raised.value) == f"{folder / MANIFEST} {detail}", case
        assert raised.value.detail == detail and isinstance(raised.value, SourceError)


def test_a_manifest_over_the_cap_is_refused_unread(tmp_path: Path) -> None:
    with open(tmp_path / MANIFEST, "wb") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: nothing is written, nothing is read
    with pytest.raises(ManifestError, match=rf"^{tmp_path / MANIFEST} is over the cap of {MAX_MANIFEST_BYTES} bytes$"):
        read_manifest(tmp_path)


def test_the_cli_prints_a_bad_manifest_as_one_line(built: Path, tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_bytes(b"{" * 100)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "inspect", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == f"capshard: error: {tmp_path / MANIFEST} nests deeper than {MAX_JSON_DEPTH} levels\n"


def test_the_format_module_is_light() -> None:
    code = "import sys, pipeline.format; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('pyarrow', 'fsspec', 'torch', 'numpy', 'PIL', 'datasets') or m.startswith('pipeline.')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    parts = ["format.manifest", "format.names", "format.read"]
    assert proc.stdout.strip() == str(["pipeline.errors", "pipeline.format", *(f"pipeline.{p}" for p in parts)])
