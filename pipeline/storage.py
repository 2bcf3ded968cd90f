"""Where the ETL's bytes live: local paths or fsspec URLs (``s3://``, ``gs://``, ``file://``).

The one place the build stages talk to ``fsspec``. A *location* is a ``str`` (or a
``Path``): a local path or a URL. Local paths and ``file://`` URLs go through the
atomic-write helpers of :mod:`.write` (temporary name, fsync, rename); anything else
through the URL's fsspec backend, created with the user's ``--storage-options`` (a dict
passed as ``options``). Credentials and endpoints come from each backend's own
configuration (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, profiles), which this module never reads itself.

An object store has no rename. :func:`put_whole` makes an object appear under its final
key only once complete: S3 and GCS publish a single PUT, a multipart or a resumable
upload atomically (an unfinished upload is invisible), so they get the object directly;
other backends get a temporary key, moved into place when whole.

Reading many small images from a bucket is latency-bound: :func:`fetch_many` reads them
on a bounded number of threads with a bounded read-ahead in bytes, in input order.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import shutil
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, Any

from .errors import UsageError

# :mod:`.write` (a build stage) is imported inside the functions that write, so that the
# loader and the checks can read through this module without loading the build stages.

#: URL scheme -> the capshard extra that installs its fsspec backend.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
#: Backends whose single PUT, multipart and resumable uploads only ever publish a whole object.
ATOMIC_PUT = frozenset({"s3", "s3a", "gs", "gcs"})
#: Part size of a multipart upload to S3 (S3 allows at most 10,000 parts).
PART_BYTES = 50 * 2**20
_S3_MAX_PARTS = 10_000
_CHUNK = 1 << 20
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

Location = str | os.PathLike[str]
Options = Mapping[str, Any] | None


def is_url(location: Location) -> bool:
    """Whether ``location`` is a URL (``scheme://...``, ``file://`` included) rather than a path."""
    return bool(_URL.match(os.fspath(location)))


def local_path(location: Location) -> Path | None:
    """The local path of a plain path or a ``file://`` URL; ``None`` for any other URL."""
    text = os.fspath(location)
    if not is_url(text):
        return Path(text)
    if text.lower().startswith("file://"):
        return Path(text[len("file://") :])
    return None


def join(base: Location, *parts: str) -> str:
    """``base`` with ``parts`` appended, ``/``-separated for URLs."""
    text = os.fspath(base)
    if not is_url(text):
        return str(Path(text, *parts))
    return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])


def parent(location: Location) -> str:
    """The folder (or prefix) holding ``location``; a bucket root is its own parent."""
    text = os.fspath(location)
    if not is_url(text):
        return str(Path(text).parent)
    scheme, _, rest = text.partition("://")
    head, _, _ = rest.rstrip("/").rpartition("/")
    return f"{scheme}://{head or rest.rstrip('/')}"


def filesystem(location: Location, options: Options = None) -> tuple[Any, str]:
    """The fsspec filesystem of ``location`` and the path within it.

    A URL whose backend is not installed is a one-line :class:`UsageError` naming the
    capshard extra that installs it; options the backend rejects are one too.
    """
    import fsspec

    text = os.fspath(location)
    scheme = text.partition("://")[0].lower() if is_url(text) else "file"
    try:
        return fsspec.core.url_to_fs(text, **dict(options or {}))
    except ImportError:
        extra = EXTRAS.get(scheme)
        hint = f"pip install 'capshard[{extra}]'" if extra else f"install the fsspec backend for {scheme}://"
        raise UsageError(f"{text}: {scheme}:// needs its storage backend: {hint}") from None
    except ValueError as e:
        if "Protocol not known" in str(e):
            raise UsageError(f"{text}: unknown storage scheme {scheme}://") from None
        raise
    except TypeError as e:
        raise UsageError(f"--storage-options not accepted by the {scheme}:// backend: {e}") from None


def open_read(location: Location, options: Options = None) -> IO[bytes]:
    """``location`` opened for binary reading (a context manager)."""
    path = local_path(location)
    if path is not None:
        return open(path, "rb")
    fs, key = filesystem(location, options)
    fs.invalidate_cache(key)  # another process may have written it since this one listed its prefix
    f: IO[bytes] = fs.open(key, "rb")
    return f


def read_bytes(location: Location, options: Options = None) -> bytes:
    """The whole content of ``location``."""
    path = local_path(location)
    if path is not None:
        return path.read_bytes()
    fs, key = filesystem(location, options)
    fs.invalidate_cache(key)  # another process may have written it since this one listed its prefix
    data: bytes = fs.cat_file(key)
    return data


def put_whole(location: Location, data: bytes | Path, options: Options = None) -> None:
    """Store ``data`` (bytes, or the content of a local file) at ``location``, whole or not at all.

    Nothing appears under ``location`` before the content is complete, whenever the
    process is killed: locally a temporary name, fsync and rename (:mod:`.write`); on
    S3 and GCS the upload itself; elsewhere a temporary key moved into place.
    """
    from .write import TMP_MARK, write_bytes_atomic

    path = local_path(location)
    if path is not None:
        if isinstance(data, bytes):
            write_bytes_atomic(path, data)
        else:
            _copy_file_atomic(data, path)
        return
    fs, key = filesystem(location, options)
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    if protocol in ATOMIC_PUT:
        _upload(fs, protocol, data, key)
    else:
        base, _, name = key.rpartition("/")
        tmp = f"{base}/.{name}{TMP_MARK}{uuid.uuid4().hex}" if base else f".{name}{TMP_MARK}{uuid.uuid4().hex}"
        try:
            _upload(fs, protocol, data, tmp)
            fs.mv(tmp, key)
        finally:
            if fs.exists(tmp):
                fs.rm_file(tmp)
    fs.invalidate_cache(key)


