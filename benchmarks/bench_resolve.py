"""Resolution at scale: ``pipeline.resolve.resolve`` on N caption rows over N/5 images.

Measures the code path ``build`` runs between reading and planning (``probe.distinct_refs``
on the caption rows, then ``resolve`` on those rows joined with probed hashes), on synthetic
references and hashes only: no image is read. Each size runs in a fresh subprocess that
reports its wall time and peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), so one
size's memory does not count toward the next.

The rows look like a Flickr token file: 5 captions per image in consecutive rows, absolute
image paths, file-name ids, about 60-character captions, one row in 1,000 with an empty
caption (a reject). Generating them is timed apart and not counted.

    python benchmarks/bench_resolve.py --rows 1000000 10000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CAPTIONS_PER_IMAGE = 5


#: Caption text per row: Flickr30k-like length (~70 characters), or a short one (~12), to show
#: how much of the peak memory is the caption text that build holds and copies into the plan.
CAPTIONS = {
    "flickr": "A person in a red jacket walks a dog along the beach number ",
    "short": "a dog ",
}


def synthetic(n_rows: int, batch: int = 65536, captions: str = "flickr"):
    """Caption rows as ``build`` holds them (``rows.read_rows`` of reader-sized ``CAPTION_ROWS``
    batches, made one at a time as a reader yields them) and the probe table of their images."""
    from pipeline.rows import read_rows

    batches = (_rows(start, min(start + batch, n_rows), CAPTIONS[captions]) for start in range(0, n_rows, batch))
    return read_rows(batches), _probed(-(-n_rows // CAPTIONS_PER_IMAGE))


def _rows(start: int, stop: int, text: str):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.schema import CAPTION_ROWS

    n = stop - start
    row_id = pa.array(np.arange(start, stop, dtype=np.int64))
    image = pa.array(np.arange(start, stop, dtype=np.int64) // CAPTIONS_PER_IMAGE)
    number = pc.cast(pc.subtract(row_id, pc.multiply(image, CAPTIONS_PER_IMAGE)), pa.string())
    caption = pc.binary_join_element_wise(text, pc.cast(row_id, pa.string()), " .", "")
    caption = pc.if_else(pc.equal(pc.bit_wise_and(row_id, 1023), 7), pa.scalar("  "), caption)
    nulls = pa.nulls(n, pa.string())
    columns = {
        "row_id": row_id,
        "location": pc.binary_join_element_wise("results_20130124.token:", pc.cast(pc.add(row_id, 1), pa.string()), ""),
        "caption": caption,
        "caption_id": number,
        "split": pa.array(["train"] * n, pa.string()),
        "image_path": _image_path(image),
        "image_index": pa.nulls(n, pa.int64()),
        "id_hint": nulls,
        "file_name": _file_name(image),
        "reject": nulls,
        "url": nulls,
    }
    return pa.RecordBatch.from_pydict(columns, schema=CAPTION_ROWS)


def _file_name(image):
    """Flickr-like names: 10 digits, ``_``, a hash-like suffix, ``.jpg``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    stem = pc.cast(pc.add(image, 1000000000), pa.string())
    suffix = pc.utf8_slice_codeunits(pc.cast(pc.multiply(image, 7919), pa.string()), 0, 10)
    return pc.binary_join_element_wise(stem, suffix, ".jpg", "_")


def _image_path(image):
    import pyarrow.compute as pc

    return pc.binary_join_element_wise("/data/flickr30k/flickr30k-images/", _file_name(image), "")


