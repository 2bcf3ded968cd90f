"""``BUILD`` arguments of the commands that read a finished build: a local folder or a URL.

A local folder must exist (as ``click.Path(exists=True, file_okay=False)`` checks) and
becomes a :class:`~pathlib.Path`; a URL (``s3://``, ``gs://``, ``file://``...) is kept as
text and read through :mod:`pipeline.storage` with the command's ``--storage-options``.
Whether a URL holds a build is said by the command (no ``manifest.json``: one line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..storage import is_url


class BuildLocation(click.ParamType):
    """A build folder that exists, or a URL."""

    name = "build"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if isinstance(value, Path) or not is_url(str(value)):
            checked: Path = click.Path(exists=True, file_okay=False, path_type=Path).convert(value, param, ctx)
            return checked
        return str(value)


class OutLocation(click.ParamType):
    """The ``OUT`` of a planned build: a folder (a :class:`~pathlib.Path`, whether or not it
    exists: the command says what it lacks) or a URL (text)."""

    name = "out"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if isinstance(value, Path) or not is_url(str(value)):
            checked: Path = click.Path(file_okay=False, path_type=Path).convert(value, param, ctx)
            return checked
        return str(value)
