"""``capshard inspect --html``: one self-contained HTML page for a person to look at a build.

Counts per split, the captions-per-image and group-size charts, the resolution report, rejects by
reason with examples, and a seeded sample of images as small embedded thumbnails
(``data:`` URIs), each with all its captions, id, group, split and source ids. The page
loads nothing from the network; its one script marks ``data-images-loaded`` on
``<body>`` once every thumbnail has decoded, so a headless browser can tell.
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any

from PIL import Image

from . import storage
from .export.samples import BuildSample, iter_samples, load_build
from .format import INDEX, REJECTS
from .storage import Options

THUMB = 160
EXAMPLES_PER_REASON = 5

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}.muted{color:#777}
.bar{display:inline-block;height:12px;background:#4a7bd0;vertical-align:middle}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px}
.card img{display:block;max-width:100%;image-rendering:pixelated;margin:0 auto 6px;min-width:96px}
.card ol{margin:4px 0;padding-left:20px}.meta{font-size:12px;color:#555;word-break:break-all}
.reject{font:12px monospace;white-space:pre-wrap;background:#fff3f3;border-left:3px solid #d55;
 padding:4px 8px;margin:4px 0}
"""

_SCRIPT = """
(function(){
  function check(){
    var imgs=document.querySelectorAll('img.thumb');
    for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0)return false;}
    document.body.setAttribute('data-images-loaded',String(imgs.length));return true;
  }
  if(!check()){window.addEventListener('load',check);}
})();
"""


def render_html(build_dir: Path | str, *, samples: int = 24, seed: int = 0, options: Options = None) -> str:
    """The report page for the build in ``build_dir`` (a folder, or a URL read with the backend
    ``options``) with ``samples`` images drawn with ``seed``."""
    manifest = load_build(build_dir, options).to_dict()
    index = storage.read_parquet(storage.join(build_dir, INDEX), options, ["key", "shard", "group"])
    picked = _sample(build_dir, index, samples, seed, options)
    rejects = _rejects(storage.join(build_dir, REJECTS), options)
    body = [
        f"<h1>{escape(str(manifest['name']))} <span class=muted>{escape(str(manifest['version']))}</span></h1>",
        f"<p class=muted>{escape(str(build_dir))} · {escape(manifest['format'])} · {escape(manifest.get('tool', ''))}"
        f" · source {escape(str(manifest['source'].get('format')))}</p>",
        _counts(manifest),
        _chart("Captions per image", "captions-per-image", "captions", manifest["groups"]["captions_per_image"]),
        _chart("Images per group", "group-sizes", "images", _group_sizes(index["group"].to_pylist())),
        _resolution(manifest["resolution"]),
        _rejects_section(manifest["rejects"], rejects),
        _grid(picked, manifest["counts"]["images"], seed),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>capshard · {escape(str(manifest['name']))}</title><style>{_CSS}</style></head>\n"
        f"<body data-samples='{len(picked)}'>\n" + "\n".join(body) + f"\n<script>{_SCRIPT}</script></body></html>\n"
    )


def write_html(
    build_dir: Path | str, path: Path, *, samples: int = 24, seed: int = 0, options: Options = None
) -> int:
    """Write the report to ``path``; returns the number of sampled images shown."""
    page = render_html(build_dir, samples=samples, seed=seed, options=options)
    path.write_text(page, encoding="utf-8")
    return page.count("<div class=card")


def _sample(build_dir: Path | str, table: Any, n: int, seed: int, options: Options) -> list[BuildSample]:
    index = table.select(["key", "shard"]).to_pylist()
    chosen = sorted(random.Random(seed).sample(range(len(index)), min(n, len(index))))
    wanted: dict[str, set[str]] = defaultdict(set)
    for i in chosen:
        wanted[index[i]["shard"]].add(index[i]["key"])
    by_key = {
        s.key: s for s in iter_samples(build_dir, sorted(wanted), options) if s.key in wanted[s.shard]
    }
    return [by_key[index[i]["key"]] for i in chosen]


def _rejects(where: str, options: Options) -> dict[str, list[dict[str, Any]]]:
    by_reason: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if storage.exists(where, options):
        with storage.open_read(where, options) as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                examples = by_reason[str(record.get("reason"))]
                if len(examples) < EXAMPLES_PER_REASON:
                    examples.append(record)
    return by_reason


