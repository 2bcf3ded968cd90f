"""multi_positive_info_nce against a direct loop-based computation, gradients, stability."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.losses import multi_positive_info_nce, positive_mask


def direct_loss(image: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, t: float) -> float:
    """The docstring's formula, written out with Python loops and ``math``: slow and obvious."""
    u = [[float(x) for x in row / row.norm()] for row in image.double()]
    v = [[float(x) for x in row / row.norm()] for row in text.double()]
    s = [[sum(a * b for a, b in zip(up, vc, strict=True)) / t for vc in v] for up in u]
    n_img, n_txt = len(u), len(v)

    def row_loss(scores: list[float], positive: list[bool]) -> float:
        total = sum(math.exp(x) for x in scores)
        pos = sum(math.exp(x) for x, m in zip(scores, positive, strict=True) if m)
        return -math.log(pos / total)

    i2t = [row_loss(s[p], [bool(mask[p, c]) for c in range(n_txt)]) for p in range(n_img) if mask[p].any()]
    t2i = [
        row_loss([s[p][c] for p in range(n_img)], [bool(mask[p, c]) for p in range(n_img)])
        for c in range(n_txt)
        if mask[:, c].any()
    ]
    return (sum(i2t) / len(i2t) + sum(t2i) / len(t2i)) / 2


