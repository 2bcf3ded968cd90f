"""Reject reasons: every code a row can be rejected with, and the one-line detail it gets.

The codes are a contract (docs/FORMAT.md, ``rejects.jsonl``, ``manifest.rejects.by_reason``).
A reason a stage learns more about (a probe's error names the file, a leak names the split)
passes those facts as fields of its template; a reason a reader sets on a row (a wds tar
reason, ``unknown_image_id``) gets the sentence as it stands. A code missing from
:data:`REASONS` is a bug, so :func:`detail` raises on it.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

REJECT_SCHEMA = pa.schema(
    [
        ("row_id", pa.int64()),
        ("location", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)

#: reason → detail template (``str.format`` fields named in braces).
REASONS: dict[str, str] = {
    # The image reference (probe; the probe's own message replaces these when it has one).
    "missing_image": "row names no image",
    "not_a_file": "the image path is not a regular file",
    "unreadable_image": "the image file cannot be read",
    "empty_image": "image file is empty (0 bytes)",
    "not_an_image": "the bytes are not an image",
    "corrupt_image": "the image cannot be decoded (truncated or damaged)",
    "unsupported_format": "an image, but not of a format --image-formats allows",
    "decompression_bomb": "the image declares more pixels than --max-pixels allows",
    "path_outside_images": "the image path leaves the image folder",
    # WebDataset tars (set by the wds reader on every row of the sample).
    "no_image": "the sample has no image member (jpg, png, webp, …)",
    "truncated_tar": "the tar ends inside this sample or its image; the samples before the damage are kept",
    "corrupt_tar": "an unreadable or refused tar header at this sample; the samples before it are kept",
    "image_too_large": "the sample's image member is over 256 MiB",
    "member_too_large": "a txt or json member of the sample is over 16 MiB",
    "duplicate_member": "the sample has two members of one type",
    "bad_json": "the sample's json member is not valid JSON or not an object",
    "unknown_join_key": "this extra caption's join value matches no image (--captions, --captions-from)",
    "ambiguous_join_key": "this extra caption's join value matches more than one image (--captions)",
    # Captions.
    "missing_caption": "the row has no caption value",
    "empty_caption": "caption is empty after stripping whitespace",
    "caption_too_long": "caption has {chars} characters, over the cap of {cap}",
    "caption_not_utf8": "the caption bytes are not UTF-8",
    # Splits and ids.
    "no_split": "the source gives this row no split",
    "bad_split_name": "split {split!r} is not a name of letters, digits and '_' (it names shard files)",
    "not_in_split_lists": "the image is in none of the --split-file lists",
    "unknown_image_id": "the caption names an image id the annotation file does not define",
    "no_image_id": "--id {id} needs a value, and this row has none",
    "no_file_name": "--id {id} needs a value, and this row has none",
    # Leaks (resolve, decontam).
    "split_leak": "image {image_id} is also in split {kept}, which keeps it",
    "near_duplicate_of_eval": (
        "near-duplicate (pHash distance {distance} <= {threshold}) of image {other!r} ({split}) of build {build}"
    ),
    "near_leak": "near-duplicate across splits: {pair}",
}


def detail(reason: str, **fields: Any) -> str:
    """The detail sentence of ``reason``, its template filled from ``fields``."""
    try:
        template = REASONS[reason]
    except KeyError:
        raise ValueError(f"reject reason {reason!r} is not in pipeline.rejects.REASONS") from None
    return template.format(**fields)


def reject(row_id: int, location: str, reason: str, text: str | None = None, **fields: Any) -> dict[str, Any]:
    """One ``rejects.jsonl`` record; ``text`` (a stage's own message) replaces the table's sentence."""
    sentence = detail(reason, **fields)  # also checks that the reason is known
    return {"row_id": row_id, "location": location, "reason": reason, "detail": text or sentence}
