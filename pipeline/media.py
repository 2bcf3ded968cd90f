"""Image bytes: validate and describe them (probe), and re-encode them (resize).

The probe reads the header first, so a decompression bomb is refused before any pixel
is decoded, then proves the file whole, by walking its container (``structure``, see
:mod:`.validate`) or by decoding it (``decode``, at reduced scale where the codec allows
it), so a truncated or corrupt file is caught at build time rather than at epoch 40.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from .validate import StructureError, check_structure, plain_jpeg_size

#: Formats stored as they are; anything else is rejected (``unsupported_format``).
DEFAULT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
#: Default pixel cap (width x height) above which an image is refused as a bomb.
DEFAULT_MAX_PIXELS = 100_000_000
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass(frozen=True)
class ImageInfo:
    """What the probe learns about valid image bytes."""

    sha256: str
    n_bytes: int
    format: str
    width: int
    height: int


class BadImage(Exception):
    """Bytes that are not an acceptable image; ``reason`` is the reject code."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def probe(
    data: bytes,
    *,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode: bool = True,
    structure: bool = False,
) -> ImageInfo:
    """Validate ``data`` and describe it; raises :class:`BadImage` with a reject reason.

    After the header (format, size, pixel cap): ``decode`` decodes the pixels; else
    ``structure`` walks the container (:mod:`.validate`); else the header is all. Under
    ``structure``, a whole JPEG with a plain header is described from that walk alone
    (:func:`.validate.plain_jpeg_size`); every other file goes through Pillow's header parse.
    """
    if not data:
        raise BadImage("empty_image", "image file is empty (0 bytes)")
    if structure and not decode and set(formats) <= _PLAIN_FORMATS and "JPEG" in formats:
        size = plain_jpeg_size(data)
        if size is not None and size[0] * size[1] <= min(max_pixels, _pillow_pixel_limit()):
            return _info(data, "JPEG", *size)
    return _probe_with_pillow(data, formats=formats, max_pixels=max_pixels, decode=decode, structure=structure)


#: Formats whose Pillow plug-ins never claim a JPEG's bytes (an MPO plug-in would).
_PLAIN_FORMATS = frozenset(DEFAULT_FORMATS)


def _pillow_pixel_limit() -> float:
    """Above this many pixels ``Image.open`` raises its own DecompressionBombError."""
    return float("inf") if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


def _info(data: bytes, fmt: str, width: int, height: int) -> ImageInfo:
    return ImageInfo(sha256=hashlib.sha256(data).hexdigest(), n_bytes=len(data), format=fmt, width=width, height=height)


def _probe_with_pillow(
    data: bytes, *, formats: tuple[str, ...], max_pixels: int, decode: bool, structure: bool
) -> ImageInfo:
    """:func:`probe` by Pillow: ``Image.open`` reads the header, then the chosen check runs."""
    try:
        # formats= is Pillow's allowlist: other plug-ins never see the bytes.
        with warnings.catch_warnings():
            # max_pixels is the cap, not Pillow's default warning threshold (89.5 MP); Pillow
            # still raises DecompressionBombError above twice that, whatever max_pixels says.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(formats))
            width, height = img.size
            if width * height > max_pixels:
                raise BadImage(
                    "decompression_bomb",
                    f"image declares {width}x{height} = {width * height} pixels, over the cap of {max_pixels}",
                )
            if decode:
                if img.format == "JPEG":
                    img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
                img.load()
            elif structure:
                check_structure(data, img.format or "")
            fmt = img.format or ""
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(*_classify_unidentified(data, formats)) from None
    except StructureError as e:
        raise BadImage("corrupt_image", f"image is truncated or malformed: {e}") from None
    except Image.DecompressionBombError as e:
        raise BadImage("decompression_bomb", str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImage("corrupt_image", f"image cannot be decoded: {e}") from None
    return _info(data, fmt, width, height)


def _classify_unidentified(data: bytes, formats: tuple[str, ...]) -> tuple[str, str]:
    """Reject reason and message for bytes that no allowed plug-in recognised."""
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head")):
        return "not_an_image", "file is HTML/XML text, not an image"
    try:
        # Header only: which format is it, to say why it is refused.
        other_format = Image.open(io.BytesIO(data)).format
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        other_format = None
    if other_format:
        return (
            "unsupported_format",
            f"image format {other_format} is not allowed (allowed: {', '.join(formats)})",
        )
    if all(32 <= b < 127 or b in (9, 10, 13) for b in data[:512]):
        return "not_an_image", "file is text, not an image"
    return "not_an_image", "bytes are not a recognised image"


def resize(data: bytes, shorter_side: int, *, quality: int = 95) -> tuple[bytes, str, int, int]:
    """Re-encode so the shorter side is at most ``shorter_side`` (never upscaled).

    EXIF orientation is applied first, so the stored pixels are upright. JPEG stays JPEG
    (quality ``quality``), PNG stays PNG, WebP stays WebP. Returns bytes, format, width, height.
    Output is deterministic for the same input and Pillow version.
    """
    with Image.open(io.BytesIO(data)) as src:
        fmt = src.format or "PNG"
        img = ImageOps.exif_transpose(src)
        w, h = img.size
        scale = shorter_side / min(w, h)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        out = io.BytesIO()
        if fmt == "JPEG":
            if img.mode not in ("RGB", "L"):
                img = img.convert("RGB")
            img.save(out, "JPEG", quality=quality, optimize=False, progressive=False)
        elif fmt == "WEBP":
            img.save(out, "WEBP", quality=quality, method=4)
        else:
            fmt = "PNG"
            img.save(out, "PNG", optimize=False)
        return out.getvalue(), fmt, img.size[0], img.size[1]
