"""Resolve and plan as pure functions over Arrow tables: keys, groups, shard limits."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import BuildConfig
from pipeline.errors import BuildError
from pipeline.plan import estimated_bytes, plan_shards
from pipeline.probe import PROBE_SCHEMA, distinct_refs
from pipeline.resolve import resolve, sanitize_key
from pipeline.resolve_columns import locations
from pipeline.rows import ROWS, read_rows
from pipeline.schema import batches_from_rows


@given(st.lists(st.text(min_size=1, max_size=120), min_size=1, max_size=50, unique=True))
def test_keys_are_unique_dot_free_and_short(ids: list[str]) -> None:
    keys = [sanitize_key(i) for i in ids]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert "." not in key and "/" not in key and key.isascii() and 0 < len(key) <= 80


def test_plain_ids_are_kept_as_keys() -> None:
    assert sanitize_key("1000092795") == "1000092795"
    assert sanitize_key("COCO_val2014_000000391895") == "COCO_val2014_000000391895"
    assert sanitize_key("1000092795.jpg").startswith("1000092795_jpg_")


def _tables(rows: list[tuple[str, str, str]]) -> tuple[pa.Table, pa.Table]:
    """Caption rows (id, picture, split) → caption table and probe table (sha = picture)."""
    records = [
        {
            "location": f"x:{n}",
            "caption": f"caption {n}",
            "split": split,
            "image_path": f"/img/{pic}",
            "id_hint": image_id,
            "file_name": f"{pic}.jpg",
        }
        for n, (image_id, pic, split) in enumerate(rows)
    ]
    table = pa.Table.from_batches(list(batches_from_rows(records)))
    pictures = sorted({pic for _, pic, _ in rows})
    probed = pa.Table.from_pylist(
        [
            {
                "image_path": f"/img/{p}",
                "sha256": hashlib.sha256(p.encode()).hexdigest(),
                "n_bytes": 100,
                "format": "JPEG",
                "width": 4,
                "height": 3,
            }
            for p in pictures
        ],
        schema=PROBE_SCHEMA,
    )
    return table, probed


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from("pqrstu")), min_size=1, max_size=40))
def test_auto_groups_every_row_by_content_and_loses_none(pairs: list[tuple[str, str]]) -> None:
    rows = [(image_id, pic, "train") for image_id, pic in pairs]
    table, probed = _tables(rows)
    res = resolve(table, probed, BuildConfig(out=Path("unused")), id_column="img_id", multi_caption=False)
    images = res.images.to_pylist()
    assert res.rejects.num_rows == 0
    assert sorted(r for i in images for r in i["row_ids"]) == list(range(len(rows)))
    assert len(images) == len({pic for _, pic in pairs})
    for image in images:
        pics = {rows[r][1] for r in image["row_ids"]}
        assert len(pics) == 1
        assert image["row_ids"] == sorted(image["row_ids"])
        assert sorted(image["source_ids"]) == sorted({rows[r][0] for r in image["row_ids"]})
    assert sorted(i["group"] for i in images) == list(range(len(images)))
    assert len({i["key"] for i in images}) == len(images)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    per_shard=st.integers(1, 9),
    max_bytes=st.integers(3000, 20000),
    seed=st.integers(0, 3),
)
def test_plan_respects_limits_and_places_every_image_once(n: int, per_shard: int, max_bytes: int, seed: int) -> None:
    rows = [(str(i), f"p{i}", ("train", "val")[i % 2]) for i in range(n)]
    table, probed = _tables(rows)
    config = BuildConfig(out=Path("unused"), max_images_per_shard=per_shard, max_shard_bytes=max_bytes, seed=seed)
    images = resolve(table, probed, config, id_column="img_id", multi_caption=False).images
    plan = plan_shards(images, config)
    assert sorted(plan["image_id"].to_pylist()) == sorted(images["image_id"].to_pylist())
    shards: dict[str, list[int]] = {}
    for shard, position, split in zip(
        plan["shard"].to_pylist(), plan["position"].to_pylist(), plan["split"].to_pylist(), strict=True
    ):
        assert shard.startswith(f"{split}-")
        shards.setdefault(shard, []).append(position)
    for positions in shards.values():
        assert positions == list(range(len(positions)))
        assert len(positions) <= per_shard
    sizes: dict[str, int] = {}
    for shard, size in zip(plan["shard"].to_pylist(), estimated_bytes(plan).tolist(), strict=True):
        sizes[shard] = sizes.get(shard, 0) + size
    # A shard goes over the byte limit only when a single image alone is over it.
    assert all(sizes[s] <= max_bytes or len(shards[s]) == 1 for s in shards)
    assert plan_shards(images, config).equals(plan)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", None]),  # source id
            st.sampled_from(["p", "q", "r", "s", None]),  # picture (None: no image reference)
            st.sampled_from(["x.jpg", "y.jpg", None]),  # file name
            st.sampled_from(["a dog", " a dog ", "\u3000cat", "", "  "]),  # caption
        ),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from(["auto", "content", "filename"]),
    st.integers(1, 7),
)
def test_read_rows_resolves_as_plain_strings(rows: list[tuple], strategy: str, batch: int) -> None:
    """The table build reads (``read_rows``: paths and file names dictionary-encoded, one dictionary
    over chunks of ``batch`` rows; locations as stem + number) holds the same rows and resolves to
    exactly what the plain-string table does."""
    records = [
        {
            "location": f"x:{n}" if n % 3 else f"d/t[{n}]",
            "caption": caption,
            "split": "train",
            "image_path": None if pic is None else f"/img/{pic}",
            "id_hint": image_id,
            "file_name": file_name,
        }
        for n, (image_id, pic, file_name, caption) in enumerate(rows)
    ]
    plain = pa.Table.from_batches(list(batches_from_rows(records, batch)))
    encoded = read_rows(batches_from_rows(records, batch))
    assert encoded.schema == ROWS
    unpacked = encoded.drop_columns(["location_stem", "location_number"])
    unpacked = unpacked.add_column(1, "location", locations(encoded, np.arange(encoded.num_rows)))
    assert unpacked.to_pylist() == plain.to_pylist()
    probed = pa.Table.from_pylist(
        [
            {"image_path": f"/img/{p}", "sha256": hashlib.sha256(p.encode()).hexdigest(), "n_bytes": 9}
            for p in sorted({r[1] for r in rows if r[1] is not None})
        ],
        schema=PROBE_SCHEMA,
    )
    config = BuildConfig(out=Path("unused"), id=strategy)
    try:
        expected = resolve(plain, probed, config, id_column="img_id", multi_caption=False)
    except BuildError as e:
        with pytest.raises(BuildError, match=re.escape(str(e))):
            resolve(encoded, probed, config, id_column="img_id", multi_caption=False)
        return
    got = resolve(encoded, probed, config, id_column="img_id", multi_caption=False)
    assert got.images.equals(expected.images) and got.rejects.equals(expected.rejects)
    assert got.report == expected.report
    assert distinct_refs(encoded).equals(distinct_refs(plain))
