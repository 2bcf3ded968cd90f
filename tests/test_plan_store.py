"""The plan store (pipeline.plan_store): a plan saved under OUT/.capshard/ is everything another
process needs to write any shard, and resuming from it gives the bytes of an uninterrupted build."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from synth import comparable, flickr_token_file, write_images

from pipeline import build as build_module
from pipeline import plan_store
from pipeline.build import build
from pipeline.config import BuildConfig
from pipeline.errors import IntegrityError
from pipeline.readers import SourceSpec
from pipeline.resolve import ResolutionReport

ROOT = Path(__file__).parent.parent


class Stop(Exception):
    """Stands for a build killed after planning, before any shard is written."""


def source(tmp_path: Path) -> SourceSpec:
    names = [f"{1000 + i}.jpg" for i in range(12)]
    write_images(tmp_path / "images", names)
    flickr_token_file(tmp_path / "c.token", names, 3)
    return SourceSpec(path=str(tmp_path / "c.token"), images=tmp_path / "images")


def config(out: Path) -> BuildConfig:
    return BuildConfig(out=out, workers=1, max_images_per_shard=4, seed=5)


def plan_only(spec: SourceSpec, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the build up to a saved plan, then stop it."""

    def stop(*args: object, **kwargs: object) -> None:
        raise Stop

    with monkeypatch.context() as m:
        m.setattr(build_module, "_write_shards", stop)
        with pytest.raises(Stop):
            build(spec, dataclasses.replace(config(out), one_pass=False))  # a plan and no shard written ahead


def files(out: Path) -> dict[str, bytes]:
    return {p.name: comparable(p.name, p.read_bytes()) for p in sorted(out.iterdir())
            if p.is_file() and p.name != ".capshard.lock"}


def without_tool(data: bytes) -> dict[str, object]:
    manifest = json.loads(data)
    manifest.pop("tool")
    return dict(manifest)


def test_a_saved_plan_loads_back_whole_from_a_moved_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = source(tmp_path)
    plan_only(spec, tmp_path / "out", monkeypatch)
    assert plan_store.status(tmp_path / "out") == "complete"
    before = plan_store.load(tmp_path / "out")
    shutil.move(tmp_path / "out", tmp_path / "moved")  # nothing in the plan names OUT
    plan = plan_store.load(tmp_path / "moved")

    assert plan.images.equals(before.images) and plan.rejects.equals(before.rejects)
    assert plan.listing.equals(before.listing) and plan.identity == before.identity
    assert plan.n_rows == 36 and plan.images.num_rows == 12 and plan.rejects.num_rows == 0
    assert isinstance(plan.report, ResolutionReport)
    assert plan.report.strategy == "auto" and plan.report.id_source == "filename"
    assert plan.source_format == "flickr" and plan.resize is None
    assert plan.shards() == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert plan.source_spec() == spec

    tasks = plan.tasks(tmp_path / "moved")
    assert [t.name for t in tasks] == plan.shards()
    assert {t.out for t in tasks} == {str(tmp_path / "moved")}
    assert tasks[0].done == ".capshard/done/train-000000.tar.json"
    assert sum(len(t.samples) for t in tasks) == 12


def test_planned_shards_sent_to_workers_make_the_plans_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = source(tmp_path)
    plan_only(spec, tmp_path / "out", monkeypatch)
    plan = plan_store.load(tmp_path / "out")
    shards = plan_store.planned_shards(plan.images, plan.source_format, plan.resize, tmp_path / "out")
    sent = [pickle.loads(pickle.dumps(s)) for s in shards]  # as the process pool sends them
    assert [s.task() for s in sent] == plan.tasks(tmp_path / "out")
    assert [s.name for s in shards] == plan.shards() and {s.split for s in shards} == {"train"}
    assert [s.rows.num_rows for s in shards] == [4, 4, 4]
    # Each carries its own rows only, not the buffers of the whole plan (which a slice would pickle).
    whole = plan.images.select(shards[0].rows.column_names).get_total_buffer_size()
    assert all(s.rows.get_total_buffer_size() < whole / 2 for s in shards)
    assert plan_store.planned_shards(plan.images.slice(0, 0), "flickr", None, tmp_path) == []


def test_shards_written_by_other_processes_from_the_plan_finish_to_identical_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = source(tmp_path)
    out = tmp_path / "out"
    plan_only(spec, out, monkeypatch)
    # Two "tasks" of an indexed job, each a fresh process that knows only OUT.
    script = (
        "import sys; from pathlib import Path\n"
        "from pipeline import plan_store\nfrom pipeline.readers import get_reader\n"
        "from pipeline.write import write_shard\n"
        "out, i, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])\n"
        "plan = plan_store.load(out)\n"
        "reader = get_reader(plan.source_format)(plan.source_spec())\n"
        "for task in plan.tasks(out)[i::n]:\n"
        "    write_shard(reader, task)\n"
    )
    for i in range(2):
        proc = subprocess.run([sys.executable, "-c", script, str(out), str(i), "2"], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr

    resumed = build(spec, config(out))
    assert (resumed.status, resumed.reused_shards) == ("resumed", 3)
    fresh = build(spec, config(tmp_path / "fresh"))
    got, want = files(out), files(tmp_path / "fresh")
    assert sorted(got) == sorted(want)
    assert without_tool(got.pop("manifest.json")) == without_tool(want.pop("manifest.json"))
    assert got == want
    assert fresh.manifest["counts"]["images"] == 12


def test_a_plan_of_the_old_layout_is_planned_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = source(tmp_path)
    out = tmp_path / "out"
    plan_only(spec, out, monkeypatch)
    state = out / ".capshard"
    (state / "plan.json").unlink()  # what capshard before the plan store left
    (state / "resolution.json").write_text('{"report": {}, "rows": 36}\n')
    assert plan_store.status(out) == "stale"
    with pytest.raises(IntegrityError, match=r"holds no complete plan of layout 2$"):
        plan_store.load(out)

    again = build(spec, config(out))
    assert again.status == "built"
    build(spec, config(tmp_path / "fresh"))
    got, want = files(out), files(tmp_path / "fresh")
    assert without_tool(got.pop("manifest.json")) == without_tool(want.pop("manifest.json"))
    assert got == want


def test_no_plan_and_a_damaged_done_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert plan_store.status(tmp_path / "nothing") == "none"
    spec = source(tmp_path)
    out = tmp_path / "out"
    plan_only(spec, out, monkeypatch)
    plan = plan_store.load(out)
    name = plan.shards()[0]
    (out / name).write_bytes(b"x")
    plan_store.done_path(out, name).parent.mkdir(parents=True)
    plan_store.done_path(out, name).write_text("{not json")
    assert plan_store.finished(out, name) is None  # written again, not trusted, not a crash
    result = build(spec, config(out))
    assert result.status == "resumed" and result.reused_shards == 0
    assert (out / name).stat().st_size > 1
