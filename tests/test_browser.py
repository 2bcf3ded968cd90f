"""The headless-browser helper itself: a page with a script error must fail the HTML tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import chromium_or_skip, dump_dom


def test_dump_dom_runs_scripts_and_fails_on_console_errors(tmp_path: Path) -> None:
    chromium_or_skip()
    good = tmp_path / "good.html"
    good.write_text("<html><body><p id=p>static</p><script>document.getElementById('p').textContent='ran'"
                    "</script></body></html>")
    assert '<p id="p">ran</p>' in dump_dom(good)
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>notDefined();</script></body></html>")
    with pytest.raises(AssertionError, match="Uncaught ReferenceError: notDefined is not defined"):
        dump_dom(bad)
