"""``capshard diagnose DIR``: read a build through the loader and check its positives.

Exit 0 when the batches carry the positives asked for; 1 with the likely cause otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..text import plural
from .locations import BuildLocation
from .options import LOADER_EXTRA_HELP, CaptionsPerImageType, json_option, require_loader_extra
from .storage_options import storage_options_option

if TYPE_CHECKING:
    from ..captions_per_image import CaptionsPerImage
    from ..diagnose import DiagnoseReport


@click.command(context_settings={"show_default": True}, epilog=LOADER_EXTRA_HELP)
@click.argument("build_dir", type=BuildLocation())
@click.option("--split", default="train", help="Split to read.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, help="Images per batch.")
@click.option(
    "--captions-per-image",
    type=CaptionsPerImageType(),
    default="all",
    help="K captions per image, or all (as smoke-train reads them).",
)
@click.option("--epoch", type=click.IntRange(min=0), default=0, help="Epoch to read (order, captions).")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Loader seed.")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="DataLoader worker processes.")
@click.option("--max-batches", type=click.IntRange(min=1), default=None, help="Stop after this many batches.")
@storage_options_option
@json_option
def diagnose(
    build_dir: Path | str,
    split: str,
    batch_size: int,
    captions_per_image: CaptionsPerImage,
    epoch: int,
    seed: int,
    workers: int,
    max_batches: int | None,
    storage_options: dict[str, Any],
    as_json: bool,
) -> None:
    """Read BUILD_DIR through the loader and check the batches carry the positives asked for.

    Prints the report on stdout (each problem on a PROBLEM line) and exits 1 when there is a
    problem.
    """
    require_loader_extra("diagnose")
    from ..diagnose import DiagnosisFailed
    from ..diagnose import diagnose as run_diagnose

    report = run_diagnose(
        build_dir,
        split=split,
        batch_size=batch_size,
        captions_per_image=captions_per_image,
        epoch=epoch,
        seed=seed,
        num_workers=workers,
        max_batches=max_batches,
        storage_options=storage_options,
    )
    click.echo(json.dumps(report.to_dict()) if as_json else render(report))
    if not report.ok:
        # The problems are in the report above (or in the JSON); this line only says so.
        n = len(report.problems)
        raise DiagnosisFailed(
            f"diagnose: {plural(n, 'problem')} in split {report.split} of {report.source} "
            + ("(see the JSON's problems)" if as_json else "(PROBLEM lines above)")
        )


def render(r: DiagnoseReport) -> str:
    """The report as a few lines a person reads."""

    def spread(s: Any) -> str:
        return f"{s.min:g} .. {s.max:g} (mean {s.mean:g})"

    lines = [
        f"{r.source} split {r.split}: {r.batches} of {plural(r.batches_per_epoch, 'batch', 'batches')} read, "
        f"batch size {r.batch_size}, captions per image {r.captions_per_image}, epoch {r.epoch}",
        f"  images per batch        {spread(r.images_per_batch)}",
        f"  captions per batch      {spread(r.captions_per_batch)}",
        f"  positives per caption   {spread(r.positives_per_caption)}",
        "  group sizes seen        " + (", ".join(f"{s}: {n}" for s, n in r.group_sizes.items()) or "none"),
        f"  images repeated         {r.images_repeated_in_batch} in a batch, {r.images_repeated_in_epoch} in the epoch",
        f"  images sharing a group  {r.images_sharing_a_group}",
        "  samples skipped         " + (", ".join(f"{k}: {v}" for k, v in r.skipped.items()) or "0"),
    ]
    lines.extend(f"  note: {n}" for n in r.notes)
    if r.ok:
        lines.append(
            f"OK: {plural(r.images, 'image')} and {plural(r.captions, 'caption')}; "
            "every caption has the positives asked for"
        )
    else:
        lines.extend(f"PROBLEM: {p}" for p in r.problems)
    return "\n".join(lines)
