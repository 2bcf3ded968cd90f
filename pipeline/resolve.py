"""Stage *resolve*: decide which caption rows show the same image.

Input: caption rows (``schema.CAPTION_ROWS``) joined with the probe's hashes. Output:
a :class:`Resolution`: one row per image (captions in source order, every source id
kept), the rows rejected with their reasons, and the resolution report.

Strategies (``--id``):

* ``auto`` (default): identity is the content hash; the source's id column (or file
  name) names the image. Distinct ids whose bytes are identical are merged into one
  image (the loop-counter bug, or a duplicate photo under two ids: either way two
  samples of one picture would be false negatives). One id whose rows carry different
  bytes is a *conflict*: the images stay apart, named ``ID~sha8``, and are counted.
* ``content``: identity is the content hash, ids are ``sha256-<16 hex>``.
* ``filename`` / ``column:NAME``: the id is trusted as given. One id with different
  bytes cannot be stored as one sample, so it fails the build, naming the ids.

Captions are stripped of surrounding whitespace; exact duplicates within one image are
kept (they are real annotations, and dropping them would change the published counts).
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .config import BuildConfig
from .errors import BuildError

REJECT_SCHEMA = pa.schema(
    [
        ("row_id", pa.int64()),
        ("location", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)

#: Which split keeps a leaked image under ``--on-leak reject``: evaluation splits first.
SPLIT_PRIORITY = {"test": 0, "val": 1, "validation": 1, "dev": 1, "train": 2}
MAX_KEY = 80
#: Split names become shard-file prefixes: letters, digits and ``_`` only.
SPLIT_NAME = r"^[A-Za-z0-9_]+$"
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Resolution:
    """What *resolve* produces: images, rejected rows and the report."""

    images: pa.Table
    rejects: pa.Table
    report: dict[str, Any]
    n_rows: int


def ref_key(table: pa.Table) -> pa.Array:
    """One string per row naming its image reference (path, or ``#index``); joins need non-null keys."""
    index_key = pc.binary_join_element_wise("#", pc.cast(table["image_index"], pa.string()), "")
    return pc.if_else(pc.is_valid(table["image_path"]), table["image_path"], index_key)


def sanitize_key(image_id: str) -> str:
    """A WebDataset key for ``image_id``: ASCII letters, digits, ``_`` and ``-``, no dots.

    Ids that had to be changed or shortened get a hash suffix, so two ids never share a key.
    """
    key = _KEY_BAD.sub("_", image_id).strip("_") or "img"
    if key != image_id or len(key) > MAX_KEY:
        digest = hashlib.sha256(image_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        key = f"{key[: MAX_KEY - 11]}_{digest}"
    return key


def resolve(
    rows: pa.Table, probed: pa.Table, config: BuildConfig, *, id_column: str | None, multi_caption: bool
) -> Resolution:
    """Resolve image identity for every row; see the module docstring for the strategies."""
    n_rows = rows.num_rows
    rows = rows.append_column("ref", ref_key(rows))
    probed = probed.append_column("ref", ref_key(probed)).drop_columns(["image_path", "image_index"])
    rows = rows.join(probed, "ref", join_type="left outer", use_threads=False).sort_by("row_id")

    caption = pc.utf8_trim_whitespace(rows["caption"])
    rows = rows.set_column(rows.schema.get_field_index("caption"), "caption", caption)
    length = pc.utf8_length(caption)
    no_ref = pc.and_(pc.is_null(rows["image_path"]), pc.is_null(rows["image_index"]))
    none = pa.scalar(None, pa.string())
    good_split = pc.match_substring_regex(rows["split"], SPLIT_NAME)
    reason = pc.coalesce(
        rows["reject"],
        pc.if_else(pc.is_null(rows["split"]), pa.scalar("no_split"), none),
        pc.if_else(good_split, none, pa.scalar("bad_split_name")),
        pc.if_else(no_ref, pa.scalar("missing_image"), pa.scalar(None, pa.string())),
        rows["image_reason"],
        pc.if_else(pc.is_null(caption), pa.scalar("missing_caption"), pa.scalar(None, pa.string())),
        pc.if_else(pc.equal(length, 0), pa.scalar("empty_caption"), pa.scalar(None, pa.string())),
        pc.if_else(
            pc.greater(length, config.max_caption_chars),
            pa.scalar("caption_too_long"),
            pa.scalar(None, pa.string()),
        ),
    )
    rows = rows.append_column("reason", reason)

    strategy = config.id
    names, id_source = _source_names(rows, config, id_column)
    rows = rows.append_column("name", names)
    if strategy == "filename" or config.id_column is not None:
        missing = pc.and_(pc.is_null(rows["reason"]), pc.is_null(rows["name"]))
        code = "no_file_name" if strategy == "filename" else "no_image_id"
        rows = rows.set_column(
            rows.schema.get_field_index("reason"),
            "reason",
            pc.if_else(missing, pa.scalar(code), rows["reason"]),
        )

    rejected = rows.filter(pc.is_valid(rows["reason"]))
    valid = rows.filter(pc.is_null(rows["reason"]))
    rejects = [_reject_record(r, config) for r in rejected.to_pylist()]

    report: dict[str, Any] = {
        "strategy": strategy,
        "id_source": id_source,
        "merged_ids": 0,
        "conflicts": 0,
        "duplicate_content": 0,
        "notes": [],
    }
    if strategy in ("auto", "content"):
        image_ids = _name_by_content(valid, strategy, report)
        identity = valid["sha256"]
    else:
        image_ids = _trusted_ids(valid, report)
        identity = valid["name"]
    valid = valid.append_column("identity", identity)
    id_of = image_ids  # identity -> image id
    valid = valid.append_column("image_id", pa.array([id_of[k] for k in identity.to_pylist()], pa.string()))

    valid, leak_rejects = _handle_leaks(valid, config)
    rejects.extend(leak_rejects)

    images = _aggregate(valid)
    _check_single_captions(images, multi_caption, report)
    images = images.sort_by("image_id")
    keys = [sanitize_key(i) for i in images["image_id"].to_pylist()]
    assert len(set(keys)) == len(keys), "sanitised keys must be unique"
    images = images.append_column("group", pa.array(range(images.num_rows), pa.int64()))
    images = images.append_column("key", pa.array(keys, pa.string()))
    reject_table = pa.Table.from_pylist(sorted(rejects, key=lambda r: r["row_id"]), schema=REJECT_SCHEMA)
    return Resolution(images=images, rejects=reject_table, report=report, n_rows=n_rows)


def _source_names(rows: pa.Table, config: BuildConfig, id_column: str | None) -> tuple[pa.ChunkedArray, str]:
    """Per row, the source's name for its image, and where that name comes from."""
    if config.id == "filename":
        return rows["file_name"], "filename"
    if config.id_column is not None or (config.id == "auto" and id_column and rows["id_hint"].null_count < len(rows)):
        return rows["id_hint"], f"column:{config.id_column or id_column}"
    if config.id == "content":
        return pa.chunked_array([pa.nulls(len(rows), pa.string())]), "content"
    if rows["file_name"].null_count < len(rows):
        return rows["file_name"], "filename"
    return pa.chunked_array([pa.nulls(len(rows), pa.string())]), "content"


def _name_by_content(valid: pa.Table, strategy: str, report: dict[str, Any]) -> dict[str, str]:
    """Image id per content hash; counts merges and conflicts into ``report``."""
    pairs = valid.group_by(["sha256", "name"], use_threads=False).aggregate([("file_name", "distinct")])
    shas_of_name: dict[str, set[str]] = defaultdict(set)
    names_of_sha: dict[str, set[str]] = defaultdict(set)
    files_of_sha: dict[str, set[str]] = defaultdict(set)
    for sha, name, files in zip(
        pairs["sha256"].to_pylist(),
        pairs["name"].to_pylist(),
        pairs["file_name_distinct"].to_pylist(),
        strict=True,
    ):
        names_of_sha[sha]  # every hash gets an entry, named or not
        if name is not None:
            shas_of_name[name].add(sha)
            names_of_sha[sha].add(name)
        files_of_sha[sha].update(f for f in files if f is not None)
    conflicted = {n for n, shas in shas_of_name.items() if len(shas) > 1}
    ids: dict[str, str] = {}
    for sha, names in names_of_sha.items():
        if strategy == "content" or not names:
            ids[sha] = f"sha256-{sha[:16]}"
        elif len(names) == 1:
            (name,) = names
            ids[sha] = f"{name}~{sha[:8]}" if name in conflicted else name
        else:
            files = files_of_sha[sha]
            name = next(iter(files)) if len(files) == 1 else min(names)
            ids[sha] = f"{name}~{sha[:8]}" if name in conflicted else name
    if strategy == "auto":
        merged = {sha: names for sha, names in names_of_sha.items() if len(names) > 1}
        report["merged_ids"] = sum(len(n) - 1 for n in merged.values())
        report["conflicts"] = len(conflicted)
        if merged:
            example = sorted(next(iter(sorted(merged.values(), key=min))))[:5]
            report["notes"].append(
                f"{report['merged_ids']} source ids were merged into {len(merged)} images with identical bytes "
                f"(e.g. {', '.join(example)}); if the id column counts rows, this is the loop-counter bug fixed"
            )
        if conflicted:
            report["notes"].append(
                f"{len(conflicted)} ids carry different image bytes and were kept apart as id~sha8 "
                f"(e.g. {', '.join(sorted(conflicted)[:5])})"
            )
    return _unique_ids(ids)


def _unique_ids(ids: dict[str, str]) -> dict[str, str]:
    """Make image ids unique: an id shared by several identities gets a hash suffix on each."""
    count: dict[str, int] = defaultdict(int)
    for image_id in ids.values():
        count[image_id] += 1
    return {k: (f"{v}~{hashlib.sha256(k.encode()).hexdigest()[:8]}" if count[v] > 1 else v) for k, v in ids.items()}


def _trusted_ids(valid: pa.Table, report: dict[str, Any]) -> dict[str, str]:
    """Ids taken as given; one id with several contents is an error, shared contents a note."""
    per_name = valid.group_by("name", use_threads=False).aggregate([("sha256", "count_distinct")])
    bad = per_name.filter(pc.greater(per_name["sha256_count_distinct"], 1))["name"].to_pylist()
    if bad:
        raise BuildError(
            f"{len(bad)} image ids carry different image bytes in different rows "
            f"({', '.join(sorted(bad)[:5])}{', …' if len(bad) > 5 else ''}); they cannot be one sample. "
            "Use --id auto to keep them apart, or fix the source"
        )
    per_sha = valid.group_by("sha256", use_threads=False).aggregate([("name", "count_distinct")])
    shared = pc.sum(pc.greater(per_sha["name_count_distinct"], 1)).as_py() or 0
    report["duplicate_content"] = int(shared)
    if shared:
        report["notes"].append(f"{shared} images have the same bytes as another id; kept apart as --id asked")
    return {n: n for n in per_name["name"].to_pylist()}


def _handle_leaks(valid: pa.Table, config: BuildConfig) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Images in more than one split: fail, or keep the evaluation split and reject the rest."""
    splits = valid.group_by("image_id", use_threads=False).aggregate([("split", "distinct")])
    leaked = {
        i: s
        for i, s in zip(splits["image_id"].to_pylist(), splits["split_distinct"].to_pylist(), strict=True)
        if len(s) > 1
    }
    if not leaked:
        return valid, []
    if config.on_leak == "fail":
        shown = "; ".join(f"{i} in {', '.join(sorted(leaked[i]))}" for i in sorted(leaked)[:5])
        raise BuildError(
            f"{len(leaked)} images appear in more than one split ({shown}{'; …' if len(leaked) > 5 else ''}): "
            "a train/eval leak. Fix the split assignment, or pass --on-leak reject to keep each image in its "
            "evaluation split and reject its other rows"
        )
    keep = {i: min(s, key=lambda x: (SPLIT_PRIORITY.get(x, 3), x)) for i, s in leaked.items()}
    drop_mask = [
        i in keep and s != keep[i]
        for i, s in zip(valid["image_id"].to_pylist(), valid["split"].to_pylist(), strict=True)
    ]
    mask = pa.array(drop_mask)
    dropped = valid.filter(mask)
    rejects = [
        {
            "row_id": r["row_id"],
            "location": r["location"],
            "reason": "split_leak",
            "detail": f"image {r['image_id']} is also in split {keep[r['image_id']]}, which keeps it",
        }
        for r in dropped.select(["row_id", "location", "image_id"]).to_pylist()
    ]
    return valid.filter(pc.invert(mask)), rejects


def _aggregate(valid: pa.Table) -> pa.Table:
    """One row per image, captions and their ids in source (row id) order."""
    grouped = (
        valid.sort_by("row_id")
        .group_by("image_id", use_threads=False)
        .aggregate(
            [
                ("caption", "list"),
                ("caption_id", "list"),
                ("row_id", "list"),
                ("name", "distinct"),
                ("url", "distinct"),
                ("location", "first"),
                ("split", "first"),
                ("sha256", "first"),
                ("n_bytes", "first"),
                ("format", "first"),
                ("width", "first"),
                ("height", "first"),
                ("image_path", "first"),
                ("image_index", "first"),
                ("file_name", "first"),
            ]
        )
    )
    return grouped.rename_columns(
        {
            "caption_list": "captions",
            "caption_id_list": "caption_ids",
            "row_id_list": "row_ids",
            "name_distinct": "source_ids",
            "url_distinct": "source_urls",
            **{
                f"{c}_first": c
                for c in (
                    "location",
                    "split",
                    "sha256",
                    "n_bytes",
                    "format",
                    "width",
                    "height",
                    "image_path",
                    "image_index",
                    "file_name",
                )
            },
        }
    )


def _check_single_captions(images: pa.Table, multi_caption: bool, report: dict[str, Any]) -> None:
    """Every image with one caption, where the source has several: the id bug, not the data."""
    if images.num_rows < 2:
        return
    counts = pc.list_value_length(images["captions"])
    if pc.max(counts).as_py() != 1:
        return
    if multi_caption or report["duplicate_content"]:
        raise BuildError(
            f"every one of the {images.num_rows} images ended up with exactly one caption, but this source "
            "carries several captions per image. The image ids are most likely per caption (a row counter), "
            "so each caption became its own image and contrastive training would see no positives. "
            "Use --id auto (content-checked) or the column that really identifies images"
        )


def _reject_record(row: dict[str, Any], config: BuildConfig) -> dict[str, Any]:
    reason = row["reason"]
    if reason == row.get("image_reason"):
        detail = row["image_detail"]
    elif reason == "missing_image" and row.get("image_path") is None and row.get("image_index") is None:
        detail = "row names no image"
    elif reason == "caption_too_long":
        detail = f"caption has {len(row['caption'])} characters, over the cap of {config.max_caption_chars}"
    elif reason == "empty_caption":
        detail = "caption is empty after stripping whitespace"
    elif reason == "no_split":
        detail = "the source gives this row no split"
    elif reason == "bad_split_name":
        detail = f"split {row['split']!r} is not a name of letters, digits and '_' (it names shard files)"
    elif reason in ("no_file_name", "no_image_id"):
        detail = f"--id {config.id} needs a value, and this row has none"
    else:
        detail = reason.replace("_", " ")
    return {"row_id": row["row_id"], "location": row["location"], "reason": reason, "detail": detail}
