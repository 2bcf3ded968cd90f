"""smoke-train: train a tiny CLIP on a build for a few hundred steps and measure what it learnt.

A check of a build before a long run: if the loader's batches carry the right positives,
even a tiny image encoder (a few convolutions on small images) and a tiny text encoder
(a bag of word embeddings) pull matching image–caption pairs together within minutes on
a CPU. The figure of merit is the **gap**: the mean cosine of positive pairs minus the
mean cosine of negative pairs, over the ``[P, C]`` positive mask of each batch.

With ``simulate_loop_counter_ids`` the same batches are fed the way the original bug fed
them: every caption is its own "image" (its image repeated once per caption, a fresh id
each), so the captions of one image that share a batch are negatives of each other. The
run is otherwise identical; its figures are reported by its own ids (what its user would
have seen) and by the true ids.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .captions_per_image import CaptionsPerImage
from .errors import CapshardError, UsageError
from .loader import CaptionLoader, make_loader
from .losses import multi_positive_info_nce, positive_mask

log = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9]+")


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
class Figures:
    """What a stretch of batches shows. Cosines are averaged over all pairs of the stretch.

    ``positive_cos``/``negative_cos``/``gap`` use the mask the run trains with (for the
    control: its per-caption ids); ``true_*`` use the true image ids. ``multi_positive_share``
    is the share of batches whose training mask has a positive besides each caption's own
    image. ``false_negative_share`` is the share of training negatives that are really
    positives (captions of the same image), and ``false_negative_cos`` their mean cosine
    (``None`` when there are none, as in a run on true ids).
    """

    batches: int
    loss: float
    positive_cos: float
    negative_cos: float
    gap: float
    true_positive_cos: float
    true_negative_cos: float
    true_gap: float
    multi_positive_share: float
    false_negative_share: float
    false_negative_cos: float | None


@dataclass(frozen=True)
class Point:
    """One training step, for the plot: loss and gap of that step's batch (before its update)."""

    step: int
    loss: float
    gap: float


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


