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
from .format import ResolutionReport
from .idspec import IdSpec
from .rejects import REJECT_SCHEMA, detail, reject

__all__ = ["REJECT_SCHEMA", "SPLIT_PRIORITY", "Resolution", "ResolutionReport", "ref_key", "resolve", "sanitize_key"]

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
    report: ResolutionReport
    n_rows: int


@dataclass(frozen=True)
class _Naming:
    """Image id per identity (content hash or trusted name), and what naming found."""

    ids: dict[str, str]
    merged_ids: int = 0
    conflicts: int = 0
    duplicate_content: int = 0
    notes: tuple[str, ...] = ()


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
    spec = config.id_spec
    rows = _with_reasons(_join_probe(rows, probed), config.max_caption_chars)
    names, id_source = _NAMES[spec.name](rows, spec, id_column)
    rows = _require_names(rows.append_column("name", names), spec)

    rejected = rows.filter(pc.is_valid(rows["reason"]))
    valid = rows.filter(pc.is_null(rows["reason"]))
    rejects = [_reject_record(r, config) for r in rejected.to_pylist()]

    naming = _name_by_content(valid, spec.name) if spec.by_content else _trusted_ids(valid)
    report = ResolutionReport(
        strategy=spec.text,
        id_source=id_source,
        merged_ids=naming.merged_ids,
        conflicts=naming.conflicts,
        duplicate_content=naming.duplicate_content,
        notes=naming.notes,
    )
    identity = valid["sha256"] if spec.by_content else valid["name"]
    valid = valid.append_column("identity", identity)
    valid = valid.append_column("image_id", pa.array([naming.ids[k] for k in identity.to_pylist()], pa.string()))

    valid, leak_rejects = _handle_leaks(valid, config)
    rejects.extend(leak_rejects)
    images = _images(valid, multi_caption or naming.duplicate_content > 0)
    reject_table = pa.Table.from_pylist(sorted(rejects, key=lambda r: r["row_id"]), schema=REJECT_SCHEMA)
    return Resolution(images=images, rejects=reject_table, report=report, n_rows=n_rows)


def _join_probe(rows: pa.Table, probed: pa.Table) -> pa.Table:
    """Each caption row with its image's probe result, in row order."""
    rows = rows.append_column("ref", ref_key(rows))
    probed = probed.append_column("ref", ref_key(probed)).drop_columns(["image_path", "image_index"])
    return rows.join(probed, "ref", join_type="left outer", use_threads=False).sort_by("row_id")


def _with_reasons(rows: pa.Table, max_caption_chars: int) -> pa.Table:
    """Captions stripped, and a ``reason`` column: the first reason a row cannot be used, else null."""
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
        pc.if_else(no_ref, pa.scalar("missing_image"), none),
        rows["image_reason"],
        pc.if_else(pc.is_null(caption), pa.scalar("missing_caption"), none),
        pc.if_else(pc.equal(length, 0), pa.scalar("empty_caption"), none),
        pc.if_else(pc.greater(length, max_caption_chars), pa.scalar("caption_too_long"), none),
    )
    return rows.append_column("reason", reason)


def _no_names(rows: pa.Table) -> pa.ChunkedArray:
    return pa.chunked_array([pa.nulls(len(rows), pa.string())])


def _auto_names(rows: pa.Table, spec: IdSpec, id_column: str | None) -> tuple[pa.ChunkedArray, str]:
    """The source's id column when it has values, else its file names, else none (content alone)."""
    if id_column and rows["id_hint"].null_count < len(rows):
        return rows["id_hint"], f"column:{id_column}"
    if rows["file_name"].null_count < len(rows):
        return rows["file_name"], "filename"
    return _no_names(rows), "content"


#: Per ``--id`` strategy: ``(rows, spec, reader's id column)`` → each row's name for its image, and its source.
_NAMES = {
    "auto": _auto_names,
    "content": lambda rows, spec, id_column: (_no_names(rows), "content"),
    "filename": lambda rows, spec, id_column: (rows["file_name"], "filename"),
    "column": lambda rows, spec, id_column: (rows["id_hint"], spec.text),
}


