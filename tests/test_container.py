"""The container's entrypoint and CI's container step, checked without a container engine.

The image itself is built and run by ``.ci/container`` (rootful podman through
``../shared/tools/container-build-and-run.sh``); here the entrypoint script runs on the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
ENTRYPOINT = ROOT / "docker-entrypoint.sh"


def run_entrypoint(folder: Path, tmp_path: Path, user: tuple[int, int] | None = None) -> str:
    """Run the entrypoint in ``folder`` with a stand-in ``capshard`` that prints its uid:gid and args."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "capshard"
    fake.write_text('#!/bin/sh\necho "$(id -u):$(id -g) $*"\n')
    fake.chmod(0o755)

    def become() -> None:
        if user is not None:
            os.setgid(user[1])
            os.setuid(user[0])

    proc = subprocess.run(["sh", str(ENTRYPOINT), "build", "--out", "x"], cwd=folder, capture_output=True, text=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, timeout=60, preexec_fn=become)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder other uids can enter (pytest's own is private to root)."""
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        yield Path(d)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_the_entrypoint_runs_capshard_as_the_owner_of_the_folder_or_the_given_user(open_tmp: Path) -> None:
    tmp_path = open_tmp
    other = tmp_path / "other"
    other.mkdir()
    os.chown(other, 4321, 4322)
    assert run_entrypoint(other, tmp_path) == "4321:4322 build --out x"  # started as root: the folder's owner
    root_owned = tmp_path / "root"
    root_owned.mkdir()
    assert run_entrypoint(root_owned, tmp_path) == "0:0 build --out x"
    assert run_entrypoint(other, tmp_path, user=(4321, 4322)) == "4321:4322 build --out x"  # --user: kept


def test_ci_makes_a_fresh_venv_and_runs_the_container_check_or_says_why_not() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv --clear .venv" in script
    assert ".ci/container" in script and "container check skipped: " in script
    assert os.access(ROOT / ".ci" / "container", os.X_OK) and os.access(ENTRYPOINT, os.X_OK)
