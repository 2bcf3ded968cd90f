"""smoke-train's figures: cosines of positive and negative pairs, summed over batches.

The figure of merit is the **gap**: the mean cosine of positive pairs minus the mean
cosine of negative pairs, over the ``[P, C]`` positive mask of each batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are made: SmokeConfig's defaults need none
    import torch


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


@dataclass
class Pairs:
    """Sums and counts of cosines over named sets of pairs: one batch, or many added up."""

    batches: int = 0
    loss: float = 0.0
    multi_positive: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add_pairs(self, name: str, cos: torch.Tensor, mask: torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(cos[mask].sum())
        self.counts[name] = self.counts.get(name, 0) + int(mask.sum())

    def add(self, other: Pairs) -> None:
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


def batch_pairs(
    loss: torch.Tensor,
    u: torch.Tensor,
    u_train: torch.Tensor,
    v: torch.Tensor,
    train_mask: torch.Tensor,
    true_mask: torch.Tensor,
    false_negatives: torch.Tensor,
) -> Pairs:
    """The figures of one batch: cosines of the image (``u``; ``u_train`` as trained) and caption
    (``v``) embeddings over the training mask, the true mask and the hidden false negatives."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        text = F.normalize(v.detach(), dim=-1)
        cos_true = F.normalize(u.detach(), dim=-1) @ text.T
        cos_train = F.normalize(u_train.detach(), dim=-1) @ text.T
        several = (train_mask.sum(dim=1) > 1).any() or (train_mask.sum(dim=0) > 1).any()
        pairs = Pairs(batches=1, loss=float(loss.detach()), multi_positive=int(bool(several)))
        pairs.add_pairs("pos", cos_train, train_mask)
        pairs.add_pairs("neg", cos_train, ~train_mask)
        pairs.add_pairs("true_pos", cos_true, true_mask)
        pairs.add_pairs("true_neg", cos_true, ~true_mask)
        pairs.add_pairs("false_neg", cos_train, false_negatives)
    return pairs
