"""The ``capshard`` command: a thin click group whose subcommands load on demand.

Each subcommand lives in its own module and is imported only when it runs, so
``capshard build`` never imports torch and ``capshard --help`` stays fast. Errors a user
can cause (:class:`~pipeline.errors.CapshardError`) print one line and exit non-zero
without a traceback: 2 for usage, 1 for a failed job.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import logging
import os
import signal
import sys
import threading
from typing import Any, NoReturn

import click

from .. import __version__
from ..errors import CapshardError
from ..runtime import tune_batch_process

#: command name -> "module:attribute" of its click command.
COMMANDS: dict[str, str] = {
    "build": "pipeline.cli.build:build",
    "plan": "pipeline.cli.plan:plan",
    "write": "pipeline.cli.write:write",
    "finalize": "pipeline.cli.finalize:finalize",
    "inspect": "pipeline.cli.inspect:inspect",
    "verify": "pipeline.cli.verify:verify",
    "diagnose": "pipeline.cli.diagnose:diagnose",
    "smoke-train": "pipeline.cli.smoke:smoke_train",
    "export": "pipeline.cli.export:export",
    "hash": "pipeline.cli.hash:hash_cmd",
    "overlap": "pipeline.cli.overlap:overlap",
}

SHORT_HELP: dict[str, str] = {
    "build": "Build WebDataset shards from a dataset (no SOURCE: the embedded sample).",
    "plan": "Cluster jobs, step 1: read, probe and resolve a source; save the plan in OUT.",
    "write": "Cluster jobs, step 2: write slice I of N of a planned build (Indexed Job, Slurm array).",
    "finalize": "Cluster jobs, step 3: check every shard; write index, rejects and manifest.",
    "inspect": "Summarise a build: counts, groups, resolution, rejects.",
    "verify": "Prove a build intact: checksums, samples, and every row accounted for.",
    "diagnose": "Read a build through the loader and check the batches carry positives (loader extra).",
    "smoke-train": "Train a tiny CLIP on a build for a minute; report the positive/negative gap (loader extra).",
    "export": "Lay a build out for CLIP_benchmark (retrieval) or as a datasets.save_to_disk folder.",
    "hash": "Compute perceptual hashes of a build's images from its shards (sidecar parquet).",
    "overlap": "Find exact and near-duplicate images across splits and builds (leaks, contamination).",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        # Ctrl-C as Abort here, before click's own handler would print a blank line first.
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise click.Abort() from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, SHORT_HELP[name]) for name in COMMANDS])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capshard")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """capshard: image-caption datasets to grouped WebDataset shards with true image ids.

    \b
    capshard build                       build the embedded sample into shards/sample
    capshard build SOURCE --out DIR      build a dataset (format detected, or --format)
    capshard inspect DIR                 what a build holds
    capshard verify DIR                  prove it intact
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C (temporary files are removed on the way out)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: run the group, mapping capshard errors to one-line messages.

    SIGTERM is handled (also as PID 1 in a container) by unwinding like Ctrl-C: exit 143.
    The process gets a batch job's settings (:func:`pipeline.runtime.tune_batch_process`).
    Returns to its caller (a test, a script); the ``capshard`` command itself is :func:`run`.
    """
    signal.signal(signal.SIGTERM, _on_sigterm)
    tune_batch_process()
    try:
        return cli.main(args=argv, prog_name="capshard", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (click.Abort, KeyboardInterrupt):
        # On a terminal, \r writes over the ^C it echoed; a log gets the line alone.
        click.echo(("\r" if sys.stderr.isatty() else "") + "capshard: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except CapshardError as e:
        click.echo(f"capshard: error: {e}", err=True)
        sys.exit(e.exit_code)
    except Terminated:
        click.echo("capshard: terminated", err=True)
        sys.exit(143)
    except BrokenPipeError:
        sys.exit(1)


def run() -> NoReturn:
    """The ``capshard`` command and ``python -m pipeline``: :func:`main`, after which the process ends.

    It ends as Python would, but for the last step: the exit handlers run (logging's flush,
    multiprocessing's, Ray's, fsspec's), the standard streams are flushed, then ``os._exit``
    with the command's exit code. What that skips is the teardown of the modules and the C++
    static destructors of the libraries loaded: Arrow's thread pools among them, whose teardown
    can abort a process that has finished its work ("terminate called without an active
    exception", exit -6; apache/arrow#34314; once in CI, a ``capshard finalize`` that had
    printed its error). Every file the command wrote is closed by then, and the teardown has
    nothing left to do but free memory.
    Where a thread of Python's is still running, the process ends as usual (Python waits for
    it). An uncaught exception is Python's to report. Not in :func:`main`, which a caller may
    run many times in one process.
    """
    try:
        main()
        code: Any = 0
    except SystemExit as e:
        code = e.code
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        gc.freeze()  # Python's shutdown waits for the thread; no last collection over everything alive
        sys.exit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, exit status 1, as Python does
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # the handlers Python's own shutdown would run now (then clears them)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing left to tell
            stream.flush()
    os._exit(code)
