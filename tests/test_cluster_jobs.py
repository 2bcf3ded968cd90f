"""Indexed cluster jobs: ``capshard plan``, N × ``capshard write --task I --tasks N``, ``capshard finalize``.

Real processes throughout: three slices written in parallel, one of them killed (SIGKILL)
in the middle of a shard and run again, one run twice, then finalize; every file is
compared byte for byte with ``capshard build`` of the same input.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from synth import comparable, flickr_token_file, write_images

ROOT = Path(__file__).parent.parent

# A `capshard write` that hangs before the image number HANG_AT it reads (in the middle of a
# shard, its temporary file open), after touching the file argv[1]: the moment to kill it.
HANGING_WRITE = """
import pathlib, sys, time
import pipeline.write as w
real, seen = w._stored_images, []
def hang(reader, samples):
    for image in real(reader, samples):
        seen.append(image[0].key)
        if len(seen) == int(sys.argv[2]):
            pathlib.Path(sys.argv[1]).touch()
            time.sleep(3600)
        yield image
w._stored_images = hang
from pipeline.cli import main
main(sys.argv[3:])
"""


def capshard(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**(env or os.environ), "PYTHONPATH": str(ROOT)})


def dataset(tmp_path: Path, n: int = 12) -> None:
    names = [f"{100 + i}.jpg" for i in range(n)]
    write_images(tmp_path / "img", names)
    flickr_token_file(tmp_path / "captions.token", names, 3)


OPTIONS = ("--images", "img", "--max-images-per-shard", "2", "--seed", "3", "--name", "cj", "--workers", "1")


def plan(tmp_path: Path, out: str = "out") -> None:
    proc = capshard(tmp_path, "plan", "captions.token", "--out", out, *OPTIONS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"planned {out}: 12 images in 6 shards")


def files(folder: Path) -> dict[str, bytes]:
    """Every file of a build, the manifest without ``stats`` (a build's run has them, finalize's none)."""
    names = (p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file())
    return {name: comparable(name, (folder / name).read_bytes()) for name in names}


def test_three_slices_in_parallel_one_killed_and_rerun_one_twice_give_the_bytes_of_build(tmp_path: Path) -> None:
    dataset(tmp_path)
    plan(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    hung = tmp_path / "hung"
    # slice 1 holds shards 1 and 4 (of 0..5); it hangs on its 3rd image, the first of its 2nd shard.
    killed = subprocess.Popen([sys.executable, "-c", HANGING_WRITE, str(hung), "3", "write", "out", "--task", "1",
                               "--tasks", "3", "--workers", "1"], cwd=tmp_path, env=env)
    others = [subprocess.Popen([sys.executable, "-m", "pipeline", "write", "out", "--task", str(i), "--tasks", "3",
                                "--workers", "1"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
              for i in (2, 0)]
    try:
        while not hung.exists():
            assert killed.poll() is None, "the slice to kill ended early"
            time.sleep(0.05)
        # A running slice holds the folder: finalize (exclusive) must not start.
        busy = capshard(tmp_path, "finalize", "out")
        assert busy.returncode == 1 and "out is in use by capshard write --task " in busy.stderr
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.kill()
        killed.wait()
    for proc in others:
        stdout, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0 and "wrote 2 shards" in stdout
    assert list(out.glob(".train-000004.tar.tmp-*")), "the kill left the shard it was writing half-written"
    short = capshard(tmp_path, "finalize", "out")
    error = short.stderr.splitlines()[-1]  # after the warning that the killed slice's lock is taken over
    assert short.returncode == 1 and error.startswith("capshard: error: 1 of 6 planned shards are missing from out")
    assert "differ from their done record (train-000004.tar); no manifest written" in error

    again = capshard(tmp_path, "write", "out", "--task", "1", "--tasks", "3", "--workers", "2")
    assert again.returncode == 0 and "wrote 1 shard, kept 1" in again.stdout
    twice = capshard(tmp_path, "write", "out", "--task", "0", "--tasks", "3")
    assert twice.returncode == 0 and "already written (2 shards)" in twice.stdout
    done = capshard(tmp_path, "finalize", "out")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("built out: 12 images, 36 captions from 36 rows")

    built = capshard(tmp_path, "build", "captions.token", "--out", "built", *OPTIONS)
    assert built.returncode == 0, built.stderr
    got, want = files(out), files(tmp_path / "built")
    assert sorted(got) == sorted(want) and len([n for n in want if n.endswith(".tar")]) == 6
    for name in want:
        assert got[name] == want[name], name
    after = capshard(tmp_path, "write", "out", "--task", "2", "--tasks", "3")
    assert after.returncode == 0 and "nothing to do: out holds the finished build" in after.stdout
    assert capshard(tmp_path, "finalize", "out").stdout.startswith("up to date: out")


def test_finalize_before_any_slice_ran_names_every_missing_shard(tmp_path: Path) -> None:
    dataset(tmp_path)
    plan(tmp_path)
    proc = capshard(tmp_path, "finalize", "out")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    shards = ", ".join(f"train-{i:06d}.tar" for i in range(5))
    assert (f"6 of 6 planned shards are missing from out or differ from their done record ({shards} and 1 more); "
            "no manifest written. Run capshard write for their slices") in proc.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()
    again = capshard(tmp_path, "plan", "captions.token", "--out", "out", *OPTIONS)
    assert again.returncode == 0 and again.stdout.startswith("plan kept (same input) out")


def test_a_task_out_of_range_and_no_task_at_all_are_one_line_usage_errors(tmp_path: Path) -> None:
    dataset(tmp_path, 4)
    plan_args = ("plan", "captions.token", "--out", "out", "--images", "img", "--max-images-per-shard", "2")
    assert capshard(tmp_path, *plan_args).returncode == 0
    bad = capshard(tmp_path, "write", "out", "--task", "3", "--tasks", "3")
    assert bad.returncode == 2
    assert bad.stderr == "capshard: error: --task must be between 0 and --tasks - 1 (2), not 3\n"
    env = {k: v for k, v in os.environ.items() if k not in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID")}
    missing = capshard(tmp_path, "write", "out", "--tasks", "3", env=env)
    assert missing.returncode == 2 and "Missing option '--task'" in missing.stderr
    nothing = capshard(tmp_path, "write", "elsewhere", "--task", "0", "--tasks", "1")
    assert nothing.returncode == 1
    assert nothing.stderr == "capshard: error: elsewhere holds no plan: run capshard plan first\n"


def test_task_and_tasks_default_from_kubernetes_and_slurm_environments(tmp_path: Path) -> None:
    dataset(tmp_path, 4)
    plan_args = ("plan", "captions.token", "--out", "out", "--images", "img", "--max-images-per-shard", "1")
    assert capshard(tmp_path, *plan_args).returncode == 0
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JOB_COMPLETION", "CAPSHARD_"))}
    k8s = capshard(tmp_path, "write", "out", "--json", env={**base, "JOB_COMPLETION_INDEX": "1", "CAPSHARD_TASKS": "2"})
    assert k8s.returncode == 0, k8s.stderr
    assert json.loads(k8s.stdout) | {"reused": 0} == {"out": "out", "task": 1, "tasks": 2, "written": 2,
                                                       "reused": 0, "finished": False}
    # `sbatch --array 4-10:3`: ids 4, 7, 10; id 10 is the third task.
    slurm = {**base, "SLURM_ARRAY_TASK_ID": "10", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_STEP": "3",
             "SLURM_ARRAY_TASK_COUNT": "3"}
    third = json.loads(capshard(tmp_path, "write", "out", "--json", env=slurm).stdout)
    assert (third["task"], third["tasks"], third["written"]) == (2, 3, 1)  # shard 2 of 0..3
    explicit = json.loads(capshard(tmp_path, "write", "out", "--task", "0", "--tasks", "3", "--json", env=slurm).stdout)
    assert (explicit["task"], explicit["written"]) == (0, 1)  # shards 0 and 3; 3 is new
    assert capshard(tmp_path, "finalize", "out").returncode == 0
