"""The loader on real builds: batch contract, captions per image, epochs, workers, sources."""

from __future__ import annotations

import glob
import os
import warnings
from collections import defaultdict
from pathlib import Path

import fsspec
import loader_fixtures as fx
import pytest
import synth
import torch
from loader_fixtures import FIVE_IMAGES, image_index, shard_paths, signature

from pipeline.errors import SourceError, UsageError
from pipeline.loader import make_loader, positive_mask

five = pytest.fixture(scope="module", name="five")(fx.build_five)
two = pytest.fixture(scope="module", name="two")(fx.build_two)


def caption_of(text: str) -> int:
    """The image index a synth caption describes ('picture {i} described ...')."""
    return int(text.split()[1])


def test_k5_groups_of_exactly_five_and_the_mask(five: Path) -> None:
    loader = make_loader(five, split="train", batch_size=8, captions_per_image=5, image_size=16)
    batches = list(loader)
    assert len(batches) == len(loader) == FIVE_IMAGES // 8
    for b in batches:
        p = len(b["image_id"])
        assert p == 8 and b["image"].shape == (8, 3, 16, 16) and b["image"].dtype == torch.uint8
        assert len(b["caption"]) == 5 * p
        assert torch.bincount(b["caption_image"]).tolist() == [5] * p
        assert torch.equal(b["match_id"], b["image_group"][b["caption_image"]])
        mask = positive_mask(b)
        assert mask.shape == (p, 5 * p) and mask.dtype == torch.bool
        assert torch.equal(mask, torch.eye(p, dtype=torch.bool).repeat_interleave(5, dim=1))
        for c, text in enumerate(b["caption"]):
            owner = b["image_id"][int(b["caption_image"][c])]
            assert caption_of(text) == image_index(owner)
        for i in range(p):
            texts = [t for t, j in zip(b["caption"], b["caption_image"].tolist(), strict=True) if j == i]
            assert len(set(texts)) == 5


def test_k1_never_repeats_an_image_and_rotates_captions(five: Path) -> None:
    loader = make_loader(five, split="train", batch_size=6, image_size=8)
    used: dict[str, set[str]] = defaultdict(set)
    for epoch in range(5):
        loader.set_epoch(epoch)
        seen: list[str] = []
        for b in loader:
            ids = b["image_id"]
            assert len(ids) == len(set(ids)) == len(b["caption"]) == 6
            assert torch.equal(positive_mask(b), torch.eye(6, dtype=torch.bool))
            seen.extend(ids)
            for i, text in zip(ids, b["caption"], strict=True):
                used[i].add(text)
        assert len(seen) == len(set(seen)) == FIVE_IMAGES
    assert len(used) == FIVE_IMAGES
    assert all(texts == {synth.caption_text(image_index(i), n) for n in range(5)} for i, texts in used.items())


def test_all_and_fewer_or_repeated_captions(two: Path) -> None:
    every = next(iter(make_loader(two, split="train", batch_size=5, captions_per_image="all", image_size=8)))
    assert torch.bincount(every["caption_image"]).tolist() == [2] * 5
    fewer = next(iter(make_loader(two, split="train", batch_size=5, captions_per_image=3, image_size=8)))
    assert torch.bincount(fewer["caption_image"]).tolist() == [2] * 5
    assert len(set(fewer["caption"])) == 10
    rep = next(iter(make_loader(two, split="train", batch_size=5, captions_per_image=3, image_size=8,
                                caption_shortfall="repeat")))
    assert torch.bincount(rep["caption_image"]).tolist() == [3] * 5
    assert len(set(rep["caption"])) == 10
    assert positive_mask(rep).sum().item() == 15


def test_same_epoch_same_batches_other_epoch_other_order(five: Path) -> None:
    loader = make_loader(five, split="train", batch_size=6, image_size=8, seed=7)
    first = signature(loader)
    assert signature(loader) == first
    loader.set_epoch(1)
    assert signature(loader) != first
    assert signature(make_loader(five, split="train", batch_size=6, image_size=8, seed=8)) != first


