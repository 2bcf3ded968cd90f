"""Headless Chromium for tests of the HTML pages capshard writes.

`.ci/run` installs Debian's chromium; on a machine without it these tests skip with the
reason. Chromium runs with the flags this closed network needs (no background networking,
no component updates) and a fresh profile per call, so runs do not share state.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-file-access-from-files",
]


def chromium_or_skip() -> str:
    """The path of a Chromium binary, or skip the calling test naming what is missing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium not installed (apt-get install chromium; .ci/run does it)")


def _run(page: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    binary = chromium_or_skip()
    with tempfile.TemporaryDirectory(prefix="capshard-chromium-") as profile:
        return subprocess.run(
            [binary, *_FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout, check=True,
        )


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to its console (``console.*`` calls, uncaught errors), from Chromium's log."""
    return [line.split("] ", 1)[-1] for line in stderr.splitlines() if ":CONSOLE" in line]


def dump_dom(page: Path) -> str:
    """The page's DOM after its scripts ran, as Chromium serialises it.

    Fails when the page wrote anything to its console: capshard's pages log nothing, so
    any message there is a script error (``Uncaught …``) or a resource that did not load."""
    done = _run(page, "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0", "--dump-dom")
    messages = console_messages(done.stderr)
    if messages:
        raise AssertionError(f"{page.name}: console output in Chromium: {messages[:5]}")
    return done.stdout


def render(page: Path, png: Path, width: int = 1280, height: int = 900) -> Path:
    """A screenshot of `page` at the given window size, written to `png`."""
    _run(page, f"--screenshot={png.resolve()}", f"--window-size={width},{height}",
         "--hide-scrollbars", "--virtual-time-budget=5000")
    if not png.is_file():
        raise AssertionError(f"Chromium wrote no screenshot of {page}")
    return png
