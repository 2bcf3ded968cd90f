"""The loader's integrity checks: is a shard the one the manifest describes, and is each
sample's image the one its metadata records?

Two levels, one rule: no sample whose bytes fail their checksum is ever yielded.

* **Shard** (``verify="sha256"`` and a manifest that records the shard): before any sample
  of a shard is read, :func:`scan` hashes it whole. A match vouches for every image in it
  (the build checked each against its recorded sha256 when it wrote it), so nothing is
  hashed twice. A mismatch makes :func:`scan` parse the shard once more, hashing each
  image member and comparing it with the ``sha256`` its ``KEY.json`` records. The result
  is kept per process for the file's (path, size, mtime), so later epochs hash nothing.
  :func:`judge` decides: a matching shard is good; a shard whose difference is explained
  by images that fail their own sha256 (the shard still parses and holds the manifest's
  number of samples) loses exactly those samples (``sample_checksum``); any other
  difference (a replaced shard, damaged metadata or tar headers) is a bad shard
  (``shard_checksum``). Missing (``shard_missing``) and
  wrong-size (``shard_size``) shards are found when the shard is opened, before anything
  is read.
* **Sample** (no whole-shard check: ``verify="size"``, or shards no manifest describes):
  :func:`image_mismatch` hashes each image member as it is read and compares it with its
  ``KEY.json``'s ``sha256``, before the sample reaches the decoder.

A bad shard follows the loader's ``on_bad_shard`` policy (``"raise"`` or ``"skip"``); a
bad sample follows its ``handler``.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from typing import IO, Any, Literal

from ..errors import IntegrityError
from ..tarwalk import TarWalk
from .decode import IMAGE_FORMATS, member_key

BAD_SHARD_POLICIES = ("raise", "skip")
OnBadShard = Literal["raise", "skip"]
_CHUNK = 1 << 20


class BadShardError(IntegrityError):
    """A shard that is missing, has the wrong size, or whose bytes are not the manifest's;
    ``reason`` is the counter its samples are filed under when skipped."""

    def __init__(self, message: str, reason: str = "bad_shard") -> None:
        # One positional argument suffices: torch re-raises a worker's exception as
        # ``type(message)``, which then keeps its type and message in the main process.
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class ShardCheck:
    """What one pass over a shard found."""

    sha256: str
    samples: int
    """Samples in the shard (-1: not counted, the sha256 matched)."""
    bad_keys: frozenset[str]
    """Samples whose image bytes differ from the sha256 their JSON records."""
    parsed: bool
    """False when the tar itself could not be read to its end."""


class _HashingReader:
    """A read-only stream that hashes every byte read through it, in order."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.hash = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.hash.update(data)
        return data

    def drain(self) -> str:
        while self.read(_CHUNK):
            pass
        return self.hash.hexdigest()


def recorded_sha256(json_bytes: bytes | None) -> str | None:
    """The image sha256 a ``KEY.json`` member records, or None when it records none."""
    if json_bytes is None:
        return None
    try:
        meta = json.loads(json_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # the decode stage files it as bad_json
    digest = meta.get("sha256") if isinstance(meta, dict) else None
    return digest if isinstance(digest, str) and digest else None


def scan(f: IO[bytes], expected: str) -> ShardCheck:
    """What the shard in ``f`` holds, compared with the manifest's sha256 ``expected``.

    The common case costs one hash of the file (C speed). Only a shard whose sha256 is not
    ``expected`` is parsed, in one more pass, for the samples whose image fails its
    recorded sha256 (a build checks each image against its recorded sha256 as it writes
    it, so a matching shard has none)."""
    digest = hashlib.file_digest(f, "sha256").hexdigest()  # type: ignore[arg-type]
    if digest == expected:
        return ShardCheck(digest, -1, frozenset(), True)
    f.seek(0)
    return _parse(f)


def _parse(f: IO[bytes]) -> ShardCheck:
    """One sequential pass over the shard in ``f``: whole sha256, samples, and the keys
    whose image fails its recorded sha256."""
    reader = _HashingReader(f)
    images: dict[str, str] = {}
    recorded: dict[str, str | None] = {}
    keys: list[str] = []
    parsed = True
    try:
        walk = TarWalk(reader)  # a stream: every byte passes the hash, in order
        for member in walk:
            parsed_name = member_key(member.name) if member.isreg() else None
            if parsed_name is None:
                continue
            key, ext = parsed_name
            if not keys or keys[-1] != key:
                keys.append(key)
            if ext == "json":
                recorded[key] = recorded_sha256(walk.read(member))
            elif ext in IMAGE_FORMATS:
                images[key] = hashlib.sha256(walk.read(member)).hexdigest()
    except (tarfile.TarError, EOFError):
        parsed = False
    bad = frozenset(k for k, digest in images.items() if recorded.get(k) not in (None, digest))
    return ShardCheck(reader.drain(), len(keys), bad, parsed)


def judge(name: str, url: str, expected: str, expected_samples: int, check: ShardCheck) -> frozenset[str]:
    """The samples of a shard to skip as ``sample_checksum``; raises :class:`BadShardError`
    (``shard_checksum``) when the shard's difference is not explained by them."""
    if check.sha256 == expected:
        return check.bad_keys
    if check.bad_keys and check.parsed and check.samples == expected_samples:
        return check.bad_keys
    raise BadShardError(
        f"shard {name} ({url}): sha256 {check.sha256[:12]}… does not match the manifest's {expected[:12]}…; "
        "it is corrupt or from another build (run `capshard verify`)",
        "shard_checksum",
    )


def image_mismatch(sample: dict[str, Any]) -> str | None:
    """Why ``sample``'s image is not the one its JSON records, or None when it is (or
    when nothing is recorded to compare with)."""
    expected = recorded_sha256(sample.get("json"))
    if expected is None:
        return None
    for ext in IMAGE_FORMATS:
        data = sample.get(ext)
        if isinstance(data, bytes):
            digest = hashlib.sha256(data).hexdigest()
            if digest != expected:
                return (
                    f"{sample['__url__']}: sample {sample['__key__']}, member .{ext}: sha256 {digest[:12]}… "
                    f"does not match the {expected[:12]}… its JSON records"
                )
    return None


def bad_key_message(url: str, key: str) -> str:
    """The message for a sample :func:`scan` found damaged."""
    return f"{url}: sample {key}: its image's sha256 does not match the one its JSON records"
