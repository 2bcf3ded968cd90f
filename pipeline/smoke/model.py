"""smoke-train's tiny CLIP: a word vocabulary, an image and a text encoder, and one step.

A few convolutions on small images and a bag of word embeddings: enough to pull matching
image-caption pairs together within minutes on a CPU when the batches' positives are right.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..losses import multi_positive_info_nce, positive_mask
from .config import SmokeConfig
from .metrics import Pairs, batch_pairs

_WORD = re.compile(r"[a-z0-9]+")


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


class Model:
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

    def step(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Pairs]:
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
        pairs = batch_pairs(loss, u, u_train, v, train_mask, true_mask, false_negatives)
        return loss, pairs
