"""Reject reasons (pipeline.rejects): one table of codes and details, the same as the format spec and the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.rejects import REASONS, detail, reject

ROOT = Path(__file__).parent.parent
#: Where a stage or reader names a reject reason: the patterns of every way the code does it.
REASON_SITES = [
    r"(?:ImageUnavailable|BadImage)\(\s*\"(\w+)\"",  # a probe or read failure
    r"reject\"?\]?\s*=\s*\"(\w+)\"",  # reject = "x", row["reject"] = "x"
    r"\"reject\":\s*\"(\w+)\"",  # {"reject": "x"}
    r"\(\s*\"([a-z]+_[a-z_]+)\",\s*f?\"",  # ("x", "message") problem pairs
    r"^\s+\"([a-z]+_[a-z_]+)\",\s*$",  # the same pair, one value per line
    r"(?:None, |else )\"([a-z]+_[a-z_]+)\"\)",  # (None, "x") caption decoding
    r"return \"([a-z]+_[a-z_]+)\", ",  # return "x", "message"
    r"pa\.scalar\(\"(\w+)\"\)",  # resolve's own checks
    r"missing_reason=\"(\w+)\"",  # the id strategies
    r"reject\([^)]*?\"(\w+)\",",  # rejects.reject(row_id, location, "x", ...)
    r"detail\(\s*\"(\w+)\"",  # rejects.detail("x", ...)
]
SCANNED = ["pipeline/readers", "pipeline/media.py", "pipeline/probe.py", "pipeline/resolve.py",
           "pipeline/decontam.py", "pipeline/idspec.py", "pipeline/extra_captions.py"]
#: Column and key names that the loose pair patterns also see.
NOT_REASONS = {"img_id", "image_path", "image_index", "file_name", "id_hint", "caption_id", "image_reason",
               "image_detail", "n_bytes", "row_id", "sample_images", "image_column", "caption_column", "id_column",
               "split_column", "file_row", "join_on", "caption_ids", "row_ids"}


def reasons_in_code() -> set[str]:
    found: set[str] = set()
    for place in SCANNED:
        path = ROOT / place
        for f in sorted(path.glob("[!_]*.py")) if path.is_dir() else [path]:
            text = f.read_text(encoding="utf-8")
            for pattern in REASON_SITES:
                found |= set(re.findall(pattern, text, re.MULTILINE))
    return found - NOT_REASONS


def reasons_in_format_doc() -> set[str]:
    body = (ROOT / "docs" / "FORMAT.md").read_text(encoding="utf-8").split("\n## `rejects.jsonl`\n", 1)[1]
    body = body.split("\n## ", 1)[0]
    table = body.split("| reason | the row is rejected because |", 1)[1]
    return {name for row in re.findall(r"^\| ([^|]+) \|", table, re.MULTILINE) for name in re.findall(r"`(\w+)`", row)}


def test_every_reason_the_code_uses_is_in_the_table() -> None:
    used = reasons_in_code()
    assert len(used) >= 25, sorted(used)  # the scan finds the reasons, not nothing
    assert not used - set(REASONS), f"reasons without a detail: {sorted(used - set(REASONS))}"
    assert not set(REASONS) - used, f"table entries no code uses: {sorted(set(REASONS) - used)}"


def test_the_table_is_the_format_spec() -> None:
    assert set(REASONS) == reasons_in_format_doc()


def test_every_detail_is_one_line_once_filled() -> None:
    fields = {"chars": 5, "cap": 4, "split": "a b", "id": "filename", "image_id": "x.jpg", "kept": "test",
              "distance": 3, "threshold": 8, "other": "y.jpg", "build": "b", "pair": "x ~ y"}
    for reason in REASONS:
        text = detail(reason, **fields)
        assert text and "\n" not in text and "{" not in text, (reason, text)
    assert detail("caption_too_long", chars=12, cap=10) == "caption has 12 characters, over the cap of 10"


def test_an_unknown_reason_is_refused_and_a_stage_message_wins() -> None:
    with pytest.raises(ValueError, match=r"'made_up' is not in pipeline\.rejects\.REASONS"):
        reject(0, "f:1", "made_up")
    assert reject(3, "f:4", "missing_image", "image file not found: /x.jpg") == {
        "row_id": 3, "location": "f:4", "reason": "missing_image", "detail": "image file not found: /x.jpg"
    }
    assert reject(3, "f:4", "unknown_image_id")["detail"] == REASONS["unknown_image_id"]