def _counts(m: dict[str, Any]) -> str:
    c = m["counts"]
    rows = "".join(
        f"<tr><td>{escape(split)}</td><td>{v['images']}</td><td>{v['captions']}</td><td>{len(v['shards'])}</td>"
        f"<td>{sum(s['bytes'] for s in v['shards']) / 2**20:.2f}</td></tr>"
        for split, v in sorted(m["splits"].items())
    )
    return (
        "<h2>Counts</h2><p id=summary>"
        f"rows <b data-count=rows>{c['rows']}</b> · images <b data-count=images>{c['images']}</b> · "
        f"captions <b data-count=captions>{c['captions']}</b> · rejected rows "
        f"<b data-count=rejected_rows>{c['rejected_rows']}</b></p>"
        "<table id=splits><tr><th>split</th><th>images</th><th>captions</th><th>shards</th><th>MiB</th></tr>"
        f"{rows}</table>"
    )


def _group_sizes(groups: list[Any]) -> dict[str, int]:
    """Group size -> number of groups of that size (images that share a group show the same content)."""
    sizes = Counter(Counter(groups).values())
    return {str(k): sizes[k] for k in sorted(sizes)}


def _chart(title: str, element_id: str, unit: str, per_image: dict[str, int]) -> str:
    top = max(per_image.values(), default=1)
    rows = "".join(
        f"<tr><td>{escape(k)} {unit}</td><td>{v}</td>"
        f"<td style='text-align:left'><span class=bar style='width:{max(2, round(300 * v / top))}px'></span></td></tr>"
        for k, v in per_image.items()
    )
    return f"<h2>{title}</h2><table id={element_id}>{rows}</table>"


def _resolution(r: dict[str, Any]) -> str:
    fields = "".join(
        f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>"
        for k, v in r.items()
        if k != "notes" and not isinstance(v, (dict, list))
    )
    notes = "".join(f"<li>{escape(str(n))}</li>" for n in r.get("notes", []))
    return f"<h2>Resolution</h2><table id=resolution>{fields}</table>" + (f"<ul>{notes}</ul>" if notes else "")


def _rejects_section(summary: dict[str, Any], examples: dict[str, list[dict[str, Any]]]) -> str:
    if not summary["by_reason"]:
        return "<h2>Rejects</h2><p id=rejects>none</p>"
    parts = ["<h2>Rejects</h2><div id=rejects>"]
    for reason, count in summary["by_reason"].items():
        parts.append(f"<h3 data-reason='{escape(reason)}'>{escape(reason)}: {count} rows</h3>")
        parts.extend(
            f"<div class=reject>{escape(json.dumps(r, ensure_ascii=False, sort_keys=True)[:600])}</div>"
            for r in examples.get(reason, [])
        )
    return "".join(parts) + "</div>"


def _thumbnail(sample: BuildSample) -> str:
    with Image.open(io.BytesIO(sample.image)) as opened:
        img = opened.convert("RGB")
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _card(s: BuildSample) -> str:
    m = s.meta
    captions = "".join(f"<li>{escape(c)}</li>" for c in m["captions"])
    ids = ", ".join(str(i) for i in (m.get("source") or {}).get("ids", []))
    return (
        f"<div class=card data-key='{escape(s.key)}'>"
        f"<img class=thumb alt='{escape(str(m['image_id']))}' src='{_thumbnail(s)}'>"
        f"<div class=meta>id <b>{escape(str(m['image_id']))}</b> · group {m['group']} · {escape(m['split'])}"
        f" · {m['width']}×{m['height']} · {escape(s.shard)}<br>source ids: {escape(ids)}</div>"
        f"<ol class=captions>{captions}</ol></div>"
    )


def _grid(picked: Iterable[BuildSample], total: int, seed: int) -> str:
    cards = [_card(s) for s in picked]
    return (
        f"<h2>Samples <span class=muted>{len(cards)} of {total} images, seed {seed}</span></h2>"
        f"<div class=grid id=samples>{''.join(cards)}</div>"
    )
