"""``capshard build``: parse options, build the config, run ``pipeline.build``, summarise."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import click

from ..build import STATE, BuildResult
from ..build import build as run_build
from ..config import DEFAULT_MAX_CAPTION_CHARS, DEFAULT_MAX_SHARD_BYTES, LEAK_POLICIES, BuildConfig
from ..errors import SourceError, UsageError
from ..executors import EXECUTORS
from ..media import DEFAULT_MAX_PIXELS
from ..readers import READERS, SourceSpec, detect, format_mismatch
from ..sample import MAX_IMAGES as SAMPLE_MAX_IMAGES
from ..text import byte_size, plural
from .options import ByteSize, SplitFile, json_option, progress_bar

SAMPLE_OUT = Path("shards") / "sample"


@click.command(context_settings={"show_default": True})
@click.argument("source", required=False)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder. Default: shards/sample for the sample, shards/NAME for a source.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", *sorted(READERS)]),
    default="auto",
    help="Source format; auto detects it and says which.",
)
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of the image files named by the annotations (flickr, coco, karpathy, table).",
)
@click.option(
    "--split-file",
    "split_files",
    type=SplitFile(),
    multiple=True,
    help="SPLIT=FILE list of the images of a split (repeatable), e.g. train=Flickr_8k.trainImages.txt.",
)
@click.option("--image-column", help="Column holding the image path or bytes (table, hf).")
@click.option("--caption-column", help="Column holding the caption or list of captions (table, hf).")
@click.option("--id-column", help="Column holding the source's image id (table, hf).")
@click.option("--split-column", help="Column holding the split (table, hf).")
@click.option("--restval-as", default="train", help="Split that Karpathy's 'restval' images join.")
@click.option(
    "--id",
    "id_strategy",
    default="auto",
    metavar="auto|content|filename|column:NAME",
    help="How to decide which rows show the same image (see README: Resolution).",
)
@click.option(
    "--on-leak",
    type=click.Choice(LEAK_POLICIES),
    default="fail",
    help="An image in two splits: fail, or keep it in its evaluation split and reject the other rows.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seed of the per-split shuffle.")
@click.option("--max-images-per-shard", type=click.IntRange(min=1), default=1000)
@click.option(
    "--max-shard-bytes",
    type=ByteSize(),
    default=byte_size(DEFAULT_MAX_SHARD_BYTES),
    help="Largest shard, e.g. 512MiB, 1GiB, 500MB.",
)
@click.option("--resize", type=click.IntRange(min=8), help="Re-encode so the shorter side is at most N pixels.")
@click.option(
    "--max-reject-fraction",
    type=click.FloatRange(0, 1),
    default=0.1,
    help="Fail the build when more rows than this are rejected.",
)
@click.option(
    "--max-caption-chars",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CAPTION_CHARS,
    help="Longer captions are rejected.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PIXELS,
    help="Images declaring more pixels are rejected as decompression bombs.",
)
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default="all cores")
@click.option(
    "--executor",
    type=click.Choice(list(EXECUTORS)),
    default="process",
    help="Where shard tasks run: a local process pool, or a Ray cluster.",
)
@click.option("--overwrite", is_flag=True, help="Replace a different build found in --out.")
@click.option("--name", help="Dataset name for the manifest. Default: the source's name.")
@click.option("--dataset-version", help="Dataset version for the manifest. Default: from the source fingerprint.")
@click.option(
    "--sample-images",
    type=click.IntRange(min=3, max=SAMPLE_MAX_IMAGES),
    default=300,
    help="Images in the embedded sample (only without SOURCE).",
)
@json_option
def build(
    source: str | None,
    out: Path | None,
    fmt: str,
    images: Path | None,
    split_files: tuple[tuple[str, Path], ...],
    image_column: str | None,
    caption_column: str | None,
    id_column: str | None,
    split_column: str | None,
    restval_as: str,
    id_strategy: str,
    on_leak: str,
    seed: int,
    max_images_per_shard: int,
    max_shard_bytes: int,
    resize: int | None,
    max_reject_fraction: float,
    max_caption_chars: int,
    max_pixels: int,
    workers: int,
    executor: str,
    overwrite: bool,
    name: str | None,
    dataset_version: str | None,
    sample_images: int,
    as_json: bool,
) -> None:
    """Build WebDataset shards from SOURCE, one sample per real image with all its captions.

    SOURCE is a dataset in its published format: a Hugging Face dataset folder, parquet
    or hub name (hf), a Karpathy split JSON, a COCO captions JSON, a Flickr token/CSV file,
    or a CSV/JSONL/parquet table. Without SOURCE, builds the embedded sample dataset into
    shards/sample.

    Re-running the same command resumes an interrupted build; over a finished build of
    the same input and options it does nothing.
    """
    if source is None:
        from ..sample import sample_dataset

        spec = SourceSpec(dataset=sample_dataset(sample_images), name="capshard-sample")
        out = out or SAMPLE_OUT
    else:
        spec = SourceSpec(
            path=source,
            images=images,
            split_files=split_files,
            image_column=image_column,
            caption_column=caption_column,
            id_column=id_column,
            split_column=split_column,
            restval=restval_as,
        )
        out = out or Path("shards") / Path(source.rstrip("/")).stem
    chosen = fmt != "auto"
    if not chosen:
        fmt = detect(spec)
        click.echo(f"format: {fmt} (detected; pass --format to choose)", err=True)
    config = BuildConfig(
        out=out,
        format=fmt,
        id=id_strategy,
        seed=seed,
        max_images_per_shard=max_images_per_shard,
        max_shard_bytes=max_shard_bytes,
        resize=resize,
        on_leak=on_leak,
        max_reject_fraction=max_reject_fraction,
        max_caption_chars=max_caption_chars,
        max_pixels=max_pixels,
        workers=workers,
        executor=executor,
        overwrite=overwrite,
        name=name,
        version=dataset_version,
    )
    created = [d for d in (out, *out.parents) if not d.exists()]
    try:
        result = run_build(spec, config, progress=progress_bar)
    except (SourceError, UsageError) as e:
        remove_created_if_unused(created)
        hint = format_mismatch(spec, fmt) if chosen else None
        if hint is None:
            raise
        raise UsageError(f"--format {fmt} cannot read {source}: {e}. {hint}") from None
    except BaseException:
        remove_created_if_unused(created)
        raise
    if as_json:
        click.echo(json.dumps({"status": result.status, "out": str(result.out), "manifest": result.manifest}))
    else:
        click.echo(summary_line(result))


def remove_created_if_unused(created: list[Path]) -> None:
    """After a failed build: remove the folders it created (``--out`` first, then its parents),
    as long as they hold nothing but capshard's own transient state. A saved plan (a re-run
    resumes from it) or a rejects report keeps the folder."""
    for folder in created:
        if not folder.is_dir():
            continue
        entries = list(folder.iterdir())
        if any(not e.name.startswith(STATE) for e in entries) or (folder / STATE / "state.json").exists():
            return
        shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            return


def summary_line(result: BuildResult) -> str:
    """A short human summary of a build."""
    m = result.manifest
    c = m["counts"]
    splits = ", ".join(
        f"{s} {plural(v['images'], 'image')}/{plural(len(v['shards']), 'shard')}"
        for s, v in sorted(m["splits"].items())
    )
    res = m["resolution"]
    verb = {"built": "built", "resumed": "finished (resumed)", "up_to_date": "up to date:"}[result.status]
    lines = [
        f"{verb} {result.out}: {plural(c['images'], 'image')}, {plural(c['captions'], 'caption')} "
        f"from {plural(c['rows'], 'row')} "
        f"({m['source']['format']}); {splits}",
        f"resolution: {res['strategy']} via {res['id_source']}, merged ids {res['merged_ids']}, "
        f"conflicts {res['conflicts']}; rejected rows {c['rejected_rows']}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in m['rejects']['by_reason'].items())})" if c["rejected_rows"] else ""),
    ]
    lines.extend(f"note: {n}" for n in res.get("notes", []))
    return "\n".join(lines)
