"""What every reader is: the source options it gets and the interface it offers.

A reader turns one published dataset format into caption rows (``schema.CAPTION_ROWS``)
and, later and possibly in another process, turns an image reference of one of its rows
into the image's bytes. Readers must be picklable: shard-writing workers receive them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from ..schema import batches_from_rows
from .confine import ImageUnavailable, confined_path, confined_url, read_image_file
from .fetch import fetch_images, fetch_limit, read_url_image
from .urlpath import SourcePath, source_path

__all__ = ["CaptionSource", "ImageUnavailable", "Reader", "SourceSpec"]

#: What ``--join-on`` accepts; :mod:`pipeline.extra_captions` says what each matches.
JOIN_ON: tuple[str, ...] = ("key", "url", "filename", "image_id")


@dataclass(frozen=True)
class CaptionSource:
    """One ``--captions FILE`` (parquet, CSV or JSON Lines; local path or fsspec URL): its
    captions join the resolved images on ``join_on``; ``column`` is the caption column
    (None: the first of ``captions``, ``caption``, ``text``)."""

    path: str
    join_on: str
    column: str | None = None

    @property
    def label(self) -> str:
        """The file's name, as ``caption_sources`` records it."""
        return self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class SourceSpec:
    """Where the data is and how to read it; validated once by the CLI or by ``build``.

    ``path`` is a file or folder (or a hub name for ``hf``). ``dataset`` is an in-memory
    ``datasets.Dataset``/``DatasetDict`` passed by library users (the embedded sample).
    ``follow_symlinks`` lets image symlinks point outside the image folder (``--follow-symlinks``).
    ``path``, ``images`` and the split files may be fsspec URLs (``s3://…``, a ``str``), read
    with ``storage_options`` (``--storage-options``; not part of the build's identity);
    ``fetch_threads``/``fetch_bytes`` bound how images under a URL are fetched
    (``CAPSHARD_FETCH_THREADS``, ``CAPSHARD_FETCH_BYTES``).
    """

    path: str | None = None
    images: Path | str | None = None
    split_files: tuple[tuple[str, Path | str], ...] = ()
    image_column: str | None = None
    caption_column: str | None = None
    id_column: str | None = None
    split_column: str | None = None
    restval: str = "train"
    dataset: Any = field(default=None, compare=False, repr=False)
    name: str | None = None
    follow_symlinks: bool = False
    #: Images of the embedded sample dataset (``capshard build`` without SOURCE), else None.
    sample_images: int | None = None
    #: ``--captions-from``: a table of extra captions joined by ``captions_key`` (wds sources).
    captions_from: str | None = None
    captions_key: str = "key"
    captions_column: str | None = None
    #: ``--captions``: extra caption tables joined to the resolved images (every reader).
    captions: tuple[CaptionSource, ...] = ()
    storage_options: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    fetch_threads: int = field(default_factory=lambda: fetch_limit("CAPSHARD_FETCH_THREADS", 16), compare=False)
    fetch_bytes: int = field(default_factory=lambda: fetch_limit("CAPSHARD_FETCH_BYTES", 64 * 2**20), compare=False)

    def location(self, where: str | Path) -> SourcePath:
        """``where`` (a path or URL of this source) as a ``Path``, or a ``UrlPath`` read with the storage options."""
        return source_path(where, self.storage_options)

    def reading_options(self) -> dict[str, Any]:
        """The options that change what is read from the source (part of a build's identity)."""
        options: dict[str, Any] = {"sample_images": self.sample_images} if self.sample_images is not None else {}
        return {
            **options,
            "image_column": self.image_column,
            "caption_column": self.caption_column,
            "id_column": self.id_column,
            "split_column": self.split_column,
            "restval": self.restval,
            "split_files": [[split, Path(f).name] for split, f in self.split_files],
            "follow_symlinks": self.follow_symlinks,
            **(
                {"captions_from": [Path(self.captions_from).name, self.captions_key, self.captions_column]}
                if self.captions_from
                else {}
            ),
            **({"captions": _captions_identity(self.captions)} if self.captions else {}),
        }


