"""Bad input on the ETL side: every bad row rejected with its reason, every unusual but valid
image and id accepted, malformed annotation files stopped in one line, the reject budget."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from synth import caption_text, image_bytes, nlphuji_dataset, write_images

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.readers import SourceSpec
from pipeline.validate import VALIDATE_MODES
from pipeline.verify import verify

KEY = re.compile(r"[A-Za-z0-9_-]+")


def capshard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


# --- real bad and unusual image files ------------------------------------------------------


def png_bomb(width: int, height: int, *, pixels: bool = True) -> bytes:
    """A grayscale PNG declaring ``width x height``; with ``pixels``, a real IDAT of zeros (~1000:1)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    idat = b""
    if pixels:
        z = zlib.compressobj(9)
        row = b"\0" * (width + 1)
        idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def unusual_images() -> dict[str, bytes]:
    """Valid images a naive pipeline gets wrong; capshard must store each as it is."""
    palette = Image.new("P", (30, 20), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] * 128)
    rotated = Image.new("RGB", (48, 32), (200, 30, 30))
    exif = rotated.getexif()
    exif[0x0112] = 6  # displayed rotated 90°
    return {
        "cmyk.jpg": encoded(Image.new("CMYK", (40, 30), (10, 200, 30, 40)), "JPEG"),
        "gray.jpg": encoded(Image.new("L", (40, 30), 90), "JPEG"),
        "palette_alpha.png": encoded(palette, "PNG", transparency=0),
        "deep16.png": encoded(Image.new("I;16", (40, 30), 40000), "PNG"),
        "exif_rotated.jpg": encoded(rotated, "JPEG", exif=exif.tobytes()),
        "café_ünï.jpg": image_bytes(900),
    }


