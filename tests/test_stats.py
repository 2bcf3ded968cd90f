"""The manifest's ``stats``: what each long stage of this run handled, outside the build's identity."""

from __future__ import annotations

import json
from pathlib import Path

from synth import flickr_token_file, manifest_bytes, write_images

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.readers import SourceSpec


def test_stats_count_the_images_and_bytes_of_each_stage(tmp_path: Path) -> None:
    names = [f"{i}.jpg" for i in range(10)]
    images = write_images(tmp_path / "img", names[:9])  # one missing: probed, not written
    flickr_token_file(tmp_path / "captions.token", names, 2)
    spec = SourceSpec(path=str(tmp_path / "captions.token"), images=tmp_path / "img")
    out = tmp_path / "out"
    build(spec, BuildConfig(out=out, format="flickr", workers=1, max_images_per_shard=4))

    manifest = json.loads((out / "manifest.json").read_text())
    stats = manifest["stats"]
    assert stats["workers"] == 1
    assert (stats["probe"]["images"], stats["probe"]["bytes"]) == (10, sum(len(b) for b in images.values()))
    shard_bytes = sum(s["bytes"] for s in manifest["splits"]["train"]["shards"])
    assert (stats["write"]["images"], stats["write"]["bytes"]) == (9, shard_bytes)
    for stage in ("probe", "write"):
        assert set(stats[stage]) == {"seconds", "images", "bytes", "images_per_s", "mb_per_s"}
        assert min(stats[stage].values()) >= 0


def test_an_up_to_date_build_keeps_its_manifest_and_stats_do_not_count_as_a_difference(tmp_path: Path) -> None:
    names = [f"{i}.jpg" for i in range(6)]
    write_images(tmp_path / "img", names)
    flickr_token_file(tmp_path / "captions.token", names, 2)
    spec = SourceSpec(path=str(tmp_path / "captions.token"), images=tmp_path / "img")
    first = build(spec, BuildConfig(out=tmp_path / "a", format="flickr", workers=1))
    written = (tmp_path / "a" / "manifest.json").read_bytes()
    again = build(spec, BuildConfig(out=tmp_path / "a", format="flickr", workers=1))
    assert again.status == "up_to_date" and again.manifest == first.manifest
    assert (tmp_path / "a" / "manifest.json").read_bytes() == written
    build(spec, BuildConfig(out=tmp_path / "b", format="flickr", workers=2))
    assert manifest_bytes(tmp_path / "a") == manifest_bytes(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["stats"]["workers"] == 2