class Reader:
    """Base of all readers; subclasses set ``name`` and implement the methods below."""

    #: Registry name, the value of ``--format``.
    name: ClassVar[str] = ""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec

    @classmethod
    def sniff(cls, path: SourcePath) -> bool:
        """Whether ``path`` looks like this format; cheap (reads at most a few KiB)."""
        return False

    def read(self) -> Iterator[pa.RecordBatch]:
        """Caption rows in ``CAPTION_ROWS`` schema, row ids 0..N-1 in reading order."""
        yield from batches_from_rows(self.rows())

    def rows(self) -> Iterator[dict[str, Any]]:
        """One dict of ``CAPTION_ROWS`` fields (without ``row_id``) per caption record, in source order.

        A malformed annotation raises ``SourceError`` naming file and line, except for a
        format's documented quirks, which the reader handles.
        """
        raise NotImplementedError

    def open_image(self, image_path: str | None, image_index: int | None) -> bytes:
        """The stored bytes of an image reference; raises ``ImageUnavailable``."""
        if image_path is None:
            raise ImageUnavailable("missing_image", f"{self.name} rows carry no embedded image bytes")
        return self.read_image(image_path)

    def read_image(self, image_path: str) -> bytes:
        """The bytes of an image file named by the source, refused when it leaves :meth:`image_root`."""
        url_root = self.url_image_root
        if url_root is not None:
            return read_url_image(confined_url(image_path, url_root), self.spec.storage_options)
        return read_image_file(self.checked_image_path(image_path))

    @functools.cached_property
    def url_image_root(self) -> str | None:
        """The image prefix when it is an object-store URL (not ``file://``), else None (asked once:
        finding a table's folder in a bucket is a request)."""
        root = self.image_root()
        text = None if root is None else str(root)
        return text if text is not None and "://" in text and not text.lower().startswith("file://") else None

    def open_images(self, refs: Sequence[tuple[str | None, int | None]]) -> Iterator[bytes | ImageUnavailable]:
        """:meth:`open_image` of every reference, in order, a failure given as its ``ImageUnavailable``.

        Images under an object-store prefix are fetched together (:func:`pipeline.storage.fetch_many`:
        ``spec.fetch_threads`` at once, at most ``spec.fetch_bytes`` read ahead); local files one by one."""
        url_root = self.url_image_root
        checked: list[str | ImageUnavailable | None] = []
        for path, _ in refs:
            try:
                checked.append(None if path is None or url_root is None else confined_url(path, url_root))
            except ImageUnavailable as e:
                checked.append(e)
        urls = [c for c in checked if isinstance(c, str)]
        fetched = fetch_images(urls, self.spec.storage_options, self.spec.fetch_threads, self.spec.fetch_bytes)
        for (path, index), check in zip(refs, checked, strict=True):
            if isinstance(check, str):
                yield next(fetched)
            elif check is not None:
                yield check
            else:
                try:
                    yield self.open_image(path, index)
                except ImageUnavailable as e:
                    yield e

    def checked_image_path(self, image_path: str) -> str:
        """The real path of ``image_path``, refused (``path_outside_images``) when it leaves :meth:`image_root`.

        The one place where every reader's image paths are confined: by their text (``..``,
        absolute paths elsewhere) and by their real path (symlinked files or folders whose
        target lies outside, unless ``spec.follow_symlinks``). Nothing is opened here.
        """
        return confined_path(image_path, self.image_root(), follow_symlinks=self.spec.follow_symlinks)

    def image_root(self) -> Path | str | None:
        """The folder every image file must stay in: ``spec.images``; readers whose paths may be
        relative to the annotation file fall back to its folder. ``None``: no folder is known."""
        return self.spec.images

    def multi_caption(self) -> bool:
        """True when the source is known to carry several captions per image (Flickr, COCO,
        Karpathy, nlphuji's list column). A build where every image ends with one caption
        then fails, because that is the loop-counter id bug, not the data."""
        return False

    def id_column(self) -> str | None:
        """Name of the column the ``id_hint`` values come from, for the resolution report."""
        return self.spec.id_column

    def annotation_files(self) -> list[SourcePath]:
        """Files whose bytes define the annotations; part of the source fingerprint."""
        return [self.spec.location(self.spec.path)] if self.spec.path else []

    def fingerprint(self) -> str:
        """``sha256:…`` over the annotation (and split list) bytes.

        The image files the annotations name are not part of it: ``pipeline.inputs`` lists
        each one's path, size and mtime, so a re-run can say which image changed.
        """
        h = hashlib.sha256()
        for f in sorted(self.annotation_files(), key=_sort_key):
            h.update(b"F" + str(f.name).encode() + b"\0")
            _hash_path(h, f)
        for split, file in self.spec.split_files:
            h.update(b"S" + split.encode() + b"\0")
            _hash_path(h, self.spec.location(file))
        return "sha256:" + h.hexdigest()


def _captions_identity(sources: tuple[CaptionSource, ...]) -> list[dict[str, Any]]:
    """Each ``--captions`` file's name, join, column and content digest (a changed file is a new build)."""
    from .recaption import file_digest  # recaption imports readers that import this module

    return [
        {"file": s.label, "join_on": s.join_on, "column": s.column, "sha256": file_digest(s.path, "--captions")}
        for s in sources
    ]


def _sort_key(path: SourcePath) -> tuple[str, ...]:
    # A Path sorts by its parts; a URL alike, by its "/"-separated parts.
    return path.parts if isinstance(path, Path) else tuple(str(path).split("/"))


def _hash_path(h: Any, path: SourcePath) -> None:
    if path.is_dir():
        children: list[Any] = sorted(path.rglob("*"), key=_sort_key)
        for p in children:
            if p.is_file():
                h.update(p.relative_to(path).as_posix().encode() + b"\0")
                _hash_file(h, p)
    elif path.is_file():
        _hash_file(h, path)


def _hash_file(h: Any, path: SourcePath) -> None:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
