"""Shared click pieces: parameter types, the progress bar, the JSON switch."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from ..captions_per_image import CaptionsPerImage
from ..errors import UsageError
from ..resolve import SPLIT_NAME
from ..text import duration

F = TypeVar("F", bound=Callable[..., Any])


def config_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls``: click options read their
    defaults from the config objects, so the CLI and the library cannot disagree."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ValueError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Apply click option decorators in the order listed (first listed, first in --help)."""

    def apply(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


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


class CaptionsPerImageType(click.ParamType):
    """``--captions-per-image``: a positive integer K, or ``all``, parsed into the one
    :class:`~pipeline.captions_per_image.CaptionsPerImage` the library takes."""

    name = "K|all"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> CaptionsPerImage:
        try:
            return CaptionsPerImage.parse(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


#: Seconds between progress lines when stderr is not a terminal (env CAPSHARD_PROGRESS_EVERY).
PROGRESS_EVERY = 30.0


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """Progress of a stage on stderr: a bar on a terminal; otherwise (a job's log) log lines."""
    if total <= 0:
        yield lambda n: None
    elif sys.stderr.isatty():
        with click.progressbar(
            length=total, label=label, file=sys.stderr, show_pos=True, show_eta=True, item_show_func=_shown
        ) as bar:
            start = time.monotonic()

            def advance(n: int) -> None:
                bar.update(n, f"{(bar.pos + n) / max(time.monotonic() - start, 1e-9):.0f} images/s")

            yield advance
    else:
        every = float(os.environ.get("CAPSHARD_PROGRESS_EVERY", PROGRESS_EVERY))
        log = ProgressLog(label, total, every)
        yield log.advance
        log.finish()


def _shown(item: str | None) -> str | None:
    return item


class ProgressLog:
    """Progress for a log file: one line when a stage starts, one every ``every`` seconds
    (images, images/s, ETA), one when it ends."""

    def __init__(self, label: str, total: int, every: float) -> None:
        self.label, self.total, self.every = label, total, every
        self.done = 0
        self.start = self.last = time.monotonic()
        self._echo(f"{total} images")

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            self._echo(
                f"{self.done}/{self.total} images ({self.done / self.total:.0%}), {rate:.0f} images/s, "
                f"ETA {duration(eta)}"
            )

    def finish(self) -> None:
        """The stage ended; not called when it was interrupted or failed."""
        seconds = time.monotonic() - self.start
        rate = self.done / max(seconds, 1e-9)
        self._echo(f"{self.done}/{self.total} images in {duration(seconds)} ({rate:.0f} images/s)")

    def _echo(self, text: str) -> None:
        click.echo(f"progress: {self.label}: {text}", err=True)


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