class Vocabulary:
    """Words to ids, grown from the captions as they stream by (id 0: unknown or over capacity).

    Built while training instead of in a pass of its own, so nothing reads the split
    twice; a word's id is fixed the first time it is seen, and the loader's order is
    deterministic, so the vocabulary is too.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.ids: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids) + 1

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat token ids and per-caption offsets for :class:`torch.nn.EmbeddingBag`."""
        flat: list[int] = []
        offsets: list[int] = []
        for caption in captions:
            offsets.append(len(flat))
            words = _WORD.findall(caption.lower()) or [""]
            for word in words:
                if word not in self.ids and len(self.ids) + 1 < self.capacity:
                    self.ids[word] = len(self.ids) + 1
                flat.append(self.ids.get(word, 0))
        return torch.tensor(flat, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


class ImageEncoder(nn.Module):
    """Three strided convolutions and a linear projection, on uint8 ``[P, 3, H, W]`` images."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            # A 4x4 grid rather than one average keeps where things are, not only what.
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(64 * 16, dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float() / 255.0 - 0.5)


class TextEncoder(nn.Module):
    """Mean of word embeddings and a linear projection."""

    def __init__(self, vocab_capacity: int, dim: int) -> None:
        super().__init__()
        # Sparse gradients: a step touches only the words of its batch, not the whole table.
        self.bag = nn.EmbeddingBag(vocab_capacity, dim, mode="mean", sparse=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.proj(self.bag(ids, offsets))


@dataclass
class _Pairs:
    """Sums and counts of cosines over named sets of pairs: one batch, or many added up."""

    batches: int = 0
    loss: float = 0.0
    multi_positive: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add_pairs(self, name: str, cos: torch.Tensor, mask: torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(cos[mask].sum())
        self.counts[name] = self.counts.get(name, 0) + int(mask.sum())

    def add(self, other: _Pairs) -> None:
        self.batches += other.batches
        self.loss += other.loss
        self.multi_positive += other.multi_positive
        for name, value in other.sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + other.counts[name]

    def mean(self, name: str) -> float:
        n = self.counts.get(name, 0)
        return self.sums[name] / n if n else float("nan")

    def figures(self) -> Figures:
        negatives = self.counts.get("neg", 0)
        false_negatives = self.counts.get("false_neg", 0)
        return Figures(
            batches=self.batches,
            loss=self.loss / max(self.batches, 1),
            positive_cos=self.mean("pos"),
            negative_cos=self.mean("neg"),
            gap=self.mean("pos") - self.mean("neg"),
            true_positive_cos=self.mean("true_pos"),
            true_negative_cos=self.mean("true_neg"),
            true_gap=self.mean("true_pos") - self.mean("true_neg"),
            multi_positive_share=self.multi_positive / max(self.batches, 1),
            false_negative_share=false_negatives / negatives if negatives else 0.0,
            false_negative_cos=self.mean("false_neg") if false_negatives else None,
        )


class _Model:
    """The two encoders and how a batch goes through them and the loss."""

    def __init__(self, config: SmokeConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.vocab = Vocabulary(config.max_vocab)
        self.image = ImageEncoder(config.embed_dim).to(device)
        self.text = TextEncoder(config.max_vocab, config.embed_dim).to(device)

    def optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """Adam for the dense weights, SparseAdam for the word embeddings."""
        dense = [*self.image.parameters(), *self.text.proj.parameters()]
        return [torch.optim.Adam(dense, lr=lr), torch.optim.SparseAdam(list(self.text.bag.parameters()), lr=lr)]

    def step(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, _Pairs]:
        """Loss of ``batch`` (with its graph) and the batch's figures."""
        images = batch["image"]
        if not isinstance(images, torch.Tensor):
            raise UsageError("smoke-train needs the loader's image tensors, not raw images")
        ids, offsets = self.vocab.encode(list(batch["caption"]))
        u = self.image(images.to(self.device))
        v = self.text(ids.to(self.device), offsets.to(self.device))
        true_mask = positive_mask(batch).to(self.device)
        if self.config.simulate_loop_counter_ids:
            # The bug: one "image" per caption (its image repeated), a fresh id for each.
            caption_image = batch["caption_image"].to(self.device)
            u_train = u[caption_image]
            train_mask = torch.eye(len(caption_image), dtype=torch.bool, device=self.device)
            false_negatives = true_mask[caption_image] & ~train_mask
        else:
            u_train, train_mask, false_negatives = u, true_mask, torch.zeros_like(true_mask)
        loss = multi_positive_info_nce(u_train, v, train_mask, self.config.temperature)
        with torch.no_grad():
            text = F.normalize(v.detach(), dim=-1)
            cos_true = F.normalize(u.detach(), dim=-1) @ text.T
            cos_train = F.normalize(u_train.detach(), dim=-1) @ text.T
            several = (train_mask.sum(dim=1) > 1).any() or (train_mask.sum(dim=0) > 1).any()
            pairs = _Pairs(batches=1, loss=float(loss.detach()), multi_positive=int(bool(several)))
            pairs.add_pairs("pos", cos_train, train_mask)
            pairs.add_pairs("neg", cos_train, ~train_mask)
            pairs.add_pairs("true_pos", cos_true, true_mask)
            pairs.add_pairs("true_neg", cos_true, ~true_mask)
            pairs.add_pairs("false_neg", cos_train, false_negatives)
        return loss, pairs


def resolve_device(name: str) -> torch.device:
    """``name`` as a torch device, refusing one this machine does not have."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"unknown device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} asked for, but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {name!r} asked for, but MPS is not available here")
    return device


def smoke_train(config: SmokeConfig, on_log: Callable[[int, Figures], None] | None = None) -> SmokeResult:
    """Train for ``config.steps`` steps through :func:`pipeline.loader.make_loader`, then measure.

    ``on_log(step, figures)`` is called every ``config.log_every`` steps (and at the last
    one) with the figures of the training batches since the previous call. The final
    figures come from up to ``config.eval_batches`` further batches of the split, with
    the trained encoders and no update.
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = _Model(config, device)
    optimizers = model.optimizers(config.lr)
    loader = make_loader(
        config.source,
        split=config.split,
        batch_size=config.batch_size,
        captions_per_image=config.captions_per_image,
        seed=config.seed,
        shuffle=True,
        image_size=config.image_size,
        num_workers=0,
        allow_empty=True,  # refused below, in the CLI's words
    )
    points: list[Point] = []
    window = _Pairs()
    step, epoch = 0, 0
    started = time.perf_counter()
    while step < config.steps:
        loader.set_epoch(epoch)
        epoch += 1
        seen = 0
        for batch in loader:
            seen += 1
            loss, pairs = model.step(batch)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            step += 1
            window.add(pairs)
            points.append(Point(step, pairs.loss, pairs.mean("pos") - pairs.mean("neg")))
            if step % config.log_every == 0 or step == config.steps:
                figures = window.figures()
                log.info("step %d: loss %.4f gap %.4f", step, figures.loss, figures.gap)
                if on_log is not None:
                    on_log(step, figures)
                window = _Pairs()
            if step == config.steps:
                break
        if seen == 0:
            raise UsageError(
                f"split {config.split!r} of {config.source} gives no batch of {config.batch_size}; lower --batch-size"
            )
    final = _evaluate(model, loader, epoch, config.eval_batches)
    seconds = time.perf_counter() - started
    return SmokeResult(config, step, epoch, seconds, len(model.vocab), final, points)


def _evaluate(model: _Model, loader: CaptionLoader, epoch: int, max_batches: int) -> Figures:
    """Figures of up to ``max_batches`` batches of epoch ``epoch``, without updates."""
    total = _Pairs()
    loader.set_epoch(epoch)
    with torch.no_grad():
        for batch in loader:
            total.add(model.step(batch)[1])
            if total.batches >= max_batches:
                break
    return total.figures()


def write_plot(result: SmokeResult, path: Path) -> None:
    """A PNG of the gap and the loss of every training step, with the final gap marked."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'capshard[plot]'") from None
    steps = [p.step for p in result.points]
    fig = Figure(figsize=(8, 5), layout="constrained")
    gap_ax, loss_ax = fig.subplots(2, 1, sharex=True)
    gap_ax.plot(steps, [p.gap for p in result.points], lw=1)
    gap_ax.axhline(result.final.gap, ls="--", color="grey", lw=1, label=f"final gap {result.final.gap:.3f}")
    gap_ax.set_ylabel("gap (pos − neg cosine)")
    gap_ax.legend(loc="lower right")
    loss_ax.plot(steps, [p.loss for p in result.points], lw=1, color="tab:red")
    loss_ax.set_ylabel("loss")
    loss_ax.set_xlabel("step")
    mode = "loop-counter ids (control)" if result.config.simulate_loop_counter_ids else "true ids"
    fig.suptitle(f"smoke-train {result.config.source} [{result.config.split}], {mode}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
