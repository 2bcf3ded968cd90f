"""The inputs listing: what every image a source names is on disk, and what changed since.

One row per distinct image path of the source's caption rows: the path as shown to
users (relative to the source's image root when inside it), its size and modification
time in ns (local files) or size and ETag/version (fsspec URLs, best effort), and the
sha256 of its bytes once the probe stage has read them. A build writes the listing as
``inputs.parquet`` beside the index and keeps only its digests in the manifest, so the
manifest stays small for millions of images while a re-run or ``verify --inputs`` can
still say *which* images changed. Rows whose image is embedded in the annotation files
(``image_index``) are covered by the annotation fingerprint, not listed here.

``stat`` checks compare (path, size, mtime_ns, etag); ``content`` checks re-hash the
bytes and compare (path, size, sha256), for file systems whose mtimes cannot be trusted.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import IntegrityError
from .format import INPUTS as INPUTS  # the listing's file name, for the stages that import it from here
from .readers.confine import ImageUnavailable, confined_path, confined_url, read_image_file
from .write import write_bytes_atomic

Options = Mapping[str, Any] | None
CHECKS = ("stat", "content")
#: The ``sha256`` of a listed file that exists but is not read: outside the image folder
#: through a symlink, not a regular file, or unreadable (the probe rejects it, with why).
UNREADABLE = "unreadable"

INPUTS_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),  # null: the file did not exist
        ("mtime_ns", pa.int64()),
        ("etag", pa.string()),
        ("sha256", pa.string()),  # null: not read (yet) or no file; UNREADABLE: a file not to be read
    ]
)

#: Columns a check compares, besides the path.
CHECK_COLUMNS = {"stat": ("size", "mtime_ns", "etag"), "content": ("size", "sha256")}


def image_root(images: Path | str | None, source: str | None) -> str:
    """The folder (or URL prefix) image paths are shown relative to: ``--images``, else the source's folder."""
    if images is not None:
        return _url_root(str(images)) if _is_store_url(str(images)) else os.path.abspath(images)
    if source is not None and _is_store_url(source):
        return _url_root(source.rsplit("/", 1)[0])
    if source is not None and os.path.exists(source):
        return os.path.abspath(source if os.path.isdir(source) else os.path.dirname(source) or ".")
    return os.path.abspath(".")


def _is_store_url(location: str) -> bool:
    return "://" in location and not location.lower().startswith("file://")


def _url_root(url: str) -> str:
    return url.rstrip("/")


def shown_paths(paths: pa.Array | pa.ChunkedArray, root: str) -> pa.Array:
    """Each of ``paths`` relative to ``root`` (POSIX separators) when inside it (a URL below a URL
    prefix too); other URLs and outside paths as given. The readers give normalised absolute
    paths, so this only cuts the root's prefix; in Arrow (per path in Python, 0.1 s for 40,000)."""
    paths = paths.combine_chunks() if isinstance(paths, pa.ChunkedArray) else paths
    url_root = "://" in root
    prefix = root + "/" if url_root else root.rstrip(os.sep) + os.sep
    inside = pc.starts_with(paths, prefix)
    if not url_root:  # a URL is shown as it is unless the root is a URL prefix
        inside = pc.and_(inside, pc.invert(pc.match_substring(paths, "://")))
    rel = pc.utf8_slice_codeunits(paths, len(prefix))
    if os.sep != "/":
        rel = pc.replace_substring(rel, os.sep, "/")
    return pc.if_else(inside, rel, paths)


def absolute_paths(shown: pa.Array | pa.ChunkedArray, root: str) -> pa.Array:
    """The paths :func:`shown_paths` made ``shown`` from: below ``root`` unless already absolute or a URL."""
    shown = shown.combine_chunks() if isinstance(shown, pa.ChunkedArray) else shown
    whole = pc.or_(pc.match_substring(shown, "://"), pc.starts_with(shown, "/"))
    # As os.path.join(root, shown); a URL root has no "/" at its end (image_root strips it).
    prefix = root if root == "" or root.endswith("/") else root + "/"
    return pc.if_else(whole, shown, pc.binary_join_element_wise(prefix, shown, ""))


def referenced_paths(rows: pa.Table) -> pa.Array:
    """The distinct image paths of the caption rows."""
    return pc.unique(rows["image_path"].drop_null())


