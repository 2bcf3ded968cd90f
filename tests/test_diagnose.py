"""``capshard diagnose``: the report on good builds, the named cause on bad ones, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import loader_fixtures as fx
import pytest
from loader_fixtures import sample_members, write_tar

from pipeline.diagnose import diagnose

five = pytest.fixture(scope="module", name="five")(fx.build_five)
two = pytest.fixture(scope="module", name="two")(fx.build_two)
single = pytest.fixture(scope="module", name="single")(fx.build_single)


def capshard(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_five_captions_give_groups_of_five(five: Path) -> None:
    r = diagnose(five, split="train", batch_size=8, captions_per_image=5)
    assert r.ok, r.problems
    assert (r.batches, r.batches_per_epoch, r.images, r.captions) == (7, 7, 56, 280)
    assert r.group_sizes == {5: 56}
    assert (r.positives_per_caption.min, r.positives_per_caption.max) == (5, 5)
    assert (r.images_per_batch.min, r.captions_per_batch.max) == (8, 40)
    assert r.images_repeated_in_epoch == r.images_repeated_in_batch == r.images_sharing_a_group == 0
    assert r.skipped == {} and r.left_out_per_epoch == 4
    one = diagnose(five, split="train", batch_size=8)
    assert one.ok and one.group_sizes == {1: 56} and one.positives_per_caption.max == 1


def test_single_caption_images_cannot_give_five(single: Path) -> None:
    r = diagnose(single, split="train", batch_size=8, captions_per_image=5)
    assert not r.ok
    assert r.problems[0].startswith("no semantic grouping possible: every image carries a single caption")
    assert r.group_sizes == {1: 40}
    assert diagnose(single, split="train", batch_size=8).ok


def test_images_with_fewer_captions_than_asked(two: Path) -> None:
    r = diagnose(two, split="train", batch_size=5, captions_per_image=3)
    assert not r.ok and r.problems == [
        "30 of 30 images carry fewer than 3 captions (smallest group 2); their captions have fewer positives "
        "than asked: use --captions-per-image 2 or accept it"
    ]
    assert diagnose(two, split="train", batch_size=5, captions_per_image="all").ok


def test_repeats_shared_groups_and_skipped_samples_are_named(five: Path, tmp_path: Path) -> None:
    shard = str(fx.shard_paths(five)[0])
    twice = diagnose([shard, shard], split=None, batch_size=2)
    assert twice.images_repeated_in_epoch == 7 and any("more than once in the epoch" in p for p in twice.problems)

    members = [*sample_members("a", 0, group=3), *sample_members("b", 1, group=3), *sample_members("c", 2)]
    members[6] = ("c.jpg", b"garbage")
    bad = write_tar(tmp_path / "train-000000.tar", members)
    r = diagnose([str(bad)], split=None, batch_size=3, captions_per_image=2)
    assert r.images_sharing_a_group == 1 and r.skipped == {"corrupt_image": 1}
    assert any("share a group id" in p for p in r.problems)
    assert any(p.startswith("1 samples were skipped (1 corrupt_image)") for p in r.problems)


def test_cli_exit_codes_and_json(five: Path, single: Path) -> None:
    good = capshard("diagnose", str(five), "--batch-size", "8", "--captions-per-image", "5", "--json")
    assert good.returncode == 0, good.stderr
    report = json.loads(good.stdout)
    assert report["ok"] and report["group_sizes"] == {"5": 56} and report["captions_per_image"] == 5

    bad = capshard("diagnose", str(single), "--batch-size", "8", "--captions-per-image", "5")
    assert bad.returncode == 1
    assert "group sizes seen        1: 40" in bad.stdout
    problem = (
        "no semantic grouping possible: every image carries a single caption, but "
        "--captions-per-image 5 was asked; if the source has several captions per picture, the build did not "
        "group them (check the manifest's resolution report and the --id strategy)"
    )
    # Each problem is printed once: on stdout with the report; stderr only says there was one.
    assert f"PROBLEM: {problem}" in bad.stdout.splitlines()
    assert bad.stderr.splitlines() == [f"capshard: error: diagnose: 1 problem in split train of {single} "
                                       "(PROBLEM lines above)"]
    as_json = capshard("diagnose", str(single), "--batch-size", "8", "--captions-per-image", "5", "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["problems"] == [problem]
    assert problem not in as_json.stderr
    usage = capshard("diagnose", str(five), "--captions-per-image", "none")
    assert usage.returncode == 2 and "'none' is neither a positive integer nor 'all'" in usage.stderr
    missing = capshard("diagnose", str(five), "--split", "val")
    assert missing.returncode == 2 and missing.stderr.strip() == (
        f"capshard: error: split 'val' is not in {five / 'manifest.json'} (splits: train)"
    )


def test_cli_reads_every_caption_by_default_like_smoke_train(five: Path) -> None:
    proc = capshard("diagnose", str(five), "--batch-size", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["captions_per_image"] == "all"
    assert report["positives_per_caption"] == {"min": 5, "mean": 5.0, "max": 5}
    assert "captions per image all" in capshard("diagnose", str(five), "--batch-size", "8").stdout


def test_cli_on_a_damaged_build(five: Path, tmp_path: Path) -> None:
    build = tmp_path / "b"
    shutil.copytree(five, build)
    shard = fx.shard_paths(build)[1]
    data = bytearray(shard.read_bytes())
    data[1500] ^= 1
    shard.write_bytes(bytes(data))
    proc = capshard("diagnose", str(build), "--batch-size", "8")
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"capshard: error: shard {shard.name} ")
    assert "does not match the manifest" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cli_on_the_embedded_sample_built_by_the_cli(tmp_path: Path) -> None:
    built = capshard("build", "--workers", "2", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    proc = capshard("diagnose", "shards/sample", "--batch-size", "32", "--captions-per-image", "5", "--workers", "2",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "group sizes seen        5: " in proc.stdout and proc.stdout.rstrip().splitlines()[-1].startswith("OK: ")
