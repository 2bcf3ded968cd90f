"""The identity diff and the inputs listing compare, as units."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from synth import image_bytes, write_images

from pipeline.identity import default_version, differences, input_check, make_identity
from pipeline.inputs import (
    INPUTS_SCHEMA,
    InputChanges,
    absolute_paths,
    compare,
    hash_all,
    scan,
    shown_paths,
    summary,
)


def identity(**changes: object) -> dict[str, object]:
    base = make_identity(
        format_version="capshard/1",
        fmt="table",
        fingerprint="sha256:aa",
        inputs={"images": 3, "stat": "sha256:s", "content": "sha256:c"},
        reading={"image_column": None, "caption_column": None},
        options={"seed": 0, "max_images_per_shard": 1000, "resize": None, "image_formats": ["jpeg", "png"]},
    )
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            base[section] = {**base[section], name: value}
        else:
            base[section] = value
    return base


def test_same_identity_has_no_differences() -> None:
    assert differences(identity(), identity()) == []


def test_each_changed_field_is_named_old_to_new() -> None:
    new = identity(options__seed=1, options__max_images_per_shard=500, options__resize=256, reading__caption_column="t")
    assert differences(identity(), new) == [
        "caption_column: none -> t",
        "seed: 0 -> 1",
        "max_images_per_shard: 1000 -> 500",
        "resize: none -> 256",
    ]


def test_lists_fields_only_one_side_has() -> None:
    new = identity(reading={"sample_images": 100, "image_column": None, "caption_column": None})
    assert differences(identity(), new) == ["sample_images: none -> 100"]
    assert differences(identity(options__image_formats=["png"]), identity()) == ["image_formats: [png] -> [jpeg, png]"]


def test_format_and_annotations() -> None:
    new = identity(format="coco", fingerprint="sha256:bb", format_version="capshard/2")
    assert differences(identity(), new) == [
        "shard format: capshard/1 -> capshard/2",
        "format: table -> coco",
        "source: annotation files changed",
    ]


def test_images_compared_by_the_chosen_check() -> None:
    touched = identity(inputs={"images": 3, "stat": "sha256:other", "content": "sha256:c"})
    assert differences(identity(), touched, "content") == []
    changes = InputChanges(changed=("imgs/a.jpg",))
    assert differences(identity(), touched, "stat", lambda: changes) == ["source: 1 image changed: imgs/a.jpg"]
    assert differences(identity(), touched, "stat") == ["source: images differ (3 -> 3 listed)"]
    old = identity(inputs=None)
    assert differences(old, identity()) == ["source: images not recorded (a build by an older capshard)"]


def test_describe_counts_kinds_and_shows_the_first_paths() -> None:
    changes = InputChanges(changed=tuple(f"c{i}" for i in range(3)), missing=("m",), added=("a1", "a2"))
    assert changes.describe(limit=4) == "3 images changed, 1 missing, 2 added: c0, c1, c2, m, …"
    assert InputChanges(dropped=("x",)).describe() == "1 image no longer named: x"
    assert not InputChanges()


def test_compare_listings(tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    paths = [str(tmp_path / "imgs" / n) for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg")]
    old = scan(paths, str(tmp_path))
    assert old["path"].to_pylist()[0] == "imgs/a.jpg" and old["size"].to_pylist()[4] is None
    (tmp_path / "imgs" / "a.jpg").write_bytes(image_bytes(77))
    (tmp_path / "imgs" / "b.jpg").unlink()
    write_images(tmp_path / "imgs", ["e.jpg"], start=9)
    new = scan([paths[0], paths[1], paths[2], paths[4]], str(tmp_path))
    assert compare(old, new, "stat") == InputChanges(
        changed=("imgs/a.jpg",), missing=("imgs/b.jpg",), added=("imgs/e.jpg",), dropped=("imgs/d.jpg",)
    )


def test_content_digest_follows_bytes_not_mtimes(tmp_path: Path) -> None:
    write_images(tmp_path, ["a.jpg", "b.jpg"])
    paths = [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    before = hash_all(scan(paths, str(tmp_path)), str(tmp_path))
    os.utime(paths[0], ns=(5, 5))
    after = hash_all(scan(paths, str(tmp_path)), str(tmp_path))
    assert summary(before)["content"] == summary(after)["content"]
    assert summary(before)["stat"] != summary(after)["stat"]
    assert summary(scan(paths, str(tmp_path)))["content"] is None  # not hashed yet


def test_input_check_hashes_only_for_content(tmp_path: Path) -> None:
    write_images(tmp_path, ["a.jpg"])
    listing = hash_all(scan([str(tmp_path / "a.jpg")], str(tmp_path)), str(tmp_path))
    old = identity(inputs=summary(listing))
    os.utime(tmp_path / "a.jpg", ns=(5, 5))
    now = scan([str(tmp_path / "a.jpg")], str(tmp_path))
    new = identity(inputs=summary(now))
    assert input_check(new, now, "content", str(tmp_path))(old, listing) == []
    assert input_check(new, now, "stat", str(tmp_path))(old, listing) == ["source: 1 image changed: a.jpg"]


def test_paths_outside_the_root_and_urls_are_shown_whole(tmp_path: Path) -> None:
    # A path with "://" is a URL, shown whole unless the root is a URL prefix it is under.
    url_like = f"{tmp_path}/s3://a.jpg"
    paths = [str(tmp_path / "x" / "a.jpg"), "/elsewhere/a.jpg", "s3://bucket/a.jpg", f"{tmp_path}x/b.jpg", url_like]
    shown = shown_paths(pa.array(paths), str(tmp_path))
    assert shown.to_pylist() == ["x/a.jpg", "/elsewhere/a.jpg", "s3://bucket/a.jpg", f"{tmp_path}x/b.jpg", url_like]
    assert absolute_paths(shown, str(tmp_path)).to_pylist() == paths


def test_urls_below_a_url_root_are_shown_relative() -> None:
    paths = ["s3://bucket/imgs/x/a.jpg", "s3://bucket/other/a.jpg", "/local/a.jpg"]
    shown = shown_paths(pa.array(paths), "s3://bucket/imgs")
    assert shown.to_pylist() == ["x/a.jpg", "s3://bucket/other/a.jpg", "/local/a.jpg"]
    assert absolute_paths(shown, "s3://bucket/imgs").to_pylist() == paths


_PARTS = st.lists(st.sampled_from(["a", "é", "b.jpg", "s3:", "x y"]), min_size=1, max_size=4)


@given(
    st.lists(st.one_of(_PARTS.map(lambda p: "/" + "/".join(p)), _PARTS.map(lambda p: "s3://" + "/".join(p)))),
    st.sampled_from(["/", "/a", "/a/", "/a/é", "s3://a", "s3://a/b"]),
)
def test_shown_paths_go_back_to_the_paths(paths: list[str], root: str) -> None:
    # The rule, path by path: below the root (a local root for local paths, a URL prefix for URLs), the
    # rest of the path; else the path. Going back gives every path as it was.
    prefix = root + "/" if "://" in root else root.rstrip("/") + "/"
    shown = shown_paths(pa.array(paths, pa.string()), root)
    assert shown.to_pylist() == [
        p[len(prefix) :] if p.startswith(prefix) and ("://" in root or "://" not in p) else p for p in paths
    ]
    assert absolute_paths(shown, root).to_pylist() == paths


def test_object_store_urls_are_listed_by_fsspec_info() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/capshard-test/a.jpg", image_bytes(1))
    listing = scan(["memory://capshard-test/a.jpg", "memory://capshard-test/gone.jpg"], "/")
    assert listing["path"].to_pylist() == ["memory://capshard-test/a.jpg", "memory://capshard-test/gone.jpg"]
    assert listing["size"].to_pylist() == [len(image_bytes(1)), None]
    fs.pipe("/capshard-test/a.jpg", image_bytes(1) + b"more")
    assert compare(listing, scan(["memory://capshard-test/a.jpg"], "/"), "stat").changed == (
        "memory://capshard-test/a.jpg",
    )
    fs.rm("/capshard-test", recursive=True)


def test_default_version_follows_annotations_and_image_bytes() -> None:
    v = default_version(identity())
    assert len(v) == 12 and v == default_version(identity())
    assert v != default_version(identity(inputs={"images": 3, "stat": "sha256:s", "content": "sha256:other"}))
    assert v != default_version(identity(fingerprint="sha256:bb"))
    assert v == default_version(identity(inputs={"images": 3, "stat": "sha256:touched", "content": "sha256:c"}))


def _digest_line_by_line(rows: list[dict[str, object]], columns: tuple[str, ...]) -> str:
    """The listing digest as written down: one line per file, its fields ``\\0``-separated, a null as nothing."""
    h = hashlib.sha256()
    for row in rows:
        h.update(("\0".join("" if row[c] is None else str(row[c]) for c in columns) + "\n").encode())
    return "sha256:" + h.hexdigest()


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6)
_ROWS = st.lists(
    st.fixed_dictionaries(
        {
            "path": _TEXT,
            "size": st.none() | st.integers(0, 2**40),
            "mtime_ns": st.none() | st.integers(-(2**62), 2**62),
            "etag": st.none() | _TEXT,
            "sha256": st.none() | _TEXT,
        }
    ),
    max_size=8,
)


@settings(deadline=None)  # the first example pays pyarrow's first compute call
@given(_ROWS, st.integers(1, 3))
def test_listing_digests_are_the_line_by_line_sha256(rows: list[dict[str, object]], chunks: int) -> None:
    table = pa.Table.from_pylist(rows, schema=INPUTS_SCHEMA)
    cut = len(rows) // chunks
    listing = pa.concat_tables([table.slice(0, cut), table.slice(cut)])  # sliced chunks, as a real listing may hold
    digests = summary(listing)
    assert digests["images"] == len(rows)
    assert digests["stat"] == _digest_line_by_line(rows, ("path", "size", "mtime_ns", "etag"))
    unhashed = any(row["size"] is not None and row["sha256"] is None for row in rows)
    assert digests["content"] == (None if unhashed else _digest_line_by_line(rows, ("path", "size", "sha256")))
