"""The streaming loader trainers import: capshard shards to batches with explicit positives.

>>> loader = make_loader("shards/sample", split="train", batch_size=64, captions_per_image=5)
>>> for epoch in range(10):
...     loader.set_epoch(epoch)
...     for batch in loader:
...         mask = positive_mask(batch)        # [P, C] bool, for a multi-positive InfoNCE

Batches follow DESIGN.md ("Loader contract"): ``image`` ``[P, 3, H, W]`` uint8 (each
image once; or the stacked / listed outputs of ``image_transform``), ``caption`` (C
strings, or the stacked outputs of ``caption_transform``, the strings then in
``caption_text``), ``caption_image`` ``[C]``, ``image_group`` ``[P]``, ``match_id``
``[C]``, ``image_id`` (P strings) and ``caption_id`` (C ids or None).
``batch_size`` counts images ``P``.

Captions: ``captions_per_image=1`` gives one caption per image, a different one each
epoch (all of an image's ``n`` captions in ``n`` epochs). ``K > 1`` gives ``K``
distinct captions of each image when it has ``K``; an image with fewer gives all it
has (``caption_shortfall="fewer"``, the default) or repeats them cyclically up to
``K`` (``"repeat"``, so ``C = K·P`` always; a repeated caption is a positive of its
copy, never a negative). ``"all"`` gives every caption.

Epochs, ranks, workers (see :mod:`pipeline.loader_plan`): the shards are permuted per
epoch, each rank of ``W`` owns ``N // W`` consecutive samples of that order (at most
``W - 1`` samples of the split left out per epoch, different ones each epoch; no
padding), and with ``drop_last`` (default) up to ``batch_size - 1`` more per rank. So
every rank yields exactly ``len(loader)`` batches, no image twice per epoch across all
ranks, and no image twice in a batch. Each DataLoader worker reads its own stretch of
shards and shuffles it in windows of ``shuffle_window`` images. The batches are a
function of (seed, epoch, rank, world size, batch size, workers, window). Rank and
world size come from ``torch.distributed`` when it is initialised. ``set_epoch``
works like ``DistributedSampler.set_epoch``.

Resume: ``state_dict()`` records the epoch and the batches yielded in it (JSON-safe);
``load_state_dict`` makes the next iteration yield exactly the batches the
uninterrupted loader would have yielded after those. Each worker starts at the shuffle
window of its first remaining batch: shards before it are not opened, samples before
it in its first shard cost only their tar headers, and nothing already yielded is
decoded again. The state checks that the shards and the options that shape the epoch
are the same.

Errors: a sample that cannot be used (corrupt image, bad JSON, truncated shard, an image
whose bytes fail the sha256 its ``KEY.json`` records) is skipped and counted in
:attr:`CaptionLoader.counters` (``handler="warn"``, the default, also logs it; ``"skip"``
does not; ``"raise"`` raises; or a webdataset-style callable). A batch with a skipped
sample is one image short; batches are never dropped. No sample whose image fails its
checksum is ever yielded: it is checked before it is decoded
(:mod:`pipeline.loader_integrity`).

A bad shard -- missing, of another size than the manifest's, or whose sha256 is not the
manifest's for a reason other than damaged images -- follows one policy, ``on_bad_shard``:
``"raise"`` (the default) raises :class:`~pipeline.loader_integrity.BadShardError` (an
:class:`~pipeline.errors.IntegrityError`) before any sample of that shard is yielded;
``"skip"`` drops the shard's samples and counts them as ``shard_missing``,
``shard_size`` or ``shard_checksum``. The default is to raise, as webdataset's default
handler and MosaicML Streaming's hash validation do: a bad shard means the files on disk
are not the build the manifest describes, and losing a whole shard silently changes the
epoch; ``"skip"`` is the opt-in for jobs that prefer to train on what is left. Missing
and wrong-size local shards are found by ``make_loader`` itself (raise) or logged there
(skip).

An epoch without a batch is refused (:class:`~pipeline.errors.UsageError`, naming the
split, images, ranks and batch size) unless ``allow_empty=True``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from .errors import UsageError
from .loader_decode import DEFAULT_MAX_MEMBER_BYTES, HANDLER_NAMES, Caps, Handler
from .loader_integrity import BAD_SHARD_POLICIES, OnBadShard
from .loader_plan import EpochPlan, PlanConfig
from .loader_source import VERIFY_MODES, ShardSet, Verify, check_local_sizes, resolve_source
from .loader_worker import ShardStream, StreamConfig, _identity
from .losses import positive_mask
from .media import DEFAULT_MAX_PIXELS

__all__ = ["CaptionLoader", "make_loader", "positive_mask"]

log = logging.getLogger(__name__)

STATE_VERSION = 1
#: The most workers the default picks: beyond this, decoding rarely keeps up with I/O anyway.
MAX_DEFAULT_WORKERS = 8
DEFAULT_SHUFFLE_WINDOW = 1000
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


def default_num_workers() -> int:
    """Workers when the caller does not say: the CPUs this process may run on (what
    torch's DataLoader checks, so it never warns), at most :data:`MAX_DEFAULT_WORKERS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_WORKERS))


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise UsageError(f"image_size must be a positive int or (height, width), not {image_size!r}")
    return int(size[0]), int(size[1])


class CaptionLoader:
    """Batches of one split for one rank; iterate it once per epoch (see the module doc)."""

    def __init__(
        self,
        shards: ShardSet,
        *,
        stream: StreamConfig,
        verify: Verify,
        handler: Handler,
        on_bad_shard: OnBadShard,
        image_transform: Callable[[Any], Any] | None,
        caption_transform: Callable[[str], Any] | None,
        num_workers: int,
        pin_memory: bool,
        prefetch_factor: int,
        multiprocessing_context: str | None,
    ) -> None:
        self.shards = shards
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
            verify=verify,
            handler=handler,
            on_bad_shard=on_bad_shard,
            image_transform=image_transform,
            caption_transform=caption_transform,
        )
        self.dataloader = DataLoader(
            self.dataset,
            batch_size=None,
            collate_fn=_identity,  # type: ignore[arg-type]
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
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
    *,
    split: str | None,
    batch_size: int,
    captions_per_image: int | Literal["all"] = 1,
    caption_shortfall: Literal["fewer", "repeat"] = "fewer",
    image_transform: Callable[[Any], Any] | None = None,
    caption_transform: Callable[[str], Any] | None = None,
    image_size: int | tuple[int, int] = 224,
    num_workers: int | None = None,
    seed: int = 0,
    shuffle: bool = True,
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW,
    drop_last: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    handler: Handler = "warn",
    on_bad_shard: OnBadShard = "raise",
    verify: Verify = "sha256",
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_image_pixels: int | None = None,
    pin_memory: bool | None = None,
    prefetch_factor: int = 2,
    multiprocessing_context: str | None = None,
    allow_empty: bool = False,
) -> CaptionLoader:
    """A loader over ``split`` of a capshard build directory or of shard URLs.

    Args:
        source: a build directory (local or remote; read through ``manifest.json``), or
            shard paths/URLs (globs and brace patterns allowed; ``split`` may then be None).
        batch_size: images per batch (``P``).
        captions_per_image: ``1``, ``K``, or ``"all"``; see the module doc.
        caption_shortfall: what an image with fewer than ``K`` captions gives.
        image_transform: called on the upright RGB PIL image in the worker; default: a
            ``uint8`` ``[3, H, W]`` tensor of ``image_size``, resized to cover and centre-cropped.
        caption_transform: called on each caption string in the worker (a tokenizer, say).
        num_workers: DataLoader worker processes (persistent; 0 reads in this process).
            Default: the CPUs this process may use, at most 8. The batches depend on it,
            so pass it explicitly when a job resumes on other machines.
        seed, shuffle, shuffle_window: the epoch order; ``shuffle_window`` is in images,
            rounded up to whole batches (at least two), held in memory undecoded per worker.
        drop_last: drop each rank's last short batch (default), or yield it short.
        rank, world_size: only when ``torch.distributed`` is not initialised.
        handler: what a bad sample does: ``"warn"``, ``"skip"``, ``"raise"`` or
            ``callable(exception) -> bool``.
        on_bad_shard: what a missing, wrong-size or replaced shard does: ``"raise"``
            (default) or ``"skip"`` (counted); see the module doc.
        verify: ``"sha256"`` (each process hashes a shard on first open, and its images
            only when that does not match), ``"size"`` (sizes, and each image's sha256 as
            it is read),
            ``"none"``.
        max_member_bytes, max_image_pixels: caps applied before reading or decoding; the
            pixel cap defaults to the build's ``--max-pixels`` (from the manifest), else 100 MP.
        pin_memory: default: when CUDA is available.
        allow_empty: accept a split and batch size that give no batch (else UsageError).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive int, not {batch_size!r}")
    if captions_per_image == "all":
        k = None
    elif isinstance(captions_per_image, int) and not isinstance(captions_per_image, bool) and captions_per_image >= 1:
        k = captions_per_image
    else:
        raise UsageError(f"captions_per_image must be a positive int or 'all', not {captions_per_image!r}")
    if caption_shortfall not in ("fewer", "repeat"):
        raise UsageError(f"caption_shortfall must be 'fewer' or 'repeat', not {caption_shortfall!r}")
    if verify not in VERIFY_MODES:
        raise UsageError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}")
    if isinstance(handler, str) and handler not in HANDLER_NAMES:
        raise UsageError(f"handler must be one of {', '.join(HANDLER_NAMES)} or a callable, not {handler!r}")
    if num_workers is None:
        num_workers = default_num_workers()
    if num_workers < 0 or seed < 0 or shuffle_window < 1 or prefetch_factor < 1:
        raise UsageError("num_workers and seed must be >= 0; shuffle_window and prefetch_factor >= 1")
    if max_member_bytes < 1 or (max_image_pixels is not None and max_image_pixels < 1):
        raise UsageError("max_member_bytes and max_image_pixels must be >= 1")
    the_rank, the_world = _distributed(rank, world_size)
    if the_world < 1 or not 0 <= the_rank < the_world:
        raise UsageError(f"rank {the_rank} is not in [0, world_size={the_world})")
    shards = resolve_source(source, split)
    if max_image_pixels is None:
        built_with = ((shards.manifest or {}).get("options") or {}).get("max_pixels")
        max_image_pixels = built_with if isinstance(built_with, int) and built_with > 0 else DEFAULT_MAX_PIXELS
    if on_bad_shard not in BAD_SHARD_POLICIES:
        raise UsageError(f"on_bad_shard must be one of {', '.join(BAD_SHARD_POLICIES)}, not {on_bad_shard!r}")
    if verify != "none":
        check_local_sizes(shards, on_bad_shard)
    plan = PlanConfig(
        seed=seed,
        rank=the_rank,
        world_size=the_world,
        batch_size=batch_size,
        num_workers=max(1, num_workers),
        window_batches=max(2, -(-shuffle_window // batch_size)) if shuffle else 1,
        shuffle=shuffle,
        drop_last=drop_last,
    )
    stream = StreamConfig(
        plan=plan,
        captions_per_image=k,
        repeat_short=caption_shortfall == "repeat",
        image_size=_size(image_size),
        caps=Caps(max_member_bytes=max_member_bytes, max_image_pixels=max_image_pixels),
    )
    n_batches = EpochPlan([s.images for s in shards.shards], plan, 0).n_batches
    if n_batches == 0 and not allow_empty:
        per_rank = shards.images // the_world
        hint = f"use batch_size <= {per_rank}" if per_rank else "use fewer ranks"
        raise UsageError(
            f"split {shards.split!r}: {shards.images} images over {the_world} rank(s) give no batch of "
            f"{batch_size} per epoch; {hint}, or pass allow_empty=True"
        )
    loader = CaptionLoader(
        shards,
        stream=stream,
        verify=verify,
        handler=handler,
        on_bad_shard=on_bad_shard,
        image_transform=image_transform,
        caption_transform=caption_transform,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        prefetch_factor=prefetch_factor,
        multiprocessing_context=multiprocessing_context,
    )
    log.info(
        "loader: %d shards, %d images; rank %d/%d yields %d batches per epoch, %d images left out per epoch",
        len(shards.shards), shards.images, the_rank, the_world, len(loader), loader.left_out_per_epoch,
    )
    return loader
