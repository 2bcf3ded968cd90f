"""``write_ahead.confirmed``: where the pass's probe found what the plan assumed, the plan is the
assumed one with the probed hashes, sizes, formats and dimensions, without resolving again; it must
be the plan that resolving the real probe gives, whatever the rows and whatever the probe found."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pipeline import build as build_module
from pipeline.config import BuildConfig
from pipeline.errors import CapshardError
from pipeline.probe import PROBE_SCHEMA, distinct_refs
from pipeline.resolve import Resolution
from pipeline.rows import read_rows
from pipeline.schema import batches_from_rows
from pipeline.write_ahead import assumed_probe, confirmed

N_PATHS = 6
#: What the probe finds in a file that is as assumed: a picture of its own, of the listing's size.
USUAL: dict[str, Any] = {"content": None, "reason": None, "grown": 0, "format": "JPEG", "width": 5, "kept": False}


class _Reader:
    """What the resolution asks of a reader: its id column, whether it gives several captions per row."""

    def id_column(self) -> str:
        return "img_id"

    def multi_caption(self) -> bool:
        return False


def _rows(records: list[tuple[int, str | None, str | None, str, str]]) -> pa.Table:
    """Caption rows as ``build`` holds them, from (path, file name, id, split, caption) tuples."""
    return read_rows(
        batches_from_rows(
            {
                "location": f"token.txt:{n}",
                "caption": caption,
                "split": split,
                "image_path": f"/img/{path}.jpg",
                "file_name": file_name,
                "id_hint": image_id,
            }
            for n, (path, file_name, image_id, split, caption) in enumerate(records)
        )
    )


def _guessed(rows: pa.Table) -> pa.Table:
    """The assumed probe of the rows' files (all found by the listing, 1,000 bytes and more)."""
    refs = distinct_refs(rows)
    return assumed_probe(refs, pa.array([1000 + i for i in range(refs.num_rows)], pa.int64()))


def _probed(guessed: pa.Table, found: list[dict[str, Any]]) -> pa.Table:
    """The real probe of the guessed files: ``found[i]`` is what the probe found in file i."""
    rows = []
    for i, (path, size) in enumerate(
        zip(guessed["image_path"].to_pylist(), guessed["n_bytes"].to_pylist(), strict=True)
    ):
        what = found[i % len(found)]
        usable = what["reason"] is None
        # An unusable file keeps its hash and size where ``kept`` says so: probe_opened gives none
        # today, and confirmed must not take a hashed file for a usable one the day it does.
        hashed = usable or what["kept"]
        rows.append(
            {
                "image_path": path,
                "image_index": None,
                "sha256": _sha256(f"picture {what['content']}" if what["content"] is not None else f"file {i}")
                if hashed
                else None,
                "n_bytes": size + what["grown"] if hashed else None,
                "format": what["format"] if hashed else None,
                "width": what["width"] if hashed else None,
                "height": 3 if hashed else None,
                "image_reason": what["reason"],
                "image_detail": None if usable else "bad bytes",
                "phash": None,
            }
        )
    return pa.Table.from_pylist(rows, schema=PROBE_SCHEMA)


def _sha256(picture: str) -> str:
    return hashlib.sha256(picture.encode()).hexdigest()


def _resolution(rows: pa.Table, probed: pa.Table, config: BuildConfig) -> Resolution | None:
    """``build``'s plan of ``probed`` (reject budget not checked), or None where it stops with an error."""
    try:
        return build_module._resolved(rows, probed, _Reader(), config, [], budget=False)  # type: ignore[arg-type]
    except CapshardError:
        return None


def _same(a: Resolution, b: Resolution) -> None:
    assert a.images.equals(b.images), (a.images.to_pylist(), b.images.to_pylist())
    assert a.rejects.equals(b.rejects)
    assert (a.report, a.n_rows, a.ids_from_hashes) == (b.report, b.n_rows, b.ids_from_hashes)


