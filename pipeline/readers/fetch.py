"""Image objects under an ``--images`` URL: read one, or many with bounded concurrency and read-ahead.

Reading many small images from a bucket is latency-bound, so the probe and write stages
take a task's images together: :func:`fetch_images` runs :func:`pipeline.storage.fetch_many`
(at most ``threads`` requests at once, at most ``max_bytes`` fetched ahead of the caller)
and turns a missing or unreadable object into its reject reason, in input order, without
stopping the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import UsageError
from .confine import ImageUnavailable


def fetch_limit(variable: str, default: int) -> int:
    """A positive integer from the environment variable ``variable``, else ``default``."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{variable}={text!r}: must be a positive integer")
    return value


def unavailable(url: str, error: OSError) -> ImageUnavailable:
    """The reject an object-store read error stands for: ``missing_image`` or ``unreadable_image``."""
    if isinstance(error, FileNotFoundError):
        return ImageUnavailable("missing_image", f"image object not found: {url}")
    return ImageUnavailable("unreadable_image", f"cannot read image object {url}: {error}")


def read_url_image(url: str, options: Mapping[str, Any] | None) -> bytes:
    """The bytes of one image object; raises ``ImageUnavailable``."""
    from .. import storage

    try:
        return storage.read_bytes(url, options)
    except OSError as e:
        raise unavailable(url, e) from None


def fetch_images(
    urls: list[str], options: Mapping[str, Any] | None, threads: int, max_bytes: int
) -> Iterator[bytes | ImageUnavailable]:
    """The bytes of each of ``urls`` (or why it cannot be read), in order, fetched ahead on ``threads`` threads."""
    from .. import storage

    done = 0
    while done < len(urls):
        try:
            for _, data in storage.fetch_many(urls[done:], options=options, threads=threads, max_bytes=max_bytes):
                done += 1
                yield data
        except OSError as e:
            # fetch_many stops at the failed object; the rest are fetched again from the next one.
            yield unavailable(urls[done], e)
            done += 1
