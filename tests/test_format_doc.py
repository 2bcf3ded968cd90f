"""docs/FORMAT.md names every field a real build writes, so the format spec cannot drift from the code."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from synth import flickr_token_file, write_images

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.readers import SourceSpec

DOC = Path(__file__).parent.parent / "docs" / "FORMAT.md"
#: Objects whose keys are data, not field names, and the placeholder the spec uses for them.
VARIABLE_KEYS = {"splits": "SPLIT", "groups.captions_per_image": "K", "rejects.by_reason": "REASON"}


def field_paths(value: Any, path: str = "") -> set[str]:
    """Dotted paths of the leaves of a JSON value: ``splits.SPLIT.shards[].name``."""
    if isinstance(value, dict) and value:
        found = set()
        for key, item in value.items():
            name = VARIABLE_KEYS.get(path, key)
            found |= field_paths(item, f"{path}.{name}" if path else name)
        return found
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return field_paths(value[0], f"{path}[]")
    return {path}


def documented(section: str) -> set[str]:
    """Every name in backticks in the first column of the tables of ``section`` of FORMAT.md."""
    text = DOC.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {name for row in re.findall(r"^\| ([^|]+) \|", body, re.MULTILINE) for name in re.findall(r"`([^`]+)`", row)}


def test_every_field_of_a_real_build_is_in_the_format_spec(tmp_path: Path) -> None:
    names = [f"{i}.jpg" for i in range(10)]
    write_images(tmp_path / "img", names[:9])  # one image missing: rejects.jsonl has lines
    flickr_token_file(tmp_path / "captions.token", names, 5)
    spec = SourceSpec(path=str(tmp_path / "captions.token"), images=tmp_path / "img")
    out = tmp_path / "out"
    build(spec, BuildConfig(out=out, format="flickr", workers=1, max_images_per_shard=4))

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rejects"]["by_reason"] and len(manifest["splits"]["train"]["shards"]) > 1
    missing = field_paths(manifest) - documented("`manifest.json`")
    assert not missing, f"manifest keys not in docs/FORMAT.md: {sorted(missing)}"

    columns = set(pq.read_schema(out / "index.parquet").names)
    assert not columns - documented("`index.parquet`"), sorted(columns - documented("`index.parquet`"))

    with tarfile.open(out / "train-000000.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".json"))
        sample = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
        extensions = {m.name.split(".", 1)[1] for m in tar.getmembers()}
    assert not field_paths(sample) - documented("Shards"), sorted(field_paths(sample) - documented("Shards"))
    assert {f"KEY.{ext}" for ext in extensions} <= documented("Shards")

    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert rejects and not set(rejects[0]) - documented("`rejects.jsonl`")
    assert {r["reason"] for r in rejects} <= documented("`rejects.jsonl`")


def test_every_reject_reason_in_the_code_is_in_the_format_spec() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (Path(__file__).parent.parent / "pipeline").rglob("*.py"))
    reasons = set(re.findall(r'(?:ImageUnavailable|BadImage)\(\s*"([a-z_]+)"', source))
    reasons |= set(re.findall(r'reject(?:=|": )"([a-z_]+)"', source))
    reasons |= set(re.findall(r'"reason": "([a-z_]+)"', source))
    assert {"missing_image", "split_leak", "not_in_split_lists"} <= reasons  # the patterns still find them
    assert not reasons - documented("`rejects.jsonl`"), sorted(reasons - documented("`rejects.jsonl`"))
