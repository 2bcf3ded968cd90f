"""``capshard build``: parse options, build the config, run ``pipeline.build``, summarise."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import click

from .. import write_ahead
from ..build import BuildResult
from ..build import build as run_build
from ..config import LEAK_POLICIES, NEAR_LEAK_POLICIES, BuildConfig
from ..errors import SourceError, UsageError
from ..executors import EXECUTORS
from ..format import STATE, STATE_FILE
from ..lock import LockHeld, hold
from ..readers import SourceSpec, detect, format_mismatch
from ..sample import DEFAULT_IMAGES as DEFAULT_SAMPLE_IMAGES
from ..sample import MAX_IMAGES
from ..text import byte_size, plural
from ..validate import VALIDATE_MODES
from .options import ByteSize, config_default, json_option, options, progress_bar
from .source import check_inputs_option, source_options, source_spec

R = TypeVar("R")
SAMPLE_OUT = Path("shards") / "sample"
#: Largest ``--sample-images`` (``pipeline.sample`` imports ``datasets`` only to build it).
SAMPLE_MAX_IMAGES = MAX_IMAGES


def _default(name: str) -> Any:
    return config_default(BuildConfig, name)


#: Options whose parameter names are ``BuildConfig`` fields: passed through as they are, with
#: their defaults read from ``BuildConfig``.
CONFIG_OPTIONS = (
    click.option(
        "--id",
        "id",
        default=_default("id"),
        metavar="auto|content|filename|column:NAME",
        help="How to decide which rows show the same image (see README: Resolution).",
    ),
    click.option(
        "--on-leak",
        type=click.Choice(LEAK_POLICIES),
        default=_default("on_leak"),
        help="An image in two splits: fail, or keep it in its evaluation split and reject the other rows.",
    ),
    click.option("--seed", type=click.IntRange(min=0), default=_default("seed"), help="Seed of the per-split shuffle."),
    click.option("--max-images-per-shard", type=click.IntRange(min=1), default=_default("max_images_per_shard")),
    click.option(
        "--max-shard-bytes",
        type=ByteSize(),
        default=byte_size(_default("max_shard_bytes")),
        help="Largest shard, e.g. 512MiB, 1GiB, 500MB.",
    ),
    click.option("--resize", type=click.IntRange(min=8), help="Re-encode so the shorter side is at most N pixels."),
    click.option(
        "--max-reject-fraction",
        type=click.FloatRange(0, 1),
        default=_default("max_reject_fraction"),
        help="Fail the build when more rows than this are rejected.",
    ),
    click.option(
        "--max-caption-chars",
        type=click.IntRange(min=1),
        default=_default("max_caption_chars"),
        help="Longer captions are rejected.",
    ),
    click.option(
        "--max-pixels",
        type=click.IntRange(min=1),
        default=_default("max_pixels"),
        help="Images declaring more pixels are rejected as decompression bombs.",
    ),
    click.option(
        "--validate",
        type=click.Choice(VALIDATE_MODES),
        default=_default("validate"),
        help="How an image is proven whole: walk its container (fast) or decode its pixels (see README).",
    ),
    click.option(
        "--workers", type=click.IntRange(min=1), default=lambda: _default("workers"), show_default="all cores"
    ),
    click.option(
        "--executor",
        type=click.Choice(list(EXECUTORS)),
        default=_default("executor"),
        help="Where shard tasks run: a local process pool, or a Ray cluster.",
    ),
    click.option(
        "--ray-address",
        envvar="RAY_ADDRESS",
        show_envvar=True,
        help="The Ray cluster of --executor ray (host:port or ray://...). Default: RAY_ADDRESS, else a local Ray.",
    ),
    click.option("--overwrite", is_flag=True, help="Replace a different build found in --out."),
    check_inputs_option,
    click.option("--name", help="Dataset name for the manifest. Default: the source's name."),
    click.option(
        "--dataset-version", "version", help="Dataset version for the manifest. Default: a hash of the input bytes."
    ),
)

NEAR_OPTIONS = (
    click.option("--phash", is_flag=True, help="Store each image's 64-bit pHash in index.parquet (column phash)."),
    click.option(
        "--exclude-near",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        multiple=True,
        help="Reject training images that are near-duplicates of an image of this (evaluation) build; repeatable.",
    ),
    click.option(
        "--threshold",
        "near_threshold",
        type=click.IntRange(0, 32),
        default=_default("near_threshold"),
        help="Largest pHash Hamming distance counted as a near-duplicate (--exclude-near, --on-near-leak).",
    ),
    click.option(
        "--on-near-leak",
        type=click.Choice(NEAR_LEAK_POLICIES),
        default=_default("on_near_leak"),
        help="Near-duplicates across this build's splits (with --phash): count them, reject the training copy, "
        "or fail.",
    ),
)

_SAMPLE_OPTION = click.option(
    "--sample-images",
    type=click.IntRange(min=3, max=SAMPLE_MAX_IMAGES),
    default=DEFAULT_SAMPLE_IMAGES,
    help="Images in the embedded sample (only without SOURCE).",
)

CONFIG_FIELDS = frozenset(f.name for f in fields(BuildConfig) if f.init)


@click.command(context_settings={"show_default": True})
@click.argument("source", required=False)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Output folder, or an fsspec URL (s3://bucket/prefix, gs://..., file://...). "
    "Default: shards/sample for the sample, shards/NAME for a source.",
)
@source_options
@options(*CONFIG_OPTIONS, _SAMPLE_OPTION, *NEAR_OPTIONS)
@click.option(
    "--one-pass/--two-pass",
    default=True,
    help="--one-pass reads each image once: it is probed as its shard is written, where the build allows "
    "(a local --out, the process pool; not with --id content, --phash or --exclude-near). --two-pass probes "
    "every image before writing any shard, reading each twice (as the split plan and write commands do). "
    "The same shards either way.",
)
@json_option
def build(source: str | None, out: str | Path | None, fmt: str, sample_images: int, as_json: bool, **opts: Any) -> None:
    """Build WebDataset shards from SOURCE, one sample per real image with all its captions.

    SOURCE is a dataset in its published format: a Hugging Face dataset folder, parquet
    or hub name (hf), a Karpathy split JSON, a COCO captions JSON, a Flickr token/CSV file,
    or a CSV/JSONL/parquet table, or WebDataset/img2dataset tars (a folder, a tar, a brace
    pattern). Without SOURCE, builds the embedded sample dataset into
    shards/sample.

    Re-running the same command resumes an interrupted build; over a finished build of
    the same input and options it does nothing.
    """
    settings, reading = split_options(opts)
    if source is None:
        from ..sample import sample_dataset

        spec = SourceSpec(dataset=sample_dataset(sample_images), name="capshard-sample", sample_images=sample_images)
        out = out or SAMPLE_OUT
    else:
        spec = source_spec(source, **reading)
        out = out or Path("shards") / Path(source.rstrip("/")).stem
    config, chosen = checked_config(spec, fmt, out, settings)
    result = run_cleaning_up(run_build, spec, config, source if chosen else None)
    if as_json:
        click.echo(json.dumps({"status": result.status, "out": str(result.out), "manifest": result.manifest}))
    else:
        click.echo(summary_line(result))


def checked_config(spec: SourceSpec, fmt: str, out: Path | str, settings: dict[str, Any]) -> tuple[BuildConfig, bool]:
    """The ``BuildConfig`` of a build or plan command (``--format auto`` detected and said), its
    ``--exclude-near`` builds checked; and whether ``--format`` was chosen."""
    chosen = fmt != "auto"
    if not chosen:
        fmt = detect(spec)
        click.echo(f"format: {fmt} (detected; pass --format to choose)", err=True)
    config = BuildConfig(out=out, format=fmt, **settings)
    check_exclude_near(config.exclude_near, config.out)
    return config, chosen


def split_options(opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A command's options as ``BuildConfig`` fields and the source's reading options;
    ``--storage-options`` goes to both (the source and ``--out`` read through the same backend options)."""
    settings = {k: v for k, v in opts.items() if k in CONFIG_FIELDS}
    reading = {k: v for k, v in opts.items() if k not in CONFIG_FIELDS or k == "storage_options"}
    return settings, reading


