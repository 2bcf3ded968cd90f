"""Stage *write*: one independent task per shard.

A task reads its images' bytes through the reader, checks them against the probed
hash (the only hash of the source bytes in this stage), optionally re-encodes them, and
writes a deterministic tar (members sorted per sample, fixed mtime, uid/gid 0, no user
names, USTAR; see :mod:`.tarwriter`, which hashes the shard as it writes it) to a
temporary name; then fsync, rename, and a small ``done`` record where the task says (the
plan store, :mod:`.plan_store`, decides where; this module knows no folder layout). Tasks
share nothing but the output folder, so a process pool, a Ray cluster or an indexed cluster job can run them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from . import storage
from .errors import IntegrityError, OutputError
from .media import EXTENSIONS, resize
from .readers import ImageUnavailable, Reader
from .tarwriter import TarWriter

#: What the probe found in an image: its sha256, format, width and height.
Probed = tuple[str, str, int, int]
#: Fixed member mtime (2020-01-01 UTC): same input, same bytes, whatever the clock says.
MTIME = 1577836800
TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class SampleSpec:
    """One image of a shard, as planned."""

    key: str
    image_id: str
    group: int
    split: str
    captions: tuple[str, ...]
    caption_ids: tuple[str | None, ...]
    row_ids: tuple[int, ...]
    source_ids: tuple[str, ...]
    sha256: str
    format: str
    width: int
    height: int
    image_path: str | None
    image_index: int | None
    file_name: str | None
    #: Every URL the source gives for this image (img2dataset), in row order.
    source_urls: tuple[str, ...] = ()
    #: With ``--captions``: the origin of each caption (``source`` or a file's name); else empty.
    caption_sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShardTask:
    """Everything needed to write one shard, picklable (the reader comes as the worker's context)."""

    name: str
    out: str
    samples: tuple[SampleSpec, ...]
    source_format: str
    resize: int | None
    #: Where the ``done`` record goes, relative to ``out``.
    done: str
    #: ``--storage-options`` for an ``out`` on object storage (the fsspec backend's keyword arguments).
    storage_options: dict[str, Any] | None = None


@dataclass(frozen=True)
class StoredSample:
    """One sample as stored in its shard (after any re-encoding)."""

    key: str
    sha256: str
    width: int
    height: int
    extension: str

    def to_json(self) -> list[Any]:
        """The ``done`` record's form: ``[key, sha256, width, height, extension]``."""
        return [self.key, self.sha256, self.width, self.height, self.extension]

    @classmethod
    def from_json(cls, data: list[Any]) -> StoredSample:
        key, sha256, width, height, extension = data
        return cls(key, sha256, int(width), int(height), extension)


@dataclass(frozen=True)
class ShardResult:
    """What a written shard holds; also its ``done`` record."""

    name: str
    images: int
    captions: int
    bytes: int
    sha256: str
    #: In tar order.
    samples: tuple[StoredSample, ...]

    def to_json(self) -> dict[str, Any]:
        """The ``done`` record."""
        fields = {"name": self.name, "images": self.images, "captions": self.captions}
        return fields | {"bytes": self.bytes, "sha256": self.sha256, "samples": [s.to_json() for s in self.samples]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardResult:
        """A ``done`` record read back; ``ValueError``/``KeyError``/``TypeError`` when it is not one."""
        samples = tuple(StoredSample.from_json(s) for s in data["samples"])
        return cls(data["name"], data["images"], data["captions"], data["bytes"], data["sha256"], samples)


def sample_members(
    spec: SampleSpec,
    source_sha256: str,
    data: bytes,
    digest: str,
    fmt: str,
    width: int,
    height: int,
    source_format: str,
) -> dict[str, bytes]:
    """The members of one sample: image, JSON metadata, captions as text. ``source_sha256``: the
    source image's hash; ``digest``, ``fmt``, ``width`` and ``height``: the stored image's."""
    ext = EXTENSIONS[fmt]
    source: dict[str, Any] = {
        "format": source_format,
        "row_ids": list(spec.row_ids),
        "ids": list(spec.source_ids),
        "file_name": spec.file_name,
        "sha256": source_sha256,
    }
    if spec.source_urls:
        source["urls"] = list(spec.source_urls)
    meta = {
        "image_id": spec.image_id,
        "group": spec.group,
        "split": spec.split,
        "captions": list(spec.captions),
        "caption_ids": list(spec.caption_ids),
        "width": width,
        "height": height,
        "sha256": digest,
        "source": source,
    }
    if spec.caption_sources:
        meta["caption_sources"] = list(spec.caption_sources)
    # One caption per line: a caption's own line breaks become spaces here (the JSON keeps them).
    text = "\n".join(" ".join(c.splitlines()) for c in spec.captions) + "\n"
    return {
        f"{spec.key}.{ext}": data,
        f"{spec.key}.json": json.dumps(meta, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode(),
        f"{spec.key}.txt": text.encode("utf-8"),
    }


def write_shard(reader: Reader, task: ShardTask) -> ShardResult:
    """Write one shard atomically and record it as done.

    The ``done`` record is written before the shard appears under its final name, so a
    shard there always has a record that matches it, whenever the process is killed. A
    local ``out`` gets a temporary name in the folder, fsync and rename; an object store
    gets the tar written to a local temporary file, then uploaded whole under its final
    key (:func:`pipeline.storage.put_whole`). An OS error on the output (full disk,
    read-only folder) is an :class:`OutputError` naming the shard.
    """
    if storage.is_url(task.out):
        return _write_to_store(reader, task)
    tmp = temporary_path(task)
    with output_error(task.name, task.out):
        try:
            result = write_tar(_stored_images(reader, task.samples), task, tmp)
            commit_shard(Path(task.out), task.name, task.done, tmp, done_record(result))
        finally:
            tmp.unlink(missing_ok=True)
    return result


def temporary_path(task: ShardTask) -> Path:
    """Where this process writes the shard of a task with a local ``out`` before :func:`commit_shard`."""
    return Path(task.out) / f".{task.name}{TMP_MARK}{os.getpid()}"


def commit_shard(out: Path, name: str, done: str, tmp: Path, record: bytes, *, fsync: bool = False) -> None:
    """Put the shard at ``tmp`` (fsynced now if ``fsync``, else already) under ``name`` in a local
    ``out``, its done ``record`` (:func:`done_record`, at ``done``, relative to ``out``) first."""
    if fsync:
        fsync_file(tmp)
    write_bytes_atomic(out / done, record)
    os.replace(tmp, out / name)
    fsync_dir(out)


def done_record(result: ShardResult) -> bytes:
    """The done record of a shard: its result as :func:`write_json_atomic` writes it."""
    return json_bytes(result.to_json())


def json_bytes(data: Any) -> bytes:
    """``data`` as indented, key-sorted JSON (UTF-8, a final newline)."""
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


@contextlib.contextmanager
def output_error(name: str, out: str) -> Iterator[None]:
    """An OS error on the output (full disk, read-only folder) as an :class:`OutputError` naming the shard;
    a codec's (Pillow raises ``OSError`` without an errno) as it is."""
    try:
        yield
    except OSError as e:
        if e.errno is None:
            raise
        raise OutputError(f"cannot write shard {name} in {out}: {e.strerror}") from None


def _write_to_store(reader: Reader, task: ShardTask) -> ShardResult:
    """:func:`write_shard` for an object store: local temporary tar, done record, then the shard's upload."""
    options = task.storage_options
    with tempfile.TemporaryDirectory(prefix="capshard-shard-") as folder:
        tmp = Path(folder, task.name)
        try:
            result = write_tar(_stored_images(reader, task.samples), task, tmp, durable=False)  # uploaded, then gone
        except OSError as e:
            if e.errno is None:
                raise
            raise OutputError(f"cannot write shard {task.name} to a local temporary file: {e.strerror}") from None
        try:
            storage.put_whole(storage.join(task.out, task.done), done_record(result), options)
            storage.put_whole(storage.join(task.out, task.name), tmp, options)
        except OSError as e:  # the store refused (permissions, a missing bucket, the network)
            raise OutputError(f"cannot write shard {task.name} to {task.out}: {e.strerror or e}") from None
    return result


def write_tar(
    images: Iterable[tuple[SampleSpec, bytes, Probed]],
    task: ShardTask,
    path: Path,
    *,
    durable: bool = True,
    fsync: bool = True,
) -> ShardResult:
    """Write the shard's tar to ``path`` from ``images`` (each of the task's samples, in order, with
    its image's bytes and what the probe found in them, which the plan holds for a shard written
    after the probe) and say what it holds. A ``durable`` tar has its bytes handed to the disk as
    they are written, and is fsynced here unless ``fsync`` is false (then :func:`commit_shard` does it)."""
    entries: list[StoredSample] = []
    captions = 0
    with open(path, "wb") as f:
        tar = TarWriter(f, mtime=MTIME, write_behind=durable)
        for spec, data, (source_sha256, fmt, width, height) in images:
            digest = source_sha256
            if task.resize is not None:
                data, fmt, width, height = resize(data, task.resize)
                digest = hashlib.sha256(data).hexdigest()
            members = sample_members(spec, source_sha256, data, digest, fmt, width, height, task.source_format)
            for name in sorted(members):
                tar.add(name, members[name])
            entries.append(StoredSample(spec.key, digest, width, height, EXTENSIONS[fmt]))
            captions += len(spec.captions)
        shard_sha, size = tar.close()
        if durable and fsync:
            os.fsync(f.fileno())
    return ShardResult(task.name, len(task.samples), captions, size, shard_sha, tuple(entries))


def _stored_images(reader: Reader, samples: tuple[SampleSpec, ...]) -> Iterator[tuple[SampleSpec, bytes, Probed]]:
    """Each sample with the image bytes the probe hashed (fetched together: ``Reader.open_images``);
    the build fails if one vanished or changed since."""
    opened = reader.open_images([(spec.image_path, spec.image_index) for spec in samples])
    for spec, data in zip(samples, opened, strict=True):
        where = spec.image_path or f"row {spec.image_index}"
        if isinstance(data, ImageUnavailable):
            raise IntegrityError(f"image of {spec.image_id} ({where}) can no longer be read: {data}") from None
        if hashlib.sha256(data).hexdigest() != spec.sha256:
            raise IntegrityError(
                f"image of {spec.image_id} ({where}) changed since the build read it; rebuild with --overwrite"
            )
        yield spec, data, (spec.sha256, spec.format, spec.width, spec.height)


def file_sha256(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def fsync_file(path: Path) -> None:
    """Make the bytes written to the file at ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename in the folder ``path`` durable."""
    fsync_file(path)


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary name, fsync and rename."""
    write_atomic(path, lambda f: f.write(payload))


def write_atomic(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Write to ``path`` what ``fill`` writes into the file it is given, via a temporary name,
    fsync and rename: ``path`` holds the old content or the whole new one, whenever the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    write_bytes_atomic(path, json_bytes(data))
