"""``capshard inspect DIR``: what a build holds, from its manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..format import require_manifest
from ..text import plural
from .locations import BuildLocation
from .options import json_option
from .storage_options import storage_options_option


@click.command()
@click.argument("build_dir", type=BuildLocation())
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML report (thumbnails, captions, rejects) to this file.")
@click.option("--samples", type=click.IntRange(min=0), default=24, show_default=True,
              help="Images shown in the HTML report.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for drawing the HTML report's images.")
@storage_options_option
@json_option
def inspect(
    build_dir: Path | str,
    html_path: Path | None,
    samples: int,
    seed: int,
    storage_options: dict[str, Any],
    as_json: bool,
) -> None:
    """Summarise the build in BUILD_DIR (a folder or a URL such as s3://bucket/build): counts
    per split, captions per image, resolution, rejects."""
    manifest = require_manifest(build_dir, storage_options).to_dict()
    if html_path is not None:
        from ..report_html import write_html

        shown = write_html(build_dir, html_path, samples=samples, seed=seed, options=storage_options)
        click.echo(f"wrote {html_path}: {shown} sample images", err=as_json)
    summary = summarize(manifest)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(render(build_dir, summary))


def summarize(m: dict[str, Any]) -> dict[str, Any]:
    """The parts of a manifest a person checks, as one dict."""
    return {
        "name": m["name"],
        "version": m["version"],
        "format": m["format"],
        "source": m["source"],
        "counts": m["counts"],
        "splits": {
            s: {
                "images": v["images"],
                "captions": v["captions"],
                "shards": len(v["shards"]),
                "bytes": sum(x["bytes"] for x in v["shards"]),
            }
            for s, v in sorted(m["splits"].items())
        },
        "captions_per_image": m["groups"]["captions_per_image"],
        "resolution": m["resolution"],
        "rejects": m["rejects"],
    }


def render(build_dir: Path | str, s: dict[str, Any]) -> str:
    c = s["counts"]
    lines = [
        f"{build_dir}: {s['name']} {s['version']} ({s['format']}, source {s['source']['format']})",
        f"rows {c['rows']}  images {c['images']}  captions {c['captions']}  rejected rows {c['rejected_rows']}",
        "",
        f"{'split':<12}{'images':>10}{'captions':>11}{'shards':>8}{'MiB':>10}",
    ]
    for split, v in s["splits"].items():
        lines.append(f"{split:<12}{v['images']:>10}{v['captions']:>11}{v['shards']:>8}{v['bytes'] / 2**20:>10.1f}")
    per_image = ", ".join(f"{k}: {plural(v, 'image')}" for k, v in s["captions_per_image"].items())
    lines += ["", f"captions per image: {per_image}"]
    r = s["resolution"]
    lines.append(
        f"resolution: {r['strategy']} via {r['id_source']}; merged ids {r['merged_ids']}, conflicts {r['conflicts']}, "
        f"duplicate content {r.get('duplicate_content', 0)}"
    )
    lines.extend(f"  note: {n}" for n in r.get("notes", []))
    by_reason = s["rejects"]["by_reason"]
    lines.append("rejects: " + (", ".join(f"{k}: {v}" for k, v in by_reason.items()) if by_reason else "none"))
    return "\n".join(lines)
