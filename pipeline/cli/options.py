"""Shared click pieces: parameter types, the progress bar, the JSON switch."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..resolve import SPLIT_NAME

#: What a command that needs torch says in its --help.
LOADER_EXTRA_HELP = "Needs the loader extra (torch): pip install 'capshard[loader]'."

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


class ByteSize(click.ParamType):
    """A byte count: ``1000000``, ``512MB``, ``1GiB``."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = _SIZE.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a size like 512MB or 1GiB", param, ctx)
        unit = (m.group(2) or "").lower().rstrip("b")
        return int(float(m.group(1)) * _UNITS[unit])


class SplitFile(click.ParamType):
    """``SPLIT=FILE``: a split name and a file listing that split's images."""

    name = "split=file"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, Path]:
        if isinstance(value, tuple):
            return value
        split, sep, file = str(value).partition("=")
        if not sep or not split or not file:
            self.fail(f"{value!r} is not SPLIT=FILE (e.g. train=Flickr_8k.trainImages.txt)", param, ctx)
        if not re.fullmatch(SPLIT_NAME, split):
            self.fail(f"split name {split!r} must use only letters, digits and '_'", param, ctx)
        path = Path(file)
        if not path.is_file():
            self.fail(f"split list {file} does not exist", param, ctx)
        return split, path


class CaptionsPerImage(click.ParamType):
    """``--captions-per-image``: a positive integer K, or ``all``."""

    name = "K|all"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if value == "all" or (isinstance(value, int) and value >= 1):
            return value
        try:
            k = int(value)
        except (TypeError, ValueError):
            k = 0
        if k < 1:
            self.fail(f"{value!r} is neither a positive integer nor 'all'", param, ctx)
        return k


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A click progress bar on stderr (only drawn on a terminal)."""
    if not sys.stderr.isatty() or total <= 0:
        yield lambda n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar.update


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")


def require_loader_extra(command: str) -> None:
    """Fail in one line (exit 2) when torch, which ``command`` needs, cannot be imported."""
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise UsageError(f"{command} needs the loader extra, but importing torch failed: {e}") from None
        raise UsageError(f"{command} needs the loader extra: pip install 'capshard[loader]'") from None
    except ImportError as e:
        raise UsageError(f"{command} needs the loader extra, but importing torch failed: {e}") from None
