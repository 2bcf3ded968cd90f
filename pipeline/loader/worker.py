"""What runs inside each ``DataLoader`` worker: read, select, decode, collate.

:class:`ShardStream` is the ``IterableDataset`` every worker holds a copy of. Each time
a worker starts an epoch it reads ``(epoch, batches already yielded)`` from a small
shared-memory tensor that the main process set (so persistent workers follow
``set_epoch`` and ``load_state_dict``), asks :mod:`pipeline.loader.plan` for its batches
and the stretch of shards they live in, and runs a webdataset ``DataPipeline``:

1. ``read``: the segments of its stretch, in order, through the verifying opener and
   :func:`~pipeline.loader.decode.read_segment` (images and JSON only, size caps); a
   sample whose image fails its recorded sha256 is marked ``sample_checksum`` here,
   before anything decodes it (see :mod:`pipeline.loader.integrity`);
2. ``select``: collects one shuffle window at a time and emits the samples of its
   batches in batch order, each followed by an end-of-batch marker; samples a shard
   error made unreadable are counted here;
3. ``webdataset.decode`` with the image and JSON handlers only (no default decoders);
4. ``webdataset.map``: checks the metadata, picks the captions for this epoch, applies
   the caption transform;
5. ``collate``: one batch dict per marker, tensors built in the worker.

Nothing in this path takes a lock or talks to other workers. A sample that fails is
skipped by the error policy, so a batch can be short, but no batch is ever dropped or
merged: every rank still yields exactly ``len(loader)`` batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from .decode import (
    IMAGE_FORMATS,
    Caps,
    ErrorLog,
    ErrorPolicy,
    Handler,
    SampleError,
    ShardReadError,
    decode_image,
    decode_json,
    read_segment,
)
from .integrity import BadShardError, OnBadShard, bad_key_message, image_mismatch
from .plan import EpochPlan, PlanConfig, Segment, WorkerPlan, caption_indices, plan_worker
from .source import ShardInfo, ShardOpener

log = logging.getLogger(__name__)

Sample = dict[str, Any]
END = "__end__"


@dataclass(frozen=True)
class StreamConfig:
    """What a worker needs besides the shards; built once by the loader's constructor."""

    plan: PlanConfig
    captions_per_image: int | None
    """``None`` means every caption ("all")."""
    repeat_short: bool
    image_size: tuple[int, int]
    caps: Caps


class ImageHandler:
    """webdataset decode handler for image members: a uint8 HWC array of ``size``, or
    the user's transform applied to the upright RGB PIL image."""

    def __init__(self, size: tuple[int, int], max_pixels: int, transform: Callable[[Any], Any] | None) -> None:
        self.size, self.max_pixels, self.transform = size, max_pixels, transform

    def __call__(self, key: str, data: bytes) -> Any:
        ext = key[1:]
        if ext not in IMAGE_FORMATS:
            return None
        if self.transform is not None:
            return self.transform(decode_image(data, ext, None, self.max_pixels))
        return np.asarray(decode_image(data, ext, self.size, self.max_pixels))


def read(shards: tuple[ShardInfo, ...], segments: tuple[Segment, ...], opener: ShardOpener, caps: Caps,
         policy: ErrorPolicy, on_bad_shard: OnBadShard = "raise") -> Iterator[Sample]:
    """Raw samples of ``segments``, in order, each image checked against its recorded
    sha256 (a failing one marked ``sample_checksum``); a broken shard loses only its rest,
    a bad one (missing, wrong size, wrong sha256) all of it, or raises (``on_bad_shard``)."""
    for seg in segments:
        shard = shards[seg.shard]
        lost = range(seg.position, seg.position + seg.stop - seg.start)
        try:
            f, damaged = opener.open(shard)
            with f:
                for sample in read_segment(f, shard.url, seg.start, seg.stop, seg.position, caps):
                    _check_image(sample, damaged)
                    yield sample
        except BadShardError as e:
            if on_bad_shard == "raise":
                raise
            log.warning("skipping the %d samples of shard %s: %s", len(lost), shard.name, e)
            policy.log.lose(lost, e.reason)
        except OSError as e:
            # Opening failed (a network error, an unreadable file): the whole segment is lost.
            err = ShardReadError(f"{shard.url}: cannot open: {e}", "shard_open_error", seg.start)
            err.__cause__ = e
            policy.skips(err)
            policy.log.lose(lost, err.reason)
        except ShardReadError as e:
            policy.skips(e)
            first = seg.position + e.first_lost - seg.start
            policy.log.lose(range(first, lost.stop), e.reason)