def test_dataloader_workers(five: Path) -> None:
    options = {"split": "train", "batch_size": 4, "captions_per_image": 2, "image_size": 8, "shuffle_window": 8}
    in_process = signature(make_loader(five, num_workers=0, **options))  # type: ignore[arg-type]
    assert signature(make_loader(five, num_workers=1, **options)) == in_process  # type: ignore[arg-type]
    loader = make_loader(five, num_workers=2, **options)  # type: ignore[arg-type]
    assert len(loader) == FIVE_IMAGES // 4
    first = signature(loader)
    assert len(first) == len(loader)
    assert signature(loader) == first  # persistent workers, same epoch again
    assert signature(make_loader(five, num_workers=2, **options)) == first  # type: ignore[arg-type]
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        ids = [i for b in loader for i in b["image_id"]]
        assert len(ids) == len(set(ids)) == FIVE_IMAGES


def test_transforms_run_on_the_image_and_each_caption(five: Path) -> None:
    def to_vector(img: object) -> torch.Tensor:
        assert img.mode == "RGB"  # type: ignore[attr-defined]
        return torch.tensor(img.size, dtype=torch.float32)  # type: ignore[attr-defined]

    def tokens(text: str) -> torch.Tensor:
        return torch.tensor([len(text), len(text.split())])

    b = next(iter(make_loader(five, split="train", batch_size=4, captions_per_image=2, image_transform=to_vector,
                              caption_transform=tokens, num_workers=1)))
    assert b["image"].tolist() == [[32.0, 24.0]] * 4
    assert b["caption"].shape == (8, 2)
    assert [len(t) for t in b["caption_text"]] == b["caption"][:, 0].tolist()


def test_short_last_batch_and_exact_length(five: Path) -> None:
    loader = make_loader(five, split="train", batch_size=7, drop_last=False, image_size=8, num_workers=0)
    sizes = [len(b["image_id"]) for b in loader]
    assert len(sizes) == len(loader) == 9 and sizes[-1] == FIVE_IMAGES - 8 * 7
    dropped = make_loader(five, split="train", batch_size=7, image_size=8, num_workers=0)
    assert len(list(dropped)) == len(dropped) == 8 and dropped.left_out_per_epoch == 4


def test_shard_lists_globs_and_braces_read_like_the_build(five: Path) -> None:
    whole = signature(make_loader(five, split="train", batch_size=5, image_size=8))
    n = len(shard_paths(five))
    sources: list[object] = [
        [str(p) for p in shard_paths(five)],
        str(five / "train-*.tar"),
        str(five / f"train-{{000000..{n - 1:06d}}}.tar"),
        [f"file://{p}" for p in shard_paths(five)],
        str(five / "manifest.json"),
    ]
    for source in sources:
        assert signature(make_loader(source, split=None, batch_size=5, image_size=8)) == whole  # type: ignore[arg-type]


def test_shards_without_a_manifest_are_counted(five: Path, tmp_path: Path) -> None:
    for p in shard_paths(five):
        (tmp_path / p.name).write_bytes(p.read_bytes())
    loader = make_loader(sorted(glob.glob(str(tmp_path / "*.tar"))), split="train", batch_size=5, image_size=8)
    assert len(loader) == FIVE_IMAGES // 5
    assert signature(loader) == signature(make_loader(five, split="train", batch_size=5, image_size=8))


def test_user_errors_are_clear(five: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"split 'val' is not in .*\(splits: train\)"):
        make_loader(five, split="val", batch_size=4)
    with pytest.raises(UsageError, match="not a capshard build"):
        make_loader(tmp_path, split="train", batch_size=4)
    with pytest.raises(UsageError, match="captions_per_image"):
        make_loader(five, split="train", batch_size=4, captions_per_image=0)
    with pytest.raises(UsageError, match="batch_size"):
        make_loader(five, split="train", batch_size=0)
    with pytest.raises(UsageError, match=r"no such shard or build directory: .*flikr30k"):
        make_loader(str(tmp_path / "flikr30k"), split="train", batch_size=4)
    with pytest.raises(UsageError, match="no shard matches"):
        make_loader(str(tmp_path / "nothing-*.tar"), split=None, batch_size=4)
    with pytest.raises(TypeError, match="unexpected keyword"):
        make_loader(five, split="train", batch_size=4, shuffle_buffer=10)  # type: ignore[call-arg]
    (tmp_path / "manifest.json").write_text('{"format": "capshard/0", "splits": {}}')
    with pytest.raises(SourceError, match="capshard/1"):
        make_loader(tmp_path, split="train", batch_size=4)