def scan(paths: pa.Array | list[str], root: str, *, content: bool = False, options: Options = None) -> pa.Table:
    """The listing of ``paths`` (absolute or URLs, read with the ``--storage-options``
    ``options``) as they are now, sorted by shown path."""
    given = paths.cast(pa.string()) if isinstance(paths, pa.Array) else pa.array(paths, pa.string())
    shown = shown_paths(given, root)
    order = pc.sort_indices(shown)
    shown, paths = shown.take(order), given.take(order).to_pylist()
    out: dict[str, list[Any]] = {name: [] for name in ("size", "mtime_ns", "etag", "sha256")}
    for path in paths:
        size, mtime, etag = _url_stat(path, options) if "://" in path else _file_stat(path)
        out["size"].append(size)
        out["mtime_ns"].append(mtime)
        out["etag"].append(etag)
        out["sha256"].append(content_sha256(path, root or None, options) if content and size is not None else None)
    return pa.table({"path": shown, **out}, schema=INPUTS_SCHEMA)


def _file_stat(path: str) -> tuple[int | None, int | None, str | None]:
    try:
        st = os.stat(path)
    except OSError:
        return None, None, None
    return st.st_size, st.st_mtime_ns, None


def _url_stat(url: str, options: Options = None) -> tuple[int | None, int | None, str | None]:
    """Size and ETag/version of an object-store URL from ``fsspec`` ``info()``, where it gives them.

    ``..`` in the key is resolved first, as a file system would (such a key is listed, never read)."""
    from .storage import filesystem

    scheme, _, rest = url.partition("://")
    try:
        fs, path = filesystem(f"{scheme}://{posixpath.normpath(rest)}", options)
        fs.invalidate_cache(path)
        info = fs.info(path)
    except (ImportError, OSError, ValueError):
        return None, None, None
    tag = next(
        (str(info[k]) for k in ("ETag", "etag", "VersionId", "version_id", "generation", "md5Hash") if info.get(k)),
        None,
    )
    size = info.get("size")
    return (int(size) if size is not None else None), None, tag


def content_sha256(path: str, root: str | None = None, options: Options = None) -> str | None:
    """The hex sha256 of a file's bytes, or None when it cannot be read.

    A local file is read only where the confinement rule allows (its real path inside
    ``root``, a regular file, opened without blocking): a symlink out of the image folder or
    a FIFO is never opened, here as in the probe."""
    h = hashlib.sha256()
    try:
        if _is_store_url(path):
            from .storage import open_read

            if root is not None and "://" in root:
                path = confined_url(path, root)
            with open_read(path, options) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        else:
            h.update(read_image_file(confined_path(path, root)))
    except (ImportError, OSError, ValueError, ImageUnavailable):
        return None
    return h.hexdigest()


def with_hashes(listing: pa.Table, known: pa.Table | None, root: str, options: Options = None) -> pa.Table:
    """``listing`` with every existing file's sha256: from ``known`` (``image_path``, the absolute path,
    and the probe's ``sha256``), else read here (images the probe rejected are few)."""
    sha = listing["sha256"].combine_chunks()
    absolute = absolute_paths(listing["path"], root)
    if known is not None and known.num_rows:
        found = known["sha256"].take(pc.index_in(absolute, value_set=known["image_path"]))
        sha = pc.coalesce(sha, pc.if_else(pc.is_valid(listing["size"]), found, pa.scalar(None, pa.string())))
    unread = np.flatnonzero(pc.and_(pc.is_null(sha), pc.is_valid(listing["size"])).to_numpy(zero_copy_only=False))
    if len(unread):
        read = [content_sha256(p, root or None, options) or UNREADABLE for p in absolute.take(unread).to_pylist()]
        mask = np.zeros(len(sha), dtype=bool)
        mask[unread] = True
        sha = pc.replace_with_mask(sha, pa.array(mask), pa.array(read, pa.string()))
    return listing.set_column(listing.schema.get_field_index("sha256"), "sha256", sha)


def hash_all(listing: pa.Table, root: str, options: Options = None) -> pa.Table:
    """``listing`` with the sha256 of every file read now, for ``--check-inputs content``."""
    cleared = listing.set_column(
        listing.schema.get_field_index("sha256"), "sha256", pa.nulls(listing.num_rows, pa.string())
    )
    return with_hashes(cleared, None, root, options)