def _check_image(sample: Sample, damaged: frozenset[str] | None) -> None:
    """Mark ``sample`` when its image is not the one recorded: ``damaged`` lists the keys a
    shard scan found; ``None`` means the shard was not scanned, so hash the image now."""
    if "__error__" in sample:
        return
    if damaged is None:
        why = image_mismatch(sample)
    else:
        why = bad_key_message(sample["__url__"], sample["__key__"]) if sample["__key__"] in damaged else None
    if why is not None:
        sample["__error__"] = (why, "sample_checksum")


def select(plan: EpochPlan, work: WorkerPlan, policy: ErrorPolicy) -> Callable[[Iterator[Sample]], Iterator[Sample]]:
    """Stage: the samples of this worker's batches, in batch order, each batch closed by a marker."""

    def stage(samples: Iterator[Sample]) -> Iterator[Sample]:
        ahead: Sample | None = None
        for window in work.windows:
            got: dict[int, Sample] = {}
            while True:
                if ahead is None:
                    ahead = next(samples, None)
                if ahead is None or ahead["__pos__"] >= window.hi:
                    break
                got[ahead["__pos__"]], ahead = ahead, None
            perm = plan.window_permutation(work.worker, window)
            for batch in range(max(work.batches.start, window.batches.start), window.batches.stop):
                for slot, pos in enumerate(plan.batch_positions(batch, perm).tolist()):
                    sample = got.get(pos)
                    if sample is None:
                        policy.log.add(policy.log.lost.pop(pos, "missing_sample"))
                    elif "__error__" in sample:
                        policy(SampleError(*sample["__error__"]))
                    else:
                        yield {**sample, "__batch__": batch, "__slot__": slot}
                yield {END: batch}

    return stage


class RecordMaker:
    """webdataset map function: checks a decoded sample and picks its captions."""

    def __init__(self, config: StreamConfig, epoch: int, caption_transform: Callable[[str], Any] | None) -> None:
        self.config, self.epoch, self.caption_transform = config, epoch, caption_transform

    def __call__(self, sample: Sample) -> Sample:
        if END in sample:
            return sample
        where = f"{sample['__url__']}: sample {sample['__key__']}"
        meta = sample.get("json")
        if not isinstance(meta, dict):
            raise SampleError(f"{where}: no JSON metadata member", "missing_json")
        image_id, group, captions = meta.get("image_id"), meta.get("group"), meta.get("captions")
        if not isinstance(image_id, str) or not isinstance(group, int) or isinstance(group, bool):
            raise SampleError(f"{where}: image_id (str) or group (int) missing", "bad_json")
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise SampleError(f"{where}: captions must be a non-empty list of strings", "bad_json")
        image = next((sample[e] for e in IMAGE_FORMATS if e in sample), None)
        if image is None:
            raise SampleError(f"{where}: no image member", "missing_image")
        ids = meta.get("caption_ids")
        ids = ids if isinstance(ids, list) and len(ids) == len(captions) else [None] * len(captions)
        c = self.config
        chosen = caption_indices(
            len(captions), c.captions_per_image, epoch=self.epoch, seed=c.plan.seed, image_id=image_id,
            repeat=c.repeat_short,
        )
        texts = [captions[i] for i in chosen]
        return {
            "image": image,
            "image_id": image_id,
            "group": group,
            "texts": texts,
            "caption_ids": [None if ids[i] is None else str(ids[i]) for i in chosen],
            "encoded": None if self.caption_transform is None else [self.caption_transform(t) for t in texts],
        }


