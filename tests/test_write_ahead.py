"""``build`` (``--one-pass``, the default; pipeline.write_ahead) probes and writes each image in one
pass, and its files are those of the build that probes every image first (``--two-pass``), whatever
the images turn out to be; a pass that was stopped goes on from the shards it wrote."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from synth import comparable, flickr_token_file, nlphuji_dataset, write_images

from pipeline import build as build_module
from pipeline import write_ahead
from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.errors import BuildError, OutputError
from pipeline.readers import SourceSpec
from pipeline.readers import base as reader_base
from pipeline.write import ShardTask

N_IMAGES = 40
PER_SHARD = 6


def _source(
    root: Path,
    *,
    truncated: tuple[int, ...] = (),
    alike: tuple[tuple[int, int], ...] = (),
    missing: tuple[int, ...] = (),
) -> SourceSpec:
    """A Flickr token file over N_IMAGES files: ``truncated`` ones cut in half, ``alike`` pairs
    (i, j) where file i holds file j's picture, ``missing`` ones never written."""
    names = [f"{1000 + i}_abc.jpg" for i in range(N_IMAGES)]
    images = root / "images"
    data = write_images(images, names)
    for i in truncated:
        (images / names[i]).write_bytes(data[names[i]][: len(data[names[i]]) // 2])
    for i, j in alike:
        (images / names[i]).write_bytes(data[names[j]])
    for i in missing:
        (images / names[i]).unlink()
    token = root / "Flickr8k.token.txt"
    flickr_token_file(token, names, captions_per_image=2)
    return SourceSpec(path=str(token), images=images)


def _config(out: Path, **options: object) -> BuildConfig:
    return BuildConfig(out=out, **{"workers": 1, "max_images_per_shard": PER_SHARD, **options})  # type: ignore[arg-type]


def _files(out: Path) -> dict[str, bytes]:
    """Every file of a finished build as builds of the same input must reproduce it."""
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {p.relative_to(out).as_posix(): comparable(p.name, p.read_bytes()) for p in files}


def _reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each image file is read from now on (in this process: ``--workers 1``)."""
    reads: Counter[str] = Counter()
    real = reader_base.read_image_file

    def counted(path: str, *args: object, **kwargs: object) -> bytes:
        reads[Path(path).name] += 1
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reader_base, "read_image_file", counted)
    return reads


CASES = {
    "every image usable": {},
    "a truncated image": {"truncated": (17,)},
    "one picture under two names": {"alike": ((25, 3),)},
    "a missing file": {"missing": (30,)},
}


@pytest.mark.parametrize("case", CASES)
def test_the_files_are_those_of_the_build_that_probes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    spec = _source(tmp_path, **CASES[case])  # type: ignore[arg-type]
    reads = _reads(monkeypatch)
    with caplog.at_level(logging.INFO, logger="pipeline.build"):
        ahead = build(spec, _config(tmp_path / "ahead"))
    kept = [r.getMessage() for r in caplog.records if "as their images were probed" in r.getMessage()]
    read_ahead = dict(reads)
    reads.clear()
    first = build(spec, _config(tmp_path / "first", one_pass=False))

    assert _files(ahead.out) == _files(first.out)
    assert not list(ahead.out.glob(".*tmp*")) and not (ahead.out / ".capshard").exists()
    shards = len(list(first.out.glob("*.tar")))
    if case in ("every image usable", "a missing file"):  # the listing knows a missing file: the guess holds
        present = [p.name for p in Path(spec.images).iterdir()]  # type: ignore[arg-type]
        assert {read_ahead[n] for n in present} == {1} and {reads[n] for n in present} == {2}  # or probe, write
        assert kept == [f"wrote {shards} of {shards} shards as their images were probed"]
    else:  # the shards from the one the guess got wrong on are written again from the plan
        assert len(kept) == 1 and kept[0].endswith(" again") and not kept[0].startswith(f"wrote {shards} of")
        assert max(read_ahead.values()) == 2  # the images of the shards written again, read again


@pytest.mark.parametrize(("case", "resolutions"), [("every image usable", 1), ("a truncated image", 2)])
def test_a_pass_that_finds_what_the_plan_assumed_resolves_the_captions_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, resolutions: int
) -> None:
    """The plan assumed is the plan (with the images' hashes) when the pass found it so; else the
    captions are resolved again, from what it found."""
    spec = _source(tmp_path, **CASES[case])  # type: ignore[arg-type]
    calls: list[int] = []
    real = build_module.resolve

    def counted(rows: object, probed: object, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(rows, probed, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(build_module, "resolve", counted)
    ahead = build(spec, _config(tmp_path / "ahead"))
    assert len(calls) == resolutions
    monkeypatch.undo()
    assert _files(ahead.out) == _files(build(spec, _config(tmp_path / "first", one_pass=False)).out)


def test_a_build_stopped_after_its_commits_takes_the_committed_shards_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A shard committed from the pass has its done record (written by the commit from the bytes
    its worker made): the next run of the build reuses it rather than writing it again."""
    spec = _source(tmp_path)

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "_finalize_phase", stopped)
    with pytest.raises(KeyboardInterrupt):
        build(spec, _config(tmp_path / "out"))
    monkeypatch.undo()
    committed = sorted(p.name for p in (tmp_path / "out").glob("*.tar"))
    assert len(committed) == -(-N_IMAGES // PER_SHARD)
    with caplog.at_level(logging.INFO, logger="pipeline.build"):
        again = build(spec, _config(tmp_path / "out"))
    assert f"reusing {len(committed)} finished shards, writing 0" in caplog.text
    assert _files(again.out) == _files(build(spec, _config(tmp_path / "first", one_pass=False)).out)


def test_once_the_plan_changes_the_rest_of_the_split_is_only_probed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unusable image changes the plan of its whole split (it is shuffled as a whole): the pass
    stops writing that split's shards ahead, since the plan would have them written again."""
    spec = _source(tmp_path, truncated=(5,))
    started: list[str] = []
    real = write_ahead.write_tar

    def counted(images: object, task: ShardTask, *args: object, **kwargs: object) -> object:
        started.append(task.name)
        return real(images, task, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(write_ahead, "write_tar", counted)
    with caplog.at_level(logging.INFO, logger="pipeline.build"):
        ahead = build(spec, _config(tmp_path / "ahead"))
    shards = len(list(ahead.out.glob("*.tar")))
    lost = [r.getMessage() for r in caplog.records if "the plan changes" in r.getMessage()]
    assert len(lost) == 1 and "1005_abc.jpg is not a usable image (corrupt_image)" in lost[0]
    assert started == sorted(started) and 0 < len(started) < shards  # in order (--workers 1), then no more
    assert _files(ahead.out) == _files(build(spec, _config(tmp_path / "first", one_pass=False)).out)


def test_a_pool_of_workers_writes_the_same_files(tmp_path: Path) -> None:
    spec = _source(tmp_path, truncated=(8,))
    pool = build(spec, _config(tmp_path / "pool", workers=2))
    first = build(spec, _config(tmp_path / "first", one_pass=False))
    assert _files(pool.out) == _files(first.out)


@pytest.mark.parametrize("options", [{"resize": 16}, {"validate": "decode"}], ids=["resize", "decode"])
def test_with_resize_or_decoding_the_files_are_the_same(tmp_path: Path, options: dict[str, object]) -> None:
    spec = _source(tmp_path, truncated=(30,))
    one = build(spec, _config(tmp_path / "one", **options))
    assert _files(one.out) == _files(build(spec, _config(tmp_path / "first", one_pass=False, **options)).out)


def test_one_pass_is_not_part_of_the_build_identity(tmp_path: Path) -> None:
    spec = _source(tmp_path)
    one = build(spec, _config(tmp_path / "out"))
    again = build(spec, _config(tmp_path / "out", one_pass=False))
    assert (one.status, again.status) == ("built", "up_to_date")


def test_a_source_of_images_that_are_not_files_is_probed_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = SourceSpec(dataset=nlphuji_dataset(12))
    with caplog.at_level(logging.INFO, logger="pipeline.build"):
        one = build(spec, _config(tmp_path / "one"))
    assert "probing every image before writing any shard (images that are not files)" in caplog.text
    assert _files(one.out) == _files(build(spec, _config(tmp_path / "first", one_pass=False)).out)


def test_a_build_over_the_reject_budget_leaves_no_shard_written_ahead(tmp_path: Path) -> None:
    spec = _source(tmp_path, truncated=tuple(range(0, N_IMAGES, 2)))
    out = tmp_path / "out"
    with pytest.raises(BuildError, match=r"rows rejected .* over --max-reject-fraction"):
        build(spec, _config(out, workers=2))
    assert not list(out.glob("*.tar")) and not list(out.glob(".*tmp*"))
    assert not (out / ".capshard" / "ahead").exists()


def _stopped_after(tasks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next build's pass stop (as on Ctrl-C) once ``tasks`` shards are written."""
    real = build_module.probe_and_write
    ran: list[str] = []

    def stopping(reader: object, task: object) -> object:
        if len(ran) == tasks:
            raise KeyboardInterrupt
        done = real(reader, task)  # type: ignore[arg-type]
        ran.append(done.name)
        return done

    monkeypatch.setattr(build_module, "probe_and_write", stopping)


def _stop_pass(spec: SourceSpec, out: Path, tasks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Build into ``out`` and stop the pass (as on Ctrl-C) once ``tasks`` shards are written."""
    with monkeypatch.context() as patch:
        _stopped_after(tasks, patch)
        with pytest.raises(KeyboardInterrupt):
            build(spec, _config(out))


def test_a_stopped_pass_goes_on_from_the_shards_it_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _source(tmp_path)
    out = tmp_path / "out"
    _stop_pass(spec, out, 3, monkeypatch)
    ahead = out / ".capshard" / "ahead"
    written = sorted(p.name for p in ahead.glob("*.tar"))
    assert len(written) == 3 and len(list(ahead.glob("*.tar.json"))) == 3 and not list(out.glob("*.tar"))
    probed = [row["image_path"] for n in written for row in json.loads((ahead / f"{n}.json").read_text())["rows"]]
    assert len(probed) == 3 * PER_SHARD

    reads = _reads(monkeypatch)
    again = build(spec, _config(out))
    assert (again.status, again.reused_shards) == ("resumed", 3)
    assert not any(reads[Path(p).name] for p in probed)  # the images of the shards kept: not read again
    assert sum(reads.values()) == N_IMAGES - len(probed)  # the others: once
    assert _files(out) == _files(build(spec, _config(tmp_path / "first", one_pass=False)).out)


def test_a_shard_that_changed_since_the_pass_is_written_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _source(tmp_path)
    out = tmp_path / "out"
    _stop_pass(spec, out, 2, monkeypatch)
    shards = sorted((out / ".capshard" / "ahead").glob("*.tar"))
    data = bytearray(shards[0].read_bytes())
    data[1000] ^= 0xFF  # a torn write, a disk error: the record no longer matches
    shards[0].write_bytes(bytes(data))

    again = build(spec, _config(out))
    assert (again.status, again.reused_shards) == ("resumed", 1)
    assert _files(out) == _files(build(spec, _config(tmp_path / "first", one_pass=False)).out)


def test_a_stopped_pass_is_not_taken_when_inputs_are_checked_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _source(tmp_path)
    out = tmp_path / "out"
    _stop_pass(spec, out, 3, monkeypatch)
    again = build(spec, _config(out, check_inputs="content"))  # the pass trusted mtimes: start over
    assert (again.status, again.reused_shards) == ("built", 0)
    assert _files(out) == _files(build(spec, _config(tmp_path / "first", one_pass=False)).out)


def test_a_stopped_pass_of_another_build_is_refused_or_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _source(tmp_path)
    out = tmp_path / "out"
    _stop_pass(spec, out, 3, monkeypatch)
    with pytest.raises(OutputError, match=r"holds an unfinished build of different input or options \(seed: 0 -> 7\)"):
        build(spec, _config(out, seed=7))
    assert len(list((out / ".capshard" / "ahead").glob("*.tar"))) == 3  # refused: nothing touched
    other = build(spec, _config(out, seed=7, overwrite=True))
    assert (other.status, other.reused_shards) == ("built", 0)
    assert _files(out) == _files(build(spec, _config(tmp_path / "first", seed=7, one_pass=False)).out)


def test_a_build_killed_while_it_writes_ahead_resumes_to_the_same_files(tmp_path: Path) -> None:
    """Killed (SIGKILL) before its plan is saved, a build leaves the shards it wrote ahead with their
    records: the next run keeps them, probes and writes the rest, and ends with the files of an
    uninterrupted run."""
    names = [f"{1000 + i}_abc.jpg" for i in range(240)]
    write_images(tmp_path / "images", names)
    flickr_token_file(tmp_path / "Flickr8k.token.txt", names, captions_per_image=2)
    args = ["build", "Flickr8k.token.txt", "--images", "images", "--max-images-per-shard", "4", "--workers", "1"]
    run = [sys.executable, "-m", "pipeline", *args]
    assert subprocess.run([*run, "--two-pass", "--out", "clean"], cwd=tmp_path, capture_output=True).returncode == 0

    out = tmp_path / "killed"
    records = out / ".capshard" / "ahead"
    proc = subprocess.Popen([*run, "--out", "killed"], cwd=tmp_path, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(records.glob("*.tar.json"))) < 5:
        time.sleep(0.01)
    assert proc.poll() is None, "the build finished before it could be killed; make it bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(out.glob("*.tar")) and not (out / ".capshard" / "state.json").exists()

    again = subprocess.run([*run[:3], "-v", *run[3:], "--out", "killed"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("finished (resumed) killed")
    assert " shards were written before it stopped" in again.stderr
    assert not list(out.glob(".*tmp*")) and not (out / ".capshard").exists()
    assert _files(out) == _files(tmp_path / "clean")
