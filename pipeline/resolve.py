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

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import resolve_columns as cols
from .config import BuildConfig
from .errors import BuildError
from .format import ResolutionReport
from .idspec import IdSpec
from .rejects import REJECT_SCHEMA, detail, reject
from .rows import plain

__all__ = ["REJECT_SCHEMA", "SPLIT_PRIORITY", "Resolution", "ResolutionReport", "ref_key", "resolve", "sanitize_key"]

#: Which split keeps a leaked image under ``--on-leak reject``: evaluation splits first.
SPLIT_PRIORITY = {"test": 0, "val": 1, "validation": 1, "dev": 1, "train": 2}
MAX_KEY = 80
#: Split names become shard-file prefixes: letters, digits and ``_`` only.
SPLIT_NAME = r"^[A-Za-z0-9_]+$"
_KEY_BAD = re.compile(cols.KEY_BAD)


@dataclass(frozen=True)
class Resolution:
    """What *resolve* produces: images, rejected rows and the report.

    ``ids_from_hashes``: some image id was made from the value of a content hash (``--id content``;
    under ``--id auto`` an image with no name, a name that several contents carry, or an id made
    unique by its hash), not from the source's names alone. Otherwise the resolution depends on the
    probe only through which images are usable and which are alike, and takes each image's hash,
    size, format and dimensions from it as they are (:func:`pipeline.write_ahead.confirmed`)."""

    images: pa.Table
    rejects: pa.Table
    report: ResolutionReport
    n_rows: int
    ids_from_hashes: bool = False


@dataclass(frozen=True)
class _Naming:
    """Image id per identity code (content hash or trusted name), and what naming found."""

    ids: pa.Array
    merged_ids: int = 0
    conflicts: int = 0
    duplicate_content: int = 0
    notes: tuple[str, ...] = ()
    #: Some id was made from a hash's value (:attr:`Resolution.ids_from_hashes`).
    from_hashes: bool = False


def ref_key(table: pa.Table) -> pa.Array:
    """One string per row naming its image reference (path, or ``#index``); joins need non-null keys."""
    index_key = pc.binary_join_element_wise("#", pc.cast(table["image_index"], pa.string()), "")
    path = plain(table["image_path"])
    return pc.if_else(pc.is_valid(path), path, index_key)


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
    """Resolve image identity for every row; see the module docstring for the strategies.

    Rows are handled by position and strings by integer codes (:mod:`.resolve_columns`):
    the caption table is neither joined nor copied, only the output columns are taken.
    """
    n_rows = rows.num_rows
    spec = config.id_spec
    cols.release()  # what reading and probing left in Arrow's pool, before this stage's transients
    pos = cols.probe_positions(rows, probed, ref_key)
    caption = rows["caption"]  # as published: stripped where used (cols.trimmed_length, cols.trim)
    names, id_source = _NAMES[spec.name](rows, spec, id_column)
    needs_name = spec.missing_reason is not None
    rejected = _flagged(rows, probed, pos, caption, names if needs_name else None, config.max_caption_chars)
    rejects = _row_rejects(rows, probed, pos, caption, names if needs_name else None, cols.positions(rejected), config)
    valid = cols.positions(~rejected)
    del rejected
    cols.release()

    identity, name_values, name, naming = _identified(probed, pos, names, rows["file_name"], valid, spec)
    report = ResolutionReport(
        strategy=spec.text,
        id_source=id_source,
        merged_ids=naming.merged_ids,
        conflicts=naming.conflicts,
        duplicate_content=naming.duplicate_content,
        notes=naming.notes,
    )

    keep, leak_rejects = _handle_leaks(rows, valid, identity, naming.ids, config)
    rejects.extend(leak_rejects)
    if not keep.all():
        valid, identity, name = valid[keep], identity[keep], name[keep]
    del keep
    cols.release()
    image_ids, several_captions_expected = naming.ids, multi_caption or naming.duplicate_content > 0
    ids_from_hashes = naming.from_hashes
    del naming
    by_id = _images_by_id(identity, image_ids)
    image_id = cols.take(image_ids, by_id)  # the output's first column
    # First, while the least is held: its group-by is the largest transient of this stage.
    sources = _source_lists(rows, valid, identity, image_ids, name_values, name, image_id)
    del name, name_values
    groups = _grouped(valid, identity, pos, by_id, len(image_ids))
    del pos, valid, identity, image_ids, by_id  # the output columns are taken through ``groups`` alone
    cols.release()
    images = _aggregate(rows, probed, caption, image_id, groups, sources)
    del image_id, groups, sources
    cols.release()
    _check_single_captions(images, several_captions_expected)
    images = _keyed(images)
    cols.release()
    return Resolution(
        images=images, rejects=_reject_table(rejects), report=report, n_rows=n_rows, ids_from_hashes=ids_from_hashes
    )


