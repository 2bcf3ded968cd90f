"""Train a real open_clip model on a capshard build, for a few steps, on CPU or GPU.

Two ways in, both with open_clip's own model, tokenizer and preprocessing:

* ``--loader open_clip`` — open_clip's own webdataset pipeline
  (``open_clip_train.data.get_wds_dataset``). It counts the samples from the build's
  ``sizes.json`` (no ``--train-num-samples``) and reads ``txt`` as ONE caption: a capshard
  ``txt`` holds all of an image's captions, one per line, so by default it would train on
  them joined. ``--txt-mode`` picks what the text tower sees, through the ``tokenizer``
  argument ``get_wds_dataset`` takes: ``random`` (one line per sample, drawn again every
  time the sample is read, i.e. every epoch; the default), ``first`` (always the first
  caption) or ``all`` (open_clip's default: every caption joined).
* ``--loader capshard`` — :func:`pipeline.loader.make_loader` with ``captions_per_image=K``
  and :func:`pipeline.losses.multi_positive_info_nce`: every caption of an image is a
  positive, none is a false negative. DDP-ready: ``set_epoch`` each epoch, and
  ``state_dict`` to resume mid-epoch.

By default the model is ``capshard-tiny``, a small CLIP config registered here and
randomly initialised (no weights are downloaded); ``--model`` takes any open_clip config.

    python examples/train_open_clip.py shards/sample --steps 30
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
from argparse import Namespace
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch

TINY = "capshard-tiny"
TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}


def register_tiny() -> None:
    """Make ``capshard-tiny`` an open_clip model name (a config file in a temporary folder)."""
    if TINY in open_clip.list_models():
        return
    folder = Path(tempfile.mkdtemp(prefix="capshard-openclip-"))
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)


class OneCaption:
    """A tokenizer for open_clip's webdataset pipeline that tokenizes one line of ``txt``.

    ``get_wds_dataset`` calls ``tokenizer(text)[0]`` with the whole ``txt`` member; this
    picks the caption first. ``random`` draws a fresh line every call (per sample, per epoch).
    """

    def __init__(self, tokenizer: Callable[..., torch.Tensor], mode: str = "random") -> None:
        if mode not in ("random", "first", "all"):
            raise ValueError(f"txt mode must be random, first or all, not {mode!r}")
        self.tokenizer, self.mode = tokenizer, mode

    def choose(self, text: str) -> str:
        lines = [line for line in str(text).splitlines() if line.strip()] or [""]
        if self.mode == "first":
            return lines[0]
        if self.mode == "random":
            return random.choice(lines)
        return " ".join(lines)

    def __call__(self, text: str | Sequence[str]) -> torch.Tensor:
        texts = [text] if isinstance(text, str) else list(text)
        return self.tokenizer([self.choose(t) for t in texts])


def shard_pattern(build: Path, split: str) -> str:
    """The split's shards as one ``::``-joined list, the form open_clip's ``--train-data`` takes."""
    manifest = json.loads((build / "manifest.json").read_text())
    return "::".join(str(build / s["name"]) for s in manifest["splits"][split]["shards"])


def open_clip_data(args: argparse.Namespace, preprocess: Any, tokenizer: Any, epoch: int) -> Any:
    """open_clip's own training data pipeline over the build's split."""
    from open_clip_train.data import get_wds_dataset

    data_args = Namespace(
        train_data=shard_pattern(args.build, args.split),
        val_data=None,
        train_num_samples=None,  # counted from sizes.json
        dataset_resampled=False,
        train_data_upsampling_factors=None,
        seed=args.seed,
        batch_size=args.batch_size,
        workers=args.workers,
        world_size=1,
    )
    tokenize = OneCaption(tokenizer, args.txt_mode)
    return get_wds_dataset(data_args, preprocess, is_train=True, epoch=epoch, tokenizer=tokenize)


def train_open_clip_loader(args: argparse.Namespace, model: Any, preprocess: Any, tokenizer: Any) -> list[float]:
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    losses: list[float] = []
    epoch = 0
    while len(losses) < args.steps:
        data = open_clip_data(args, preprocess, tokenizer, epoch)
        data.set_epoch(epoch)
        for images, texts in data.dataloader:
            image_features, text_features, logit_scale = model(images, texts)[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == args.steps:
                break
        epoch += 1
    return losses


def train_capshard_loader(args: argparse.Namespace, model: Any, preprocess: Any, tokenizer: Any) -> list[float]:
    from pipeline.loader import make_loader
    from pipeline.losses import multi_positive_info_nce

    loader = make_loader(
        str(args.build),
        split=args.split,
        batch_size=args.batch_size,
        captions_per_image=args.captions_per_image,
        image_transform=preprocess,
        num_workers=args.workers,
        seed=args.seed,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    losses: list[float] = []
    epoch = 0
    while len(losses) < args.steps:
        loader.set_epoch(epoch)  # as DistributedSampler.set_epoch; ranks come from torch.distributed
        for batch in loader:
            image_emb = model.encode_image(batch["image"])
            text_emb = model.encode_text(tokenizer(list(batch["caption"])))
            loss = multi_positive_info_nce(image_emb, text_emb, batch, 1.0 / model.logit_scale.exp())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == args.steps:
                state = loader.state_dict()  # save with the checkpoint; load_state_dict resumes here
                assert state["epoch"] == epoch
                break
        epoch += 1
    return losses


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("build", type=Path, help="a capshard build folder")
    p.add_argument("--split", default="train")
    p.add_argument("--loader", choices=("open_clip", "capshard"), default="open_clip")
    p.add_argument("--txt-mode", choices=("random", "first", "all"), default="random",
                   help="open_clip loader: which caption(s) of txt the text tower sees")
    p.add_argument("--captions-per-image", default=2, type=lambda v: v if v == "all" else int(v),
                   help="capshard loader: captions per image in a batch (or 'all')")
    p.add_argument("--model", default=TINY)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the losses as JSON")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[float]:
    args = parse(argv)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    register_tiny()
    model, preprocess, _ = open_clip.create_model_and_transforms(args.model, pretrained=None)
    tokenizer = open_clip.get_tokenizer(args.model)
    model.train()
    train = train_open_clip_loader if args.loader == "open_clip" else train_capshard_loader
    losses = train(args, model, preprocess, tokenizer)
    if args.json:
        print(json.dumps({"loader": args.loader, "losses": losses}))
    else:
        k = max(1, len(losses) // 5)
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        print(f"{args.loader}: {len(losses)} steps, loss {first:.3f} -> {last:.3f}"
              + ("" if math.isfinite(last) else " (not finite!)"))
    return losses


if __name__ == "__main__":
    main(sys.argv[1:])