def test_explicit_rank_and_world_size_without_a_process_group(five: Path) -> None:
    loaders = [make_loader(five, split="train", batch_size=4, rank=r, world_size=3, image_size=8) for r in range(3)]
    ids = [i for ld in loaders for b in ld for i in b["image_id"]]
    assert len({len(ld) for ld in loaders}) == 1
    assert len(ids) == len(set(ids)) == 3 * 4 * len(loaders[0])
    with pytest.raises(UsageError, match="rank 3"):
        make_loader(five, split="train", batch_size=4, rank=3, world_size=3)


def test_positive_mask_ignores_padding_groups() -> None:
    batch = {"image_group": torch.tensor([4, -1, 9]), "match_id": torch.tensor([4, 4, -1, 9])}
    assert positive_mask(batch).tolist() == [
        [True, True, False, False],
        [False, False, False, False],
        [False, False, False, True],
    ]
    with pytest.raises(TypeError):
        positive_mask({"image_group": [1], "match_id": [1]})


def test_all_gathered_groups_keep_the_mask_right(five: Path) -> None:
    """Two ranks' batches concatenated (what an all-gather gives) still mask correctly:
    groups are dataset-level, so no caption of one rank matches an image of the other."""
    a, b = (next(iter(make_loader(five, split="train", batch_size=4, captions_per_image=5, rank=r, world_size=2,
                                  image_size=8))) for r in range(2))
    gathered = {"image_group": torch.cat([a["image_group"], b["image_group"]]),
                "match_id": torch.cat([a["match_id"], b["match_id"]])}
    assert torch.equal(positive_mask(gathered), torch.eye(8, dtype=torch.bool).repeat_interleave(5, dim=1))


@pytest.mark.parametrize("workers", [0, 1])
def test_remote_sources_read_through_fsspec(five: Path, workers: int) -> None:
    fs = fsspec.filesystem("memory")
    root = f"capshard-{workers}"
    for p in five.iterdir():
        if p.is_file():
            fs.pipe(f"/{root}/{p.name}", p.read_bytes())
    try:
        local = signature(make_loader(five, split="train", batch_size=5, image_size=8, num_workers=workers))
        remote = make_loader(f"memory://{root}", split="train", batch_size=5, image_size=8, num_workers=workers)
        assert signature(remote) == local
        pattern = make_loader(f"memory://{root}/train-*.tar", split="train", batch_size=5, image_size=8,
                              num_workers=workers)
        assert [s.sha256 for s in pattern.shards.shards] == [s.sha256 for s in remote.shards.shards]
        assert signature(pattern) == local
    finally:
        fs.rm(f"/{root}", recursive=True)


def test_spawned_workers_follow_set_epoch(five: Path) -> None:
    options = {"split": "train", "batch_size": 6, "image_size": 8}
    reference = make_loader(five, num_workers=0, **options)  # type: ignore[arg-type]
    spawned = make_loader(five, num_workers=1, multiprocessing_context="spawn", **options)  # type: ignore[arg-type]
    for epoch in (0, 3):
        reference.set_epoch(epoch)
        spawned.set_epoch(epoch)
        assert signature(spawned) == signature(reference)


def test_an_epoch_without_a_batch_is_refused_unless_allowed(five: Path) -> None:
    with pytest.raises(UsageError) as info:
        make_loader(five, split="train", batch_size=64)
    message = str(info.value)
    assert "\n" not in message
    assert message == ("split 'train': 60 images over 1 rank(s) give no batch of 64 per epoch; "
                       "use batch_size <= 60, or pass allow_empty=True")
    with pytest.raises(UsageError, match=r"60 images over 2 rank\(s\) give no batch of 31 .*batch_size <= 30"):
        make_loader(five, split="train", batch_size=31, rank=1, world_size=2)
    empty = make_loader(five, split="train", batch_size=64, allow_empty=True, num_workers=0)
    assert len(empty) == 0 and list(empty) == []
    assert len(make_loader(five, split="train", batch_size=64, drop_last=False, num_workers=0)) == 1


def test_num_workers_defaults_to_the_cpus_without_torch_warning(five: Path) -> None:
    loader = make_loader(five, split="train", batch_size=6, image_size=8)
    assert loader.dataloader.num_workers == min(len(os.sched_getaffinity(0)), 8)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*suggested max number of worker")
        assert sum(len(b["image_id"]) for b in loader) == FIVE_IMAGES
