"""``capshard finalize``: the last cluster-job command: check every shard, write index, rejects, manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..build import finalize_build
from .build import summary_line
from .locations import OutLocation
from .options import json_option
from .storage_options import storage_options_option


@click.command()
@click.argument("out", type=OutLocation())
@storage_options_option
@json_option
def finalize(out: Path | str, storage_options: dict[str, Any], as_json: bool) -> None:
    """Finish the build planned in OUT once every slice is written: check each planned shard
    (present, with the size and sha256 of its done record), then write index.parquet,
    rejects.jsonl and, last, manifest.json. Exits 1 naming the missing shards when a slice
    has not run.
    """
    result = finalize_build(out, storage_options)
    if as_json:
        click.echo(json.dumps({"status": result.status, "out": str(result.out), "manifest": result.manifest}))
    else:
        click.echo(summary_line(result))
