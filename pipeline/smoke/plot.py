"""smoke-train's plot: a PNG of the gap and the loss per step (matplotlib, an optional extra)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .config import SmokeResult


def write_plot(result: SmokeResult, path: Path) -> None:
    """A PNG of the gap and the loss of every training step, with the final gap marked."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'capshard[plot]'") from None
    steps = [p.step for p in result.points]
    fig = Figure(figsize=(8, 5), layout="constrained")
    gap_ax, loss_ax = fig.subplots(2, 1, sharex=True)
    gap_ax.plot(steps, [p.gap for p in result.points], lw=1)
    gap_ax.axhline(result.final.gap, ls="--", color="grey", lw=1, label=f"final gap {result.final.gap:.3f}")
    gap_ax.set_ylabel("gap (pos − neg cosine)")
    gap_ax.legend(loc="lower right")
    loss_ax.plot(steps, [p.loss for p in result.points], lw=1, color="tab:red")
    loss_ax.set_ylabel("loss")
    loss_ax.set_xlabel("step")
    mode = "loop-counter ids (control)" if result.config.simulate_loop_counter_ids else "true ids"
    fig.suptitle(f"smoke-train {result.config.source} [{result.config.split}], {mode}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
