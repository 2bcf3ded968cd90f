"""The ``wds`` reader: WebDataset / img2dataset tar shards as a source.

Each sample (consecutive members sharing a key) gives one caption row per caption found
in its ``json``/``txt`` members (``wds_captions``), all pointing at the sample's image,
which stays in the tar (``image_index`` numbers the images; the reader keeps where each
lies). Identity is resolved like every source: ``--id auto`` hashes the bytes and names
the image by the JSON ``key`` (else the sample key), so img2dataset's layout of one image
repeated once per caption regroups into one sample with every caption, every key in
``source.ids`` and every URL in ``source.urls``. The tars are read as hostile input
(``tarscan``): nothing is extracted, unknown members (pickles included) are never read.

A sample without an image is rejected (``no_image``); a damaged tar keeps its complete
samples and rejects its damaged tail (``truncated_tar``, ``corrupt_tar``). img2dataset's
sidecars (``.parquet``, ``_stats.json``) are not read: a failed download never reached a
tar, so it is not an input row. ``--captions-from`` (deprecated: ``--captions FILE
--join-on key|url``, :mod:`pipeline.extra_captions`, works for every reader) adds a
recaptioning file's captions (``recaption``) as rows after every row of the tars.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, ClassVar

from ..errors import UsageError
from .base import ImageUnavailable, Reader, SourceSpec
from .recaption import extra_captions
from .tarscan import TarSample, scan_tar
from .urlpath import SourcePath
from .wds_captions import json_str, sample_text
from .wds_source import is_url, labels, list_tars, looks_like_wds, open_tar, tar_size

log = logging.getLogger(__name__)

#: Folder names that give the tars below them their split (CLIP_benchmark's ``ROOT/test/0.tar``).
SPLIT_FOLDERS = ("train", "val", "validation", "test", "dev")
#: Tar files kept open per process while reading images.
OPEN_TARS = 8


@dataclass(frozen=True)
class _Joined:
    """What a recaptioned caption inherits from the sample it joins."""

    common: dict[str, Any] | None
    reject: str | None


class WdsReader(Reader):
    """WebDataset / img2dataset shards: a folder, a tar, a brace pattern or a ``::`` list."""

    name: ClassVar[str] = "wds"

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        if spec.path is None:
            raise UsageError("the wds reader needs a folder of .tar files, a tar, or a brace pattern")
        self.tars = list_tars(spec.path, spec.storage_options)
        self.labels = labels(self.tars)
        if spec.captions_from:
            log.warning("--captions-from is deprecated: use --captions FILE --join-on %s", spec.captions_key)
        # Per image (image_index): its tar, data offset and size.
        self._refs: tuple[array[int], array[int], array[int]] | None = None
        self._open: dict[int, IO[bytes]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = {}  # open files stay in the process that opened them
        return state

    @classmethod
    def sniff(cls, path: SourcePath) -> bool:
        if path.is_dir():
            return any(True for _ in path.glob("*.tar")) or any(True for _ in path.glob("*/*.tar"))
        return path.is_file() and path.suffix.lower() == ".tar"

    @staticmethod
    def claims(source: str) -> bool:
        """Whether a source string that is no local file is a tar pattern, list or URL."""
        return looks_like_wds(source)

    def id_column(self) -> str | None:
        return self.spec.id_column or "key"

    def annotation_files(self) -> list[SourcePath]:
        return []

    def fingerprint(self) -> str:
        """``sha256:…`` over every tar's name, size, member layout and text members (images are
        located, not read), and the ``--captions-from`` file's bytes."""
        h = hashlib.sha256()
        for url, label in zip(self.tars, self.labels, strict=True):
            h.update(f"T{label}\0{tar_size(url, self.spec.storage_options)}\n".encode())
            for sample in self._scan(url, label):
                h.update(f"S{sample.key}\0{sample.problem}\0".encode("utf-8", "backslashreplace"))
                for ext, ref in sorted(sample.images.items()):
                    h.update(f"I{ext}\0{ref.offset}\0{ref.size}\n".encode())
                for ext, data in sorted(sample.texts.items()):
                    h.update(f"X{ext}\0{len(data)}\0".encode() + data)
        if self.spec.captions_from:
            h.update(b"C")
            with _open_any(self.spec.captions_from) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        return "sha256:" + h.hexdigest()

    # --- rows

    def rows(self) -> Iterator[dict[str, Any]]:
        refs: tuple[array[int], array[int], array[int]] = (array("q"), array("q"), array("q"))
        joins: dict[str, _Joined] | None = {} if self.spec.captions_from else None
        join_key = self.spec.captions_key
        for tar_id, (url, label) in enumerate(zip(self.tars, self.labels, strict=True)):
            for sample in self._scan(url, label):
                yield from self._sample_rows(tar_id, label, sample, refs, joins, join_key)
        self._refs = refs
        if self.spec.captions_from and joins is not None:
            yield from self._extra_rows(joins)

    def _scan(self, url: str, label: str) -> Iterator[TarSample]:
        try:
            f = open_tar(url, self.spec.storage_options)
        except OSError as e:
            raise UsageError(f"{url}: cannot open this tar: {e}") from None
        with f:
            yield from scan_tar(f, label)

    def _sample_rows(
        self,
        tar_id: int,
        label: str,
        sample: TarSample,
        refs: tuple[array[int], array[int], array[int]],
        joins: dict[str, _Joined] | None,
        join_key: str,
    ) -> Iterator[dict[str, Any]]:
        location = label if sample.key is None else f"{label}:{_text(sample.key)}"
        text = sample_text(sample.texts)
        meta = text.meta
        problem = sample.problem or text.problem
        image = sample.image()
        if problem is None and image is None:
            problem = ("no_image", f"{location}: the sample has no image member")
        url = json_str(meta, "url")
        key = json_str(meta, "key") or (None if sample.key is None else _text(posixpath.basename(sample.key)))
        common: dict[str, Any] = {"split": self._split(meta, tar_id), "url": url, "reject": None}
        if problem is not None:
            log.warning("wds: %s (%s)", problem[1], problem[0])
            common["reject"] = problem[0]
        else:
            assert image is not None
            ext, ref = image
            refs[0].append(tar_id)
            refs[1].append(ref.offset)
            refs[2].append(ref.size)
            common["image_index"] = len(refs[0]) - 1
            common["id_hint"] = key if self.id_column() == "key" else json_str(meta, self.id_column() or "key")
            common["file_name"] = _url_name(url) or f"{_text(posixpath.basename(sample.key or ''))}.{ext}"
        if joins is not None:
            value = key if join_key == "key" else url
            known = joins.get(value) if value is not None else None
            if value is not None and (known is None or (known.common is None and problem is None)):
                # The first usable sample with this key or URL receives its extra captions.
                joins[value] = _Joined(None if problem else common, problem[0] if problem else None)
        captions = text.captions or ((None, None),)
        for n, (caption, reject) in enumerate(captions):
            row = {**common, "location": location if len(captions) == 1 else f"{location}#{n}", "caption": caption}
            row["reject"] = common["reject"] or reject
            yield row

    def _extra_rows(self, joins: dict[str, _Joined]) -> Iterator[dict[str, Any]]:
        assert self.spec.captions_from is not None
        for extra in extra_captions(self.spec.captions_from, self.spec.captions_key, self.spec.captions_column):
            joined = joins.get(extra.join) if extra.join is not None else None
            row: dict[str, Any] = {"location": extra.location, "caption": extra.caption}
            if joined is None:
                row["reject"] = "unknown_join_key"
            elif joined.common is None:
                row["reject"] = joined.reject
            else:
                row.update(joined.common)
                row["reject"] = extra.reject
            yield row

    def _split(self, meta: dict[str, Any], tar_id: int) -> str:
        split = json_str(meta, self.spec.split_column or "split")
        if split is not None:
            return split
        parent = posixpath.basename(posixpath.dirname(self.tars[tar_id].split("://", 1)[-1]))
        return parent if parent in SPLIT_FOLDERS else "train"

    # --- images

    def open_image(self, image_path: str | None, image_index: int | None) -> bytes:
        if image_index is None:
            raise ImageUnavailable("missing_image", "the row names no image in a tar")
        if self._refs is None:  # a resumed build never read the rows here: locate the images again
            for _ in self.rows():
                pass
        assert self._refs is not None
        tar_id, offset, size = (a[image_index] for a in self._refs)
        url = self.tars[tar_id]
        try:
            f = self._file(tar_id)
            f.seek(offset)
            data = f.read(size)
        except OSError as e:
            raise ImageUnavailable("unreadable_image", f"cannot read {url} at byte {offset}: {e}") from None
        if len(data) != size:
            raise ImageUnavailable("truncated_tar", f"{url} ends inside the image at byte {offset}")
        return data

    def _file(self, tar_id: int) -> IO[bytes]:
        f = self._open.pop(tar_id, None)
        if f is None:
            if len(self._open) >= OPEN_TARS:
                oldest = next(iter(self._open))
                self._open.pop(oldest).close()
            f = open_tar(self.tars[tar_id], self.spec.storage_options)
        self._open[tar_id] = f  # most recently used last
        return f


def _text(name: str) -> str:
    """A member name made valid UTF-8 (tarfile keeps undecodable bytes as surrogates)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _url_name(url: str | None) -> str | None:
    """The file name at the end of a URL's path (``…/1000092795.jpg?x=1`` → ``1000092795.jpg``)."""
    if not url:
        return None
    path = url.split("?", 1)[0].split("#", 1)[0]
    name = posixpath.basename(path.rstrip("/"))
    return name or None


def _open_any(source: str) -> IO[bytes]:
    if is_url(source):
        import fsspec

        f: IO[bytes] = fsspec.open(source, "rb").open()
        return f
    try:
        return open(source, "rb")
    except OSError as e:
        raise UsageError(f"--captions-from {source}: {e.strerror}") from None
