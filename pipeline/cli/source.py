"""The options that say how to read a source, shared by ``build`` and ``verify --inputs``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..config import INPUT_CHECKS, BuildConfig
from ..errors import UsageError
from ..readers import READERS, CaptionSource, SourceSpec
from ..readers.base import JOIN_ON
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
        "--captions",
        "captions",
        metavar="FILE",
        multiple=True,
        help="Extra captions (parquet/CSV/JSONL, local or URL) added to the resolved images, joined on "
        "--join-on (repeatable: files in order).",
    ),
    click.option(
        "--join-on",
        "join_on",
        metavar="|".join(JOIN_ON),
        multiple=True,
        help="The column of a --captions file that names the image: once for all files, or once per file, in order.",
    ),
    click.option(
        "--captions-column",
        multiple=True,
        help="Caption column (string or list) of --captions / --captions-from: once for all files, or once per "
        "--captions file. Default: captions|caption|text.",
    ),
    click.option(
        "--captions-from",
        metavar="FILE",
        help="Deprecated (wds only): like --captions FILE --join-on KEY, joined before resolution.",
    ),
    click.option(
        "--captions-key",
        type=click.Choice(["key", "url"]),
        default=config_default(SourceSpec, "captions_key"),
        help="Deprecated: the join column of --captions-from.",
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
    captions_column: tuple[str, ...] = (),
    captions: tuple[str, ...] = (),
    join_on: tuple[str, ...] = (),
) -> SourceSpec:
    """The ``SourceSpec`` of ``source`` read with the options ``source_options`` parsed."""
    if captions_from and captions:
        raise UsageError("--captions-from is the deprecated form of --captions FILE --join-on key: give one of them")
    if captions_from and len(captions_column) > 1:
        raise UsageError("--captions-from takes one --captions-column")
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
        captions_column=captions_column[0] if captions_from and captions_column else None,
        captions=caption_sources(captions, join_on, () if captions_from else captions_column),
    )


def caption_sources(
    files: tuple[str, ...], joins: tuple[str, ...], columns: tuple[str, ...]
) -> tuple[CaptionSource, ...]:
    """Pair ``--captions`` files with ``--join-on`` and ``--captions-column``: each given once
    (for every file) or once per file (in order); anything else is refused in one line."""
    if not files:
        if joins:
            raise UsageError("--join-on names the join of a --captions file, and none is given")
        return ()
    bad = [j for j in joins if j not in JOIN_ON]
    if bad:
        raise UsageError(f"--join-on must be one of {', '.join(JOIN_ON)}, not {bad[0]!r}")
    if not joins:
        raise UsageError(f"--captions needs --join-on {'|'.join(JOIN_ON)}: the column that names each caption's image")
    for name, given in (("--join-on", joins), ("--captions-column", columns)):
        if len(given) not in (0, 1, len(files)):
            raise UsageError(
                f"{len(files)} --captions files and {len(given)} {name}: give {name} once (for every file) "
                "or once per file, in the same order"
            )
    return tuple(CaptionSource(f, _nth(joins, i) or "", _nth(columns, i)) for i, f in enumerate(files))


def _nth(given: tuple[str, ...], i: int) -> str | None:
    """The value for the i-th file of an option given never, once, or once per file."""
    return None if not given else given[0] if len(given) == 1 else given[i]
