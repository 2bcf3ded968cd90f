"""Near-duplicates at build time: keep evaluation images out of training data.

Runs between *resolve* and *plan* when the build computes perceptual hashes
(``--phash``, ``--exclude-near``). It adds the ``phash`` column to the images, then:

* ``--exclude-near BUILD``: a training image (any split but test/val/validation/dev)
  whose pHash is within ``--threshold`` bits of an image of a named build is rejected,
  every caption row of it, with reason ``near_duplicate_of_eval`` and a detail naming
  the matched image (build, image id, split) and the distance;
* near-duplicates across the build's own splits (``--on-near-leak``): ``report`` counts
  them in the manifest's resolution section, ``reject`` rejects the copy in the
  lower-priority split (train before val before test, as ``--on-leak reject``) with
  reason ``near_leak``, ``fail`` stops the build naming the pairs.

Identical bytes never reach this stage as two images: *resolve* has merged them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import resolve_columns as cols
from .errors import BuildError
from .format import ResolutionReport
from .hashes import load_hashes
from .nearsearch import NearIndex, self_pairs
from .rejects import REJECT_SCHEMA, detail
from .resolve import SPLIT_PRIORITY, Resolution

EVAL_SPLITS = frozenset(s for s, p in SPLIT_PRIORITY.items() if p < SPLIT_PRIORITY["train"])


@dataclasses.dataclass(frozen=True)
class NearOptions:
    """What the build asked for (from :class:`~pipeline.config.BuildConfig`)."""

    threshold: int
    exclude: tuple[Path, ...]
    on_near_leak: str


def apply_near(resolution: Resolution, rows: pa.Table, probed: pa.Table, options: NearOptions) -> Resolution:
    """Add ``phash`` to the images and apply ``--exclude-near`` and ``--on-near-leak``."""
    images = resolution.images
    valid = probed.filter(pc.is_valid(probed["phash"]))
    phash_of = dict(zip(valid["sha256"].to_pylist(), valid["phash"].to_pylist(), strict=True))
    hashes = np.array([phash_of[s] for s in images["sha256"].to_pylist()], np.int64)
    images = images.append_column("phash", pa.array(hashes, pa.int64()))
    notes = resolution.report.notes
    section: dict[str, Any] = {"threshold": options.threshold, "on_near_leak": options.on_near_leak}
    rejected: dict[int, tuple[str, str]] = {}  # image position -> (reason, detail)

    if options.exclude:
        section["excluded_builds"] = [str(b) for b in options.exclude]
        _exclude(images, hashes, options, rejected)
        section["near_duplicate_of_eval"] = len(rejected)

    leaks = _near_leaks(images, hashes, rejected, options.threshold)
    section["near_leaks"] = len(leaks)
    if leaks:
        ids, splits = images["image_id"].to_pylist(), images["split"].to_pylist()
        named = [f"{ids[i]} ({splits[i]}) ~ {ids[j]} ({splits[j]}), distance {d}" for i, j, d in leaks]
        if options.on_near_leak == "fail":
            raise BuildError(
                f"{len(leaks)} near-duplicate pairs across splits (pHash distance <= {options.threshold}): "
                + "; ".join(named[:5])
                + ("; …" if len(leaks) > 5 else "")
                + " (--on-near-leak reject keeps the evaluation copy; report only counts them)"
            )
        if options.on_near_leak == "reject":
            for (i, j, _), text in zip(leaks, named, strict=True):
                drop = i if SPLIT_PRIORITY.get(splits[i], 2) >= SPLIT_PRIORITY.get(splits[j], 2) else j
                rejected.setdefault(drop, ("near_leak", detail("near_leak", pair=text)))
            section["near_leaks_rejected"] = sum(1 for r, _ in rejected.values() if r == "near_leak")
        else:
            notes = (
                *notes,
                f"{len(leaks)} near-duplicate image pairs across splits "
                f"(pHash distance <= {options.threshold}); kept, as --on-near-leak report says",
            )
    report = dataclasses.replace(
        resolution.report, notes=notes, details={**resolution.report.details, "near_duplicates": section}
    )
    if not rejected:
        return dataclasses.replace(resolution, images=images, report=report)
    return _drop(resolution, images, rows, rejected, report)


def _exclude(images: pa.Table, hashes: np.ndarray, options: NearOptions, rejected: dict[int, tuple[str, str]]) -> None:
    train = np.flatnonzero([s not in EVAL_SPLITS for s in images["split"].to_pylist()])
    for build in options.exclude:
        other = load_hashes(build)
        other = other.filter(pc.is_valid(other["phash"]))
        found = NearIndex(other["phash"].to_numpy(zero_copy_only=False), options.threshold).search(hashes[train])
        ids, splits = other["image_id"].to_pylist(), other["split"].to_pylist()
        # Closest match first, so the detail names the best one.
        for k in np.lexsort((found.j, found.distance, found.i)).tolist():
            pos, j, d = int(train[found.i[k]]), int(found.j[k]), int(found.distance[k])
            rejected.setdefault(
                pos,
                (
                    "near_duplicate_of_eval",
                    detail(
                        "near_duplicate_of_eval",
                        distance=d,
                        threshold=options.threshold,
                        other=ids[j],
                        split=splits[j],
                        build=build,
                    ),
                ),
            )


def _near_leaks(
    images: pa.Table, hashes: np.ndarray, rejected: dict[int, tuple[str, str]], threshold: int
) -> list[tuple[int, int, int]]:
    splits = images["split"].to_pylist()
    found = self_pairs(hashes, threshold)
    return [
        (i, j, d)
        for i, j, d in zip(found.i.tolist(), found.j.tolist(), found.distance.tolist(), strict=True)
        if splits[i] != splits[j] and i not in rejected and j not in rejected
    ]


def _drop(
    resolution: Resolution,
    images: pa.Table,
    rows: pa.Table,
    rejected: dict[int, tuple[str, str]],
    report: ResolutionReport,
) -> Resolution:
    """Move the rejected images' caption rows to the rejects; renumber groups 0..n-1."""
    row_ids = images["row_ids"].to_pylist()
    dropped = [(r, reason, detail) for pos, (reason, detail) in rejected.items() for r in row_ids[pos]]
    row_id = rows["row_id"]
    at = pc.index_in(pa.array([r for r, _, _ in dropped], pa.int64()), value_set=row_id.combine_chunks())
    where = cols.locations(rows, cols.as_numpy(at)).to_pylist()
    new = [
        {"row_id": r, "location": location, "reason": reason, "detail": detail}
        for (r, reason, detail), location in zip(dropped, where, strict=True)
    ]
    keep = np.ones(images.num_rows, bool)
    keep[list(rejected)] = False
    kept = images.filter(pa.array(keep))
    kept = kept.set_column(kept.schema.get_field_index("group"), "group", pa.array(range(kept.num_rows), pa.int64()))
    rejects = pa.concat_tables([resolution.rejects, pa.Table.from_pylist(new, schema=REJECT_SCHEMA)])
    return dataclasses.replace(resolution, images=kept, rejects=rejects.sort_by("row_id"), report=report)


def near_options(config: Any) -> NearOptions:
    """The near-duplicate options of a :class:`~pipeline.config.BuildConfig`."""
    return NearOptions(config.near_threshold, tuple(config.exclude_near), config.on_near_leak)