def summary(listing: pa.Table) -> dict[str, Any]:
    """What the manifest keeps: the image count and one digest per check (content: None until hashed)."""
    return {"images": listing.num_rows, "stat": _digest(listing, "stat"), "content": _digest(listing, "content")}


def _digest(listing: pa.Table, check: str) -> str | None:
    """sha256 of one line per file: its path and the check's columns, ``\\0``-separated (a null as
    nothing), ``\\n``-ended; the lines are built by Arrow and hashed from its buffer in one call."""
    cols = CHECK_COLUMNS[check]
    if check == "content" and pc.any(pc.and_(pc.is_valid(listing["size"]), pc.is_null(listing["sha256"]))).as_py():
        return None
    fields = [pc.fill_null(pc.cast(listing[c], pa.string()), "") for c in ("path", *cols)]
    lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*fields, "\0"), "", "\n")
    h = hashlib.sha256()
    for chunk in lines.chunks:
        offsets = chunk.buffers()[1]
        if chunk.buffers()[2] is None or offsets is None:
            continue
        width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        first, last = np.frombuffer(offsets, width, len(chunk) + 1, chunk.offset * np.dtype(width).itemsize)[[0, -1]]
        h.update(memoryview(chunk.buffers()[2])[first:last])
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class InputChanges:
    """Image paths whose file differs from the build's listing, by kind, each sorted."""

    changed: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.changed or self.missing or self.added or self.dropped)

    def kinds(self) -> dict[str, tuple[str, ...]]:
        return {"changed": self.changed, "missing": self.missing, "added": self.added, "no longer named": self.dropped}

    def describe(self, limit: int = 5) -> str:
        """``3 images changed, 1 missing: imgs/a.jpg, imgs/b.jpg, …`` (the first ``limit`` paths)."""
        counts = [(k, len(v)) for k, v in self.kinds().items() if v]
        if not counts:
            return "no image changed"
        first, *rest = counts
        head = ", ".join([f"{first[1]} image{'s' if first[1] != 1 else ''} {first[0]}", *(f"{n} {k}" for k, n in rest)])
        paths = [p for v in self.kinds().values() for p in v]
        return f"{head}: {', '.join(paths[:limit])}" + (", …" if len(paths) > limit else "")


def compare(old: pa.Table, new: pa.Table, check: str) -> InputChanges:
    """How ``new`` differs from ``old`` under ``check`` (``new`` hashed for ``content``).

    changed: exists in both, differs; missing: existed at build time, gone now; added:
    exists now, was not named or did not exist; dropped: existed, no longer named.
    """
    cols = CHECK_COLUMNS[check]
    j = old.select(["path", *cols]).join(
        new.select(["path", *cols]), keys="path", join_type="full outer", left_suffix=".old", right_suffix=".new"
    )
    data = j.to_pydict()
    in_old = {p for p in old["path"].to_pylist()}
    in_new = {p for p in new["path"].to_pylist()}
    changed, missing, added, dropped = [], [], [], []
    for i, path in enumerate(data["path"]):
        was = data["size.old"][i] is not None
        now = data["size.new"][i] is not None
        if path in in_old and path in in_new:
            if was and not now:
                missing.append(path)
            elif now and not was:
                added.append(path)
            elif was and any(data[f"{c}.old"][i] != data[f"{c}.new"][i] for c in cols):
                changed.append(path)
        elif path in in_old and was:
            dropped.append(path)
        elif path in in_new and now:
            added.append(path)
    return InputChanges(*(tuple(sorted(v)) for v in (changed, missing, added, dropped)))


def write_listing(path: Path, listing: pa.Table) -> None:
    """Write the listing atomically (parquet)."""
    sink = pa.BufferOutputStream()
    pq.write_table(listing, sink)
    write_bytes_atomic(path, sink.getvalue().to_pybytes())


def read_listing(path: Path) -> pa.Table | None:
    """The listing at ``path``; None when there is none (a build by an older capshard)."""
    if not path.is_file():
        return None
    try:
        return pq.read_table(path).cast(INPUTS_SCHEMA)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise IntegrityError(f"{path} cannot be read: {e}") from None
