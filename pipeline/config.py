"""Build options, parsed and validated once at the edge (CLI or library call).

``BuildConfig`` is what inner stages take. ``output_options()`` are the options that
change the bytes written; they go into the manifest and decide whether an existing
build in ``--out`` is the same build (no-op) or a different one (error).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .idspec import IdSpec, parse_id
from .media import DEFAULT_FORMATS, DEFAULT_MAX_PIXELS
from .validate import VALIDATE_MODES

#: ``--executor`` names (the factories are in :mod:`pipeline.executors`, which this module does not import).
EXECUTOR_NAMES = ("process", "ray")
#: How a re-run compares the images with the build's listing (``pipeline.inputs``).
INPUT_CHECKS = ("stat", "content")
LEAK_POLICIES = ("fail", "reject")
NEAR_LEAK_POLICIES = ("report", "reject", "fail")
#: Default pHash Hamming threshold for near-duplicates (benchmarks/results/overlap.md).
DEFAULT_NEAR_THRESHOLD = 8
DEFAULT_MAX_SHARD_BYTES = 1 << 30
DEFAULT_MAX_CAPTION_CHARS = 2000


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``build`` needs besides the source. Keyword-only; validated on creation."""

    #: A local folder (``Path``; a ``file://`` URL becomes one) or an fsspec URL kept as a ``str``
    #: (``s3://bucket/prefix``): see :func:`out_location`.
    out: Path | str
    format: str = "auto"
    id: str = "auto"
    seed: int = 0
    max_images_per_shard: int = 1000
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    resize: int | None = None
    on_leak: str = "fail"
    max_reject_fraction: float = 0.1
    max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS
    max_pixels: int = DEFAULT_MAX_PIXELS
    image_formats: tuple[str, ...] = DEFAULT_FORMATS
    validate: str = "structure"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    executor: str = "process"
    #: ``--ray-address`` (the CLI defaults it from ``RAY_ADDRESS``); None: Ray's own choice.
    ray_address: str | None = None
    overwrite: bool = False
    #: ``--one-pass`` (default; ``--two-pass``: probe every image first): probe each image as its shard
    #: is written, reading it once (``build`` only, where it can; see :mod:`pipeline.write_ahead`).
    #: The same bytes either way, so not an output option.
    one_pass: bool = True
    check_inputs: str = "stat"
    name: str | None = None
    version: str | None = None
    #: Perceptual hashes (docs/NEAR_DUPLICATES.md): computed when asked or needed by exclude_near.
    phash: bool = False
    exclude_near: tuple[Path, ...] = ()
    near_threshold: int = DEFAULT_NEAR_THRESHOLD
    on_near_leak: str = "report"
    #: ``--storage-options``: keyword arguments of the fsspec backend of URL locations (never output options).
    storage_options: dict[str, Any] = field(default_factory=dict, compare=False)
    #: ``id`` parsed (set on creation; stages read this, never the string).
    id_spec: IdSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", out_location(self.out))
        object.__setattr__(self, "id_spec", parse_id(self.id))
        if self.on_leak not in LEAK_POLICIES:
            raise UsageError(f"--on-leak must be one of {', '.join(LEAK_POLICIES)}, not {self.on_leak!r}")
        if self.check_inputs not in INPUT_CHECKS:
            raise UsageError(f"--check-inputs must be one of {', '.join(INPUT_CHECKS)}, not {self.check_inputs!r}")
        if self.validate not in VALIDATE_MODES:
            raise UsageError(f"--validate must be one of {', '.join(VALIDATE_MODES)}, not {self.validate!r}")
        if self.executor not in EXECUTOR_NAMES:
            raise UsageError(f"--executor must be one of {', '.join(EXECUTOR_NAMES)}, not {self.executor!r}")
        for name in ("max_images_per_shard", "max_shard_bytes", "workers", "max_caption_chars", "max_pixels"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.seed < 0:
            raise UsageError("--seed must be 0 or more")
        if self.resize is not None and self.resize < 8:
            raise UsageError("--resize must be at least 8 pixels")
        if self.on_near_leak not in NEAR_LEAK_POLICIES:
            raise UsageError(
                f"--on-near-leak must be one of {', '.join(NEAR_LEAK_POLICIES)}, not {self.on_near_leak!r}"
            )
        if not 0 <= self.near_threshold <= 32:
            raise UsageError("--threshold must be between 0 and 32")
        object.__setattr__(self, "exclude_near", tuple(Path(p) for p in self.exclude_near))
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise UsageError("--max-reject-fraction must be between 0 and 1")

    @property
    def id_column(self) -> str | None:
        """The column named by ``--id column:NAME``, else None."""
        return self.id_spec.column

    @property
    def hashes(self) -> bool:
        """Whether the build computes perceptual hashes."""
        return self.phash or bool(self.exclude_near)

    def output_options(self) -> dict[str, Any]:
        """The options that decide the output bytes (recorded in the manifest)."""
        near = {
            "phash": True,
            "exclude_near": [str(p) for p in self.exclude_near],
            "near_threshold": self.near_threshold,
            "on_near_leak": self.on_near_leak,
        }
        return ({"near_duplicates": near} if self.hashes else {}) | {
            "id": self.id,
            "seed": self.seed,
            "max_images_per_shard": self.max_images_per_shard,
            "max_shard_bytes": self.max_shard_bytes,
            "resize": self.resize,
            "on_leak": self.on_leak,
            "max_caption_chars": self.max_caption_chars,
            "max_pixels": self.max_pixels,
            "image_formats": list(self.image_formats),
            "validate": self.validate,
        }


def out_location(out: str | os.PathLike[str]) -> Path | str:
    """``--out`` as the build stages take it: a ``Path`` for a local folder or a ``file://`` URL
    (locked and written like any folder), the URL itself (a ``str``) for an object store."""
    text = os.fspath(out)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is None:
        return Path(text)
    if text.lower().startswith("file://"):
        return Path(text[len("file://") :])
    return text.rstrip("/")
