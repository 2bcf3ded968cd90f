"""The loader object and its factory: options checked, shards resolved, workers planned.

The behaviour (batches, epochs, resume, errors) is described in :mod:`pipeline.loader`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..errors import UsageError
from ..losses import positive_mask
from ..media import DEFAULT_MAX_PIXELS
from .decode import Caps
from .options import LoaderOptions
from .plan import EpochPlan, PlanConfig
from .source import ShardSet, check_local_sizes, resolve_source
from .worker import ShardStream, StreamConfig, prebuilt_batch

__all__ = ["CaptionLoader", "LoaderOptions", "make_loader", "positive_mask"]

log = logging.getLogger(__name__)

STATE_VERSION = 1
PLAN_FIELDS = ("seed", "rank", "world_size", "batch_size", "num_workers", "window_batches", "shuffle", "drop_last")


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        actual = (dist.get_rank(), dist.get_world_size())
        if (rank is not None and rank != actual[0]) or (world_size is not None and world_size != actual[1]):
            raise UsageError(
                f"rank/world_size {rank}/{world_size} contradict torch.distributed's {actual[0]}/{actual[1]}"
            )
        return actual
    return (0 if rank is None else rank), (1 if world_size is None else world_size)


class CaptionLoader:
    """Batches of one split for one rank; iterate it once per epoch (see the module doc)."""

    def __init__(self, shards: ShardSet, stream: StreamConfig, options: LoaderOptions) -> None:
        self.shards = shards
        self.options = options
        """The checked options this loader was made with."""
        self.config = stream
        self._epoch = 0
        self._done = 0
        self._resume: tuple[int, int] | None = None
        self.counters: Counter[str] = Counter()
        """Samples skipped so far, by reason (``corrupt_image``, ``shard_read_error``, ...)."""
        self._state = torch.zeros(2, dtype=torch.int64).share_memory_()
        self.dataset = ShardStream(
            shards=shards.shards,
            config=stream,
            state=self._state,
            verify=options.verify,
            storage_options=options.storage_options,
            handler=options.handler,
            on_bad_shard=options.on_bad_shard,
            image_transform=options.image_transform,
            caption_transform=options.caption_transform,
        )
        num_workers = options.workers
        pin_memory = torch.cuda.is_available() if options.pin_memory is None else options.pin_memory
        self.dataloader = DataLoader(
            self.dataset,
            batch_size=None,
            collate_fn=prebuilt_batch,  # type: ignore[arg-type]
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
            prefetch_factor=options.prefetch_factor if num_workers > 0 else None,
            multiprocessing_context=options.multiprocessing_context if num_workers > 0 else None,
        )
        self._plan = EpochPlan(self.dataset.counts, stream.plan, 0)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def rank(self) -> int:
        return self.config.plan.rank

    @property
    def world_size(self) -> int:
        return self.config.plan.world_size

    @property
    def samples_per_epoch(self) -> int:
        """Images this rank yields per epoch (fewer only if samples are skipped)."""
        return self._plan.samples_used

    @property
    def left_out_per_epoch(self) -> int:
        """Images of the split that no rank yields in an epoch (≤ W-1, plus the
        ``drop_last`` remainder of each rank); which ones changes every epoch."""
        return self._plan.left_out

    def __len__(self) -> int:
        """Batches per epoch on every rank (a resumed epoch yields the rest of them)."""
        return self._plan.n_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration yields (shard order, windows, captions)."""
        if epoch < 0:
            raise UsageError(f"epoch must be >= 0, got {epoch}")
        if epoch != self._epoch:
            self._resume = None
        self._epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        start = self._resume[1] if self._resume is not None and self._resume[0] == self._epoch else 0
        self._resume = None
        self._done = start
        self._state.copy_(torch.tensor([self._epoch, start]))
        return self._batches(iter(self.dataloader))

    def _batches(self, it: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for batch in it:
            self.counters.update(batch.pop("__stats__"))
            self._done += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Where this rank is: epoch and batches yielded in it, with what must not change."""
        p = self.config.plan
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "batches": self._done,
            "shards": self.shards.fingerprint(),
            "plan": [getattr(p, name) for name in PLAN_FIELDS],
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration yields batch ``state["batches"]`` of ``state["epoch"]`` on."""
        if state.get("version") != STATE_VERSION:
            raise UsageError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}")
        mine = self.state_dict()
        if state["shards"] != mine["shards"]:
            raise UsageError("the loader state was saved over different shards (or counts or checksums)")
        if list(state["plan"]) != mine["plan"]:
            pairs = zip(PLAN_FIELDS, state["plan"], mine["plan"], strict=True)
            diff = [f"{n} {a!r}->{b!r}" for n, a, b in pairs if a != b]
            raise UsageError(f"the loader state was saved with other options: {', '.join(diff)}")
        if not 0 <= int(state["batches"]) <= len(self):
            raise UsageError(f"loader state says {state['batches']} batches, but an epoch has {len(self)}")
        self._epoch = int(state["epoch"])
        self._resume = (self._epoch, int(state["batches"]))
        self._done = int(state["batches"])
        self.counters = Counter(state.get("counters", {}))


