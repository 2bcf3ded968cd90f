"""``capshard inspect --html``: the page renders in headless Chromium with every part a person checks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from browser import chromium_or_skip, dump_dom, render
from PIL import Image
from synth import caption_text, flickr_token_file, write_images

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.readers import SourceSpec


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 images with 5 captions each, plus 2 caption rows naming an image that does not exist."""
    root = tmp_path_factory.mktemp("report")
    names = [f"img{i}.jpg" for i in range(8)]
    write_images(root / "images", names)
    flickr_token_file(root / "captions.token", [*names, "gone.jpg"], captions_per_image=5)
    # keep two of gone.jpg's five rows, so the rejects are a known handful
    lines = (root / "captions.token").read_text().splitlines()[:42]
    (root / "captions.token").write_text("\n".join(lines) + "\n")
    out = root / "build"
    build(
        SourceSpec(path=str(root / "captions.token"), images=root / "images"),
        BuildConfig(out=out, format="flickr", workers=1, max_images_per_shard=3),
    )
    return out


def make_page(built: Path, tmp_path: Path, *args: str) -> Path:
    page = tmp_path / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "inspect", str(built), "--html", str(page), *args],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {page}:" in proc.stdout
    return page


def test_report_is_self_contained(built: Path, tmp_path: Path) -> None:
    html = make_page(built, tmp_path, "--samples", "5").read_text()
    assert not re.search(r"""(src|href)=['"]?(https?:|//)""", html)
    assert html.count("src='data:image/jpeg;base64,") == 5


def test_report_dom_shows_samples_captions_and_rejects(built: Path, tmp_path: Path) -> None:
    chromium_or_skip()
    page = make_page(built, tmp_path, "--samples", "5", "--seed", "3")
    dom = dump_dom(page)
    manifest = json.loads((built / "manifest.json").read_text())
    assert 'data-images-loaded="5"' in dom  # every thumbnail decoded (complete, naturalWidth > 0)
    cards = re.findall(r'<div class="card" data-key="([^"]+)">(.*?)</ol></div>', dom, re.S)
    assert len(cards) == 5
    for _key, card in cards:
        image_id = re.search(r"id <b>([^<]+)</b>", card).group(1)  # type: ignore[union-attr]
        i = int(image_id.removeprefix("img").split(".")[0])
        assert re.findall(r"<li>(.*?)</li>", card) == [caption_text(i, n) for n in range(5)]
    assert f'<b data-count="images">{manifest["counts"]["images"]}</b>' in dom
    assert '<b data-count="rejected_rows">2</b>' in dom
    assert re.search(r'<table id="group-sizes"><tbody><tr><td>1 images</td><td>8</td>', dom)
    reason = next(iter(manifest["rejects"]["by_reason"]))
    assert f'data-reason="{reason}"' in dom and f"{reason}: 2 rows" in dom
    assert dom.count('<div class="reject">') == 2 and "gone.jpg" in dom


def test_report_screenshot_is_not_blank(built: Path, tmp_path: Path) -> None:
    chromium_or_skip()
    png = render(make_page(built, tmp_path, "--samples", "8"), tmp_path / "report.png", 1000, 900)
    with Image.open(png) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, bars and thumbnails, not one flat colour


def test_report_sampling_is_seeded(built: Path, tmp_path: Path) -> None:
    def keys(seed: str) -> list[str]:
        html = make_page(built, tmp_path, "--samples", "3", "--seed", seed).read_text()
        return re.findall(r"data-key='([^']+)'", html)

    assert keys("1") == keys("1")
    assert len(keys("1")) == 3
