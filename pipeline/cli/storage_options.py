"""``--storage-options JSON``: keyword arguments for the fsspec backend of every URL a command reads or writes.

Parsed once here, at the edge, into a dict (handed to :mod:`pipeline.storage` as
``options``); bad JSON, or JSON that is not an object, is a one-line usage error.
Credentials normally come from the backend's own configuration (for S3: ``AWS_*``
variables and profiles); this option is for what that cannot say, e.g.
``{"endpoint_url": "http://minio:9000", "anon": false}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


class StorageOptions(click.ParamType):
    """A JSON object of fsspec backend options."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            self.fail(f"not JSON ({e.msg} at column {e.colno}): {value!r}", param, ctx)
        if not isinstance(parsed, dict):
            self.fail(f"must be a JSON object like '{{\"anon\": true}}', not {value!r}", param, ctx)
        return parsed


def storage_options_option(fn: F) -> F:
    """The ``--storage-options`` click option; the command receives ``storage_options`` (a dict, empty by default)."""
    return click.option(
        "--storage-options",
        "storage_options",
        type=StorageOptions(),
        default="{}",
        show_default=False,
        help="JSON object of options for the fsspec backend of s3://, gs://... URLs "
        "(credentials otherwise come from the backend's own configuration, e.g. AWS_* variables).",
    )(fn)