def make_loader(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    options: LoaderOptions | None = None,
    **kwargs: Any,
) -> CaptionLoader:
    """A loader over one split of a capshard build directory or of shard URLs.

    ``source`` is a build directory (local or remote; read through ``manifest.json``), or
    shard paths/URLs (globs and brace patterns allowed; the split may then be None).
    ``options`` says how (:class:`~pipeline.loader.options.LoaderOptions`, where each
    option is described); keyword arguments build one, or override fields of ``options``,
    and are checked by the same code: ``make_loader(src, split="train", batch_size=64)``.
    """
    if options is None:
        options = LoaderOptions(**kwargs)
    elif kwargs:
        options = replace(options, **kwargs)
    rank, world = _distributed(options.rank, options.world_size)
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"rank {rank} is not in [0, world_size={world})")
    shards = resolve_source(source, options.split, options.storage_options)
    if options.verify != "none":
        check_local_sizes(shards, options.on_bad_shard)
    stream = _stream_config(shards, options, rank, world)
    n_batches = EpochPlan([s.images for s in shards.shards], stream.plan, 0).n_batches
    if n_batches == 0 and not options.allow_empty:
        per_rank = shards.images // world
        hint = f"use batch_size <= {per_rank}" if per_rank else "use fewer ranks"
        raise UsageError(
            f"split {shards.split!r}: {shards.images} images over {world} rank(s) give no batch of "
            f"{options.batch_size} per epoch; {hint}, or pass allow_empty=True"
        )
    loader = CaptionLoader(shards, stream, options)
    log.info(
        "loader: %d shards, %d images; rank %d/%d yields %d batches per epoch, %d images left out per epoch",
        len(shards.shards), shards.images, rank, world, len(loader), loader.left_out_per_epoch,
    )
    return loader


def _stream_config(shards: ShardSet, o: LoaderOptions, rank: int, world: int) -> StreamConfig:
    """What every worker needs: the epoch plan's inputs, captions, size and caps."""
    max_pixels = o.max_image_pixels
    if max_pixels is None:  # the build's --max-pixels, from its manifest, else the default
        built_with = ((shards.manifest or {}).get("options") or {}).get("max_pixels")
        max_pixels = built_with if isinstance(built_with, int) and built_with > 0 else DEFAULT_MAX_PIXELS
    plan = PlanConfig(
        seed=o.seed,
        rank=rank,
        world_size=world,
        batch_size=o.batch_size,
        num_workers=max(1, o.workers),
        window_batches=max(2, -(-o.shuffle_window // o.batch_size)) if o.shuffle else 1,
        shuffle=o.shuffle,
        drop_last=o.drop_last,
    )
    return StreamConfig(
        plan=plan,
        captions_per_image=o.captions.count,
        repeat_short=o.caption_shortfall == "repeat",
        image_size=o.size,
        caps=Caps(max_member_bytes=o.max_member_bytes, max_image_pixels=max_pixels),
    )
