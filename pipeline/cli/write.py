"""``capshard write``: write one slice of a planned build (the cluster-job middle step).

``--task`` and ``--tasks`` default from the batch system's environment, through click's
``envvar``: a Kubernetes Indexed Job's ``JOB_COMPLETION_INDEX`` or a Slurm array's
``SLURM_ARRAY_TASK_ID`` (counted from ``SLURM_ARRAY_TASK_MIN`` in steps of
``SLURM_ARRAY_TASK_STEP``), and ``CAPSHARD_TASKS`` or ``SLURM_ARRAY_TASK_COUNT``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..build import Slice, Written, write_slice
from ..config import BuildConfig
from ..executors import EXECUTORS, ExecutorChoice
from ..text import plural
from .locations import OutLocation
from .options import config_default, json_option, progress_bar
from .storage_options import storage_options_option

TASK_ENV = ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID")
TASKS_ENV = ("CAPSHARD_TASKS", "SLURM_ARRAY_TASK_COUNT")


@click.command(context_settings={"show_default": True})
@click.argument("out", type=OutLocation())
@click.option("--task", type=click.IntRange(min=0), envvar=list(TASK_ENV), show_envvar=True, required=True,
              help="This slice, 0..N-1.")
@click.option("--tasks", type=click.IntRange(min=1), envvar=list(TASKS_ENV), show_envvar=True, required=True,
              help="N, the number of slices.")
@click.option("--workers", type=click.IntRange(min=1), default=lambda: config_default(BuildConfig, "workers"),
              show_default="all cores", help="Processes writing this slice's shards.")
@click.option("--executor", type=click.Choice(list(EXECUTORS)), default=config_default(BuildConfig, "executor"))
@click.option("--ray-address", envvar="RAY_ADDRESS", show_envvar=True, help="The Ray cluster of --executor ray.")
@storage_options_option
@json_option
@click.pass_context
def write(
    ctx: click.Context,
    out: Path | str,
    task: int,
    tasks: int,
    workers: int,
    executor: str,
    ray_address: str | None,
    storage_options: dict[str, Any],
    as_json: bool,
) -> None:
    """Write the shards of slice TASK of TASKS of the build planned in OUT (by `capshard plan`).

    Shard k of the plan (in name order) belongs to slice k % TASKS. Shards already written
    are kept, so a slice re-run, or run twice, gives the same bytes; a slice already
    written does nothing.
    """
    if ctx.get_parameter_source("task") is ParameterSource.ENVIRONMENT and TASK_ENV[0] not in os.environ:
        task = slurm_index(task, os.environ)
    choice = ExecutorChoice(executor, workers, ray_address)
    done = write_slice(out, Slice(task, tasks), choice, progress_bar, storage_options)
    if as_json:
        click.echo(json.dumps({"out": str(out), "task": task, "tasks": tasks, "written": done.written,
                               "reused": done.reused, "finished": done.finished}))
    else:
        click.echo(_line(out, done))


def slurm_index(task_id: int, env: Mapping[str, str]) -> int:
    """A Slurm array task id as a slice number: ids run from SLURM_ARRAY_TASK_MIN in SLURM_ARRAY_TASK_STEP."""
    first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
    step = int(env.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
    return (task_id - first) // step


def _line(out: Path | str, done: Written) -> str:
    where = f"slice {done.part.task} of {done.part.tasks} of {out}"
    if done.finished:
        return f"nothing to do: {out} holds the finished build"
    if not done.written:
        return f"{where}: already written ({plural(done.reused, 'shard')})"
    return f"{where}: wrote {plural(done.written, 'shard')}" + (f", kept {done.reused}" if done.reused else "")
