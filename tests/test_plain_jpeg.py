"""The structural probe's JPEG fast path (``validate.plain_jpeg_size``) says what Pillow's would.

Under ``--validate structure`` a JPEG with a plain header is described from the marker walk
alone, not from ``Image.open``. Whatever the bytes, the outcome must be the one the Pillow
path gives: the same format and size for an accepted file, the same reject reason and message
for a refused one. The fast path must also really be taken for the JPEGs cameras and encoders
write, and must step aside for the headers Pillow treats specially.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline import media
from pipeline.media import BadImage, ImageInfo, _probe_with_pillow, probe
from pipeline.validate import plain_jpeg_size


def jpeg(mode: str = "RGB", size: tuple[int, int] = (48, 32), **options: Any) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 50).convert(mode).save(buf, "JPEG", **options)
    return buf.getvalue()


def segment(marker: int, body: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body


def with_segments(data: bytes, *segments: bytes) -> bytes:
    """``data`` with ``segments`` inserted right after its SOI."""
    return data[:2] + b"".join(segments) + data[2:]


def without_app0(data: bytes) -> bytes:
    assert data[2:4] == b"\xff\xe0"
    (length,) = struct.unpack_from(">H", data, 4)
    return data[:2] + data[4 + length :]


EXIF = Image.Exif()
EXIF[0x0128], EXIF[0x011A], EXIF[0x011B] = 2, 300.0, 300.0  # inches, 300 dpi

#: JPEGs the fast path describes by itself.
PLAIN = {
    "baseline": jpeg(quality=90),
    "progressive": jpeg(progressive=True),
    "restarts": jpeg(restart_marker_blocks=1),
    "gray": jpeg("L"),
    "cmyk": jpeg("CMYK"),
    "subsampled 4:4:4": jpeg(subsampling=0),
    "16-bit quantisation": jpeg(qtables=[[300] * 64]),
    "JFIF dpi and EXIF": jpeg(dpi=(72, 72), exif=EXIF.tobytes()),
    "ICC profile": jpeg(icc_profile=b"\0" * 3000),
    "comment": jpeg(comment=b"shot on a phone"),
    "odd size": jpeg(size=(1, 997)),
}

#: JPEGs Pillow opens that the fast path leaves to Pillow.
SPECIAL = {
    "EXIF without a JFIF dpi": without_app0(jpeg(exif=EXIF.tobytes())),
    "MPF index": with_segments(jpeg(), segment(0xE2, b"MPF\0" + b"\0" * 20)),
    "Photoshop block": with_segments(jpeg(), segment(0xED, b"Photoshop 3.0\x008BIM\x03\xed\0")),
    "fill bytes before a marker": jpeg()[:2] + b"\xff" + jpeg()[2:],
    "arithmetic coding SOF9": jpeg().replace(b"\xff\xc0", b"\xff\xc9", 1),
}


def sof(bits: int) -> bytes:
    return segment(0xC0, bytes((bits,)) + struct.pack(">HH", 32, 48) + b"\x01\x01\x11\x00")


#: Headers Pillow refuses (or reads otherwise) that a careless walk would take as plain.
REFUSED = {
    "12-bit SOF first, 8-bit SOF after": with_segments(jpeg("L"), sof(12)),
    "two SOFs, Pillow keeps the last": with_segments(jpeg("L"), sof(8)).replace(b"\xff\xc0", b"\xff\xc1", 1),
    "SOF cut to its length field": jpeg()[:2] + b"\xff\xc0\x00\x02",
    "SOF without components": with_segments(jpeg(), segment(0xC0, b"\x08\x00\x20\x00\x30")),
    "Adobe segment too short for its fields": with_segments(jpeg(), segment(0xEE, b"Adobe")),
    "JFIF segment too short for its version": with_segments(jpeg(), segment(0xE0, b"JFIF\0")),
}


def outcome(fn: Any, data: bytes, **options: Any) -> ImageInfo | tuple[str, str]:
    try:
        return fn(data, **options)
    except BadImage as e:
        return e.reason, str(e)


def same_as_pillow(data: bytes, **options: Any) -> ImageInfo | tuple[str, str]:
    options = {"formats": ("JPEG", "PNG", "WEBP"), "max_pixels": 100_000_000, **options}
    fast = outcome(probe, data, decode=False, structure=True, **options)
    assert fast == outcome(_probe_with_pillow, data, decode=False, structure=True, **options)
    return fast


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_jpegs_are_described_by_the_walk_as_pillow_describes_them(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = PLAIN[name]
    with Image.open(io.BytesIO(data)) as img:
        assert plain_jpeg_size(data) == img.size
    info = same_as_pillow(data)
    assert isinstance(info, ImageInfo) and info.format == "JPEG"

    def no_pillow(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the probe opened a plain JPEG with Pillow")

    monkeypatch.setattr(media, "_probe_with_pillow", no_pillow)
    assert probe(data, decode=False, structure=True) == info


@pytest.mark.parametrize("name", sorted(SPECIAL))
def test_headers_pillow_treats_specially_are_left_to_pillow(name: str) -> None:
    data = SPECIAL[name]
    assert plain_jpeg_size(data) is None
    same_as_pillow(data)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_headers_the_walk_must_not_take_as_plain(name: str) -> None:
    data = REFUSED[name]
    assert plain_jpeg_size(data) is None
    same_as_pillow(data)


def test_the_pixel_caps_are_pillows_and_the_users() -> None:
    data = PLAIN["baseline"]  # 48 x 32
    assert same_as_pillow(data, max_pixels=48 * 32) == probe(data, decode=True)
    reason, message = same_as_pillow(data, max_pixels=48 * 32 - 1)
    assert reason == "decompression_bomb" and "48x32" in message


def test_a_plain_jpeg_refused_by_the_allowed_formats_is_left_to_pillow() -> None:
    reason, message = same_as_pillow(PLAIN["baseline"], formats=("PNG",))
    assert reason == "unsupported_format" and "JPEG" in message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(PLAIN) + sorted(SPECIAL) + sorted(REFUSED)),
    edits=st.lists(
        st.tuples(st.sampled_from(["cut", "flip", "insert", "drop"]), st.floats(0, 1), st.integers(0, 255)),
        min_size=1,
        max_size=3,
    ),
    near_header=st.booleans(),
)
def test_damaged_jpegs_get_the_outcome_pillow_gives(
    name: str, edits: list[tuple[str, float, int]], near_header: bool
) -> None:
    data = bytearray({**PLAIN, **SPECIAL, **REFUSED}[name])
    header = data.find(b"\xff\xda") + 12  # most edits land where the walk and Pillow both look
    for kind, where, value in edits:
        at = int(where * ((header if near_header else len(data)) - 1))
        if kind == "cut":
            del data[max(at, 1) :]
        elif kind == "flip" and 0 <= at < len(data):
            data[at] = value
        elif kind == "insert":
            data[at:at] = bytes((value,))
        elif kind == "drop":
            del data[at : at + 1 + value % 4]
    assume(data)  # empty bytes are refused before either path looks
    same_as_pillow(bytes(data))


def header_segments(data: bytes) -> tuple[list[bytes], bytes]:
    """The segments between SOI and the first SOS, and the rest (from the SOS on)."""
    pos, segments = 2, []
    while data[pos + 1] != 0xDA:
        (length,) = struct.unpack_from(">H", data, pos + 2)
        segments.append(data[pos : pos + 2 + length])
        pos += 2 + length
    return segments, data[pos:]


MARKERS = [0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC9, 0xCC, 0xDB, 0xDC, 0xDD, 0xE0, 0xE1, 0xE2, 0xED, 0xEE, 0xEF, 0xF0, 0xFE]
PREFIXES = [b"", b"\x08", b"JFIF\0", b"Exif\0\0", b"MPF\0", b"ICC_PROFILE\0", b"Photoshop 3.0\0", b"Adobe"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(PLAIN)),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["duplicate", "delete", "swap", "retag", "insert"]),
            st.integers(0, 63),
            st.integers(0, 63),
            st.sampled_from(MARKERS),
            st.sampled_from(PREFIXES),
            st.binary(max_size=140),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_rearranged_headers_get_the_outcome_pillow_gives(name: str, edits: list[tuple[Any, ...]]) -> None:
    """Whole segments duplicated, dropped, swapped, re-tagged or made up: the cases byte edits rarely reach."""
    segments, rest = header_segments(PLAIN[name])
    for kind, i, j, marker, prefix, body in edits:
        i, j = i % (len(segments) + 1), j % (len(segments) + 1)
        if kind == "insert":
            segments.insert(i, segment(marker, prefix + body))
        elif not segments:
            continue
        elif kind == "duplicate":
            segments.insert(j, segments[i % len(segments)])
        elif kind == "delete":
            del segments[i % len(segments)]
        elif kind == "swap":
            a, b = i % len(segments), j % len(segments)
            segments[a], segments[b] = segments[b], segments[a]
        else:
            a = i % len(segments)
            segments[a] = segments[a][:1] + bytes((marker,)) + segments[a][2:]
    same_as_pillow(b"\xff\xd8" + b"".join(segments) + rest)
