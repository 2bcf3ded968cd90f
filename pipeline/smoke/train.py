"""smoke-train's loop: train a tiny CLIP on a build for a few hundred steps and measure what it learnt.

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
import time
from collections.abc import Callable

import torch

from ..errors import UsageError
from ..loader import CaptionLoader, make_loader
from .config import SmokeConfig, SmokeResult
from .metrics import Figures, Pairs, Point
from .model import Model

log = logging.getLogger(__name__)


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
    model = Model(config, device)
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
        storage_options=config.storage_options,
    )
    points: list[Point] = []
    window = Pairs()
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
                window = Pairs()
            if step == config.steps:
                break
        if seen == 0:
            raise UsageError(
                f"split {config.split!r} of {config.source} gives no batch of {config.batch_size}; lower --batch-size"
            )
    final = _evaluate(model, loader, epoch, config.eval_batches)
    seconds = time.perf_counter() - started
    return SmokeResult(config, step, epoch, seconds, len(model.vocab), final, points)


def _evaluate(model: Model, loader: CaptionLoader, epoch: int, max_batches: int) -> Figures:
    """Figures of up to ``max_batches`` batches of epoch ``epoch``, without updates."""
    total = Pairs()
    loader.set_epoch(epoch)
    with torch.no_grad():
        for batch in loader:
            total.add(model.step(batch)[1])
            if total.batches >= max_batches:
                break
    return total.figures()