def _probed(n_images: int):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.probe import PROBE_SCHEMA

    image = pa.array(np.arange(n_images, dtype=np.int64))
    nulls = pa.nulls(n_images, pa.string())
    columns = {
        "image_path": _image_path(image),
        "image_index": pa.nulls(n_images, pa.int64()),
        "sha256": pc.utf8_lpad(pc.cast(pc.multiply(image, 2654435761), pa.string()), 64, "a"),
        "n_bytes": pa.array(np.full(n_images, 98765, dtype=np.int64)),
        "format": pa.array(["JPEG"] * n_images, pa.string()),
        "width": pa.array(np.full(n_images, 500, dtype=np.int64)),
        "height": pa.array(np.full(n_images, 375, dtype=np.int64)),
        "image_reason": nulls,
        "image_detail": nulls,
        "phash": pa.nulls(n_images, pa.int64()),
    }
    # As probe_images returns it: sorted by reference.
    return pa.table(columns, schema=PROBE_SCHEMA).sort_by([("image_path", "ascending"), ("image_index", "ascending")])


def measure(n_rows: int, captions: str = "flickr") -> dict:
    """One size, in this process: generate, then time distinct_refs + resolve as build calls them
    (in a process set up as ``capshard build`` sets up its own: :func:`pipeline.runtime.tune_batch_process`)."""
    from pipeline.runtime import tune_batch_process

    tune_batch_process()  # before NumPy loads, as the command does
    from pipeline.config import BuildConfig
    from pipeline.probe import distinct_refs
    from pipeline.resolve import resolve

    t0 = time.perf_counter()
    rows, probed = synthetic(n_rows, captions=captions)
    generated = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    config = BuildConfig(out=Path("/nonexistent-bench-out"), workers=1)
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    refs = distinct_refs(rows)
    t1 = time.perf_counter()
    resolution = resolve(rows, probed, config, id_column=None, multi_caption=True)
    t2 = time.perf_counter()
    assert refs.num_rows == probed.num_rows
    return {
        "rows": n_rows,
        "captions": captions,
        "images": resolution.images.num_rows,
        "rejects": resolution.rejects.num_rows,
        "generate_s": round(generated, 2),
        "distinct_refs_s": round(t1 - t0, 2),
        "resolve_s": round(t2 - t1, 2),
        "seconds": round(t2 - t0, 2),
        "us_per_row": round((t2 - t0) / n_rows * 1e6, 3),
        **_cpu(before, resource.getrusage(resource.RUSAGE_SELF)),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_after_generate_mib": round(rss_before / 1024),
    }


def _cpu(before: resource.struct_rusage, after: resource.struct_rusage) -> dict:
    """CPU seconds between two ``getrusage`` readings: user + system, and each (the system part is
    mostly the kernel zeroing memory the process touches for the first time: page faults)."""
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {
        "cpu_s": round(user + system, 2),
        "user_s": round(user, 2),
        "system_s": round(system, 2),
        "page_faults": after.ru_minflt - before.ru_minflt,
    }


def run_fresh(n_rows: int, captions: str = "flickr", python: str = sys.executable, repo: Path | None = None) -> dict:
    """``measure(n_rows)`` in a fresh subprocess (its own peak RSS); ``repo`` goes first on the path."""
    repo = repo or Path(__file__).resolve().parent.parent
    code = (
        f"import sys, json; sys.path.insert(0, {str(repo)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import bench_resolve; print(json.dumps(bench_resolve.measure({n_rows}, {captions!r})))"
    )
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True, cwd=repo).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repo", type=Path, help="Checkout to measure (default: this one).")
    ap.add_argument("--captions", choices=sorted(CAPTIONS), default="flickr", help="Caption text length.")
    args = ap.parse_args()
    results = [run_fresh(n, args.captions, repo=args.repo) for n in args.rows]
    for r in results:
        print(json.dumps(r))
    if len(results) > 1:
        first, last = results[0], results[-1]
        print(
            f"per-row cost {last['rows']:,} / {first['rows']:,}: wall {last['us_per_row'] / first['us_per_row']:.2f}x, "
            f"cpu {last['cpu_s'] / last['rows'] / (first['cpu_s'] / first['rows']):.2f}x"
        )


if __name__ == "__main__":
    main()
