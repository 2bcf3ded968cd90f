"""Stage write: the probe's sha256 is the check that an image did not change before it is stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from synth import flickr_token_file, image_bytes, write_images

from pipeline import build as build_module
from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.errors import IntegrityError
from pipeline.readers import SourceSpec


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
        build(spec, BuildConfig(out=tmp_path / "out", workers=workers))
    assert not list((tmp_path / "out").glob("*.tar")) or not (tmp_path / "out" / "manifest.json").exists()


def test_an_image_removed_between_probe_and_write_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = source(tmp_path)
    after_probe(monkeypatch, (tmp_path / "images" / "1002.jpg").unlink)
    with pytest.raises(IntegrityError, match=r"image of 1002\.jpg .* can no longer be read"):
        build(spec, BuildConfig(out=tmp_path / "out", workers=1))
    assert not (tmp_path / "out" / "manifest.json").exists()