def _identified(
    probed: pa.Table,
    pos: np.ndarray,
    names: pa.ChunkedArray,
    file_names: pa.ChunkedArray,
    valid: np.ndarray,
    spec: IdSpec,
) -> tuple[np.ndarray, pa.Array, np.ndarray, _Naming]:
    """Per valid row (``valid``: their positions), its identity code and its name's code into the
    distinct names (also returned, with the naming of each identity).

    The identity is the content hash's code (``spec.by_content``), else the name's; the distinct
    hashes (64 bytes per image) are let go on return.
    """
    shas, sha_of_probe = cols.codes(probed["sha256"])
    assert (pos[valid] >= 0).all(), "every image reference of a valid row was probed"
    sha = sha_of_probe[pos[valid]]
    name_values, name = cols.codes(names)  # over all rows: no copy of the column
    name = name[valid]
    if spec.by_content:
        return sha, name_values, name, _name_by_content(shas, sha, name_values, name, file_names, valid, spec.name)
    return name, name_values, name, _trusted_ids(name_values, name, sha)


def _flagged(
    rows: pa.Table,
    probed: pa.Table,
    pos: np.ndarray,
    caption: pa.ChunkedArray,
    names: pa.ChunkedArray | None,
    max_caption_chars: int,
) -> np.ndarray:
    """Which rows get a reason: cheap boolean columns (the reasons themselves only for those rows)."""
    length = cols.trimmed_length(caption)
    flagged = [
        pc.is_valid(rows["reject"]),
        pc.is_null(rows["split"]),
        pc.invert(pc.fill_null(pc.match_substring_regex(rows["split"], SPLIT_NAME), True)),
        pc.and_(pc.is_null(rows["image_path"]), pc.is_null(rows["image_index"])),
        pc.fill_null(pc.greater(length, max_caption_chars), True),
        pc.fill_null(pc.equal(length, 0), False),
        *([pc.is_null(names)] if names is not None else []),
    ]
    return cols.as_numpy(functools.reduce(pc.or_, flagged)) | cols.probe_failed(probed, pos)


def _keyed(images: pa.Table) -> pa.Table:
    """The images with their group number and WebDataset key."""
    image_ids = images["image_id"]
    keys = cols.sanitized_keys(image_ids.chunk(0) if image_ids.num_chunks == 1 else image_ids.combine_chunks())
    del image_ids
    assert cols.all_distinct(keys), "sanitised keys must be unique"
    images = images.append_column("group", pa.array(np.arange(images.num_rows, dtype=np.int64)))
    return images.append_column("key", keys)


