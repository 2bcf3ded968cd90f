"""``capshard verify``: intact builds pass; damaged, missing, extra and hostile shards are named."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from synth import flickr_token_file, write_images

from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.readers import SourceSpec
from pipeline.verify import MAX_TEXT_BYTES, verify


def capshard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def built(tmp_path: Path) -> Path:
    """A finished build: 12 images (one missing, so rejects.jsonl has lines), 3 captions each, 4 per shard."""
    names = [f"{i}.jpg" for i in range(12)]
    write_images(tmp_path / "images", names[:11])
    flickr_token_file(tmp_path / "captions.token", names, 3)
    out = tmp_path / "b"
    build(
        SourceSpec(path=str(tmp_path / "captions.token"), images=tmp_path / "images"),
        BuildConfig(out=out, workers=1, max_images_per_shard=4),
    )
    return out


def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def rewrite_shard(build_dir: Path, name: str, entries: list[tuple[tarfile.TarInfo, bytes]], fmt: int) -> None:
    """Replace a shard and, like an attacker who controls the folder, update the manifest to match."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    (build_dir / name).write_bytes(buf.getvalue())
    manifest = json.loads((build_dir / "manifest.json").read_text())
    for shard in manifest["splits"]["train"]["shards"]:
        if shard["name"] == name:
            shard["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
            shard["bytes"] = len(buf.getvalue())
    (build_dir / "manifest.json").write_text(json.dumps(manifest))


def member(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def test_an_intact_build_verifies(built: Path) -> None:
    proc = capshard("verify", str(built), cwd=built.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == (
        f"verified {built}: 3 shards intact, 11 images, 33 captions + 3 rejected rows = 36 rows"
    )
    report = json.loads(capshard("verify", str(built), "--json", "--decode", cwd=built.parent).stdout)
    assert report["ok"] is True
    assert [s["status"] for s in report["shards"]] == ["ok"] * 3
    assert report["counts"] == {"rows": 36, "images": 11, "captions": 33, "rejected_rows": 3}


def test_one_flipped_byte_one_deleted_and_one_extra_shard_are_each_named(built: Path) -> None:
    shard = built / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # inside the first image's bytes
    shard.write_bytes(bytes(data))
    (built / "train-000002.tar").unlink()
    (built / "train-000009.tar").write_bytes((built / "train-000000.tar").read_bytes())

    proc = capshard("verify", str(built), cwd=built.parent)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert any(line.startswith("train-000001.tar: damaged: sha256 ") for line in lines), lines
    assert any(line.startswith("train-000001.tar: damaged: sample ") and "do not match the sha256" in line
               for line in lines), lines
    assert "train-000002.tar: missing: listed in manifest.json, not on disk" in lines
    assert "train-000009.tar: extra: not listed in manifest.json" in lines
    assert not any(line.startswith("train-000000.tar") for line in lines)
    assert any(line.startswith("build: accounting: ") for line in lines)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "failed verification" in proc.stderr and "train-000001.tar" in proc.stderr

    report = json.loads(capshard("verify", str(built), "--json", cwd=built.parent).stdout)
    assert report["ok"] is False
    assert {s["name"]: s["status"] for s in report["shards"]} == {
        "train-000000.tar": "ok", "train-000001.tar": "damaged", "train-000002.tar": "missing",
        "train-000009.tar": "extra",
    }


def test_a_flipped_byte_in_a_tar_header_is_found(built: Path) -> None:
    shard = built / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    second_header = 512 + -(-members(shard)[0][0].size // 512) * 512
    data[second_header + 10] ^= 0x01  # a member name byte: the header checksum no longer matches
    shard.write_bytes(bytes(data))
    problems = [p.line() for p in verify(built).problems]
    assert any("train-000000.tar: damaged: unreadable tar header at byte" in p for p in problems), problems


def test_tampered_accounting_is_found(built: Path) -> None:
    rejects = (built / "rejects.jsonl").read_text().splitlines()
    (built / "rejects.jsonl").write_text("\n".join(rejects[1:]) + "\n")
    problems = [p.line() for p in verify(built).problems]
    assert "build: accounting: 33 rows in shards + 2 rejected != counts.rows 36" in problems
    assert "build: accounting: 1 input rows are in no shard and no line of rejects.jsonl" in problems

    (built / "rejects.jsonl").write_text("\n".join([*rejects, rejects[0]]) + "\n")
    problems = [p.line() for p in verify(built).problems]
    assert any(p.startswith("build: accounting: 1 input rows are counted twice") for p in problems), problems

    (built / "rejects.jsonl").write_text("\n".join(rejects) + "\n")
    manifest = json.loads((built / "manifest.json").read_text())
    manifest["counts"]["rows"] = 10**15  # a lying manifest must not make verify allocate a petabyte
    (built / "manifest.json").write_text(json.dumps(manifest))
    problems = [p.line() for p in verify(built).problems]
    assert f"build: accounting: 33 rows in shards + 3 rejected != counts.rows {10**15}" in problems
    assert f"build: accounting: {10**15 - 36} input rows are in no shard and no line of rejects.jsonl" in problems


def test_a_hostile_shard_is_reported_member_by_member_and_nothing_is_written(built: Path, tmp_path: Path) -> None:
    name = "train-000000.tar"
    good = members(built / name)
    hostile = [
        member("../../escaped.jpg", b"x"),
        member("/tmp/absolute.txt", b"x"),
        member("sub/dir.json", b"{}"),
        member("link.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd"),
        member("hard.jpg", kind=tarfile.LNKTYPE, link="../../etc/passwd"),
        member("dev.jpg", kind=tarfile.CHRTYPE),
        member("fifo.txt", kind=tarfile.FIFOTYPE),
        member("folder", kind=tarfile.DIRTYPE),
        member("esc\x1b[31mred\nnext.txt", b"x"),
        member("deep.json", b"[" * 100_000 + b"]" * 100_000),
        member("deep.jpg", good[0][1]),
        member("deep.txt", b"x\n"),
        member("huge.json", b" " * (MAX_TEXT_BYTES + 1)),
    ]
    rewrite_shard(built, name, [*good, *hostile], tarfile.USTAR_FORMAT)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    report = verify(built)
    lines = [p.line() for p in report.problems if p.where == name]
    expected = [
        "member name '../../escaped.jpg' is not KEY.jpg|png|webp|json|txt; not read",
        "member name '/tmp/absolute.txt' is not KEY",
        "member name 'sub/dir.json' is not KEY",
        "member 'link.jpg' is a symlink, not a regular file",
        "member 'hard.jpg' is a hard link, not a regular file",
        "member 'dev.jpg' is a character device, not a regular file",
        "member 'fifo.txt' is a fifo, not a regular file",
        "member 'folder' is a directory",
        "member name 'esc\\x1b[31mred\\nnext.txt' is not KEY",
        "sample deep: json member nests deeper than 16 levels",
        f"member 'huge.json' declares {MAX_TEXT_BYTES + 1} bytes, over the cap of {MAX_TEXT_BYTES}; not read",
    ]
    for text in expected:
        assert any(text in line for line in lines), (text, lines)
    assert all("\n" not in line and "\x1b" not in line for line in lines)
    # The good samples of the same shard are still read and counted.
    assert report.counts["images"] == 11 + 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/absolute.txt").exists() and not (tmp_path.parent / "escaped.jpg").exists()


def test_extended_headers_and_lying_sizes_are_refused_without_reading(built: Path) -> None:
    name = "train-000000.tar"
    good = members(built / name)
    pax = member("a" * 120 + ".txt", b"x")  # a long name forces a pax header
    rewrite_shard(built, name, [*good, pax], tarfile.PAX_FORMAT)
    lines = [p.line() for p in verify(built).problems if p.where == name]
    assert any("extended header (type b'x'" in line and "refused" in line for line in lines), lines

    # A header that declares far more bytes than the file holds.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("big.jpg")
        info.size = (8 << 30) - 1  # the most a USTAR header can say
        tar.addfile(info)  # header only
    (built / name).write_bytes(buf.getvalue() + b"\0" * 1024)
    lines = [p.line() for p in verify(built).problems if p.where == name]
    assert any(f"member 'big.jpg' declares {(8 << 30) - 1} bytes, over the cap" in line for line in lines), lines


def test_manifest_problems(built: Path, tmp_path: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["name"] = "../outside.tar"
    (tmp_path / "outside.tar").write_bytes(b"not read")
    (built / "manifest.json").write_text(json.dumps(manifest))
    lines = [p.line() for p in verify(built).problems]
    assert "manifest.json: damaged: lists a shard with an unsafe name '../outside.tar'" in lines
    assert "train-000000.tar: extra: not listed in manifest.json" in lines

    (built / "manifest.json").write_text("{" * 10_000)
    proc = capshard("verify", str(built), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.strip() == "manifest.json: damaged: manifest.json nests deeper than 16 levels"

    (built / "manifest.json").unlink()
    proc = capshard("verify", str(built), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"capshard: error: {built} holds no finished build (no manifest.json)"


def test_a_sample_missing_a_member_or_with_a_wrong_caption_count(built: Path) -> None:
    name = "train-000000.tar"
    good = members(built / name)
    no_txt = [(m, d) for m, d in good if not m.name.endswith(".txt") or m is not good[2][0]]
    meta = json.loads(good[4][1])
    meta["captions"] = meta["captions"][:2]
    edited = [(m, d) for m, d in no_txt]
    index = next(i for i, (m, _) in enumerate(edited) if m.name == good[4][0].name)
    info = edited[index][0]
    payload = json.dumps(meta).encode()
    info.size = len(payload)
    edited[index] = (info, payload)
    rewrite_shard(built, name, edited, tarfile.USTAR_FORMAT)
    lines = [p.line() for p in verify(built).problems]
    first, second = good[0][0].name.split(".")[0], good[3][0].name.split(".")[0]
    assert f"{name}: damaged: sample {first}: members ['jpg', 'json']; expected one image, json and txt" in lines
    assert any(line.startswith(f"{name}: damaged: sample {second}: json source.row_ids is not one row id")
               for line in lines), lines
    assert any(line.startswith("index.parquet: damaged: row of ") for line in lines), lines


def test_verify_reads_only(built: Path) -> None:
    """verify opens nothing for writing: a read-only build verifies the same."""
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in built.iterdir()}
    for p in built.iterdir():
        os.chmod(p, 0o444)
    assert verify(built, workers=2).ok
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in built.iterdir()} == before


def test_no_code_path_can_run_shard_content() -> None:
    """The guard behind SECURITY.md: nothing in the package unpickles, torch.loads, extracts
    a tar to disk, evaluates text or hands a string to a shell."""
    forbidden = re.compile(
        r"import pickle|from pickle|pickle\.loads?\(|torch\.load\(|\.extractall\(|\.extract\(|shell\s*=\s*True"
        r"|os\.system\(|os\.popen\(|\beval\(|\bexec\(|yaml\.load\("
    )
    package = Path(__file__).resolve().parents[1] / "pipeline"
    found = [f"{p.relative_to(package)}:{n}: {line.strip()}"
             for p in sorted(package.rglob("*.py"))
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if forbidden.search(line)]
    assert found == []
