"""Safe reading of shard members: which members are read, with which caps, and what a
failure costs.

Only image (``jpg``, ``jpeg``, ``png``, ``webp``) and ``json`` members are ever read;
every other member (``.pyd``, ``.pickle``, ``.pkl``, ``.pth``, ``x.jpg.pyd``, even
``.txt``, whose captions the JSON already holds) is skipped by name before its bytes
are read, whatever ``WDS_SECURE`` says, so nothing here can unpickle. A member larger
than ``max_member_bytes`` is not read either; an image whose header declares more than
``max_image_pixels`` pixels is refused before any pixel is decoded (decompression bombs),
and Pillow sees the bytes only through the plug-in of the member's own extension.

webdataset's ``tar_file_iterator`` reads every selected member whole and cannot skip a
sample without reading it, so members are walked here with :mod:`pipeline.tarwalk` over
a seekable file (skipped data is seeked over, never read; its hostile-header policy
applies), keeping webdataset's naming rule (the key ends at the first dot) and
its sample dict shape (``__key__``, ``__url__``, one entry per extension), so the
decoding that follows is webdataset's own ``decode`` stage with only these handlers.

Failures are data: :class:`ErrorPolicy` is a webdataset ``handler`` (``"raise"``,
``"skip"``, ``"warn"``, or a callable) that counts every skipped sample by reason in an
:class:`ErrorLog`, whose counts travel to the trainer with the batches. A bad shard
(:class:`~pipeline.errors.IntegrityError`) is not a sample error: the loader's
``on_bad_shard`` decides (see :mod:`pipeline.loader.integrity`).
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import IntegrityError
from ..media import DEFAULT_MAX_PIXELS
from ..tarwalk import TarWalk, split_name

try:
    from webdataset.autodecode import DecodingError
except ImportError:  # webdataset <= 0.2.86 (open_clip's training pin) raises the codec's own error

    class DecodingError(Exception):  # type: ignore[no-redef]
        """Never raised by these webdataset versions; keeps ``explain`` uniform."""

        url: str | None = None
        key: str | None = None
        k: str | None = None

log = logging.getLogger(__name__)

#: Member extension -> the only Pillow plug-in allowed to read it.
IMAGE_FORMATS: dict[str, str] = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
#: The only members whose bytes are read.
READ_EXTENSIONS = frozenset({*IMAGE_FORMATS, "json"})
DEFAULT_MAX_MEMBER_BYTES = 64 << 20
HANDLER_NAMES = ("raise", "skip", "warn")
Handler = Literal["raise", "skip", "warn"] | Callable[[BaseException], bool]


@dataclass(frozen=True)
class Caps:
    """Size limits applied before bytes are read or pixels decoded."""

    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_image_pixels: int = DEFAULT_MAX_PIXELS


class SampleError(Exception):
    """One sample cannot be used; ``reason`` is the counter it is filed under.

    The message comes first and alone suffices, so the exception survives torch's
    re-raising of worker errors in the main process with its type intact.
    """

    def __init__(self, message: str, reason: str = "bad_sample") -> None:
        self.reason = reason
        super().__init__(message)


class ShardReadError(SampleError):
    """A shard stopped being readable; its samples from index ``first_lost`` on are lost."""

    def __init__(self, message: str, reason: str = "shard_read_error", first_lost: int = 0) -> None:
        self.first_lost = first_lost
        super().__init__(message, reason)


def member_key(name: str) -> tuple[str, str] | None:
    """(sample key, lower-case extension) of a member name by the walker's naming rule, or
    None for names that are not sample members (no dot, or webdataset's ``__meta__`` names)."""
    base = name.rsplit("/", 1)[-1]
    if base.startswith("__") and base.endswith("__"):
        return None
    return split_name(name)


def read_segment(
    fileobj: IO[bytes], url: str, start: int, stop: int, position: int, caps: Caps
) -> Iterator[dict[str, Any]]:
    """Samples ``[start, stop)`` of the tar in ``fileobj``, as webdataset sample dicts with
    ``__pos__`` (rank-local position: ``position`` for sample ``start``).

    Samples before ``start`` cost only their headers. A member over the size cap or a
    repeated extension marks the sample with ``__error__`` (the decode stage files it).
    Raises :class:`ShardReadError` when the tar itself breaks, naming the sample it was at.
    """
    index, key = -1, None
    sample: dict[str, Any] | None = None
    try:
        walk = TarWalk(fileobj)
        for member in walk:
            parsed = member_key(member.name) if member.isreg() else None
            if parsed is None:
                continue
            if parsed[0] != key:
                if sample is not None:
                    yield sample
                    sample = None
                index, key = index + 1, parsed[0]
                if index >= stop:
                    return
                if index >= start:
                    sample = {"__key__": key, "__url__": url, "__pos__": position + index - start}
            if sample is None:
                continue
            ext = parsed[1]
            if ext not in READ_EXTENSIONS:
                log.debug("%s: member %s not read (only images and JSON are)", url, member.name)
            elif ext in sample:
                sample["__error__"] = (f"{member.name}: a second .{ext} for key {key}", "duplicate_member")
            elif member.size > caps.max_member_bytes:
                sample["__error__"] = (
                    f"{member.name}: {member.size} bytes, over the cap of {caps.max_member_bytes}",
                    "member_too_large",
                )
            else:
                sample[ext] = walk.read(member)
        if sample is not None:
            yield sample
    except (tarfile.TarError, OSError, EOFError) as e:
        at = index if sample is not None else max(index + 1, start)
        raise ShardReadError(f"{url}: unreadable from sample {at} on: {e}", "shard_read_error", at) from e
    if index + 1 < stop:
        raise ShardReadError(
            f"{url}: ends after {index + 1} samples, expected at least {stop}", "shard_short", max(index + 1, start)
        )


def decode_image(
    data: bytes, ext: str, size: tuple[int, int] | None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """An RGB, upright image from member bytes; with ``size`` (height, width), resized to
    cover it and centre-cropped to exactly that size (JPEG decoded at reduced scale when
    that still covers it). Raises :class:`SampleError` for a bad or oversized image."""
    fmt = IMAGE_FORMATS[ext]
    try:
        with warnings.catch_warnings():
            # Pillow warns between its own limit and twice it; the cap below decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=[fmt])
        if img.width * img.height > max_pixels:
            raise SampleError(
                f"image declares {img.width}x{img.height} pixels, over the cap of {max_pixels}",
                "decompression_bomb",
            )
        if size is not None and img.format == "JPEG" and isinstance(img, ImageFile.ImageFile):
            img.draft("RGB", (size[1], size[0]))
        img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        if size is not None and img.size != (size[1], size[0]):
            img = ImageOps.fit(img, (size[1], size[0]), Image.Resampling.BICUBIC)
        img.load()
        return img
    except SampleError:
        raise
    except Image.DecompressionBombError as e:
        raise SampleError(str(e), "decompression_bomb") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise SampleError(f"not a decodable {fmt} image: {e}", "corrupt_image") from None


def decode_json(key: str, data: bytes) -> Any:
    """webdataset decode handler for ``.json`` members (None for anything else)."""
    if key != ".json":
        return None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SampleError(f"metadata is not valid JSON: {e}", "bad_json") from None


@dataclass
class ErrorLog:
    """Per-process counts of skipped samples by reason; ``drain`` hands the news on."""

    counts: Counter[str] = field(default_factory=Counter)
    pending: Counter[str] = field(default_factory=Counter)
    lost: dict[int, str] = field(default_factory=dict)
    """Rank-local positions a shard error made unreadable, with the reason."""

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n
        self.pending[reason] += n

    def lose(self, positions: range, reason: str) -> None:
        for p in positions:
            self.lost.setdefault(p, reason)

    def drain(self) -> dict[str, int]:
        out = dict(self.pending)
        self.pending.clear()
        return out


_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")


def reason_of(exn: BaseException) -> str:
    """The counter a failure is filed under."""
    while not isinstance(exn, SampleError) and exn.__cause__ is not None:
        exn = exn.__cause__
    if isinstance(exn, SampleError):
        return exn.reason
    return _SNAKE.sub("_", type(exn).__name__).lower()


def explain(exn: BaseException) -> BaseException:
    """webdataset's DecodingError (no message, holds the sample's bytes) as a SampleError
    that names the shard, the key and the member."""
    if not isinstance(exn, DecodingError):
        return exn
    cause = exn.__cause__
    out = SampleError(f"{exn.url}: sample {exn.key}, member .{exn.k}: {cause}", reason_of(exn))
    out.__cause__ = cause
    return out


@dataclass
class ErrorPolicy:
    """A webdataset ``handler``: count the skipped sample and go on, or raise.

    ``"raise"`` re-raises; ``"skip"`` counts; ``"warn"`` counts and logs a warning; a
    callable decides (True: skip and count; False: raise). An IntegrityError always raises.
    """

    handler: Handler
    log: ErrorLog = field(default_factory=ErrorLog)

    def __post_init__(self) -> None:
        if isinstance(self.handler, str) and self.handler not in HANDLER_NAMES:
            raise ValueError(f"handler must be one of {', '.join(HANDLER_NAMES)} or a callable, not {self.handler!r}")

    def skips(self, exn: BaseException) -> bool:
        """True when ``exn`` is to be skipped; raises it otherwise."""
        exn = explain(exn)
        if isinstance(exn, IntegrityError):
            raise exn
        if self.handler == "raise":
            raise exn
        if self.handler == "warn":
            log.warning("skipping: %s", exn)
        elif callable(self.handler) and not self.handler(exn):
            raise exn
        return True

    def __call__(self, exn: BaseException) -> bool:
        self.skips(exn)
        self.log.add(reason_of(exn))
        return True
