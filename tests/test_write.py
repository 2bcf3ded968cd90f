"""Stage write: the probe's sha256 is the check that an image did not change before it is stored."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from PIL import Image
from synth import flickr_token_file, image_bytes, write_images

from pipeline import build as build_module
from pipeline import plan_store
from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.errors import IntegrityError
from pipeline.readers import SourceSpec
from pipeline.write import ShardResult, StoredSample


def source(tmp_path: Path) -> SourceSpec:
    names = [f"{1000 + i}.jpg" for i in range(6)]
    write_images(tmp_path / "images", names)
    flickr_token_file(tmp_path / "c.token", names)
    return SourceSpec(path=str(tmp_path / "c.token"), images=tmp_path / "images")


def after_probe(monkeypatch: pytest.MonkeyPatch, action: Any) -> None:
    """Run ``action`` once every image has been probed, before any shard is written."""
    real = build_module.probe_images

    def probe_then_act(*args: Any, **kwargs: Any) -> pa.Table:
        table = real(*args, **kwargs)
        action()
        return table

    monkeypatch.setattr(build_module, "probe_images", probe_then_act)


@pytest.mark.parametrize("workers", [1, 2])
def test_an_image_changed_between_probe_and_write_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    spec = source(tmp_path)
    changed = tmp_path / "images" / "1003.jpg"
    after_probe(monkeypatch, lambda: changed.write_bytes(image_bytes(77)))
    with pytest.raises(IntegrityError, match=r"image of 1003\.jpg \(.*1003\.jpg\) changed since the build read it"):
        build(spec, BuildConfig(out=tmp_path / "out", workers=workers, one_pass=False))  # a probe, then the write
    assert not list((tmp_path / "out").glob("*.tar")) or not (tmp_path / "out" / "manifest.json").exists()


def test_an_image_removed_between_probe_and_write_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = source(tmp_path)
    after_probe(monkeypatch, (tmp_path / "images" / "1002.jpg").unlink)
    with pytest.raises(IntegrityError, match=r"image of 1002\.jpg .* can no longer be read"):
        build(spec, BuildConfig(out=tmp_path / "out", workers=1, one_pass=False))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_the_done_record_lists_each_stored_sample_as_the_tar_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = source(tmp_path)
    out = tmp_path / "out"
    seen: list[ShardResult] = []

    def keep_record(*args: Any, **kwargs: Any) -> tuple[dict[str, ShardResult], int]:
        results, reused = real(*args, **kwargs)
        seen.extend(json_record(out, name) for name in results)
        return results, reused

    real = build_module._write_shards
    monkeypatch.setattr(build_module, "_write_shards", keep_record)
    build(spec, BuildConfig(out=out, workers=1, resize=16))
    (record,) = seen
    with tarfile.open(out / record.name) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert record.images == 6 and record.captions == 30 and record.bytes == (out / record.name).stat().st_size
    for sample in record.samples:
        assert isinstance(sample, StoredSample) and sample.extension == "jpg"
        image = members[f"{sample.key}.jpg"]
        assert sample.sha256 == hashlib.sha256(image).hexdigest()  # after --resize: what is stored
        assert (sample.width, sample.height) == Image.open(io.BytesIO(image)).size == (21, 16)
    assert [s.key for s in record.samples] == list(dict.fromkeys(n.rsplit(".", 1)[0] for n in members))


def json_record(out: Path, name: str) -> ShardResult:
    """The done record as written: samples as ``[key, sha256, width, height, extension]`` lists."""
    data = json.loads(plan_store.done_path(out, name).read_text())
    assert all(isinstance(s, list) and len(s) == 5 for s in data["samples"])
    assert ShardResult.from_json(data).to_json() == data
    return ShardResult.from_json(data)
