"""Multi-rank behaviour on real gloo process groups: equal batch counts on uneven shards,
exact ``len``, no image twice across ranks, masks that survive an all-gather."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import loader_fixtures as fx
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.loader import make_loader, positive_mask

five = pytest.fixture(scope="module", name="five")(fx.build_five)
two = pytest.fixture(scope="module", name="two")(fx.build_two)

WORLD = 3
EPOCHS = 2


def _rank_main(rank: int, init_file: str, build: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        # rank and world size come from the process group, not from arguments.
        loader = make_loader(build, split="train", batch_size=4, captions_per_image=5, num_workers=1, image_size=8)
        result: dict[str, object] = {"len": len(loader), "rank": loader.rank, "world": loader.world_size}
        epochs = []
        for epoch in range(EPOCHS):
            loader.set_epoch(epoch)
            ids = []
            for batch in loader:
                # A training step: every rank must join it, or the others would hang here.
                step = torch.tensor([len(batch["image_id"])])
                dist.all_reduce(step)
                ids.append(batch["image_id"])
            epochs.append(ids)
        result["epochs"] = epochs
        loader.set_epoch(0)
        first = next(iter(loader))
        gathered: list[object] = [None] * WORLD
        dist.all_gather_object(gathered, (first["image_group"], first["match_id"]))
        merged = {
            "image_group": torch.cat([g[0] for g in gathered]),  # type: ignore[index]
            "match_id": torch.cat([g[1] for g in gathered]),  # type: ignore[index]
        }
        result["gathered_mask_ok"] = bool(
            torch.equal(positive_mask(merged), torch.eye(4 * WORLD, dtype=torch.bool).repeat_interleave(5, dim=1))
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def test_three_gloo_ranks_on_uneven_shards(five: Path, tmp_path: Path) -> None:
    sizes = [s["images"] for s in fx.manifest(five)["splits"]["train"]["shards"]]
    assert len(set(sizes)) > 1  # uneven shards, and rank ranges of 20 images cut through them
    os.environ.pop("MASTER_ADDR", None)
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(five), str(tmp_path)), nprocs=WORLD, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["rank"] for r in results] == [0, 1, 2] and {r["world"] for r in results} == {WORLD}
    expected = fx.FIVE_IMAGES // WORLD // 4
    for r in results:
        assert r["len"] == expected
        assert [len(e) for e in r["epochs"]] == [expected] * EPOCHS
        assert r["gathered_mask_ok"]
    for epoch in range(EPOCHS):
        ids = [i for r in results for batch in r["epochs"][epoch] for i in batch]
        assert len(ids) == len(set(ids)) == fx.FIVE_IMAGES  # 60 = 3 ranks x 5 batches x 4: nothing left out
    orders = [[i for r in results for batch in r["epochs"][e] for i in batch] for e in range(EPOCHS)]
    assert orders[0] != orders[1]


def _uneven_rank(rank: int, init_file: str, build: str, out: str, world: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        loader = make_loader(build, split="train", batch_size=3, num_workers=0, image_size=8, drop_last=False)
        ids = []
        for batch in loader:
            dist.all_reduce(torch.tensor([1]))
            ids.append(batch["image_id"])
        Path(out, f"rank{rank}.json").write_text(
            json.dumps({"len": len(loader), "ids": ids, "left_out": loader.left_out_per_epoch})
        )
    finally:
        dist.destroy_process_group()


def test_four_ranks_when_the_split_does_not_divide(two: Path, tmp_path: Path) -> None:
    world = 4  # 30 images = 4 x 7 + 2
    mp.spawn(_uneven_rank, args=(str(tmp_path / "init"), str(two), str(tmp_path), world), nprocs=world, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert {r["len"] for r in results} == {3} and all(len(r["ids"]) == 3 for r in results)
    assert all([len(b) for b in r["ids"]] == [3, 3, 1] for r in results)
    ids = [i for r in results for b in r["ids"] for i in b]
    assert len(ids) == len(set(ids)) == 28 and results[0]["left_out"] == 2

