"""Image checks and re-encoding (pipeline.media): what is accepted, what each refusal is called."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image
from synth import image_bytes

from pipeline.media import BadImage, probe, resize


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_an_allowed_image_is_described(fmt: str) -> None:
    data = image_bytes(3, fmt, (40, 30))
    info = probe(data, structure=True, decode=False)
    assert (info.format, info.width, info.height, info.n_bytes) == (fmt, 40, 30, len(data))
    assert info.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("data", "options", "reason", "message"),
    [
        (b"", {}, "empty_image", "image file is empty (0 bytes)"),
        (b"<!DOCTYPE html><html>404</html>", {}, "not_an_image", "file is HTML/XML text, not an image"),
        (b"just some words\n", {}, "not_an_image", "file is text, not an image"),
        (bytes(range(256)) * 4, {}, "not_an_image", "bytes are not a recognised image"),
        (image_bytes(1, "GIF"), {}, "unsupported_format", "image format GIF is not allowed (allowed: JPEG, PNG, WEBP)"),
        (image_bytes(1, "PNG"), {"max_pixels": 100}, "decompression_bomb",
         "image declares 32x24 = 768 pixels, over the cap of 100"),
        (image_bytes(1, "PNG"), {"formats": ("JPEG",)}, "unsupported_format",
         "image format PNG is not allowed (allowed: JPEG)"),
    ],
)
def test_refused_bytes_name_their_reason(data: bytes, options: dict[str, object], reason: str, message: str) -> None:
    with pytest.raises(BadImage) as e:
        probe(data, **options)  # type: ignore[arg-type]
    assert (e.value.reason, str(e.value)) == (reason, message)


@pytest.mark.parametrize("check", [{"decode": True}, {"decode": False, "structure": True}])
def test_a_truncated_image_is_corrupt(check: dict[str, bool]) -> None:
    data = image_bytes(5, "PNG", (64, 64))
    with pytest.raises(BadImage) as e:
        probe(data[: len(data) // 2], **check)
    assert e.value.reason == "corrupt_image"


def test_resize_keeps_the_format_shrinks_the_shorter_side_and_is_deterministic() -> None:
    for fmt in ("JPEG", "PNG", "WEBP"):
        data = image_bytes(7, fmt, (64, 48))
        out, got_fmt, width, height = resize(data, 24)
        assert (got_fmt, width, height) == (fmt, 32, 24)
        assert Image.open(io.BytesIO(out)).size == (32, 24)
        assert resize(data, 24)[0] == out
    small = image_bytes(7, "PNG", (10, 8))
    assert resize(small, 24)[2:] == (10, 8)  # never upscaled
