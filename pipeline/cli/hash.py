"""``capshard hash BUILD``: perceptual hashes of a finished build, from its shards, into a sidecar."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..errors import UsageError
from ..executors import EXECUTORS
from ..hashes import SIDECAR, hash_build
from .locations import BuildLocation
from .options import json_option, progress_bar


@click.command(name="hash")
@click.argument("build_dir", type=BuildLocation())
@click.option("--flip", is_flag=True, help="Also hash each image mirrored left-right (catches flipped copies).")
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default="all cores")
@click.option("--executor", type=click.Choice(list(EXECUTORS)), default="process", show_default=True)
@json_option
def hash_cmd(build_dir: Path | str, flip: bool, workers: int, executor: str, as_json: bool) -> None:
    """Compute the 64-bit pHash of every image of BUILD_DIR from its shards.

    Writes phash.parquet beside the build and lists it in manifest.json; no shard byte
    changes. An interrupted run resumes from the shards already hashed.
    """
    if not isinstance(build_dir, Path):
        # The sidecar is written into the build and the manifest rewritten, under the build's lock.
        raise UsageError(f"capshard hash writes phash.parquet into the build: run it on a local copy of {build_dir}")
    from ..format import read_manifest

    manifest = read_manifest(build_dir)
    total = len(manifest.shards) if manifest else 0
    with progress_bar("hashing shards", total) as advance:
        result = hash_build(build_dir, workers=workers, executor=executor, flip=flip, on_progress=advance)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "build": str(build_dir),
                    "images": result.images,
                    "shards": result.shards,
                    "reused_shards": result.reused_shards,
                    "sidecar": SIDECAR,
                }
            )
        )
    else:
        click.echo(
            f"hashed {result.images} images of {result.shards} shards in {build_dir}"
            + (f" ({result.reused_shards} shards from an earlier run)" if result.reused_shards else "")
            + f" -> {SIDECAR}"
        )
