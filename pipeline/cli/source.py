"""The options that say how to read a source, shared by ``build`` and ``verify --inputs``."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..config import INPUT_CHECKS, BuildConfig
from ..errors import UsageError
from ..readers import READERS, CaptionSource, SourceSpec
from ..readers.base import JOIN_ON
from ..resolve import SPLIT_NAME
from ..storage import is_url
from .options import SplitFile, config_default, options
from .storage_options import storage_options_option

F = TypeVar("F", bound=Callable[..., Any])

class ImagesLocation(click.ParamType):
    """``--images``: an existing local folder, or a URL (``s3://``, ``gs://``; ``file://`` is a local folder)."""

    name = "directory|url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if isinstance(value, Path) or not is_url(str(value)):
            folder = Path(value)
        elif str(value).lower().startswith("file://"):
            folder = Path(str(value)[len("file://") :])
        else:
            return str(value).rstrip("/")
        if not folder.exists():
            self.fail(f"folder {str(folder)!r} does not exist.", param, ctx)
        if not folder.is_dir():
            self.fail(f"{str(folder)!r} is a file, not a folder.", param, ctx)
        return folder


class SplitLocation(click.ParamType):
    """``SPLIT=FILE`` where FILE may also be a URL (checked when read: a missing object is a one-line error)."""

    name = SplitFile.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, Path | str]:
        if isinstance(value, tuple):
            return value
        split, _, file = str(value).partition("=")
        if not is_url(file) or file.lower().startswith("file://"):
            local: tuple[str, Path | str] = SplitFile().convert(f"{split}={_local_if_file_url(file)}", param, ctx)
            return local
        if not re.fullmatch(SPLIT_NAME, split):
            self.fail(f"split name {split!r} must use only letters, digits and '_'", param, ctx)
        return split, file


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
        type=ImagesLocation(),
        help="Folder (or s3://, gs:// prefix) of the image files named by the annotations "
        "(flickr, coco, karpathy, table).",
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
        type=SplitLocation(),
        multiple=True,
        help="SPLIT=FILE list of the images of a split (repeatable; FILE may be a URL), "
        "e.g. train=Flickr_8k.trainImages.txt.",
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
    """Add ``--format``, ``--images``, ``--storage-options`` and the other reading options to a command."""
    return storage_options_option(options(*_OPTIONS)(f))


def source_spec(
    source: str,
    *,
    images: Path | str | None,
    follow_symlinks: bool = False,
    split_files: tuple[tuple[str, Path | str], ...],
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
    storage_options: dict[str, Any] | None = None,
) -> SourceSpec:
    """The ``SourceSpec`` of ``source`` read with the options ``source_options`` parsed.

    ``file://`` URLs become local paths here, so they are read (and confined) as paths."""
    if captions_from and captions:
        raise UsageError("--captions-from is the deprecated form of --captions FILE --join-on key: give one of them")
    if captions_from and len(captions_column) > 1:
        raise UsageError("--captions-from takes one --captions-column")
    return SourceSpec(
        path=_local_if_file_url(source),
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
        storage_options=dict(storage_options or {}),
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


def _local_if_file_url(location: str) -> str:
    return location[len("file://") :] if location.lower().startswith("file://") else location


def _nth(given: tuple[str, ...], i: int) -> str | None:
    """The value for the i-th file of an option given never, once, or once per file."""
    return None if not given else given[0] if len(given) == 1 else given[i]
