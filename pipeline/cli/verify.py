"""``capshard verify DIR``: prove a build intact; exit 1 naming every damaged, missing or extra shard."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import click

from ..errors import IntegrityError
from ..text import plural
from ..verify import VerifyReport
from ..verify import verify as run_verify
from .options import json_option

#: Problems printed per shard or file; ``--json`` has every one.
LINES_PER_PLACE = 10


@click.command()
@click.argument("build_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--decode", is_flag=True, help="Decode every image fully, not only its header.")
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default="all cores")
@json_option
def verify(build_dir: Path, decode: bool, workers: int, as_json: bool) -> None:
    """Check the build in BUILD_DIR: every shard's sha256 against the manifest, every sample
    re-read (members, JSON, image header, captions as in the index), and every input row
    in a shard or in rejects.jsonl.

    Prints one line per problem, naming the shard or file, and exits 1 when there is any.
    """
    report = run_verify(build_dir, decode=decode, workers=workers)
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
