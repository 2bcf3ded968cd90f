"""The command line as a user meets it: defaults, summaries, exit codes, one-line errors."""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from synth import flickr_token_file, write_images


def capshard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_build_without_source_builds_the_embedded_sample(tmp_path: Path) -> None:
    proc = capshard("build", "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "shards" / "sample"
    assert "built shards/sample: 300 images, 1500 captions from 1500 rows (hf)" in proc.stdout
    assert "format: hf (detected" in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "capshard-sample"
    assert manifest["groups"]["captions_per_image"] == {"5": 300}
    assert set(manifest["splits"]) == {"train", "val", "test"}

    again = capshard("build", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("up to date: shards/sample")

    shown = capshard("inspect", "shards/sample", cwd=tmp_path)
    assert shown.returncode == 0
    assert "captions per image: 5: 300 images" in shown.stdout
    assert "rejects: none" in shown.stdout
    as_json = json.loads(capshard("inspect", "shards/sample", "--json", cwd=tmp_path).stdout)
    assert as_json["counts"]["images"] == 300
    assert (
        as_json["splits"]["train"]["images"] + as_json["splits"]["val"]["images"] + as_json["splits"]["test"]["images"]
        == 300
    )


def test_flickr_build_reports_counts_and_rejects(tmp_path: Path) -> None:
    names = [f"{i}.jpg" for i in range(10)]
    write_images(tmp_path / "img", names[:9])  # one image missing
    flickr_token_file(tmp_path / "captions.token", names, 5)
    proc = capshard("build", "captions.token", "--images", "img", "--out", "out", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "built"
    assert result["manifest"]["counts"] == {"rows": 50, "images": 9, "captions": 45, "rejected_rows": 5}
    assert result["manifest"]["rejects"]["by_reason"] == {"missing_image": 5}


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "rror" in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_usage_errors_exit_2_in_one_line(tmp_path: Path) -> None:
    line = _one_line_error(capshard("build", "--id", "guess", "--out", "x", cwd=tmp_path), 2)
    assert "--id must be one of auto, content, filename or column:NAME" in line
    line = _one_line_error(capshard("build", "--max-images-per-shard", "0", cwd=tmp_path), 2)
    assert "max-images-per-shard" in line
    line = _one_line_error(capshard("build", "--sample-images", "20000", cwd=tmp_path), 2)
    assert "--sample-images" in line and "3<=x<=10000" in line
    line = _one_line_error(capshard("inspect", str(tmp_path), cwd=tmp_path), 2)
    assert "holds no finished build" in line


def test_failed_build_exits_1_in_one_line(tmp_path: Path) -> None:
    names = [f"{i}.jpg" for i in range(4)]
    flickr_token_file(tmp_path / "captions.token", names, 5)
    (tmp_path / "empty").mkdir()
    line = _one_line_error(capshard("build", "captions.token", "--images", "empty", "--out", "o", cwd=tmp_path), 1)
    assert "20 of 20 rows rejected" in line and "Is --images the right folder?" in line


#: ``python -m pipeline`` (the module run as ``__main__``, as the command runs it) with an exit
#: handler of its own that says, as Python ends, whether the objects alive then were frozen.
AT_EXIT = """
import atexit, ctypes, runpy, sys, threading, time
atexit.register(lambda: print("exit handlers ran", file=sys.stderr))
if sys.argv[1] == "--abort-at-exit":  # a library whose C++ teardown aborts, as Arrow's thread pools can
    del sys.argv[1]
    libc = ctypes.CDLL(None)
    libc.__cxa_atexit(ctypes.cast(libc.abort, ctypes.c_void_p), None, None)
elif sys.argv[1] == "--with-a-thread":
    del sys.argv[1]
    threading.Thread(target=lambda: (time.sleep(0.5), print("the thread ended", file=sys.stderr))).start()
sys.argv[0] = "capshard"
runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
"""


def test_the_command_ends_after_its_exit_handlers_with_its_exit_code_and_output(tmp_path: Path) -> None:
    """``capshard`` runs the exit handlers and flushes its output, then ends without Python's teardown
    and the C++ destructors after it (which can abort a process that has done its work); with a
    thread of Python's still running, as Python would (it waits for the thread)."""

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", AT_EXIT, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )

    built = command("--abort-at-exit", "build", "--sample-images", "3", "--workers", "2", "--out", "o")
    assert built.returncode == 0, built.stderr
    assert "built o: 3 images" in built.stdout
    assert built.stderr.endswith("exit handlers ran\n")  # registered first, it runs after the command's own
    failed = command("--abort-at-exit", "build", "--id", "guess", "--out", "x")
    assert failed.returncode == 2
    assert failed.stderr.splitlines()[-2:] == [
        "capshard: error: --id must be one of auto, content, filename or column:NAME, not 'guess'",
        "exit handlers ran",
    ]
    waited = command("--with-a-thread", "--version")
    assert waited.returncode == 0 and waited.stdout.startswith("capshard, version")
    assert waited.stderr.splitlines() == ["the thread ended", "exit handlers ran"]
    # The installed command is the same function.
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    assert "capshard = pipeline.cli:run" in setup["options.entry_points"]["console_scripts"]


def test_help_lists_every_command_without_importing_them(tmp_path: Path) -> None:
    proc = capshard("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for command in ("build", "inspect", "verify", "diagnose", "smoke-train"):
        assert f"  {command} " in proc.stdout
    build_help = capshard("build", "--help", cwd=tmp_path)
    assert "--max-images-per-shard" in build_help.stdout and "--on-leak" in build_help.stdout


#: ``python -c`` preamble of an interpreter where ``import torch`` fails, as in a venv without it.
#: (None in sys.modules: ``import torch`` raises ModuleNotFoundError, ``find_spec("torch")`` is None.)
WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None
from pipeline.cli import main
sys.argv[0] = "capshard"
main()
"""


def capshard_without_torch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_commands_needing_torch_say_so_in_one_line_without_it(tmp_path: Path) -> None:
    for command in ("diagnose", "smoke-train"):
        proc = capshard_without_torch(command, str(tmp_path), cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == f"capshard: error: {command} needs the loader extra: pip install 'capshard[loader]'\n"
        assert proc.stdout == ""
        shown = capshard_without_torch(command, "--help", cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "Needs the loader extra (torch): pip install 'capshard[loader]'." in shown.stdout
    listed = capshard_without_torch("--help", cwd=tmp_path)
    assert listed.stdout.count("(loader extra)") == 2


def test_counts_read_as_words_and_sizes_as_people_write_them(tmp_path: Path) -> None:
    proc = capshard("build", "--sample-images", "3", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "train 3 images/1 shard\n" in proc.stdout, proc.stdout
    verified = capshard("verify", "shards/sample", cwd=tmp_path)
    assert verified.stdout.startswith("verified shards/sample: 1 shard intact, 3 images, 15 captions + 0 rejected "
                                      "rows = 15 rows")
    shown = capshard("build", "--help", cwd=tmp_path).stdout
    assert "[default: 1GiB]" in " ".join(shown.split())
    sized = capshard("build", "--sample-images", "3", "--max-shard-bytes", "512MiB", "--out", "o", "--json",
                     cwd=tmp_path)
    assert sized.returncode == 0, sized.stderr
    assert json.loads(sized.stdout)["manifest"]["options"]["max_shard_bytes"] == 512 * 2**20


def test_progress_without_a_terminal_is_log_lines(tmp_path: Path) -> None:
    """stderr is a pipe here, as in a cluster job's log: no bar, but lines per stage and every N seconds."""
    args = ("build", "--sample-images", "20", "--max-images-per-shard", "2", "--workers", "1")
    def run(out: str, every: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pipeline", *args, "--out", out], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "CAPSHARD_PROGRESS_EVERY": every})

    quiet = run("quiet", "100000")  # no interval elapses: a line when each stage starts and one when it ends
    assert quiet.returncode == 0, quiet.stderr
    assert [line for line in quiet.stderr.splitlines() if line.startswith("progress: ")] == [
        "progress: probing images: 20 images",
        *[line for line in quiet.stderr.splitlines() if line.startswith("progress: probing images: 20/20 images in ")],
        "progress: writing shards: 20 images",
        *[line for line in quiet.stderr.splitlines() if line.startswith("progress: writing shards: 20/20 images in ")],
    ]
    assert len(quiet.stderr.splitlines()) == 5  # and the detected format

    every = run("every", "0")  # a line at every step
    assert every.returncode == 0, every.stderr
    lines = [line for line in every.stderr.splitlines() if line.startswith("progress: writing shards: ")]
    assert lines[0] == "progress: writing shards: 20 images"
    assert re.fullmatch(r"progress: writing shards: 20/20 images in \d+ s \(\d+ images/s\)", lines[-1])
    ticks = lines[1:-1]
    assert len(ticks) >= 5  # a shard of 2 images at a time: 10 shards, a line after each but the last
    for line in ticks:
        assert re.fullmatch(r"progress: writing shards: \d+/20 images \(\d+%\), \d+ images/s, ETA \d+ s", line), line


def test_a_format_that_does_not_fit_its_file_is_named_with_the_file(tmp_path: Path) -> None:
    names = [f"{i}.jpg" for i in range(4)]
    write_images(tmp_path / "img", names)
    (tmp_path / "pairs.csv").write_text("image,caption\n" + "".join(f"img/{n},a caption of {n}\n" for n in names))
    line = _one_line_error(capshard("build", "pairs.csv", "--format", "hf", "--out", "o", cwd=tmp_path), 2)
    assert line.startswith("capshard: error: --format hf cannot read pairs.csv: ")
    assert line.endswith("pairs.csv does not look like a hf source (it looks like a table source); try --format auto")
    flickr_token_file(tmp_path / "captions.token", names, 2)
    line = _one_line_error(
        capshard("build", "captions.token", "--format", "karpathy", "--images", "img", "--out", "o", cwd=tmp_path), 2
    )
    assert "--format karpathy cannot read captions.token" in line and "it looks like a flickr source" in line
    assert not (tmp_path / "o").exists()
    assert capshard("build", "pairs.csv", "--format", "table", "--out", "o", cwd=tmp_path).returncode == 0


def test_a_failed_build_removes_the_out_folder_it_created_and_left_empty(tmp_path: Path) -> None:
    write_images(tmp_path / "val2017", ["a.jpg"])
    (tmp_path / "captions_val2017.json").write_text('{"images": [')  # invalid COCO JSON
    args = ("build", "captions_val2017.json", "--format", "coco", "--images", "val2017")
    line = _one_line_error(capshard(*args, cwd=tmp_path), 1)
    assert line.startswith("capshard: error: captions_val2017.json:") and "not valid JSON" in line
    assert not (tmp_path / "shards").exists()  # neither shards/captions_val2017 nor the shards/ it made
    # A folder that was there before is the user's: it stays.
    (tmp_path / "mine").mkdir()
    failed = capshard(*args, "--out", "mine", cwd=tmp_path)
    assert failed.returncode == 1 and (tmp_path / "mine").is_dir()