def _stack(values: list[Any]) -> Any:
    """Tensors (or arrays) of one shape stacked into one tensor; anything else stays a list."""
    if values and all(isinstance(v, torch.Tensor) for v in values) and len({v.shape for v in values}) == 1:
        return torch.stack(values)
    if values and all(isinstance(v, np.ndarray) for v in values) and len({v.shape for v in values}) == 1:
        return torch.from_numpy(np.stack(values))
    return values


def collate(config: StreamConfig, log: ErrorLog, custom_images: bool, custom_captions: bool
            ) -> Callable[[Iterator[Sample]], Iterator[Sample]]:
    """Stage: one batch dict per end-of-batch marker (see DESIGN.md, "Loader contract")."""
    h, w = config.image_size

    def make(records: list[Sample]) -> Sample:
        if custom_images:
            images: Any = _stack([r["image"] for r in records])
        else:
            images = torch.empty((len(records), 3, h, w), dtype=torch.uint8)
            for i, r in enumerate(records):
                # One copy, HWC array into the CHW slot (PIL's arrays are read-only: no from_numpy).
                images[i].permute(1, 2, 0).numpy()[...] = r["image"]
        counts = [len(r["texts"]) for r in records]
        group = torch.tensor([r["group"] for r in records], dtype=torch.long)
        # Built from a list: repeat_interleave costs ~20 ms a batch where torch runs several threads.
        caption_image = torch.tensor([i for i, n in enumerate(counts) for _ in range(n)], dtype=torch.long)
        texts = [t for r in records for t in r["texts"]]
        batch: Sample = {
            "image": images,
            "caption": _stack([e for r in records for e in r["encoded"]]) if custom_captions else texts,
            "caption_image": caption_image,
            "image_group": group,
            "match_id": group[caption_image],
            "image_id": [r["image_id"] for r in records],
            "caption_id": [i for r in records for i in r["caption_ids"]],
        }
        if custom_captions:
            batch["caption_text"] = texts
        batch["__stats__"] = log.drain()
        return batch

    def stage(items: Iterator[Sample]) -> Iterator[Sample]:
        records: list[Sample] = []
        for item in items:
            if END in item:
                yield make(records)
                records = []
            else:
                records.append(item)

    return stage


def prebuilt_batch(batch: Sample) -> Sample:
    """DataLoader ``collate_fn``: batches are already built in the worker."""
    return batch


class ShardStream(IterableDataset[dict[str, Any]]):
    """The dataset each DataLoader worker iterates: its share of one epoch, as batches."""

    def __init__(
        self,
        *,
        shards: tuple[ShardInfo, ...],
        config: StreamConfig,
        state: torch.Tensor,
        verify: Literal["sha256", "size", "none"],
        storage_options: Mapping[str, Any] | None = None,
        handler: Handler,
        on_bad_shard: OnBadShard,
        image_transform: Callable[[Any], Any] | None,
        caption_transform: Callable[[str], Any] | None,
    ) -> None:
        self.shards, self.config, self.state = shards, config, state
        self.on_bad_shard = on_bad_shard
        self.counts = [s.images for s in shards]
        self.opener = ShardOpener(verify, dict(storage_options or {}))
        self.handler = handler
        self.image_transform, self.caption_transform = image_transform, caption_transform

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if n_workers != self.config.plan.num_workers:
            raise RuntimeError(f"planned for {self.config.plan.num_workers} workers, running in {n_workers}")
        epoch, done = (int(v) for v in self.state.tolist())
        plan = EpochPlan(self.counts, self.config.plan, epoch)
        work = plan.worker(plan_worker(worker, done, n_workers), done)
        if not work.batches:
            return iter(())
        policy = ErrorPolicy(self.handler, ErrorLog())
        c = self.config
        pipeline = wds.DataPipeline(
            lambda: read(self.shards, work.segments, self.opener, c.caps, policy, self.on_bad_shard),
            select(plan, work, policy),
            wds.decode(
                ImageHandler(c.image_size, c.caps.max_image_pixels, self.image_transform),
                decode_json,
                pre=[],
                post=[],
                handler=policy,
            ),
            wds.map(RecordMaker(c, epoch, self.caption_transform), handler=policy),
            collate(c, policy.log, self.image_transform is not None, self.caption_transform is not None),
        )
        return iter(pipeline)
