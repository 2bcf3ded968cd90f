"""pipeline.storage against real stores: local folders, file:// and memory:// URLs, and moto's S3 server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import click
import fsspec
import pytest
from click.testing import CliRunner
from fsspec.implementations.memory import MemoryFileSystem

from pipeline import storage
from pipeline.cli.storage_options import storage_options_option
from pipeline.errors import UsageError

ROOT = Path(__file__).parent.parent


@pytest.fixture(params=["path", "file-url", "memory", "s3"])
def prefix(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty folder or prefix on each kind of store."""
    if request.param == "path":
        return str(tmp_path / "out")
    if request.param == "file-url":
        return f"file://{tmp_path}/out"
    if request.param == "memory":
        return f"memory://capshard-{os.getpid()}-{id(request)}/out"
    return storage.join(request.getfixturevalue("s3_bucket"), "out")


def test_a_key_put_whole_reads_back_with_its_size_and_hash_lists_and_is_removed(prefix: str, tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    source = tmp_path / "source.bin"
    source.write_bytes(payload * 2)
    shard = storage.join(prefix, "shard-000000.tar")
    record = storage.join(prefix, ".capshard", "done", "shard-000000.json")
    assert not storage.exists(shard)
    storage.put_whole(shard, source)  # from a local file
    storage.put_whole(record, b'{"ok": 1}\n')  # from bytes
    assert storage.exists(shard) and storage.exists(record)
    assert storage.size(shard) == 600_000
    assert storage.sha256(shard) == (hashlib.sha256(payload * 2).hexdigest(), 600_000)
    assert storage.read_bytes(record) == b'{"ok": 1}\n'
    with storage.open_read(shard) as f:
        assert f.read(10) == payload[:10]
    # Only the two final keys: no temporary key left beside them.
    assert storage.list_prefix(prefix) == [".capshard/done/shard-000000.json", "shard-000000.tar"]
    storage.remove([shard, record, storage.join(prefix, "never-written")])
    assert storage.list_prefix(prefix) == []
    with pytest.raises(FileNotFoundError):
        storage.size(shard)


def test_urls_and_paths_are_told_apart_and_joined() -> None:
    assert storage.is_url("s3://b/k") and storage.is_url("file:///tmp/x") and not storage.is_url("/tmp/s3:/x")
    assert storage.local_path("file:///tmp/x") == Path("/tmp/x") and storage.local_path("gs://b/x") is None
    assert storage.join("s3://b/", "out", "shard.tar") == "s3://b/out/shard.tar"
    assert storage.join("/tmp/out", ".capshard", "plan") == "/tmp/out/.capshard/plan"
    assert storage.parent("s3://b/out/shard.tar") == "s3://b/out"
    assert storage.parent("s3://b") == "s3://b"
    assert storage.parent("/tmp/out/x") == "/tmp/out"


# A subprocess uploads a 12 MiB file as a 3-part multipart upload; after its first part
# has reached the server it stops, and the test kills it there.
UPLOADER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pipeline import storage
    storage.PART_BYTES = 5 * 2**20
    fs, _ = storage.filesystem(sys.argv[1])
    call = fs._call_s3
    async def call_and_stall(method, *args, **kwargs):
        out = await call(method, *args, **kwargs)
        if method == "upload_part":
            print("part uploaded", flush=True)
            time.sleep(600)
        return out
    fs._call_s3 = call_and_stall
    storage.put_whole(sys.argv[1], Path(sys.argv[2]))
    """
)


def test_a_killed_upload_leaves_nothing_under_the_final_key(s3_bucket: str, s3_server, tmp_path: Path) -> None:
    big = tmp_path / "big.tar"
    big.write_bytes(os.urandom(12 * 2**20))
    final = storage.join(s3_bucket, "out", "shard-000000.tar")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", UPLOADER, final, str(big)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "part uploaded"
        bucket = s3_bucket.removeprefix("s3://")
        uploads = s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert [u["Key"] for u in uploads] == ["out/shard-000000.tar"]  # mid-upload...
        assert storage.list_prefix(storage.join(s3_bucket, "out")) == []  # ...and nothing to see
    finally:
        proc.kill()
        proc.wait()
    assert not storage.exists(final)
    assert storage.list_prefix(s3_bucket) == []
    storage.put_whole(final, big)  # a rerun publishes it whole
    assert storage.sha256(final) == (hashlib.sha256(big.read_bytes()).hexdigest(), 12 * 2**20)


def test_a_backend_without_atomic_upload_gets_a_temporary_key_moved_into_place() -> None:
    seen: list[list[str]] = []
    fs = fsspec.filesystem("memory")
    prefix = f"memory://capshard-move-{os.getpid()}"
    original_mv = fs.mv

    def mv_watching(src: str, dst: str, **kwargs: object) -> None:
        seen.append(storage.list_prefix(prefix))  # what a reader sees just before the move
        original_mv(src, dst, **kwargs)

    fs.mv = mv_watching
    try:
        storage.put_whole(f"{prefix}/shard.tar", b"x" * 1000)
    finally:
        del fs.mv
    assert len(seen) == 1 and len(seen[0]) == 1 and seen[0][0].startswith(".shard.tar.tmp-")
    assert storage.list_prefix(prefix) == ["shard.tar"]


@pytest.mark.parametrize(("scheme", "module", "extra"), [("gs", "gcsfs", "gcs"), ("s3", "s3fs", "s3")])
def test_a_url_whose_backend_is_missing_is_one_line_naming_the_extra(scheme: str, module: str, extra: str) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{module!r}] = None  # as if not installed
        from pipeline import storage
        from pipeline.errors import UsageError
        try:
            storage.exists("{scheme}://bucket/out/shard.tar")
        except UsageError as e:
            print(e)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        f"{scheme}://bucket/out/shard.tar: {scheme}:// needs its storage backend: pip install 'capshard[{extra}]'\n"
    )


def test_an_unknown_scheme_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"^nope://b/x: unknown storage scheme nope://$"):
        storage.exists("nope://b/x")


class CountingFS(MemoryFileSystem):
    """An in-memory store that records how many reads run at once and what was read but not yet taken."""

    protocol = "capshardcounting"
    lock = threading.Lock()
    running = 0
    most_running = 0
    delivered = 0  # bytes returned by reads
    taken = 0  # bytes the consumer has taken (the test updates it)
    most_held = 0  # largest delivered - taken seen when a read ends

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return MemoryFileSystem._strip_protocol(path.removeprefix(f"{cls.protocol}://"))

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: object) -> bytes:
        cls = type(self)
        with cls.lock:
            cls.running += 1
            cls.most_running = max(cls.most_running, cls.running)
        time.sleep(0.01)  # latency, so reads overlap; the assertions do not depend on it
        data = super().cat_file(path, start, end, **kwargs)
        with cls.lock:
            cls.running -= 1
            cls.delivered += len(data)
            cls.most_held = max(cls.most_held, cls.delivered - cls.taken)
        return data


def test_fetch_many_keeps_order_and_bounds_threads_and_read_ahead_bytes() -> None:
    fsspec.register_implementation(CountingFS.protocol, CountingFS, clobber=True)
    fs = CountingFS()
    sizes = [1000 + 37 * i for i in range(60)]
    urls = []
    for i, n in enumerate(sizes):
        fs.pipe_file(f"/fetch/{i:03d}.jpg", bytes([i]) * n)
        urls.append(f"{CountingFS.protocol}:///fetch/{i:03d}.jpg")
    got = []
    for url, data in storage.fetch_many(urls, threads=4, max_bytes=5000):
        got.append((url, data))
        with CountingFS.lock:
            CountingFS.taken += len(data)
        time.sleep(0.005)  # a slow consumer: the read-ahead fills up to its bound
    assert [u for u, _ in got] == urls
    assert [len(d) for _, d in got] == sizes and all(d == bytes([i]) * len(d) for i, (_, d) in enumerate(got))
    assert 1 <= CountingFS.most_running <= 4
    # No read starts once 5000 bytes are fetched and waiting: what is held stays under 5000 bytes
    # plus the reads in flight and the one in the consumer's hands (the 60 images are 125 kB).
    assert CountingFS.most_held <= 5000 + (4 + 1) * max(sizes)


def test_fetch_many_reads_images_from_the_bucket_and_raises_a_missing_one_in_turn(s3_bucket: str) -> None:
    urls = [storage.join(s3_bucket, "images", f"{i}.jpg") for i in range(20)]
    for i, url in enumerate(urls):
        storage.put_whole(url, f"image {i}".encode())
    fetched_all = [data for _, data in storage.fetch_many(urls, threads=8, max_bytes=64)]
    assert fetched_all == [f"image {i}".encode() for i in range(20)]
    fetched = storage.fetch_many([urls[0], storage.join(s3_bucket, "images", "gone.jpg"), urls[1]], threads=2)
    assert next(fetched) == (urls[0], b"image 0")
    with pytest.raises(FileNotFoundError):
        next(fetched)


@click.command()
@storage_options_option
def echo_options(storage_options: dict[str, object]) -> None:
    click.echo(repr(storage_options))


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("{x", "Error: Invalid value for '--storage-options': not JSON (Expecting property name enclosed in "
               "double quotes at column 2): '{x'"),
        ("[1]", "Error: Invalid value for '--storage-options': must be a JSON object like '{\"anon\": true}', "
                "not '[1]'"),
    ],
)
def test_storage_options_that_are_not_a_json_object_are_a_one_line_usage_error(value: str, said: str) -> None:
    result = CliRunner().invoke(echo_options, ["--storage-options", value])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == said


def test_storage_options_reach_the_backend(s3_bucket: str, s3_server, monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(echo_options, ["--storage-options", '{"anon": false, "client_kwargs": {}}'])
    assert result.exit_code == 0 and result.output == "{'anon': False, 'client_kwargs': {}}\n"
    assert CliRunner().invoke(echo_options, []).output == "{}\n"
    # The endpoint from the options alone, with AWS_ENDPOINT_URL unset, reaches the moto server.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    options = {"endpoint_url": s3_server.endpoint}
    key = storage.join(s3_bucket, "from-options.txt")
    storage.put_whole(key, b"hello", options)
    assert storage.read_bytes(key, options) == b"hello"
