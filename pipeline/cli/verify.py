"""``capshard verify DIR``: prove a build intact; exit 1 naming every damaged, missing or extra shard.

With ``--inputs SOURCE``: say which source images no longer match the build instead.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import click

from ..errors import IntegrityError, UsageError
from ..text import plural
from ..verify import VerifyReport
from ..verify import verify as run_verify
from ..verify_inputs import InputsReport, verify_inputs
from .locations import BuildLocation
from .options import json_option
from .source import check_inputs_option, source_options, source_spec

#: Problems printed per shard or file; ``--json`` has every one.
LINES_PER_PLACE = 10


@click.command()
@click.argument("build_dir", type=BuildLocation())
@click.option("--decode", is_flag=True, help="Decode every image fully, not only its header.")
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default="all cores")
@click.option(
    "--inputs",
    "source",
    metavar="SOURCE",
    help="Instead: compare SOURCE's images now (read with the options below, as for build) with the build's.",
)
@source_options
@check_inputs_option
@json_option
def verify(
    build_dir: Path | str,
    decode: bool,
    workers: int,
    source: str | None,
    fmt: str,
    check_inputs: str,
    as_json: bool,
    storage_options: dict[str, Any],
    **reading: Any,
) -> None:
    """Check the build in BUILD_DIR (a folder, or a URL such as s3://bucket/build): every
    shard's sha256 against the manifest, every sample re-read (members, JSON, image header,
    captions as in the index), and every input row in a shard or in rejects.jsonl.

    Prints one line per problem, naming the shard or file, and exits 1 when there is any.

    With --inputs SOURCE, checks instead that the source's images are still those the
    build was made from: prints each image changed, missing, added or no longer named
    (and changed annotations), and exits 1 when any differ.
    """
    if source is not None:
        if not isinstance(build_dir, Path):
            raise UsageError(f"--inputs compares a local build with its source; {build_dir} is a URL")
        spec = source_spec(source, storage_options=storage_options, **reading)
        _verify_inputs(verify_inputs(build_dir, spec, fmt, check_inputs), as_json)
        return
    report = run_verify(build_dir, decode=decode, workers=workers, storage_options=storage_options)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    elif report.ok:
        click.echo(summary_line(report))
    else:
        shown: Counter[str] = Counter()
        for problem in report.problems:
            shown[problem.where] += 1
            if shown[problem.where] <= LINES_PER_PLACE:
                click.echo(problem.line())
        for where, n in shown.items():
            if n > LINES_PER_PLACE:
                more = plural(n - LINES_PER_PLACE, "more problem")
                click.echo(f"{where}: … and {more} (--json lists them all)")
    if not report.ok:
        bad = sorted({p.where for p in report.problems})
        raise IntegrityError(
            f"{build_dir} failed verification: {plural(len(report.problems), 'problem')} in {', '.join(bad[:10])}"
            + (", …" if len(bad) > 10 else "")
        )


def summary_line(report: VerifyReport) -> str:
    """One line for an intact build."""
    c = report.counts
    return (
        f"verified {report.build_dir}: {plural(len(report.shards), 'shard')} intact, {plural(c['images'], 'image')}, "
        f"{plural(c['captions'], 'caption')} + {plural(c['rejected_rows'], 'rejected row')} "
        f"= {plural(c['rows'], 'row')}"
    )


def _verify_inputs(report: InputsReport, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        for line in report.source:
            click.echo(line)
        for kind, paths in report.changes.kinds().items():
            for path in paths[:LINES_PER_PLACE]:
                click.echo(f"{kind}: {path}")
            if len(paths) > LINES_PER_PLACE:
                click.echo(f"{kind}: … and {len(paths) - LINES_PER_PLACE} more (--json lists them all)")
        if report.ok:
            click.echo(f"inputs unchanged: {report.build_dir}: {report.images} images as built")
    if not report.ok:
        what = [*report.source, *([report.changes.describe()] if report.changes else [])]
        raise IntegrityError(f"{report.build_dir}: the source differs from the build: {'; '.join(what)}")
