"""``diagnose``: read a build through the loader and check the batches carry the positives
the settings ask for, the way a careful engineer would before a long training run.

It runs one epoch (or ``max_batches``) exactly as a trainer would get it and measures
what the loss will see: images and captions per batch, positives per caption (from
:func:`~pipeline.loader.positive_mask`), group sizes, images repeated within a batch or
the epoch, distinct images that share a group id, samples skipped. The report says
``ok`` when every caption has the positives asked for, and otherwise names the likely
cause in ``problems`` (for example "no semantic grouping possible" when every image has
a single caption but several per image were asked for: the loop-counter failure
DESIGN.md starts from).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch

from .captions_per_image import CaptionsPerImage
from .errors import CapshardError
from .loader import make_loader, positive_mask


class DiagnosisFailed(CapshardError):
    """The batches do not carry the positives the settings ask for."""


@dataclass(frozen=True)
class Spread:
    """Smallest, mean and largest of a per-batch (or per-caption) quantity."""

    min: float
    mean: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(0, 0.0, 0)
        return cls(min(values), round(sum(values) / len(values), 3), max(values))


@dataclass(frozen=True)
class DiagnoseReport:
    """What ``diagnose`` saw; ``ok`` is False when ``problems`` is not empty."""

    source: str
    split: str | None
    batch_size: int
    captions_per_image: int | str
    epoch: int
    batches: int
    batches_per_epoch: int
    images: int
    captions: int
    images_per_batch: Spread
    captions_per_batch: Spread
    positives_per_caption: Spread
    group_sizes: dict[int, int]
    """Captions an image carries in its batch -> number of images."""
    images_repeated_in_batch: int
    images_repeated_in_epoch: int
    images_sharing_a_group: int
    skipped: dict[str, int]
    left_out_per_epoch: int
    split_images: int
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class _Tally:
    """What the batches of one read carried, counted as they come."""

    images: list[int] = field(default_factory=list)
    captions: list[int] = field(default_factory=list)
    positives: list[int] = field(default_factory=list)
    group_sizes: Counter[int] = field(default_factory=Counter)
    seen: Counter[str] = field(default_factory=Counter)
    in_batch: int = 0
    sharing: int = 0

    def add(self, batch: dict[str, Any]) -> None:
        ids, groups = batch["image_id"], batch["image_group"]
        self.images.append(len(ids))
        self.captions.append(len(batch["caption_image"]))
        # A caption's positives: the captions of its picture in the batch (itself included), as
        # the loss sees them through the mask: match ids equal, padding (-1) excluded.
        match = batch["match_id"]
        same = positive_mask({"image_group": match, "match_id": match})
        self.positives.extend(same.sum(1).tolist())
        self.group_sizes.update(torch.bincount(batch["caption_image"], minlength=len(ids)).tolist())
        self.seen.update(ids)
        self.in_batch += len(ids) - len(set(ids))
        pairs = set(zip(ids, groups.tolist(), strict=True))
        self.sharing += len(pairs) - len({g for _, g in pairs})


def diagnose(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    split: str | None = "train",
    batch_size: int = 64,
    captions_per_image: CaptionsPerImage | int | Literal["all"] = 1,
    epoch: int = 0,
    seed: int = 0,
    num_workers: int = 0,
    max_batches: int | None = None,
    image_size: int = 64,
    storage_options: Mapping[str, Any] | None = None,
) -> DiagnoseReport:
    """Read ``split`` of ``source`` (a build folder or URL, or shard URLs) through the loader and
    report what the batches carry; ``storage_options`` go to the fsspec backend of a URL."""
    loader = make_loader(
        source, split=split, batch_size=batch_size, captions_per_image=captions_per_image, seed=seed,
        num_workers=num_workers, image_size=image_size, handler="skip", allow_empty=True,  # reported as a problem
        storage_options=storage_options,
    )
    loader.set_epoch(epoch)
    t = _Tally()
    for n, batch in enumerate(loader):
        if max_batches is not None and n >= max_batches:
            break
        t.add(batch)
    fields: dict[str, Any] = dict(
        source=os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"{len(loader.shards.shards)} shards",
        split=split,
        batch_size=batch_size,
        captions_per_image=loader.options.captions.value,
        epoch=epoch,
        batches=len(t.images),
        batches_per_epoch=len(loader),
        images=sum(t.images),
        captions=sum(t.captions),
        images_per_batch=Spread.of(t.images),
        captions_per_batch=Spread.of(t.captions),
        positives_per_caption=Spread.of(t.positives),
        group_sizes=dict(sorted(t.group_sizes.items())),
        images_repeated_in_batch=t.in_batch,
        images_repeated_in_epoch=sum(c - 1 for c in t.seen.values() if c > 1),
        images_sharing_a_group=t.sharing,
        skipped=dict(loader.counters),
        left_out_per_epoch=loader.left_out_per_epoch,
        split_images=loader.shards.images,
    )
    observed = DiagnoseReport(**fields)  # no verdicts yet; the returned copy carries them
    return replace(observed, problems=_problems(observed), notes=_notes(observed, loader.shards.manifest or {}))


def _problems(r: DiagnoseReport) -> list[str]:
    """What breaks the loss in what ``r`` saw, each with its likely cause."""
    k = r.captions_per_image
    if r.batches == 0:
        return [
            f"no batches: split {r.split} has {r.split_images} images, fewer than one batch of {r.batch_size} "
            "per rank; lower --batch-size"
        ]
    out: list[str] = []
    sizes = r.group_sizes
    if k != 1 and set(sizes) == {1}:
        out.append(
            f"no semantic grouping possible: every image carries a single caption, but --captions-per-image {k} "
            "was asked; if the source has several captions per picture, the build did not group them "
            "(check the manifest's resolution report and the --id strategy)"
        )
    elif isinstance(k, int) and k > 1 and (short := sum(n for s, n in sizes.items() if s < k)):
        out.append(
            f"{short} of {r.images} images carry fewer than {k} captions (smallest group {min(sizes)}); "
            f"their captions have fewer positives than asked: use --captions-per-image {min(sizes)} or accept it"
        )
    if r.images_sharing_a_group:
        out.append(
            f"{r.images_sharing_a_group} distinct images share a group id with another image of their batch: "
            "their captions become false positives; the build's identity resolution merged different pictures"
        )
    if r.images_repeated_in_batch:
        out.append(
            f"{r.images_repeated_in_batch} images appear twice in one batch: the diagonal is no longer exact "
            "(duplicate keys in the shards)"
        )
    if r.images_repeated_in_epoch:
        out.append(
            f"{r.images_repeated_in_epoch} images appear more than once in the epoch: a shard is listed twice "
            "or two shards hold the same image"
        )
    if lost := sum(r.skipped.values()):
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(r.skipped.items()))
        out.append(f"{lost} samples were skipped ({reasons}): the shards are damaged; run `capshard verify`")
    return out


def _notes(r: DiagnoseReport, manifest: dict[str, Any]) -> list[str]:
    """What is worth knowing but breaks nothing (returns none when there are no batches)."""
    if r.batches == 0:
        return []
    out: list[str] = []
    hist = (manifest.get("groups") or {}).get("captions_per_image")
    if hist:
        out.append("captions per image in the build: " + ", ".join(f"{s}: {n}" for s, n in hist.items()))
    if r.left_out_per_epoch:
        out.append(f"{r.left_out_per_epoch} images of the split are left out per epoch (drop_last, ranks)")
    return out
