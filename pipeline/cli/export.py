"""``capshard export TARGET BUILD OUT``: lay a build (a folder or a URL) out for CLIP_benchmark or HF ``datasets``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .locations import BuildLocation
from .options import json_option
from .storage_options import storage_options_option

_BUILD = click.argument("build_dir", type=BuildLocation())
_OUT = click.argument("out", type=click.Path(file_okay=False, path_type=Path))
_OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace what OUT holds for this export.")


@click.group()
def export() -> None:
    """Export a finished build for the tools that evaluate and train on it.

    \b
    capshard export clip-benchmark BUILD OUT --split test   CLIP_benchmark retrieval (wds/…)
    capshard export hf BUILD OUT                           datasets.save_to_disk, nlphuji/flickr30k schema
    """


@export.command("clip-benchmark")
@_BUILD
@_OUT
@click.option("--split", default="test", show_default=True, help="The build's split to export.")
@_OVERWRITE
@storage_options_option
@json_option
def clip_benchmark(
    build_dir: Path | str, out: Path, split: str, overwrite: bool, storage_options: dict[str, Any], as_json: bool
) -> None:
    """Write OUT/dataset_type.txt and OUT/SPLIT/{nshards.txt,0.tar,…}: evaluate with
    ``clip_benchmark eval --dataset wds/NAME --dataset_root OUT``."""
    from ..export import export_clip_benchmark

    summary = export_clip_benchmark(build_dir, out, split=split, overwrite=overwrite, storage_options=storage_options)
    _report(summary, as_json)


@export.command("hf")
@_BUILD
@_OUT
@click.option("--split", default=None, help="Only this split of the build (default: all, in the split column).")
@_OVERWRITE
@storage_options_option
@json_option
def hf(
    build_dir: Path | str,
    out: Path,
    split: str | None,
    overwrite: bool,
    storage_options: dict[str, Any],
    as_json: bool,
) -> None:
    """Save the build with ``datasets.Dataset.save_to_disk`` in the nlphuji/flickr30k schema
    (image, caption list, sentids, split, img_id, filename); ``datasets.load_from_disk(OUT)`` reads it."""
    import datasets

    from ..export import export_hf

    datasets.disable_progress_bars()  # the command prints its own one-line summary
    _report(export_hf(build_dir, out, split=split, overwrite=overwrite, storage_options=storage_options), as_json)


def _report(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary))
        return
    line = f"exported {summary['images']} images, {summary['captions']} captions to {summary['out']}"
    line += f" ({summary['target']}"
    if summary["target"] == "clip-benchmark":
        line += f", split {summary['split']}: {summary['shards']} shards, {summary['hard_links']} hard-linked"
    click.echo(line + ")")