def _upload(fs: Any, protocol: str, data: bytes | Path, key: str) -> None:
    if isinstance(data, bytes):
        fs.pipe_file(key, data)
        return
    kwargs: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        kwargs["chunksize"] = max(PART_BYTES, math.ceil(os.path.getsize(data) / _S3_MAX_PARTS))
    fs.put_file(os.fspath(data), key, **kwargs)


def _copy_file_atomic(source: Path, path: Path) -> None:
    """Copy a local file to ``path`` with :mod:`.write`'s discipline: temporary name, fsync, rename."""
    from .write import write_atomic

    with open(source, "rb") as src:
        write_atomic(path, lambda dst: shutil.copyfileobj(src, dst, _CHUNK))


def read_parquet(location: Location, options: Options = None, columns: list[str] | None = None) -> Any:
    """The Parquet table at ``location`` (a ``pyarrow.Table``; pyarrow is imported here, when needed)."""
    import pyarrow.parquet as pq

    path = local_path(location)
    if path is not None:
        return pq.read_table(path, columns=columns)
    with open_read(location, options) as f:
        return pq.read_table(f, columns=columns)


def exists(location: Location, options: Options = None) -> bool:
    """Whether an object (or file) is stored at ``location``, as the store says now (no cached listing)."""
    path = local_path(location)
    if path is not None:
        return path.is_file()
    fs, key = filesystem(location, options)
    fs.invalidate_cache(key)
    return bool(fs.isfile(key))


def size(location: Location, options: Options = None) -> int:
    """Size in bytes of the object at ``location``; ``FileNotFoundError`` if there is none."""
    path = local_path(location)
    if path is not None:
        return path.stat().st_size
    fs, key = filesystem(location, options)
    fs.invalidate_cache(key)
    return int(fs.size(key))


def sha256(location: Location, options: Options = None) -> tuple[str, int]:
    """sha256 hex digest and size of the object at ``location``, read as a stream."""
    h = hashlib.sha256()
    total = 0
    with open_read(location, options) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            total += len(chunk)
    return h.hexdigest(), total


def list_prefix(location: Location, options: Options = None) -> list[str]:
    """Every object under the folder or prefix ``location``, as sorted ``/``-separated relative keys."""
    path = local_path(location)
    if path is not None:
        if not path.is_dir():
            return []
        return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    fs, key = filesystem(location, options)
    root = key.rstrip("/")
    fs.invalidate_cache(root)
    return sorted(found[len(root) + 1 :] for found in fs.find(root) if found.startswith(root + "/"))


def remove(locations: Iterable[Location], options: Options = None) -> None:
    """Remove the given objects; one already gone is fine. Only what capshard itself wrote."""
    for location in locations:
        path = local_path(location)
        if path is not None:
            path.unlink(missing_ok=True)
            continue
        fs, key = filesystem(location, options)
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(key)
        fs.invalidate_cache(key)


def fetch_many(
    locations: Iterable[str], *, options: Options = None, threads: int = 16, max_bytes: int = 64 * 2**20
) -> Iterator[tuple[str, bytes]]:
    """``(location, content)`` of every location, in input order, fetched on ``threads`` threads.

    At most ``threads`` fetches run at once, and none starts while the bytes fetched
    but not yet taken by the caller reach ``max_bytes``; so what is held is bounded by
    ``max_bytes`` plus ``threads`` objects. A failed fetch raises its error when its turn
    comes. Closing the iterator early cancels what has not started.
    """
    if threads < 1 or max_bytes < 1:
        raise ValueError("fetch_many needs threads >= 1 and max_bytes >= 1")
    todo = iter(locations)
    queue: deque[tuple[str, Future[bytes]]] = deque()
    running: set[Future[bytes]] = set()
    lock = threading.Lock()
    held = [0]  # bytes of finished fetches the caller has not taken yet

    def fetch(location: str) -> bytes:
        # Accounted before the future completes, so the caller never sees a done fetch uncounted.
        data = read_bytes(location, options)
        with lock:
            held[0] += len(data)
        return data

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="capshard-fetch") as pool:

        def refill() -> None:
            running.difference_update([f for f in running if f.done()])
            while len(running) < threads:
                with lock:
                    if held[0] >= max_bytes:
                        return
                location = next(todo, None)
                if location is None:
                    return
                future = pool.submit(fetch, location)
                running.add(future)
                queue.append((location, future))

        try:
            while True:
                refill()
                if not queue:
                    return
                location, head = queue[0]
                while not head.done():
                    wait(running, return_when=FIRST_COMPLETED)
                    refill()
                queue.popleft()
                data = head.result()
                with lock:
                    held[0] -= len(data)
                yield location, data
        finally:
            for _, future in queue:
                future.cancel()
