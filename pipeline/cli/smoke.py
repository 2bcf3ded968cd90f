"""``capshard smoke-train DIR``: a few hundred steps of a tiny CLIP, and the positive/negative gap."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..text import plural
from .options import LOADER_EXTRA_HELP, CaptionsPerImageType, config_default, json_option, require_loader_extra
from .storage_options import storage_options_option

if TYPE_CHECKING:
    from ..smoke import Figures, SmokeResult


def _default(name: str) -> Any:
    from ..smoke.config import SmokeConfig  # torch-free: the options and outcome only

    return config_default(SmokeConfig, name)


@click.command("smoke-train", epilog=LOADER_EXTRA_HELP)
@click.argument("source", metavar="DIR")
@click.option("--split", default=_default("split"), show_default=True, help="Split to train on.")
@click.option("--steps", type=click.IntRange(min=1), default=_default("steps"), show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=_default("batch_size"),
    show_default=True,
    help="Images per batch.",
)
@click.option(
    "--temperature", type=click.FloatRange(min=0, min_open=True), default=_default("temperature"), show_default=True
)
@click.option(
    "--captions-per-image",
    type=CaptionsPerImageType(),
    default="all",
    show_default=True,
    help="Captions of each image in a batch (K>1 or 'all' puts several positives in a row).",
)
@click.option("--seed", type=click.IntRange(min=0), default=_default("seed"), show_default=True)
@click.option("--device", default=_default("device"), show_default=True, help="torch device: cpu, cuda, cuda:1, mps.")
@click.option(
    "--log-every",
    type=click.IntRange(min=1),
    default=_default("log_every"),
    show_default=True,
    help="Print every N steps.",
)
@click.option(
    "--eval-batches",
    type=click.IntRange(min=1),
    default=_default("eval_batches"),
    show_default=True,
    help="Batches measured after training (no update) for the final figures.",
)
@click.option("--image-size", type=click.IntRange(min=8), default=_default("image_size"), show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_default("lr"), show_default=True)
@click.option(
    "--min-gap",
    type=float,
    default=0.3,
    show_default=True,
    help="Exit 0 only when the final gap is above this.",
)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG of gap and loss per step.")
@click.option(
    "--simulate-loop-counter-ids",
    is_flag=True,
    help="Control: replay the loop-counter bug (one id per caption) on the same batches.",
)
@storage_options_option
@json_option
def smoke_train(source: str, min_gap: float, plot: Path | None, as_json: bool, **opts: Any) -> None:
    """Train a tiny CLIP on the build in DIR (a folder or a URL such as s3://bucket/build)
    through the loader and report the gap.

    The gap is the mean cosine of positive image-caption pairs minus that of negative
    pairs. Exits 0 when the final gap is above --min-gap, 1 otherwise.
    """
    require_loader_extra("smoke-train")
    from ..smoke import GapTooSmall, SmokeConfig, write_plot
    from ..smoke import smoke_train as run_smoke

    config = SmokeConfig(source=source, **opts)  # the options are named as its fields
    control, steps = config.simulate_loop_counter_ids, config.steps
    if control:
        click.echo("control: every caption is its own image id (the loop-counter bug)", err=as_json)

    def on_log(step: int, f: Figures) -> None:
        click.echo(f"step {step:>{len(str(steps))}}/{steps}  " + _figures_line(f, control), err=as_json)

    result = run_smoke(config, on_log)
    if plot is not None:
        write_plot(result, plot)
    passed = result.final.gap > min_gap
    if as_json:
        click.echo(json.dumps({**_json_safe(result.to_json()), "min_gap": min_gap, "passed": passed}))
    else:
        click.echo(_summary(result, min_gap, plot))
    if not passed:
        raise GapTooSmall(
            f"smoke-train: final gap {result.final.gap:.3f} is not above --min-gap {min_gap} "
            "(train longer with --steps, or check the batches' positives with capshard diagnose)"
        )


def _figures_line(f: Figures, control: bool) -> str:
    line = (
        f"loss {f.loss:.3f}  pos {f.positive_cos:.3f}  neg {f.negative_cos:.3f}  gap {f.gap:.3f}  "
        f"multi-positive batches {f.multi_positive_share:.0%}"
    )
    if control:
        line += f"  | true ids: gap {f.true_gap:.3f}, same-image captions among negatives {f.false_negative_share:.2%}"
        if f.false_negative_cos is not None:
            line += f" (cos {f.false_negative_cos:.3f})"
    return line


def _summary(result: SmokeResult, min_gap: float, plot: Path | None) -> str:
    f, c = result.final, result.config
    lines = [
        f"final, {plural(f.batches, 'batch', 'batches')} of {c.split} after training (no update):",
        f"  positive cos {f.positive_cos:.3f}  negative cos {f.negative_cos:.3f}  gap {f.gap:.3f}  loss {f.loss:.3f}",
        f"  batches with positives besides the diagonal: {f.multi_positive_share:.0%}",
    ]
    if c.simulate_loop_counter_ids:
        lines += [
            f"  by true ids: positive cos {f.true_positive_cos:.3f}  negative cos {f.true_negative_cos:.3f}  "
            f"gap {f.true_gap:.3f}",
            f"  negatives that are captions of the same image: {f.false_negative_share:.2%}"
            + (f", mean cos {f.false_negative_cos:.3f}" if f.false_negative_cos is not None else ""),
        ]
    lines.append(
        f"{plural(result.steps, 'step')} ({plural(result.epochs, 'epoch')}), vocabulary {result.vocab_size}, "
        f"{result.seconds:.1f} s on {c.device}"
    )
    if plot is not None:
        lines.append(f"plot: {plot}")
    verdict = "PASS" if f.gap > min_gap else "FAIL"
    lines.append(f"{verdict}: gap {f.gap:.3f} {'>' if f.gap > min_gap else '<='} min-gap {min_gap}")
    return "\n".join(lines)


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """NaN (no pairs of a kind) as null: JSON has no NaN."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}