_RECORD = st.tuples(
    st.integers(0, N_PATHS - 1),
    st.sampled_from([None, "a.jpg", "b.jpg", "c.jpg"]),
    st.sampled_from([None, "1", "2", "3"]),
    st.sampled_from(["train", "test", "bad split"]),
    st.sampled_from(["a dog", "", "a cat on a mat"]),
)
_FOUND = st.fixed_dictionaries(
    {
        "content": st.one_of(st.none(), st.integers(0, 2)),  # None: a picture of its own
        "reason": st.sampled_from([None, None, None, "corrupt_image"]),
        "grown": st.sampled_from([0, 0, 0, 7]),
        "format": st.sampled_from(["JPEG", "PNG"]),
        "width": st.integers(1, 9),
        "kept": st.booleans(),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    records=st.lists(_RECORD, min_size=1, max_size=24),
    found=st.lists(_FOUND, min_size=1, max_size=N_PATHS),
    id_text=st.sampled_from(["auto", "filename", "column:img_id", "content"]),
    on_leak=st.sampled_from(["reject", "fail"]),
    per_shard=st.integers(1, 4),
    max_bytes=st.sampled_from([1 << 30, 4000, 6000]),  # small: a grown file moves the shard bounds
)
def test_a_confirmed_plan_is_the_plan_of_the_real_probe(
    records: list[tuple[int, str | None, str | None, str, str]],
    found: list[dict[str, Any]],
    id_text: str,
    on_leak: str,
    per_shard: int,
    max_bytes: int,
) -> None:
    config = BuildConfig(
        out=Path("unused"), id=id_text, on_leak=on_leak, max_images_per_shard=per_shard, max_shard_bytes=max_bytes
    )
    rows = _rows(records)
    guessed = _guessed(rows)
    assumed = _resolution(rows, guessed, config)
    if assumed is None:  # no plan to write ahead from: the build probes first
        event("no assumed plan")
        return
    probed = _probed(guessed, found)
    got = confirmed(assumed, guessed, probed)
    expected = _resolution(rows, probed, config)
    event("confirmed" if got is not None else "resolved again")
    if got is not None:
        assert expected is not None, "the real probe stops the build"
        _same(got, expected)


def test_a_probe_that_found_what_was_assumed_is_confirmed() -> None:
    """Every file a usable picture of its own, of the listing's size: the common build."""
    rows = _rows([(i % N_PATHS, f"{i % N_PATHS}.jpg", None, "train", f"caption {i}") for i in range(30)])
    config = BuildConfig(out=Path("unused"), max_images_per_shard=4)
    guessed = _guessed(rows)
    assumed = _resolution(rows, guessed, config)
    assert assumed is not None and not assumed.ids_from_hashes
    probed = _probed(guessed, [{**USUAL, "format": "PNG"}])
    got = confirmed(assumed, guessed, probed)
    expected = _resolution(rows, probed, config)
    assert got is not None and expected is not None
    _same(got, expected)
    assert set(got.images["format"].to_pylist()) == {"PNG"}  # what the probe found, not what was assumed


def _named_files() -> tuple[pa.Table, Resolution]:
    """The assumed probe of N_PATHS files with names of their own, and the plan made from it."""
    rows = _rows([(i, f"{i}.jpg", None, "train", "a dog") for i in range(N_PATHS)])
    guessed = _guessed(rows)
    assumed = _resolution(rows, guessed, BuildConfig(out=Path("unused")))
    assert assumed is not None
    return guessed, assumed


@pytest.mark.parametrize(
    "change",
    [
        {"reason": "corrupt_image"},  # an unusable file
        {"reason": "too_large", "kept": True},  # an unusable file with a hash
        {"content": 1},  # two files with one picture
        {"grown": 7},  # a size the listing did not see
    ],
)
def test_a_probe_that_found_otherwise_is_resolved_again(change: dict[str, Any]) -> None:
    guessed, assumed = _named_files()
    found = [USUAL, {**USUAL, **change}] + [USUAL] * (N_PATHS - 2)
    if "content" in change:
        found[0] = {**USUAL, "content": 1}
    assert confirmed(assumed, guessed, _probed(guessed, found)) is None


def test_a_probe_of_other_references_is_resolved_again() -> None:
    guessed, assumed = _named_files()
    probed = _probed(guessed, [USUAL])
    assert confirmed(assumed, guessed, probed) is not None
    assert confirmed(assumed, guessed, probed.slice(1)) is None  # one file fewer
    other = probed.set_column(0, "image_path", pa.array([f"/elsewhere/{i}.jpg" for i in range(N_PATHS)]))
    assert confirmed(assumed, guessed, other) is None


@pytest.mark.parametrize(
    ("records", "id_text"),
    [
        ([(0, "a.jpg", None, "train", "x"), (1, None, None, "train", "y")], "auto"),  # an image with no name
        ([(0, "a.jpg", None, "train", "x"), (1, "a.jpg", None, "train", "y")], "auto"),  # one name, two pictures
        ([(0, "a.jpg", None, "train", "x"), (1, "b.jpg", None, "train", "y")], "content"),  # ids are hashes
    ],
)
def test_a_plan_that_named_images_by_their_hash_is_resolved_again(
    records: list[tuple[int, str | None, str | None, str, str]], id_text: str
) -> None:
    """The assumed hashes are made up: ids made from them would not be the real ones."""
    rows = _rows(records)
    config = BuildConfig(out=Path("unused"), id=id_text)
    guessed = _guessed(rows)
    assumed = _resolution(rows, guessed, config)
    assert assumed is not None and assumed.ids_from_hashes
    probed = _probed(guessed, [USUAL])
    assert confirmed(assumed, guessed, probed) is None
    expected = _resolution(rows, probed, config)
    assert expected is not None and not assumed.images["image_id"].equals(expected.images["image_id"])