def bad_images() -> dict[str, tuple[bytes | None, str]]:
    """File name -> (bytes, or None for no file; the reject reason capshard must give)."""
    jpeg = image_bytes(901)
    png = encoded(Image.effect_noise((60, 40), 50).convert("RGB"), "PNG")
    webp = encoded(Image.effect_noise((60, 40), 50).convert("RGB"), "WEBP")
    return {
        "missing.jpg": (None, "missing_image"),
        "zero.jpg": (b"", "empty_image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt_image"),
        "truncated.png": (png[: len(png) // 2], "corrupt_image"),
        "truncated.webp": (webp[: len(webp) // 2], "corrupt_image"),
        "page.jpg": (b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n", "not_an_image"),
        "notes.jpg": (b"these are my holiday notes, not a picture\n", "not_an_image"),
        "anim.gif": (encoded(Image.new("P", (20, 20)), "GIF"), "unsupported_format"),
        "bitmap.jpg": (encoded(Image.new("RGB", (20, 20)), "BMP"), "unsupported_format"),
        "bomb.png": (png_bomb(12_000, 12_000), "decompression_bomb"),
        "bomb_header.png": (png_bomb(100_000, 100_000, pixels=False), "decompression_bomb"),
        "../outside.jpg": (image_bytes(902), "path_outside_images"),
    }


def token_line(name: str, n: int, caption: bytes) -> bytes:
    return name.encode() + b"#" + str(n).encode() + b"\t" + caption + b"\n"


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, dict[str, bytes], dict[int, tuple[str, str]]]:
    """A Flickr-style folder mixing every bad input with good and unusual ones.

    Returns the token file, the good images (name -> bytes) and, per rejected 1-based
    line of the token file, (file name, reason).
    """
    images = tmp_path / "images"
    good = write_images(images, [f"{1000 + i}.jpg" for i in range(30)])
    for name, data in unusual_images().items():
        (images / name).write_bytes(data)
        good[name] = data
    lines: list[bytes] = []
    expected: dict[int, tuple[str, str]] = {}
    for i, name in enumerate(good):
        for n in range(5):
            text = caption_text(i, n)
            if i == 0:
                text = ["Ein Hund läuft über die Wiese 🐕", "狗在草地上跑", "собака бежит", "كلب يجري", text][n]
            lines.append(token_line(name, n, text.encode()))
    for name, (data, reason) in bad_images().items():
        if data is not None:
            (images / name).write_bytes(data)
        lines.append(token_line(name, 0, b"a caption for a bad image ."))
        expected[len(lines)] = (name, reason)
    bad_captions = [
        (b"", "empty_caption"),
        (b"   \t  ", "empty_caption"),
        (b"a dog \xff\xfe runs in latin-1 \xe9", "caption_not_utf8"),
        (b"x" * 2001, "caption_too_long"),
    ]
    for i, (caption, reason) in enumerate(bad_captions, 1):
        name = f"{1000 + i}.jpg"
        lines.append(token_line(name, 5, caption))
        expected[len(lines)] = (name, reason)
    token = tmp_path / "captions.token"
    token.write_bytes(b"".join(lines))
    return token, good, expected


def samples_of(out: Path) -> dict[str, dict[str, bytes]]:
    """image_id -> {extension: bytes} over every shard of a build."""
    found: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("*.tar")):
        by_key: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                by_key.setdefault(key, {})[ext] = tar.extractfile(m).read()  # type: ignore[union-attr]
        for members in by_key.values():
            found[json.loads(members["json"])["image_id"]] = members
    return found


@pytest.mark.parametrize("validate", VALIDATE_MODES)
def test_mixed_folder_builds_within_the_budget_with_every_bad_row_rejected(
    mixed: tuple[Path, dict[str, bytes], dict[int, tuple[str, str]]], tmp_path: Path, validate: str
) -> None:
    token, good, expected = mixed
    proc = capshard("build", str(token), "--format", "flickr", "--images", "images", "--out", "out", "--json",
                    "--validate", validate, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)["manifest"]
    rows = 5 * len(good) + len(expected)
    assert manifest["options"]["validate"] == validate
    assert manifest["counts"] == {"rows": rows, "images": len(good), "captions": 5 * len(good),
                                  "rejected_rows": len(expected)}

    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    got = {int(r["location"].rsplit(":", 1)[1]): r for r in rejects}
    assert {line: r["reason"] for line, r in got.items()} == {line: reason for line, (_, reason) in expected.items()}
    for line, record in got.items():
        assert record["location"] == f"captions.token:{line}" and record["detail"], record
    assert "over the cap of 100000000" in got[next(k for k, v in expected.items() if v[0] == "bomb.png")]["detail"]
    assert "outside the image folder" in got[next(k for k, v in expected.items() if v[0] == "../outside.jpg")]["detail"]

    stored = samples_of(tmp_path / "out")
    assert set(stored) == set(good)
    for name, data in good.items():
        ext = "png" if name.endswith(".png") else "jpg"
        assert stored[name][ext] == data, name  # stored as they are, EXIF and all
        meta = json.loads(stored[name]["json"])
        assert len(meta["captions"]) == 5
    first = json.loads(stored["1000.jpg"]["json"])["captions"]
    assert first[:2] == ["Ein Hund läuft über die Wiese 🐕", "狗在草地上跑"]
    assert stored["1000.jpg"]["txt"].decode("utf-8").splitlines()[2] == "собака бежит"

    checked = capshard("verify", "out", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"= {rows} rows" in checked.stdout


def test_unusual_images_reencode_when_resizing(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for i, (name, data) in enumerate(unusual_images().items()):
        (images / name).write_bytes(data)
        lines += [token_line(name, n, caption_text(i, n).encode()) for n in range(2)]
    (tmp_path / "c.token").write_bytes(b"".join(lines))
    result = build(SourceSpec(path=str(tmp_path / "c.token"), images=images),
                   BuildConfig(out=tmp_path / "out", workers=1, resize=16))
    assert result.manifest["counts"]["rejected_rows"] == 0
    stored = samples_of(result.out)
    assert set(stored) == set(unusual_images())
    for name, members in stored.items():
        ext = "png" if name.endswith(".png") else "jpg"
        img = Image.open(io.BytesIO(members[ext]))
        meta = json.loads(members["json"])
        assert (meta["width"], meta["height"]) == img.size and min(img.size) == 16, name
        assert meta["sha256"] == hashlib.sha256(members[ext]).hexdigest()
    assert Image.open(io.BytesIO(stored["exif_rotated.jpg"]["jpg"])).size == (16, 24)  # upright: portrait
    assert Image.open(io.BytesIO(stored["cmyk.jpg"]["jpg"])).mode == "RGB"
    assert verify(result.out).ok


@pytest.mark.parametrize("validate", VALIDATE_MODES)
def test_the_pixel_cap_is_configurable(tmp_path: Path, validate: str) -> None:
    write_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    (tmp_path / "images" / "wide.png").write_bytes(encoded(Image.new("L", (1100, 1000)), "PNG"))
    lines = [token_line(n, k, caption_text(i, k).encode()) for i, n in enumerate(["a.jpg", "b.jpg", "wide.png"])
             for k in range(2)]
    (tmp_path / "c.token").write_bytes(b"".join(lines))
    spec = SourceSpec(path=str(tmp_path / "c.token"), images=tmp_path / "images")
    default = build(spec, BuildConfig(out=tmp_path / "default", workers=1, validate=validate))
    assert default.manifest["counts"]["images"] == 3
    capped = build(spec, BuildConfig(out=tmp_path / "capped", workers=1, max_pixels=1_000_000,
                                     max_reject_fraction=0.5, validate=validate))
    assert capped.manifest["rejects"]["by_reason"] == {"decompression_bomb": 2}
    reject = json.loads((tmp_path / "capped" / "rejects.jsonl").read_text().splitlines()[0])
    assert reject["detail"] == "image declares 1100x1000 = 1100000 pixels, over the cap of 1000000"


# --- ids: dots, slashes, spaces, non-ASCII -------------------------------------------------

ODD_IDS = ["a.b.c", "dir/sub/x", "with space", "日本語", "café.jpg", "..", "/abs/path", "a_b", "a-b", "a.b"]


def check_odd_ids(out: Path) -> None:
    stored = samples_of(out)
    assert set(stored) == set(ODD_IDS)
    keys = set()
    with tarfile.open(next(out.glob("*.tar"))) as tar:
        names = tar.getnames()
    for shard in out.glob("*.tar"):
        with tarfile.open(shard) as tar:
            keys.update(n.split(".", 1)[0] for n in tar.getnames())
    assert len(keys) == len(ODD_IDS)
    assert all(KEY.fullmatch(k) for k in keys), keys
    assert all(n.count(".") == 1 for n in names)
    assert verify(out).ok


def test_odd_ids_from_a_table_are_kept_and_keys_sanitised(tmp_path: Path) -> None:
    folder = tmp_path / "pics with spaces" / "ünï"
    records = []
    for i, image_id in enumerate(ODD_IDS):
        name = f"{i} photo.v2.jpg"
        write_images(folder, [name], start=100 + i)
        for n in range(2):
            records.append({"path": f"pics with spaces/ünï/{name}", "text": caption_text(i, n), "id": image_id})
    table = tmp_path / "pairs.jsonl"
    table.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    proc = capshard("build", str(table), "--format", "table", "--image-column", "path", "--caption-column", "text",
                    "--id-column", "id", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    check_odd_ids(tmp_path / "out")


def test_odd_ids_from_a_hugging_face_dataset(tmp_path: Path) -> None:
    ds = nlphuji_dataset(len(ODD_IDS), splits=("train",))
    ds = ds.remove_columns("img_id").add_column("img_id", ODD_IDS)
    build(SourceSpec(dataset=ds), BuildConfig(out=tmp_path / "out", workers=1))
    check_odd_ids(tmp_path / "out")


# --- malformed annotation files: one line naming file and line -----------------------------

MALFORMED = {
    "coco": ("captions_val2017.json", b'{"images": [{"id": 1, "file_name": "a.jpg"}],\n "annotations": [,]}\n',
             "captions_val2017.json:2: not valid JSON"),
    "karpathy": ("dataset_flickr8k.json", b'{"images": [\n{"filename": "a.jpg", "sentences": [}]}\n',
                 "dataset_flickr8k.json:2: not valid JSON"),
    "flickr": ("Flickr8k.token.txt", b"a.jpg#0\ta dog .\nthis line lost its tab and its number\n",
               "Flickr8k.token.txt:2: expected NAME#N<TAB>caption"),
    "table": ("pairs.csv", b"image,caption\na.jpg,a dog\nb.jpg,a cat,an extra field\n",
              "pairs.csv:3: expected 2 fields (image, caption), found 3"),
}


@pytest.mark.parametrize("fmt", sorted(MALFORMED))
def test_a_malformed_annotation_file_is_one_line_naming_file_and_line(fmt: str, tmp_path: Path) -> None:
    name, content, message = MALFORMED[fmt]
    (tmp_path / name).write_bytes(content)
    write_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    proc = capshard("build", name, "--format", fmt, "--images", "images", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("capshard: error: "), proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


# --- the reject budget ---------------------------------------------------------------------


def test_over_the_reject_budget_fails_after_writing_the_report(tmp_path: Path) -> None:
    names = [f"{i}.jpg" for i in range(10)]
    write_images(tmp_path / "images", names[:7])
    for name in names[7:]:
        (tmp_path / "images" / name).write_bytes(b"<html>gone</html>")
    (tmp_path / "c.token").write_bytes(b"".join(token_line(n, k, b"a caption") for n in names for k in range(3)))
    args = ["build", "c.token", "--format", "flickr", "--images", "images", "--out", "out"]
    proc = capshard(*args, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "capshard: error: 9 of 30 rows rejected (30.0%), over --max-reject-fraction 0.1 (not_an_image: 9); "
        "see out/rejects.jsonl."
    )
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["row_id"] for r in rejects] == list(range(21, 30))
    assert {r["reason"] for r in rejects} == {"not_an_image"}
    # .capshard/ holds the ledger that marks rejects.jsonl as capshard's, for the next run to replace.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".capshard", "rejects.jsonl"]

    # A bigger budget, same --out: the failed run's report is replaced by a finished build.
    proc = capshard(*args, "--max-reject-fraction", "0.3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert capshard("verify", "out", cwd=tmp_path).returncode == 0


def test_a_wrong_images_folder_is_noticed_and_the_right_one_reuses_the_folder(tmp_path: Path) -> None:
    names = [f"{i}.jpg" for i in range(6)]
    write_images(tmp_path / "images", names)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "c.token").write_bytes(b"".join(token_line(n, k, b"a caption") for n in names for k in range(2)))
    wrong = capshard("build", "c.token", "--images", "elsewhere", "--out", "out", cwd=tmp_path)
    assert wrong.returncode == 1
    assert "12 of 12 rows rejected" in wrong.stderr and "Is --images the right folder?" in wrong.stderr
    right = capshard("build", "c.token", "--images", "images", "--out", "out", cwd=tmp_path)
    assert right.returncode == 0, right.stderr


# --- property: whatever the mix, every row is in a shard or rejected ------------------------

ROW_KINDS = {
    "good": None,
    "missing": "missing_image",
    "empty_file": "empty_image",
    "truncated": "corrupt_image",
    "html": "not_an_image",
    "gif": "unsupported_format",
    "empty_caption": "empty_caption",
    "long_caption": "caption_too_long",
    "bad_utf8": "caption_not_utf8",
}
_JPEG = image_bytes(7)
_FILES = {
    "empty_file": b"",
    "truncated": _JPEG[: len(_JPEG) // 3],
    "html": b"<html><body>moved</body></html>",
    "gif": encoded(Image.new("P", (8, 8)), "GIF"),
}


@pytest.mark.parametrize("validate", VALIDATE_MODES)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from(sorted(ROW_KINDS)), st.integers(0, 5)), min_size=1, max_size=14))
def test_any_mix_of_good_and_bad_rows_is_fully_accounted_for(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, int]], validate: str
) -> None:
    root = tmp_path_factory.mktemp("mix")
    images = root / "images"
    images.mkdir()
    lines = []
    for row_id, (kind, picture) in enumerate(rows):
        caption = f"caption {row_id} of picture {picture}"
        path = f"{picture}.jpg"
        if kind == "good" or kind.endswith(("caption", "utf8")):
            (images / path).write_bytes(image_bytes(100 + picture))
        elif kind == "missing":
            path = f"missing_{picture}.jpg"
        else:
            path = f"{kind}.jpg"
            (images / path).write_bytes(_FILES[kind])
        if kind == "empty_caption":
            caption = " "
        elif kind == "long_caption":
            caption = "y" * 2001
        line = json.dumps({"image": path, "caption": caption}).encode()
        if kind == "bad_utf8":
            line = line.replace(b"caption ", b"caption \xff", 1)
        lines.append(line + b"\n")
    (root / "rows.jsonl").write_bytes(b"".join(lines))
    out = root / "out"
    m = build(SourceSpec(path=str(root / "rows.jsonl"), images=images),
              BuildConfig(out=out, format="table", workers=1, max_reject_fraction=1.0, validate=validate)).manifest

    expected = [ROW_KINDS[kind] for kind, _ in rows]
    assert m["counts"]["rows"] == len(rows)
    assert m["counts"]["captions"] + m["counts"]["rejected_rows"] == len(rows)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert {r["row_id"]: r["reason"] for r in rejects} == {i: r for i, r in enumerate(expected) if r is not None}
    in_shards = sorted(r for s in samples_of(out).values() for r in json.loads(s["json"])["source"]["row_ids"])
    assert in_shards == [i for i, r in enumerate(expected) if r is None]
    assert verify(out).ok
    assert not os.listdir(out) or "manifest.json" in os.listdir(out)
