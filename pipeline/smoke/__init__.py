"""smoke-train: train a tiny CLIP on a build for a few hundred steps and measure what it learnt.

A check of a build before a long run: if the loader's batches carry the right positives,
even a tiny image encoder and a tiny text encoder pull matching image–caption pairs
together within minutes on a CPU. Modules: ``config`` (options and outcome), ``metrics``
(the figures and the gap), ``model`` (vocabulary, encoders, one step), ``train`` (the
loop), ``plot`` (the PNG). ``config`` and ``metrics`` import without torch, so the CLI
reads its defaults from :class:`SmokeConfig` before it checks that torch is there; the
names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import GapTooSmall, SmokeConfig, SmokeResult
    from .metrics import Figures, Point
    from .model import ImageEncoder, TextEncoder, Vocabulary
    from .plot import write_plot
    from .train import resolve_device, smoke_train

#: Public name -> the module of this package that defines it.
_WHERE = {
    "GapTooSmall": "config",
    "SmokeConfig": "config",
    "SmokeResult": "config",
    "Figures": "metrics",
    "Point": "metrics",
    "ImageEncoder": "model",
    "TextEncoder": "model",
    "Vocabulary": "model",
    "write_plot": "plot",
    "resolve_device": "train",
    "smoke_train": "train",
}

__all__ = [
    "Figures",
    "GapTooSmall",
    "ImageEncoder",
    "Point",
    "SmokeConfig",
    "SmokeResult",
    "TextEncoder",
    "Vocabulary",
    "resolve_device",
    "smoke_train",
    "write_plot",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
