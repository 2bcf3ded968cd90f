"""``capshard plan``: the first of the three cluster-job commands (plan, write, finalize).

Reads, probes and resolves SOURCE and saves the plan under ``OUT/.capshard/``; writes no
shard. Takes every option of ``capshard build`` that decides the output.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..build import Planned, plan_build
from ..text import plural
from .build import CONFIG_OPTIONS, NEAR_OPTIONS, checked_config, run_cleaning_up, split_options
from .options import json_option, options
from .source import source_options, source_spec


@click.command(context_settings={"show_default": True})
@click.argument("source")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Output folder, or an fsspec URL (s3://bucket/prefix)."
)
@source_options
@options(*CONFIG_OPTIONS, *NEAR_OPTIONS)
@json_option
def plan(source: str, out: str, fmt: str, as_json: bool, **opts: Any) -> None:
    """Plan the build of SOURCE into OUT: read, probe, resolve and save the plan; write no shard.

    Then run `capshard write OUT --task I --tasks N` for every I in 0..N-1 (any order, in
    parallel, on any machine that sees OUT and the source), then `capshard finalize OUT`.
    The bytes are those of `capshard build` with the same options. Re-running it over the
    same plan keeps it.
    """
    settings, reading = split_options(opts)
    spec = source_spec(source, **reading)
    config, chosen = checked_config(spec, fmt, out, settings)
    planned = run_cleaning_up(plan_build, spec, config, source if chosen else None)
    if as_json:
        click.echo(json.dumps(_summary(planned)))
    else:
        click.echo(_line(planned))


def _summary(planned: Planned) -> dict[str, Any]:
    plan = planned.plan
    shards = [] if plan is None else plan.shards()
    images = 0 if plan is None else plan.images.num_rows
    rejected = 0 if plan is None else plan.rejects.num_rows
    return {"status": planned.status, "out": str(planned.out), "shards": shards, "images": images,
            "rejected_rows": rejected}


def _line(planned: Planned) -> str:
    if planned.plan is None:
        return f"up to date: {planned.out} holds the finished build of this input"
    s = _summary(planned)
    verb = "planned" if planned.status == "planned" else "plan kept (same input)"
    return (
        f"{verb} {planned.out}: {plural(s['images'], 'image')} in {plural(len(s['shards']), 'shard')}, "
        f"rejected rows {s['rejected_rows']}; next: capshard write {planned.out} --task I --tasks N "
        f"for I in 0..N-1, then capshard finalize {planned.out}"
    )
