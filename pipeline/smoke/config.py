"""smoke-train's options (validated once) and its outcome."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..captions_per_image import CaptionsPerImage
from ..errors import CapshardError, UsageError
from .metrics import Figures, Point


class GapTooSmall(CapshardError):
    """The smoke run finished but its final gap is not above the threshold asked for."""


@dataclass(frozen=True)
class SmokeConfig:
    """Options of a smoke run; validated on creation."""

    source: str
    split: str = "train"
    steps: int = 200
    batch_size: int = 64
    temperature: float = 0.3
    captions_per_image: CaptionsPerImage | int | Literal["all"] = "all"
    seed: int = 0
    device: str = "cpu"
    log_every: int = 20
    eval_batches: int = 8
    image_size: int = 32
    embed_dim: int = 64
    lr: float = 2e-3
    max_vocab: int = 50_000
    simulate_loop_counter_ids: bool = False
    storage_options: dict[str, Any] | None = None  # for a source at a URL (fsspec backend options)

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "log_every", "eval_batches", "image_size", "embed_dim", "max_vocab")
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.temperature > 0 or not self.lr > 0:
            raise UsageError("temperature and lr must be positive")
        try:
            object.__setattr__(self, "captions_per_image", CaptionsPerImage.parse(self.captions_per_image))
        except ValueError as e:
            raise UsageError(f"captions-per-image: {e}") from None


@dataclass(frozen=True)
class SmokeResult:
    """The outcome of :func:`smoke_train`. ``final`` is measured after training, without updates."""

    config: SmokeConfig
    steps: int
    epochs: int
    seconds: float
    vocab_size: int
    final: Figures
    points: list[Point] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """A flat JSON-able summary: the final figures, the run's size and its options."""
        c = self.config
        return {
            "mode": "loop-counter-ids" if c.simulate_loop_counter_ids else "true-ids",
            "steps": self.steps,
            **{k: v for k, v in asdict(self.final).items() if k != "batches"},
            "eval_batches": self.final.batches,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 2),
            "vocab_size": self.vocab_size,
            "split": c.split,
            "batch_size": c.batch_size,
            "captions_per_image": CaptionsPerImage.parse(c.captions_per_image).value,
            "temperature": c.temperature,
            "seed": c.seed,
            "device": c.device,
        }