def _require_names(rows: pa.Table, spec: IdSpec) -> pa.Table:
    """Under a strategy that trusts a name, a usable row without one is rejected."""
    if spec.missing_reason is None:
        return rows
    missing = pc.and_(pc.is_null(rows["reason"]), pc.is_null(rows["name"]))
    reason = pc.if_else(missing, pa.scalar(spec.missing_reason), rows["reason"])
    return rows.set_column(rows.schema.get_field_index("reason"), "reason", reason)


def _images(valid: pa.Table, several_captions_expected: bool) -> pa.Table:
    """One row per image, sorted by image id, with its group number and WebDataset key."""
    images = _aggregate(valid)
    if several_captions_expected:
        _check_single_captions(images)
    images = images.sort_by("image_id")
    keys = [sanitize_key(i) for i in images["image_id"].to_pylist()]
    assert len(set(keys)) == len(keys), "sanitised keys must be unique"
    images = images.append_column("group", pa.array(range(images.num_rows), pa.int64()))
    return images.append_column("key", pa.array(keys, pa.string()))


def _name_by_content(valid: pa.Table, strategy: str) -> _Naming:
    """Image id per content hash; under ``auto``, with the merges and conflicts counted."""
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
    if strategy != "auto":
        return _Naming(_unique_ids(ids))
    merged = {sha: names for sha, names in names_of_sha.items() if len(names) > 1}
    merged_ids = sum(len(n) - 1 for n in merged.values())
    notes = []
    if merged:
        example = sorted(next(iter(sorted(merged.values(), key=min))))[:5]
        notes.append(
            f"{merged_ids} source ids were merged into {len(merged)} images with identical bytes "
            f"(e.g. {', '.join(example)}); if the id column counts rows, this is the loop-counter bug fixed"
        )
    if conflicted:
        notes.append(
            f"{len(conflicted)} ids carry different image bytes and were kept apart as id~sha8 "
            f"(e.g. {', '.join(sorted(conflicted)[:5])})"
        )
    return _Naming(_unique_ids(ids), merged_ids=merged_ids, conflicts=len(conflicted), notes=tuple(notes))


def _unique_ids(ids: dict[str, str]) -> dict[str, str]:
    """Make image ids unique: an id shared by several identities gets a hash suffix on each."""
    count: dict[str, int] = defaultdict(int)
    for image_id in ids.values():
        count[image_id] += 1
    return {k: (f"{v}~{hashlib.sha256(k.encode()).hexdigest()[:8]}" if count[v] > 1 else v) for k, v in ids.items()}


def _trusted_ids(valid: pa.Table) -> _Naming:
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
    notes = (f"{shared} images have the same bytes as another id; kept apart as --id asked",) if shared else ()
    return _Naming({n: n for n in per_name["name"].to_pylist()}, duplicate_content=int(shared), notes=notes)


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
            "detail": detail("split_leak", image_id=r["image_id"], kept=keep[r["image_id"]]),
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


def _check_single_captions(images: pa.Table) -> None:
    """Every image with one caption, where the source has several: the id bug, not the data."""
    if images.num_rows < 2:
        return
    counts = pc.list_value_length(images["captions"])
    if pc.max(counts).as_py() == 1:
        raise BuildError(
            f"every one of the {images.num_rows} images ended up with exactly one caption, but this source "
            "carries several captions per image. The image ids are most likely per caption (a row counter), "
            "so each caption became its own image and contrastive training would see no positives. "
            "Use --id auto (content-checked) or the column that really identifies images"
        )


def _reject_record(row: dict[str, Any], config: BuildConfig) -> dict[str, Any]:
    """The reject of a row: the probe's own message when its image was the reason, else the table's sentence."""
    reason = row["reason"]
    text = row["image_detail"] if reason == row.get("image_reason") else None
    caption = row.get("caption") or ""
    return reject(
        row["row_id"],
        row["location"],
        reason,
        text,
        chars=len(caption),
        cap=config.max_caption_chars,
        split=row.get("split"),
        id=config.id,
    )
