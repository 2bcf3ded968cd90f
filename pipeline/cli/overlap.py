"""``capshard overlap BUILD [OTHER …]``: exact and near-duplicate images across splits and builds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import CapshardError
from ..overlap import DEFAULT_THRESHOLD, SCOPES, OverlapReport, find_overlap
from .options import json_option

FAIL_ON = ("leak", "contamination", "any")


class OverlapFound(CapshardError):
    """Pairs of the kind ``--fail-on`` names exist."""

    exit_code = 1


@click.command()
@click.argument("build_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("others", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--threshold",
    type=click.IntRange(0, 32),
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Largest Hamming distance between pHashes counted as a near-duplicate.",
)
@click.option("--exact-only", is_flag=True, help="Only identical bytes (sha256); needs no perceptual hashes.")
@click.option("--flip", is_flag=True, help="Also match mirrored copies (needs hashes made with `hash --flip`).")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a page with each pair's thumbnails side by side.",
)
@click.option(
    "--html-limit", type=click.IntRange(min=1), default=500, show_default=True, help="Pairs shown in the HTML page."
)
@click.option("--fail-on", type=click.Choice(FAIL_ON), help="Exit 1 when pairs of this scope exist.")
@json_option
def overlap(
    build_dir: Path,
    others: tuple[Path, ...],
    threshold: int,
    exact_only: bool,
    flip: bool,
    html_file: Path | None,
    html_limit: int,
    fail_on: str | None,
    as_json: bool,
) -> None:
    """Find images shown twice: across the splits of BUILD_DIR (leak), within one split
    (dup), and between BUILD_DIR and each OTHER build (contamination).

    Exact pairs share the sha256 of the stored bytes; near pairs have pHashes at most
    --threshold bits apart (run `capshard hash` on a build made without --phash first).
    """
    report = find_overlap([build_dir, *others], threshold=threshold, near=not exact_only, flip=flip)
    if html_file is not None:
        from ..overlap_html import write_html

        write_html(report, html_file, html_limit)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(summary_text(report))
    counts = report.counts()
    failing = sum(counts.values()) if fail_on == "any" else counts[fail_on] if fail_on else 0
    if failing:
        scope = "" if fail_on == "any" else f"{fail_on} "
        raise OverlapFound(f"{failing} {scope}pairs found (--fail-on {fail_on})")


def summary_text(report: OverlapReport) -> str:
    """The summary table a person reads."""
    counts = report.counts()
    head = (
        f"threshold {report.threshold if report.near else 'exact only'}: "
        + ", ".join(f"{counts[s]} {s}" for s in SCOPES)
        + " pairs"
    )
    rows = report.summary()
    if not rows:
        return head
    width = max(len(r["a"]) + len(r["b"]) for r in rows) + 5
    lines = [head, f"{'scope':<14}{'between':<{width}}{'exact':>7}{'near':>7}"]
    lines += [f"{r['scope']:<14}{r['a'] + ' <-> ' + r['b']:<{width}}{r['exact']:>7}{r['near']:>7}" for r in rows]
    return "\n".join(lines)