def run_cleaning_up(
    run: Callable[..., R], spec: SourceSpec, config: BuildConfig, chosen_for: str | None
) -> R:
    """``run(spec, config, progress=...)`` (build or plan); on failure remove the folders it created.
    ``chosen_for``: the SOURCE when ``--format`` was chosen, so a source that format cannot read gets a hint."""
    out = config.out
    created = [] if isinstance(out, str) else [d for d in (out, *out.parents) if not d.exists()]
    try:
        return run(spec, config, progress=progress_bar)
    except (SourceError, UsageError) as e:
        remove_created_if_unused(created)
        hint = format_mismatch(spec, config.format) if chosen_for is not None else None
        if hint is None:
            raise
        raise UsageError(f"--format {config.format} cannot read {chosen_for}: {e}. {hint}") from None
    except BaseException:
        remove_created_if_unused(created)
        raise


def check_exclude_near(builds: tuple[Path, ...], out: Path | str) -> None:
    """Before the long probe: every --exclude-near build has hashes and is not this build."""
    if not builds:
        return
    from ..hashes import load_hashes

    for other in builds:
        if not isinstance(out, str) and other.resolve() == out.resolve():  # --overwrite would delete the index it reads
            raise UsageError(f"--exclude-near {other} is this build's own --out; name an evaluation build")
        load_hashes(other)


def remove_created_if_unused(created: list[Path]) -> None:
    """After a failed build: remove the folders it created (``--out`` first, then its parents),
    as long as they hold nothing but capshard's own transient state. A saved plan or shards written
    ahead of it (a re-run resumes from them) or a rejects report keeps the folder.

    ``--out`` is judged and removed under its lock: a build that lost the race for a folder
    it created must not remove the winner's state (another build may have started in it
    since). Parents go only when empty (``rmdir``), for the same reason."""
    if not created:
        return
    out, *parents = created
    if out.is_dir():
        try:
            with hold(out, "build (clean-up after a failure)"):
                entries = list(out.iterdir())
                if any(not e.name.startswith(STATE) for e in entries) or (out / STATE / STATE_FILE).exists():
                    return
                if write_ahead.has_records(out):  # a one-pass build's shards: a re-run goes on from them
                    return
                shutil.rmtree(out / STATE, ignore_errors=True)
        except (LockHeld, OSError):
            return  # in use by another capshard process, or not ours to judge
        with contextlib.suppress(OSError):
            out.rmdir()  # the lock file went with the lock; anything new keeps the folder
    for folder in parents:
        try:
            folder.rmdir()
        except OSError:
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
