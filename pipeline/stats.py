"""Throughput of a build's long stages, for the manifest's ``stats`` section.

Each stage records its seconds, the images it handled and the bytes it read or wrote;
:meth:`BuildStats.to_dict` adds images/s and MB/s. The figures differ from run to run, so
they stay outside everything compared for identity (shards, index, ``source``/``options``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageStats:
    """One stage: wall seconds, images handled, bytes read or written."""

    seconds: float = 0.0
    images: int = 0
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        per_s = 1 / self.seconds if self.seconds > 0 else 0.0
        return {
            "seconds": round(self.seconds, 3),
            "images": self.images,
            "bytes": self.bytes,
            "images_per_s": round(self.images * per_s, 1),
            "mb_per_s": round(self.bytes * per_s / 1e6, 1),
        }


@dataclass
class BuildStats:
    """The stages of one run of ``build`` (a resumed run has no ``probe``), its workers and seconds."""

    workers: int
    stages: dict[str, StageStats] = field(default_factory=dict)
    start: float = field(default_factory=time.monotonic)

    @contextmanager
    def stage(self, name: str) -> Iterator[StageStats]:
        """Time the block; the caller adds images and bytes to the yielded record."""
        record = self.stages.setdefault(name, StageStats())
        began = time.monotonic()
        try:
            yield record
        finally:
            record.seconds += time.monotonic() - began

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``stats``: ``{"seconds", "workers", STAGE: {...}}``."""
        stages = {name: s.to_dict() for name, s in self.stages.items()}
        return {"seconds": round(time.monotonic() - self.start, 3), "workers": self.workers, **stages}
