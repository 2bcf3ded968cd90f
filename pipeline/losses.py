"""The contrastive loss for batches with several captions per image: multi-positive InfoNCE.

With one caption per image it is exactly the symmetric CLIP loss; with K captions per
image it counts every caption of an image as a positive of that image instead of as a
negative, which is what the loader's ``positive_mask`` exists for.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = ["multi_positive_info_nce", "positive_mask"]


def positive_mask(batch: Mapping[str, object]) -> torch.Tensor:
    """The ``[P, C]`` boolean mask of positives: image ``p`` and caption ``c`` show the
    same picture (``image_group[p] == match_id[c]``). Negative group ids (padding from an
    all-gather, say) are positives of nothing. ``pipeline.loader`` re-exports this."""
    group, match = batch["image_group"], batch["match_id"]
    if not isinstance(group, torch.Tensor) or not isinstance(match, torch.Tensor):
        raise TypeError("batch['image_group'] and batch['match_id'] must be tensors")
    group, match = group.reshape(-1, 1), match.reshape(1, -1)
    return (group == match) & (group >= 0) & (match >= 0)


def multi_positive_info_nce(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    batch_or_mask: Mapping[str, object] | torch.Tensor,
    temperature: float | torch.Tensor,
) -> torch.Tensor:
    r"""Symmetric multi-positive InfoNCE between ``P`` images and ``C`` captions.

    Both embeddings are L2-normalised here (callers need not), so
    :math:`s_{pc} = \langle \hat u_p, \hat v_c \rangle / t` with ``t = temperature``.
    With ``M`` the ``[P, C]`` positive mask, each image row and each caption column
    costs minus the log of the probability mass on *its* positives:

    .. math::

        \ell^{I\to T}_p = \log\sum_{c} e^{s_{pc}} - \log\sum_{c:\,M_{pc}} e^{s_{pc}},
        \qquad
        \ell^{T\to I}_c = \log\sum_{p} e^{s_{pc}} - \log\sum_{p:\,M_{pc}} e^{s_{pc}},

    .. math::

        L = \tfrac12\Big(\operatorname{mean}_{p \in R_I} \ell^{I\to T}_p
                        + \operatorname{mean}_{c \in R_T} \ell^{T\to I}_c\Big),

    where ``R_I`` (``R_T``) are the rows (columns) of ``M`` with at least one positive;
    rows without a positive carry no signal and are left out. With exactly one positive
    per row and column (``M`` the identity) this is the standard CLIP cross-entropy.
    The "sum inside the log" form (MIL-NCE) is used rather than the mean of per-positive
    log-probabilities (SupCon's ``L_out``): it asks that the positives together win,
    not each of them, so near-duplicate captions do not fight each other.

    Args:
        image_emb: ``[P, D]`` image embeddings.
        text_emb: ``[C, D]`` caption embeddings.
        batch_or_mask: a loader batch (the mask is built from its ``image_group`` and
            ``match_id``) or a ``[P, C]`` boolean mask.
        temperature: ``t > 0``; a float or a (learnable) scalar tensor.

    Returns:
        A scalar tensor, computed in float32 (float64 inputs stay float64) with
        ``logsumexp``, so it is finite for any temperature and half-precision inputs.

    Raises:
        ValueError: shapes disagree, the temperature is not positive, or no row of the
            mask has a positive.
    """
    mask = positive_mask(batch_or_mask) if isinstance(batch_or_mask, Mapping) else batch_or_mask
    _check_arguments(image_emb, text_emb, mask, temperature)
    dtype = torch.float64 if torch.float64 in (image_emb.dtype, text_emb.dtype) else torch.float32
    image = F.normalize(image_emb.to(dtype), dim=-1)
    text = F.normalize(text_emb.to(dtype), dim=-1)
    mask = mask.to(device=image.device, dtype=torch.bool)
    if not bool(mask.any()):
        # A positive pair has both a row and a column, so both directions have one or neither.
        raise ValueError("the positive mask has no positive pair; cannot compute a contrastive loss")
    logits = image @ text.T / temperature
    return (_directional(logits, mask) + _directional(logits.T, mask.T)) / 2


def _check_arguments(
    image_emb: torch.Tensor, text_emb: torch.Tensor, mask: torch.Tensor, temperature: float | torch.Tensor
) -> None:
    """Shapes that agree and one positive temperature, else ``ValueError``."""
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"embeddings must be [P, D] and [C, D], got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    expected = (image_emb.shape[0], text_emb.shape[0])
    if tuple(mask.shape) != expected:
        raise ValueError(f"positive mask must be [P, C] = {list(expected)}, got {list(mask.shape)}")
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1 or not bool(temperature.detach() > 0):
            raise ValueError("temperature must be one positive value")
    elif not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def _directional(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean loss over the rows of ``logits`` that have at least one positive."""
    keep = mask.any(dim=1)
    # Rows without a positive are dropped *before* logsumexp: an all -inf row would give
    # nan gradients even if it were masked out afterwards.
    logits, mask = logits[keep], mask[keep]
    positives = logits.masked_fill(~mask, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(positives, dim=1)).mean()
