"""Stage *write*: one independent task per shard.

A task reads its images' bytes through the reader, checks them against the probed
hash (the only hash of the source bytes in this stage), optionally re-encodes them, and
writes a deterministic tar (members sorted per sample, fixed mtime, uid/gid 0, no user
names, USTAR; see :mod:`.tarwriter`, which hashes the shard as it writes it) to a
temporary name; then fsync, rename, and a small ``done`` record beside the plan. Tasks
share nothing but the output folder, so a process pool, a Ray cluster or an indexed cluster job can run them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import IntegrityError, OutputError
from .format import DONE, STATE
from .media import EXTENSIONS, resize
from .readers import ImageUnavailable, Reader
from .tarwriter import TarWriter

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


@dataclass(frozen=True)
class ShardTask:
    """Everything needed to write one shard, picklable (the reader comes as the worker's context)."""

    name: str
    out: str
    samples: tuple[SampleSpec, ...]
    source_format: str
    resize: int | None


@dataclass(frozen=True)
class ShardResult:
    """What a written shard holds; also its ``done`` record."""

    name: str
    images: int
    captions: int
    bytes: int
    sha256: str
    # Per sample, in tar order: key, stored sha256, width, height, extension.
    samples: tuple[tuple[str, str, int, int, str], ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardResult:
        return cls(**{**data, "samples": tuple(tuple(s) for s in data["samples"])})


def done_path(out: Path, name: str) -> Path:
    """Where the ``done`` record of shard ``name`` lives."""
    return out / STATE / DONE / f"{name}.json"


def sample_members(
    spec: SampleSpec, data: bytes, digest: str, fmt: str, width: int, height: int, source_format: str
) -> dict[str, bytes]:
    """The members of one sample: image, JSON metadata, captions as text."""
    ext = EXTENSIONS[fmt]
    source: dict[str, Any] = {
        "format": source_format,
        "row_ids": list(spec.row_ids),
        "ids": list(spec.source_ids),
        "file_name": spec.file_name,
        "sha256": spec.sha256,
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
    # One caption per line: a caption's own line breaks become spaces here (the JSON keeps them).
    text = "\n".join(" ".join(c.splitlines()) for c in spec.captions) + "\n"
    return {
        f"{spec.key}.{ext}": data,
        f"{spec.key}.json": json.dumps(meta, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode(),
        f"{spec.key}.txt": text.encode("utf-8"),
    }


def write_shard(reader: Reader, task: ShardTask) -> ShardResult:
    """Write one shard atomically and record it as done.

    The ``done`` record is written before the rename, so a shard under its final name
    always has a record that matches it, whenever the process is killed. An OS error on
    the output (full disk, read-only folder) is an :class:`OutputError` naming the shard.
    """
    out = Path(task.out)
    final = out / task.name
    tmp = out / f".{task.name}{TMP_MARK}{os.getpid()}"
    entries = []
    captions = 0
    try:
        with open(tmp, "wb") as f:
            tar = TarWriter(f, mtime=MTIME)
            for spec in task.samples:
                data = _stored_image(reader, spec)
                digest, fmt, width, height = spec.sha256, spec.format, spec.width, spec.height
                if task.resize is not None:
                    data, fmt, width, height = resize(data, task.resize)
                    digest = hashlib.sha256(data).hexdigest()
                members = sample_members(spec, data, digest, fmt, width, height, task.source_format)
                for name in sorted(members):
                    tar.add(name, members[name])
                entries.append((spec.key, digest, width, height, EXTENSIONS[fmt]))
                captions += len(spec.captions)
            shard_sha, size = tar.close()
            os.fsync(f.fileno())
        result = ShardResult(task.name, len(task.samples), captions, size, shard_sha, tuple(entries))
        write_json_atomic(done_path(out, task.name), asdict(result))
        os.replace(tmp, final)
        fsync_dir(out)
    except OSError as e:
        if e.errno is None:  # a codec's error (Pillow raises OSError), not the output's
            raise
        raise OutputError(f"cannot write shard {task.name} in {out}: {e.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return result


def _stored_image(reader: Reader, spec: SampleSpec) -> bytes:
    """The image bytes the probe hashed; the build fails if they vanished or changed since."""
    where = spec.image_path or f"row {spec.image_index}"
    try:
        data = reader.open_image(spec.image_path, spec.image_index)
    except ImageUnavailable as e:
        raise IntegrityError(f"image of {spec.image_id} ({where}) can no longer be read: {e}") from None
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        raise IntegrityError(
            f"image of {spec.image_id} ({where}) changed since the build read it; rebuild with --overwrite"
        )
    return data


def file_sha256(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary name, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())
