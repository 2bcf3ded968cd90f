"""The options that say how to read a source, shared by ``build`` and ``verify --inputs``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..config import INPUT_CHECKS, BuildConfig
from ..readers import READERS, SourceSpec
from .options import SplitFile, config_default, options

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = (
    click.option(
        "--format",
        "fmt",
        type=click.Choice(["auto", *sorted(READERS)]),
        default="auto",
        help="Source format; auto detects it and says which.",
    ),
    click.option(
        "--images",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Folder of the image files named by the annotations (flickr, coco, karpathy, table).",
    ),
    click.option(
        "--follow-symlinks",
        is_flag=True,
        help="Read image symlinks (files or folders) whose target lies outside the image folder; "
        "without it they are rejected as path_outside_images.",
    ),
    click.option(
        "--split-file",
        "split_files",
        type=SplitFile(),
        multiple=True,
        help="SPLIT=FILE list of the images of a split (repeatable), e.g. train=Flickr_8k.trainImages.txt.",
    ),
    click.option("--image-column", help="Column holding the image path or bytes (table, hf)."),
    click.option("--caption-column", help="Column holding the caption or list of captions (table, hf)."),
    click.option("--id-column", help="Column holding the source's image id (table, hf)."),
    click.option("--split-column", help="Column holding the split (table, hf)."),
    click.option(
        "--restval-as",
        default=config_default(SourceSpec, "restval"),
        help="Split that Karpathy's 'restval' images join.",
    ),
    click.option(
        "--captions-from",
        metavar="FILE",
        help="wds: parquet/CSV/JSONL of extra captions (recaptions) joined by --captions-key; local or URL.",
    ),
    click.option(
        "--captions-key",
        type=click.Choice(["key", "url"]),
        default=config_default(SourceSpec, "captions_key"),
        help="Join column of --captions-from.",
    ),
    click.option(
        "--captions-column", help="Caption column of --captions-from (string or list). Default: captions|caption|text."
    ),
)

check_inputs_option = click.option(
    "--check-inputs",
    type=click.Choice(INPUT_CHECKS),
    default=config_default(BuildConfig, "check_inputs"),
    help="How images are compared with a build's: size and mtime (stat), or their bytes re-hashed (content).",
)


def source_options(f: F) -> F:
    """Add ``--format``, ``--images`` and the other reading options to a command."""
    return options(*_OPTIONS)(f)


def source_spec(
    source: str,
    *,
    images: Path | None,
    follow_symlinks: bool = False,
    split_files: tuple[tuple[str, Path], ...],
    image_column: str | None,
    caption_column: str | None,
    id_column: str | None,
    split_column: str | None,
    restval_as: str,
    captions_from: str | None = None,
    captions_key: str = "key",
    captions_column: str | None = None,
) -> SourceSpec:
    """The ``SourceSpec`` of ``source`` read with the options ``source_options`` parsed."""
    return SourceSpec(
        path=source,
        images=images,
        follow_symlinks=follow_symlinks,
        split_files=split_files,
        image_column=image_column,
        caption_column=caption_column,
        id_column=id_column,
        split_column=split_column,
        restval=restval_as,
        captions_from=captions_from,
        captions_key=captions_key,
        captions_column=captions_column,
    )