def _reject_table(rejects: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(sorted(rejects, key=lambda r: r["row_id"]), schema=REJECT_SCHEMA)


def _row_rejects(
    rows: pa.Table,
    probed: pa.Table,
    pos: np.ndarray,
    caption: pa.ChunkedArray,
    names: pa.ChunkedArray | None,
    at: np.ndarray,
    config: BuildConfig,
) -> list[dict[str, Any]]:
    """The reject records of the rows at positions ``at`` (a few, in a normal build).

    ``names``: the source names when the strategy needs one per row (else ``None``).
    """
    if len(at) == 0:
        return []
    rows = pa.table(
        {
            **{c: cols.take(rows[c], at) for c in ("row_id", "reject", "split", "image_path", "image_index")},
            "location": cols.locations(rows, at),
            "caption": cols.take(caption, at, cols.trim),
            "image_reason": cols.take(probed["image_reason"], pos[at]),
            "image_detail": cols.take(probed["image_detail"], pos[at]),
        }
    )
    caption = rows["caption"]
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
    if names is not None:
        missing = pc.and_(pc.is_null(reason), pc.is_null(cols.take(names, at)))
        reason = pc.if_else(missing, pa.scalar(config.id_spec.missing_reason), reason)
    rows = rows.append_column("reason", reason)
    return [_reject_record(r, config) for r in rows.to_pylist()]


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


def _name_by_content(
    shas: pa.Array,
    sha: np.ndarray,
    names: pa.Array,
    name: np.ndarray,
    file_names: pa.ChunkedArray,
    valid: np.ndarray,
    strategy: str,
) -> _Naming:
    """Image id per content-hash code (null for hashes no valid row has); counts merges and conflicts.

    ``sha``/``name``: per valid row (``valid``: their positions), codes into ``shas``/``names``
    (-1: no name); ``file_names``: the column of all rows. A hash with
    one source name takes it; a hash with several (merged ids) is decided in Python.
    """
    pair_sha, pair_name = cols.distinct_pairs(sha, name)  # first-appearance order
    named = pair_name >= 0
    names_per_sha = np.bincount(pair_sha[named], minlength=len(shas))
    conflicted = np.bincount(pair_name[named], minlength=len(names)) > 1
    present = np.bincount(pair_sha, minlength=len(shas)) > 0
    the_name = np.full(len(shas), -1, np.int64)
    the_name[pair_sha[named]] = pair_name[named]

    ids = pc.binary_join_element_wise("sha256-", pc.utf8_slice_codeunits(shas, 0, 16), "")
    if strategy != "auto":
        ids, _ = _unique_ids(pc.if_else(pa.array(present), ids, pa.scalar(None, pa.string())), shas)
        return _Naming(ids, from_hashes=bool(present.any()))
    single = np.flatnonzero(names_per_sha == 1)
    named_id = cols.take(names, the_name[single])
    suffixed = pc.binary_join_element_wise(named_id, pc.utf8_slice_codeunits(cols.take(shas, single), 0, 8), "~")
    named_id = pc.if_else(pa.array(conflicted[the_name[single]]), suffixed, named_id)
    ids = _put(ids, single, named_id)
    ids, merged_ids, notes = _merged_ids(
        ids, shas, sha, names, pair_sha, pair_name, names_per_sha, conflicted, file_names, valid
    )
    conflicted_names = cols.take(names, np.flatnonzero(conflicted)).to_pylist()
    if conflicted_names:
        notes += (
            f"{len(conflicted_names)} ids carry different image bytes and were kept apart as id~sha8 "
            f"(e.g. {', '.join(sorted(conflicted_names)[:5])})",
        )
    ids = pc.if_else(pa.array(present), ids, pa.scalar(None, pa.string()))
    ids, suffixed_any = _unique_ids(ids, shas)
    # Named by a hash: a present content with no name ("sha256-…"), a name on several contents
    # (id~sha8, merged or not), an id that several contents share (id~hash of the content's hash).
    from_hashes = bool((present & (names_per_sha == 0)).any() or conflicted.any() or suffixed_any)
    return _Naming(ids, merged_ids=merged_ids, conflicts=len(conflicted_names), notes=notes, from_hashes=from_hashes)


def _merged_ids(
    ids: pa.Array,
    shas: pa.Array,
    sha: np.ndarray,
    names: pa.Array,
    pair_sha: np.ndarray,
    pair_name: np.ndarray,
    names_per_sha: np.ndarray,
    conflicted: np.ndarray,
    file_names: pa.ChunkedArray,
    valid: np.ndarray,
) -> tuple[pa.Array, int, tuple[str, ...]]:
    """Ids of hashes that several source ids share (in Python: they are few), how many source
    ids were merged, and the report's note on them."""
    merged_codes = np.flatnonzero(names_per_sha > 1)
    if len(merged_codes) == 0:
        return ids, 0, ()
    # Merged hashes in order of first appearance, each with its set of names, as the report lists them.
    in_merged = np.isin(pair_sha, merged_codes)
    # Merged hashes in order of first appearance (ties in the report's example keep it).
    merged: dict[int, set[str]] = {s: set() for s in dict.fromkeys(pair_sha[in_merged].tolist())}
    in_merged &= pair_name >= 0
    for s, text in zip(pair_sha[in_merged].tolist(), cols.take(names, pair_name[in_merged]).to_pylist(), strict=True):
        merged[s].add(text)
    merged_codes = np.array(list(merged))
    files: dict[int, set[str]] = {s: set() for s in merged}
    rows = np.flatnonzero(np.isin(sha, merged_codes))
    for s, f in zip(sha[rows].tolist(), cols.take(file_names, valid[rows]).to_pylist(), strict=True):
        if f is not None:
            files[s].add(f)
    sha_text = cols.take(shas, merged_codes).to_pylist()
    conflicted_set = set(cols.take(names, np.flatnonzero(conflicted)).to_pylist())
    chosen = []
    for s, digest in zip(merged, sha_text, strict=True):
        name = next(iter(files[s])) if len(files[s]) == 1 else min(merged[s])
        chosen.append(f"{name}~{digest[:8]}" if name in conflicted_set else name)
    merged_ids = sum(len(n) - 1 for n in merged.values())
    example = sorted(next(iter(sorted(merged.values(), key=min))))[:5]
    note = (
        f"{merged_ids} source ids were merged into {len(merged)} images with identical bytes "
        f"(e.g. {', '.join(example)}); if the id column counts rows, this is the loop-counter bug fixed"
    )
    return _put(ids, merged_codes, pa.array(chosen, pa.string())), merged_ids, (note,)


def _put(values: pa.Array, at: np.ndarray, replacements: pa.Array) -> pa.Array:
    """``values`` with the entries at ``at`` (distinct positions) replaced by ``replacements``."""
    if len(at) == 0:
        return values
    mask = np.zeros(len(values), bool)
    mask[at] = True
    # replace_with_mask consumes replacements in position order.
    return pc.replace_with_mask(values, pa.array(mask), cols.take(replacements, np.argsort(at)))


def _unique_ids(ids: pa.Array, identities: pa.Array) -> tuple[pa.Array, bool]:
    """Make image ids unique: an id shared by several identities gets a hash suffix on each; also
    whether any did."""
    counts = pc.value_counts(ids.drop_null())
    shared = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(shared) == 0:
        return ids, False
    at = np.flatnonzero(cols.as_numpy(pc.fill_null(pc.is_in(ids, value_set=shared), False)))
    fixed = [
        f"{v}~{hashlib.sha256(k.encode()).hexdigest()[:8]}"
        for v, k in zip(cols.take(ids, at).to_pylist(), cols.take(identities, at).to_pylist(), strict=True)
    ]
    return _put(ids, at, pa.array(fixed, pa.string())), True


def _trusted_ids(names: pa.Array, name: np.ndarray, sha: np.ndarray) -> _Naming:
    """Ids taken as given (one per name code); one id with several contents is an error, shared contents a note."""
    pair_name, pair_sha = cols.distinct_pairs(name, sha)
    bad_codes = np.flatnonzero(np.bincount(pair_name, minlength=len(names)) > 1)
    if len(bad_codes):
        bad = cols.take(names, bad_codes).to_pylist()
        raise BuildError(
            f"{len(bad)} image ids carry different image bytes in different rows "
            f"({', '.join(sorted(bad)[:5])}{', …' if len(bad) > 5 else ''}); they cannot be one sample. "
            "Use --id auto to keep them apart, or fix the source"
        )
    shared = int(np.count_nonzero(np.bincount(pair_sha) > 1)) if len(pair_sha) else 0
    notes = (f"{shared} images have the same bytes as another id; kept apart as --id asked",) if shared else ()
    return _Naming(names, duplicate_content=shared, notes=notes)


def _handle_leaks(
    rows: pa.Table, valid: np.ndarray, identity: np.ndarray, image_ids: pa.Array, config: BuildConfig
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Images in more than one split: fail, or keep the evaluation split and reject the rest.

    Returns which valid rows stay (a mask) and the reject records of the others.
    """
    splits, split = cols.codes(rows["split"])
    split = split[valid]
    pair_image, pair_split = cols.distinct_pairs(identity, split)
    leaked_codes = np.flatnonzero(np.bincount(pair_image, minlength=len(image_ids)) > 1)
    keep_rows = np.ones(len(valid), bool)
    if len(leaked_codes) == 0:
        return keep_rows, []
    split_text = splits.to_pylist()
    in_leaked = np.isin(pair_image, leaked_codes)
    leaked: dict[int, set[str]] = {int(i): set() for i in leaked_codes}
    for i, s in zip(pair_image[in_leaked].tolist(), pair_split[in_leaked].tolist(), strict=True):
        leaked[i].add(split_text[s])
    id_text = dict(zip(leaked, cols.take(image_ids, leaked_codes).to_pylist(), strict=True))
    if config.on_leak == "fail":
        by_id = {id_text[i]: s for i, s in leaked.items()}
        shown = "; ".join(f"{i} in {', '.join(sorted(by_id[i]))}" for i in sorted(by_id)[:5])
        raise BuildError(
            f"{len(leaked)} images appear in more than one split ({shown}{'; …' if len(leaked) > 5 else ''}): "
            "a train/eval leak. Fix the split assignment, or pass --on-leak reject to keep each image in its "
            "evaluation split and reject its other rows"
        )
    keep_split = np.full(len(image_ids), -1, np.int64)
    for i, s in leaked.items():
        keep_split[i] = split_text.index(min(s, key=lambda x: (SPLIT_PRIORITY.get(x, 3), x)))
    kept = keep_split[identity]
    dropped = np.flatnonzero((kept >= 0) & (split != kept))
    keep_rows[dropped] = False
    at = valid[dropped]
    rejects = [
        {
            "row_id": row_id,
            "location": location,
            "reason": "split_leak",
            "detail": detail("split_leak", image_id=id_text[i], kept=split_text[keep_split[i]]),
        }
        for row_id, location, i in zip(
            cols.take(rows["row_id"], at).to_pylist(),
            cols.locations(rows, at).to_pylist(),
            identity[dropped].tolist(),
            strict=True,
        )
    ]
    return keep_rows, rejects


def _images_by_id(identity: np.ndarray, image_ids: pa.Array) -> np.ndarray:
    """The identity codes that valid rows have, in image-id order: the output's row order."""
    present = np.flatnonzero(np.bincount(identity, minlength=len(image_ids)))
    return present[cols.as_numpy(pc.sort_indices(cols.take(image_ids, present)))]


@dataclass(frozen=True)
class _Groups:
    """The valid rows grouped by image: what the output columns are taken with.

    ``order``: row positions, by image (in image-id order), in source order within each;
    ``in_probe``: their rows in the probe table; ``starts``: each image's first position in ``order``.
    """

    order: np.ndarray
    in_probe: np.ndarray
    starts: np.ndarray


def _grouped(valid: np.ndarray, identity: np.ndarray, pos: np.ndarray, by_id: np.ndarray, n_codes: int) -> _Groups:
    """Group the ``valid`` rows (``identity``: their codes, of ``n_codes``) by image, output order."""
    rank_of = np.zeros(n_codes, cols.index_type(n_codes))
    rank_of[by_id] = np.arange(len(by_id))
    rank = rank_of[identity]
    del rank_of
    local = np.argsort(rank, kind="stable")  # by image, rows in source order within each
    order, rank = valid[local], rank[local]
    del local
    return _Groups(order, pos[order], np.searchsorted(rank, np.arange(len(by_id))))


def _aggregate(
    rows: pa.Table,
    probed: pa.Table,
    caption: pa.ChunkedArray,
    image_id: pa.Array,
    groups: _Groups,
    sources: dict[str, pa.Array],
) -> pa.Table:
    """One row per image (``image_id``: their ids, sorted), captions and their ids in source (row id) order.

    The output columns are taken one by one, in their final order: ``caption`` stripped, the
    others as ``group_by``'s "first" (each image's first non-null value, in source order).
    """
    order, starts = groups.order, groups.starts
    return pa.table(
        {
            "image_id": image_id,
            "captions": cols.list_column(cols.take(caption, order, cols.trim), starts),
            "caption_ids": cols.list_column(cols.take(rows["caption_id"], order), starts),
            "row_ids": cols.list_column(cols.take(rows["row_id"], order), starts),
            **sources,
            "location": cols.locations(rows, order[starts]),  # (never null: each image's first row's)
            "split": cols.first_valid(rows["split"], order, starts),
            **{
                c: cols.first_valid(probed[c], groups.in_probe, starts)
                for c in ("sha256", "n_bytes", "format", "width", "height")
            },
            **{c: plain(cols.first_valid(rows[c], order, starts)) for c in ("image_path", "image_index", "file_name")},
        }
    )


def _source_lists(
    rows: pa.Table,
    valid: np.ndarray,
    identity: np.ndarray,
    image_ids: pa.Array,
    names: pa.Array,
    name: np.ndarray,
    image_id: pa.Array,
) -> dict[str, pa.Array]:
    """Per image (``image_id``: their ids, in output order), its distinct source ids and URLs.

    Arrow's ``hash_distinct`` does not list values in order of appearance (its order follows
    its hash table: grouping by identity code instead of image id changes it), and the ids are
    written into every sample's JSON: so this is the same group-by on the same strings in the
    same row order and batches as before, on just the three columns, made a batch at a time.
    """
    schema = pa.schema([("image_id", pa.string()), ("name", pa.string()), ("url", pa.string())])

    def columns(start: int, stop: int) -> list[pa.Array]:
        at = slice(start, stop)
        return [cols.take(image_ids, identity[at]), cols.take(names, name[at]), cols.take(rows["url"], valid[at])]

    grouped = cols.group_distinct("image_id", schema, columns, len(valid))
    cols.release()
    at = pc.index_in(image_id, value_set=grouped["image_id"].combine_chunks())
    return {
        "source_ids": grouped["name_distinct"].combine_chunks().take(at),
        "source_urls": grouped["url_distinct"].combine_chunks().take(at),
    }


def _check_single_captions(images: pa.Table, several_captions_expected: bool) -> None:
    """Every image with one caption, where the source has several: the id bug, not the data."""
    if images.num_rows < 2 or not several_captions_expected:
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
