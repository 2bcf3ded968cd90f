"""The captions and metadata of one WebDataset sample (its ``txt`` and ``json`` members).

Captions, in this order: the JSON's ``captions`` (a list, or one string), its ``caption``,
then each non-blank line of ``txt``. A ``txt`` line or the JSON ``caption`` that repeats a
caption already taken from the JSON (compared with whitespace collapsed) is the same
annotation written twice (img2dataset writes the caption to both members; capshard and
CLIP_benchmark write the ``captions`` list as ``txt`` lines) and is taken once. Repeats
inside one member are kept: they are real annotations. Non-string values are ignored.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..verify_shard import load_json_capped
from .fields import checked_caption


@dataclass(frozen=True)
class SampleText:
    """What the text members of a sample say: ``(caption, reject)`` pairs and the JSON object."""

    captions: tuple[tuple[str | None, str | None], ...]
    meta: dict[str, Any]
    problem: tuple[str, str] | None = None


def _norm(text: str) -> str:
    return " ".join(text.split())


def sample_text(texts: dict[str, bytes]) -> SampleText:
    """Parse ``json`` (size and nesting capped) and ``txt`` of one sample; see the module docstring."""
    meta: dict[str, Any] = {}
    problem = None
    if "json" in texts:
        try:
            parsed = load_json_capped(texts["json"], "json member")
        except ValueError as e:
            parsed, problem = {}, ("bad_json", str(e))
        if isinstance(parsed, dict):
            meta = parsed
        elif problem is None:
            problem = ("bad_json", f"json member is a {type(parsed).__name__}, not an object")
    found: list[tuple[str | None, str | None]] = []
    listed = meta.get("captions")
    listed = [listed] if isinstance(listed, str) else listed if isinstance(listed, list) else []
    from_json = [c for c in listed if isinstance(c, str)]
    seen = Counter(_norm(c) for c in from_json)
    single = meta.get("caption")
    if isinstance(single, str) and seen[_norm(single)] == 0:
        from_json.append(single)
        seen[_norm(single)] += 1
    for caption in map(checked_caption, from_json):
        found.append((caption, None if caption is not None else "caption_not_utf8"))
    if "txt" in texts:
        try:
            lines = texts["txt"].decode("utf-8").splitlines()
        except UnicodeDecodeError:
            found.append((None, "caption_not_utf8"))
            lines = []
        for line in lines:
            if not line.strip():
                continue
            if seen[_norm(line)] > 0:
                seen[_norm(line)] -= 1  # this line is a JSON caption written again
                continue
            found.append((line, None))
    return SampleText(tuple(found), meta, problem)


def json_str(meta: dict[str, Any], name: str) -> str | None:
    """A JSON field as text (numbers too: img2dataset keys may be read back as ints), else None."""
    value = meta.get(name)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str):
        text = str(value)
        return text if text and checked_caption(text) is not None else None
    return None