def random_batch(seed: int, n_images: int, max_captions: int, dim: int = 8) -> dict[str, torch.Tensor]:
    """A loader-shaped batch: P images, 1..max_captions captions each, shuffled captions."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, max_captions + 1, (n_images,), generator=g)
    caption_image = torch.repeat_interleave(torch.arange(n_images), counts)
    caption_image = caption_image[torch.randperm(len(caption_image), generator=g)]
    image_group = torch.randperm(10 * n_images, generator=g)[:n_images]
    return {
        "image_emb": torch.randn(n_images, dim, generator=g, dtype=torch.float64),
        "text_emb": torch.randn(len(caption_image), dim, generator=g, dtype=torch.float64),
        "caption_image": caption_image,
        "image_group": image_group,
        "match_id": image_group[caption_image],
    }


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n_images=st.integers(1, 6),
    max_captions=st.integers(1, 4),
    t=st.floats(0.05, 2.0),
)
def test_matches_the_direct_computation_on_loader_batches(
    seed: int, n_images: int, max_captions: int, t: float
) -> None:
    b = random_batch(seed, n_images, max_captions)
    got = multi_positive_info_nce(b["image_emb"], b["text_emb"], b, t)
    mask = positive_mask(b)
    assert mask.shape == (n_images, len(b["caption_image"]))
    assert got.item() == pytest.approx(direct_loss(b["image_emb"], b["text_emb"], mask, t), rel=1e-9, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), p=st.integers(1, 5), c=st.integers(1, 5), density=st.floats(0.1, 0.9))
def test_matches_the_direct_computation_on_any_mask(seed: int, p: int, c: int, density: float) -> None:
    # Arbitrary masks: rows and columns with several positives, and some with none.
    g = torch.Generator().manual_seed(seed)
    image, text = torch.randn(p, 4, generator=g), torch.randn(c, 4, generator=g)
    mask = torch.rand(p, c, generator=g) < density
    mask[seed % p, seed % c] = True
    got = multi_positive_info_nce(image, text, mask, 0.3)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(direct_loss(image, text, mask, 0.3), rel=1e-4, abs=1e-5)


def test_several_positives_per_row_lower_the_loss_when_they_are_close() -> None:
    # Two captions of one image, both close to it: counted as positives they cost little,
    # counted as negatives of each other (the loop-counter bug) they cost at least log 2.
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.01], [1.0, -0.01], [0.0, 1.0]])
    grouped = torch.tensor([[True, True, False], [False, False, True]])
    loss_grouped = multi_positive_info_nce(image, text, grouped, 0.1)
    duplicated = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss_split = multi_positive_info_nce(duplicated, text, torch.eye(3, dtype=torch.bool), 0.1)
    assert loss_grouped.item() < 0.01
    assert loss_split.item() > math.log(2) / 2


@pytest.mark.parametrize("n", [1, 2, 7])
def test_one_positive_each_is_the_standard_clip_loss(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    image, text = torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g)
    logits = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T / 0.07
    target = torch.arange(n)
    clip = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    batch = {"image_group": torch.arange(n) * 3, "match_id": torch.arange(n) * 3}
    assert multi_positive_info_nce(image, text, batch, 0.07).item() == pytest.approx(clip.item(), rel=1e-5)
    eye = torch.eye(n, dtype=torch.bool)
    assert multi_positive_info_nce(image, text, eye, 0.07).item() == pytest.approx(clip.item(), rel=1e-5)


def test_gradients_reach_both_encoders() -> None:
    torch.manual_seed(0)
    image_encoder, text_encoder = torch.nn.Linear(12, 6), torch.nn.Linear(10, 6)
    b = random_batch(1, 5, 3)
    images, captions = torch.randn(5, 12), torch.randn(len(b["caption_image"]), 10)
    temperature = torch.tensor(0.3, requires_grad=True)
    loss = multi_positive_info_nce(image_encoder(images), text_encoder(captions), b, temperature)
    loss.backward()
    for module in (image_encoder, text_encoder):
        for param in module.parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all()
            assert param.grad.abs().sum() > 0
    assert temperature.grad is not None and temperature.grad != 0


def test_rows_without_a_positive_are_left_out_with_finite_gradients() -> None:
    image = torch.randn(3, 4, requires_grad=True)
    text = torch.randn(2, 4, requires_grad=True)
    mask = torch.tensor([[True, False], [False, True], [False, False]])
    loss = multi_positive_info_nce(image, text, mask, 0.5)
    loss.backward()
    assert image.grad is not None and text.grad is not None
    assert torch.isfinite(image.grad).all() and torch.isfinite(text.grad).all()
    assert loss.item() == pytest.approx(direct_loss(image.detach(), text.detach(), mask, 0.5), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_large_logits_stay_finite(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    image = (torch.randn(8, 32, generator=g) * 1000).to(dtype).requires_grad_()
    text = (torch.randn(16, 32, generator=g) * 1000).to(dtype).requires_grad_()
    batch = {"image_group": torch.arange(8), "match_id": torch.arange(16) // 2}
    loss = multi_positive_info_nce(image, text, batch, 0.01)
    loss.backward()
    assert torch.isfinite(loss)
    assert image.grad is not None and torch.isfinite(image.grad).all()
    assert text.grad is not None and torch.isfinite(text.grad).all()
    assert image.grad.dtype == dtype
    # Logits up to 100: the reference in float64 agrees.
    ref = direct_loss(image.detach().double(), text.detach().double(), positive_mask(batch), 0.01)
    assert loss.item() == pytest.approx(ref, rel=2e-2)


@pytest.mark.parametrize(
    ("mask", "t", "message"),
    [
        (torch.zeros(2, 3, dtype=torch.bool), 0.1, "no positive"),
        (torch.ones(3, 2, dtype=torch.bool), 0.1, r"\[P, C\]"),
        (torch.ones(2, 3, dtype=torch.bool), 0.0, "temperature"),
        (torch.ones(2, 3, dtype=torch.bool), torch.tensor(-1.0), "temperature"),
    ],
)
def test_refuses_what_cannot_be_a_loss(mask: torch.Tensor, t: float | torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        multi_positive_info_nce(torch.randn(2, 4), torch.randn(3, 4), mask, t)


def test_embedding_widths_must_agree() -> None:
    with pytest.raises(ValueError, match="embeddings"):
        multi_positive_info_nce(torch.randn(2, 4), torch.randn(2, 5), torch.eye(2, dtype=torch.bool), 0.1)


def test_negative_groups_are_positives_of_nothing() -> None:
    from pipeline.loader import positive_mask as loader_mask

    batch = {"image_group": torch.tensor([3, -1]), "match_id": torch.tensor([3, -1])}
    expected = torch.tensor([[True, False], [False, False]])
    assert torch.equal(positive_mask(batch), expected)
    assert loader_mask is positive_mask
