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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

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


def diagnose(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    split: str | None = "train",
    batch_size: int = 64,
    captions_per_image: int | Literal["all"] = 1,
    epoch: int = 0,
    seed: int = 0,
    num_workers: int = 0,
    max_batches: int | None = None,
    image_size: int = 64,
) -> DiagnoseReport:
    """Read ``split`` of ``source`` through the loader and report what the batches carry."""
    loader = make_loader(
        source, split=split, batch_size=batch_size, captions_per_image=captions_per_image, seed=seed,
        num_workers=num_workers, image_size=image_size, handler="skip", allow_empty=True,  # reported as a problem
    )
    loader.set_epoch(epoch)
    per_batch_images: list[int] = []
    per_batch_captions: list[int] = []
    positives: list[int] = []
    group_sizes: Counter[int] = Counter()
    seen: Counter[str] = Counter()
    in_batch = sharing = 0
    for n, batch in enumerate(loader):
        if max_batches is not None and n >= max_batches:
            break
        ids, groups = batch["image_id"], batch["image_group"]
        per_batch_images.append(len(ids))
        per_batch_captions.append(len(batch["caption_image"]))
        # A caption's positives: the captions of its picture in the batch (itself included), as
        # the loss sees them through the mask: match ids equal, padding (-1) excluded.
        match = batch["match_id"]
        same = positive_mask({"image_group": match, "match_id": match})
        positives.extend(same.sum(1).tolist())
        group_sizes.update(torch.bincount(batch["caption_image"], minlength=len(ids)).tolist())
        seen.update(ids)
        in_batch += len(ids) - len(set(ids))
        pairs = set(zip(ids, groups.tolist(), strict=True))
        sharing += len(pairs) - len({g for _, g in pairs})
    manifest = loader.shards.manifest or {}
    split_images = loader.shards.images
    report = DiagnoseReport(
        source=os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"{len(loader.shards.shards)} shards",
        split=split,
        batch_size=batch_size,
        captions_per_image=captions_per_image,
        epoch=epoch,
        batches=len(per_batch_images),
        batches_per_epoch=len(loader),
        images=sum(per_batch_images),
        captions=sum(per_batch_captions),
        images_per_batch=Spread.of(per_batch_images),
        captions_per_batch=Spread.of(per_batch_captions),
        positives_per_caption=Spread.of(positives),
        group_sizes=dict(sorted(group_sizes.items())),
        images_repeated_in_batch=in_batch,
        images_repeated_in_epoch=sum(c - 1 for c in seen.values() if c > 1),
        images_sharing_a_group=sharing,
        skipped=dict(loader.counters),
        left_out_per_epoch=loader.left_out_per_epoch,
        split_images=split_images,
    )
    _judge(report, manifest)
    return report


def _judge(r: DiagnoseReport, manifest: dict[str, Any]) -> None:
    """Fill ``problems`` (what breaks the loss, with the likely cause) and ``notes``."""
    k = r.captions_per_image
    if r.batches == 0:
        r.problems.append(
            f"no batches: split {r.split} has {r.split_images} images, fewer than one batch of {r.batch_size} "
            "per rank; lower --batch-size"
        )
        return
    sizes = r.group_sizes
    if k != 1 and set(sizes) == {1}:
        r.problems.append(
            f"no semantic grouping possible: every image carries a single caption, but --captions-per-image {k} "
            "was asked; if the source has several captions per picture, the build did not group them "
            "(check the manifest's resolution report and the --id strategy)"
        )
    elif isinstance(k, int) and k > 1 and (short := sum(n for s, n in sizes.items() if s < k)):
        r.problems.append(
            f"{short} of {r.images} images carry fewer than {k} captions (smallest group {min(sizes)}); "
            f"their captions have fewer positives than asked: use --captions-per-image {min(sizes)} or accept it"
        )
    if r.images_sharing_a_group:
        r.problems.append(
            f"{r.images_sharing_a_group} distinct images share a group id with another image of their batch: "
            "their captions become false positives; the build's identity resolution merged different pictures"
        )
    if r.images_repeated_in_batch:
        r.problems.append(
            f"{r.images_repeated_in_batch} images appear twice in one batch: the diagonal is no longer exact "
            "(duplicate keys in the shards)"
        )
    if r.images_repeated_in_epoch:
        r.problems.append(
            f"{r.images_repeated_in_epoch} images appear more than once in the epoch: a shard is listed twice "
            "or two shards hold the same image"
        )
    if lost := sum(r.skipped.values()):
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(r.skipped.items()))
        r.problems.append(f"{lost} samples were skipped ({reasons}): the shards are damaged; run `capshard verify`")
    hist = (manifest.get("groups") or {}).get("captions_per_image")
    if hist:
        r.notes.append("captions per image in the build: " + ", ".join(f"{s}: {n}" for s, n in hist.items()))
    if r.left_out_per_epoch:
        r.notes.append(f"{r.left_out_per_epoch} images of the split are left out per epoch (drop_last, ranks)")
