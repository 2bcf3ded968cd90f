"""Small wording helpers for what capshard prints: counts with the right plural, byte sizes."""

from __future__ import annotations


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 shard``, ``2 shards``, ``0 shards``; ``nouns`` for irregular plurals."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


_BINARY_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def byte_size(n: int) -> str:
    """A byte count the way a person writes it: ``1GiB``, ``512MiB``, ``1.5GiB``; exact counts otherwise."""
    for unit, size in _BINARY_UNITS:
        if n >= size and (n * 10) % size == 0:
            return f"{n / size:g}{unit}"
    return f"{n}B"


def duration(seconds: float) -> str:
    """A time span for progress lines: ``42 s``, ``3 min 05 s``, ``2 h 07 min``; ``unknown`` for infinity."""
    if seconds == float("inf"):
        return "unknown"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
