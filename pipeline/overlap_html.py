"""``capshard overlap --html``: one self-contained page showing each pair's thumbnails side by side.

Thumbnails are read from the shards (each shard streamed once), shrunk to ``THUMB`` pixels
and embedded as data URIs, so the page needs nothing but itself. When every thumbnail has
loaded, a script sets ``data-thumbnails="loaded"`` on ``<body>`` (what the browser test checks).
"""

from __future__ import annotations

import base64
import html
import io
import tarfile
from collections import defaultdict
from pathlib import Path

from PIL import Image

from .media import EXTENSIONS
from .overlap import OverlapReport, Side
from .write import write_bytes_atomic

THUMB = 160
_IMAGE_EXTS = set(EXTENSIONS.values())

_SCRIPT = """
function check() {
  const imgs = Array.from(document.images);
  if (imgs.every(i => i.complete)) {
    document.body.dataset.thumbnails = imgs.every(i => i.naturalWidth > 0) ? "loaded" : "broken";
  } else { setTimeout(check, 20); }
}
window.addEventListener("load", check);
"""
_STYLE = """
body { font: 14px sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 4px 8px; vertical-align: middle; }
.pair img { max-width: 160px; max-height: 160px; display: block; }
.leak { background: #fde8e8; } .contamination { background: #fff3d6; } .dup { background: #eef4ff; }
"""


def thumbnails(sides: list[Side]) -> dict[tuple[str, str, str], str]:
    """(build, shard, key) -> data URI of a JPEG thumbnail, reading each shard once."""
    wanted: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in sides:
        wanted[(s.build, s.shard)].add(s.key)
    out = {}
    for (build, shard), keys in sorted(wanted.items()):
        with tarfile.open(Path(build) / shard, "r|") as tar:
            for member in tar:
                stem, _, ext = member.name.partition(".")
                f = tar.extractfile(member) if member.isfile() and ext in _IMAGE_EXTS and stem in keys else None
                if f is not None:
                    out[(build, shard, stem)] = _thumb(f.read())
    return out


def _thumb(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as src:
        img = src.convert("RGB")
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(side: Side, uri: str | None) -> str:
    img = f'<img src="{uri}" alt="{html.escape(side.image_id)}">' if uri else "(image not found)"
    label = f"{side.build} · {side.split} · {side.shard}"
    return f'<td>{img}<div class="id">{html.escape(side.image_id)}</div><small>{html.escape(label)}</small></td>'


def render_html(report: OverlapReport, limit: int = 500) -> str:
    """The page for ``report``, listing at most ``limit`` pairs (leaks and contamination first)."""
    order = {"leak": 0, "contamination": 1, "dup": 2}
    shown = sorted(report.pairs, key=lambda p: order[p.scope])[:limit]
    thumbs = thumbnails([s for p in shown for s in (p.a, p.b)])
    rows = []
    for p in shown:
        a, b = (thumbs.get((s.build, s.shard, s.key)) for s in (p.a, p.b))
        detail = (
            "identical bytes" if p.kind == "exact" else f"distance {p.distance}" + (" (mirrored)" if p.flipped else "")
        )
        rows.append(
            f'<tr class="pair {p.scope}" data-scope="{p.scope}" data-kind="{p.kind}" data-distance="{p.distance}">'
            f"<td>{p.scope}</td><td>{p.kind}<br><small>{detail}</small></td>{_cell(p.a, a)}{_cell(p.b, b)}</tr>"
        )
    summary = "".join(
        f"<tr><td>{r['scope']}</td><td>{html.escape(r['a'])}</td><td>{html.escape(r['b'])}</td>"
        f"<td>{r['exact']}</td><td>{r['near']}</td></tr>"
        for r in report.summary()
    )
    more = (
        f"<p>showing {len(shown)} of {len(report.pairs)} pairs; --json lists them all</p>"
        if len(shown) < len(report.pairs)
        else ""
    )
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>capshard overlap</title>'
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>"
        f"<h1>Duplicate images</h1><p>builds: {html.escape(', '.join(report.builds))}; "
        f"threshold {report.threshold} bits; {len(report.pairs)} pairs</p>"
        '<table id="summary"><tr><th>scope</th><th>a</th><th>b</th><th>exact</th><th>near</th></tr>'
        f'{summary}</table>{more}<h2>Pairs</h2><table id="pairs">'
        "<tr><th>scope</th><th>match</th><th>image a</th><th>image b</th></tr>"
        f"{''.join(rows)}</table></body></html>\n"
    )


def write_html(report: OverlapReport, path: Path, limit: int = 500) -> None:
    """Write the page atomically."""
    write_bytes_atomic(Path(path), render_html(report, limit).encode("utf-8"))
