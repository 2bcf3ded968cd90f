"""The loader's options: one frozen, keyword-only :class:`LoaderOptions`, checked once.

:func:`~pipeline.loader.make_loader` takes one (or builds one from its keyword
arguments); everything inside the loader reads the checked object, never the raw values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..captions_per_image import CaptionsPerImage
from ..errors import UsageError
from .decode import DEFAULT_MAX_MEMBER_BYTES, HANDLER_NAMES, Handler
from .integrity import BAD_SHARD_POLICIES, OnBadShard
from .source import VERIFY_MODES, Verify

#: The most workers the default picks: beyond this, decoding rarely keeps up with I/O anyway.
MAX_DEFAULT_WORKERS = 8
DEFAULT_SHUFFLE_WINDOW = 1000
SHORTFALLS = ("fewer", "repeat")


def default_num_workers() -> int:
    """Workers when the caller does not say: the CPUs this process may run on (what
    torch's DataLoader checks, so it never warns), at most :data:`MAX_DEFAULT_WORKERS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_WORKERS))


@dataclass(frozen=True, kw_only=True)
class LoaderOptions:
    """How :func:`~pipeline.loader.make_loader` loads a split (see :mod:`pipeline.loader`).

    Fields:
        split: the split to read (None: the build's only split, or every given shard).
        batch_size: images per batch (``P``).
        captions_per_image: ``1``, ``K``, or ``"all"``; see the package doc.
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
            (default) or ``"skip"`` (counted); see the package doc.
        verify: ``"sha256"`` (each process hashes a shard on first open, and its images
            only when that does not match), ``"size"`` (sizes, and each image's sha256 as
            it is read), ``"none"``.
        max_member_bytes, max_image_pixels: caps applied before reading or decoding; the
            pixel cap defaults to the build's ``--max-pixels`` (from the manifest), else 100 MP.
        pin_memory: default: when CUDA is available.
        prefetch_factor, multiprocessing_context: passed to torch's DataLoader.
        allow_empty: accept a split and batch size that give no batch (else UsageError).
        storage_options: keyword arguments for the fsspec backend of ``s3://``, ``gs://``...
            sources (credentials otherwise come from the backend's own configuration).

    Checked on creation (and again by :func:`dataclasses.replace`): a bad value raises
    :class:`~pipeline.errors.UsageError`. ``captions_per_image`` becomes a
    :class:`~pipeline.captions_per_image.CaptionsPerImage`, ``image_size`` a
    ``(height, width)`` pair and ``num_workers`` a number.
    """

    split: str | None
    batch_size: int
    captions_per_image: CaptionsPerImage | int | Literal["all"] = 1
    caption_shortfall: Literal["fewer", "repeat"] = "fewer"
    image_transform: Callable[[Any], Any] | None = None
    caption_transform: Callable[[str], Any] | None = None
    image_size: int | tuple[int, int] = 224
    num_workers: int | None = None
    seed: int = 0
    shuffle: bool = True
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW
    drop_last: bool = True
    rank: int | None = None
    world_size: int | None = None
    handler: Handler = "warn"
    on_bad_shard: OnBadShard = "raise"
    verify: Verify = "sha256"
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_image_pixels: int | None = None
    pin_memory: bool | None = None
    prefetch_factor: int = 2
    multiprocessing_context: str | None = None
    allow_empty: bool = False
    storage_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError(f"batch_size must be a positive int, not {self.batch_size!r}")
        try:
            k = CaptionsPerImage.parse(self.captions_per_image)
        except ValueError as e:
            raise UsageError(f"captions_per_image must be a positive int or 'all': {e}") from None
        object.__setattr__(self, "captions_per_image", k)  # frozen: normalised once, here
        if self.storage_options is not None and not isinstance(self.storage_options, Mapping):
            raise UsageError(f"storage_options must be a dict, not {type(self.storage_options).__name__}")
        object.__setattr__(self, "storage_options", dict(self.storage_options or {}))  # picklable for workers
        self._check_choices()
        object.__setattr__(self, "image_size", _size(self.image_size))
        if self.num_workers is None:
            object.__setattr__(self, "num_workers", default_num_workers())
        assert self.num_workers is not None
        if self.num_workers < 0 or self.seed < 0 or self.shuffle_window < 1 or self.prefetch_factor < 1:
            raise UsageError("num_workers and seed must be >= 0; shuffle_window and prefetch_factor >= 1")
        if self.max_member_bytes < 1 or (self.max_image_pixels is not None and self.max_image_pixels < 1):
            raise UsageError("max_member_bytes and max_image_pixels must be >= 1")

    def _check_choices(self) -> None:
        if self.caption_shortfall not in SHORTFALLS:
            raise UsageError(f"caption_shortfall must be 'fewer' or 'repeat', not {self.caption_shortfall!r}")
        if self.verify not in VERIFY_MODES:
            raise UsageError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {self.verify!r}")
        if isinstance(self.handler, str) and self.handler not in HANDLER_NAMES:
            raise UsageError(
                f"handler must be one of {', '.join(HANDLER_NAMES)} or a callable, not {self.handler!r}"
            )
        if self.on_bad_shard not in BAD_SHARD_POLICIES:
            raise UsageError(
                f"on_bad_shard must be one of {', '.join(BAD_SHARD_POLICIES)}, not {self.on_bad_shard!r}"
            )

    @property
    def captions(self) -> CaptionsPerImage:
        """``captions_per_image`` with its checked type."""
        assert isinstance(self.captions_per_image, CaptionsPerImage)
        return self.captions_per_image

    @property
    def size(self) -> tuple[int, int]:
        """``image_size`` as ``(height, width)``."""
        assert isinstance(self.image_size, tuple)
        return self.image_size

    @property
    def workers(self) -> int:
        """``num_workers``, resolved."""
        assert self.num_workers is not None
        return self.num_workers


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise UsageError(f"image_size must be a positive int or (height, width), not {image_size!r}")
    return int(size[0]), int(size[1])
