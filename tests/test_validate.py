"""Structural validation: whole files of every kind pass; cut or damaged containers fail,
under the same reject reason as a full decode gives."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from synth import flickr_token_file, image_bytes, write_images

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.errors import OutputError, UsageError
from pipeline.media import BadImage, probe
from pipeline.readers import SourceSpec
from pipeline.validate import StructureError, check_structure


def encoded(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def noisy(size: tuple[int, int] = (96, 64), mode: str = "RGB") -> Image.Image:
    return Image.effect_noise(size, 60).convert(mode)


def frames() -> list[Image.Image]:
    return [noisy((40, 30)), Image.new("RGB", (40, 30), (200, 10, 10))]


GOOD: dict[str, tuple[bytes, str]] = {
    "baseline.jpg": (encoded(noisy(), "JPEG", quality=90), "JPEG"),
    "progressive.jpg": (encoded(noisy(), "JPEG", progressive=True), "JPEG"),
    "restarts.jpg": (encoded(noisy(), "JPEG", restart_marker_blocks=2), "JPEG"),
    "gray.jpg": (encoded(noisy(mode="L"), "JPEG"), "JPEG"),
    "cmyk.jpg": (encoded(noisy(mode="CMYK"), "JPEG"), "JPEG"),
    "exif.jpg": (encoded(noisy(), "JPEG", exif=Image.Exif().tobytes() + b"\xff" * 9), "JPEG"),
    "synth.jpg": (image_bytes(3), "JPEG"),
    "rgb.png": (encoded(noisy(), "PNG"), "PNG"),
    "interlaced.png": (encoded(noisy(), "PNG", interlace=1), "PNG"),
    "palette.png": (encoded(noisy().convert("P"), "PNG", transparency=0), "PNG"),
    "deep16.png": (encoded(Image.new("I;16", (40, 30), 40000), "PNG"), "PNG"),
    "lossy.webp": (encoded(noisy(), "WEBP", quality=80), "WEBP"),
    "lossless.webp": (encoded(noisy(), "WEBP", lossless=True), "WEBP"),
    "alpha.webp": (encoded(noisy(mode="RGBA"), "WEBP"), "WEBP"),
    "animated.webp": (encoded(frames()[0], "WEBP", save_all=True, append_images=frames()[1:]), "WEBP"),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_whole_files_pass_and_trailing_bytes_are_tolerated(name: str) -> None:
    data, fmt = GOOD[name]
    check_structure(data, fmt)
    check_structure(data + b"\0\0trailing", fmt)
    info = probe(data, decode=False, structure=True)
    assert info.format == fmt and info.n_bytes == len(data)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_every_truncation_fails(name: str) -> None:
    data, fmt = GOOD[name]
    cuts = sorted({1, 2, 3, 8, 12, 20, 100, len(data) // 3, len(data) // 2, len(data) - 9, len(data) - 2,
                   len(data) - 1})
    cuts = [c for c in cuts if 0 < c < len(data)]
    for cut in cuts:
        with pytest.raises(StructureError):
            check_structure(data[:cut], fmt)


@pytest.mark.parametrize("name", ["baseline.jpg", "rgb.png", "lossy.webp"])
@pytest.mark.parametrize("validate", ["structure", "decode"])
def test_truncated_files_are_corrupt_images_under_both_modes(name: str, validate: str) -> None:
    data, _ = GOOD[name]
    with pytest.raises(BadImage) as caught:
        probe(data[: len(data) // 2], decode=validate == "decode", structure=validate == "structure")
    assert caught.value.reason == "corrupt_image"


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_of(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)) for kind, body in chunks
    )


def test_png_crc_and_chunk_order_are_checked() -> None:
    data, _ = GOOD["rgb.png"]
    chunks = png_chunks(data)
    assert png_of(chunks) == data
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    with pytest.raises(StructureError, match="fails its CRC"):
        check_structure(bytes(flipped), "PNG")
    with pytest.raises(StructureError, match="no IDAT"):
        check_structure(png_of([c for c in chunks if c[0] != b"IDAT"]), "PNG")
    with pytest.raises(StructureError, match="IHDR"):
        check_structure(png_of([chunks[-2], *chunks]), "PNG")


def test_jpeg_without_a_scan_or_with_a_broken_segment_fails() -> None:
    data, _ = GOOD["baseline.jpg"]
    sos = data.index(b"\xff\xda")
    with pytest.raises(StructureError, match="no image scan"):
        check_structure(data[:sos] + b"\xff\xd9", "JPEG")
    with pytest.raises(StructureError):
        check_structure(data[:4] + b"\xff\xff" + data[6:], "JPEG")  # first segment runs past the end


def test_webp_riff_size_must_cover_its_chunks() -> None:
    data, _ = GOOD["lossy.webp"]
    short = data[:4] + struct.pack("<I", len(data) - 20) + data[8:]
    with pytest.raises(StructureError, match="runs past the RIFF size"):
        check_structure(short, "WEBP")


def test_damage_inside_compressed_data_is_caught_only_by_decode() -> None:
    """What the README says: structure cannot see a corrupt zlib stream inside intact chunks."""
    data, _ = GOOD["rgb.png"]
    chunks = png_chunks(data)
    damaged = png_of([(k, b[:10] + bytes(255 - x for x in b[10:40]) + b[40:]) if k == b"IDAT" else (k, b)
                      for k, b in chunks])
    probe(damaged, decode=False, structure=True)
    with pytest.raises(BadImage) as caught:
        probe(damaged, decode=True)
    assert caught.value.reason == "corrupt_image"


def test_the_mode_is_a_build_option_that_changes_the_identity(tmp_path: Path) -> None:
    names = ["a.jpg", "b.jpg", "c.jpg"]
    write_images(tmp_path / "images", names)
    flickr_token_file(tmp_path / "c.token", names)
    spec = SourceSpec(path=str(tmp_path / "c.token"), images=tmp_path / "images")
    first = build(spec, BuildConfig(out=tmp_path / "out", workers=1))
    assert first.manifest["options"]["validate"] == "structure"
    with pytest.raises(OutputError, match="different input or options"):
        build(spec, BuildConfig(out=tmp_path / "out", workers=1, validate="decode"))
    again = build(spec, BuildConfig(out=tmp_path / "dec", workers=1, validate="decode"))
    assert again.manifest["options"]["validate"] == "decode"
    assert shard_bytes(first.out) == shard_bytes(again.out)
    with pytest.raises(UsageError, match="--validate must be one of structure, decode, not 'pixels'"):
        BuildConfig(out=tmp_path / "x", validate="pixels")


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}
