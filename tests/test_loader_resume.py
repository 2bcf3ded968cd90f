"""Resume: a loader restored after N batches yields exactly what the uninterrupted one
would have yielded after N, in-process and across a process restart, and does not open
the shards it has already finished."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import loader_fixtures as fx
import pyarrow.parquet as pq
import pytest
from loader_fixtures import signature

from pipeline.errors import UsageError
from pipeline.loader import make_loader
from pipeline.loader.source import ShardOpener

five = pytest.fixture(scope="module", name="five")(fx.build_five)

OPTIONS = {"split": "train", "batch_size": 4, "captions_per_image": 2, "image_size": 8, "shuffle_window": 8, "seed": 5}


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_after_n_batches_in_process(five: Path, workers: int) -> None:
    full_loader = make_loader(five, num_workers=workers, **OPTIONS)  # type: ignore[arg-type]
    full_loader.set_epoch(2)
    full = signature(full_loader)
    assert len(full) == len(full_loader) == 15
    for n in (0, 1, 3, 8, 14, 15):
        first = make_loader(five, num_workers=workers, **OPTIONS)  # type: ignore[arg-type]
        first.set_epoch(2)
        it = iter(first)
        head = signature(next(it) for _ in range(n))
        state = json.loads(json.dumps(first.state_dict()))
        assert state["epoch"] == 2 and state["batches"] == n
        resumed = make_loader(five, num_workers=workers, **OPTIONS)  # type: ignore[arg-type]
        resumed.load_state_dict(state)
        resumed.set_epoch(2)  # a training loop's usual call keeps the resume point
        assert head + signature(resumed) == full
        # The next pass over the same epoch starts from its beginning again.
        assert signature(resumed) == full


def test_resume_does_not_open_finished_shards(five: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_open = ShardOpener.open

    def spy(self: ShardOpener, shard: object) -> object:
        opened.append(shard.name)  # type: ignore[attr-defined]
        return real_open(self, shard)  # type: ignore[arg-type]

    monkeypatch.setattr(ShardOpener, "open", spy)
    loader = make_loader(five, num_workers=0, **OPTIONS)  # type: ignore[arg-type]
    full = signature(loader)
    assert sorted(set(opened)) == sorted(p.name for p in fx.shard_paths(five))
    shard_of = dict(zip(*pq.read_table(five / "index.parquet", columns=["image_id", "shard"]).to_pydict().values(),
                        strict=True))
    n = 12  # a window boundary: windows are 2 batches of 4
    opened.clear()
    resumed = make_loader(five, num_workers=0, **OPTIONS)  # type: ignore[arg-type]
    resumed.load_state_dict({**loader.state_dict(), "batches": n})
    assert signature(resumed) == full[n:]
    needed = {shard_of[i] for ids, _, _ in full[n:] for i in ids}
    assert set(opened) == needed and len(needed) < len(fx.shard_paths(five))


def test_a_state_from_other_options_is_refused(five: Path) -> None:
    state = make_loader(five, **OPTIONS).state_dict()  # type: ignore[arg-type]
    other = make_loader(five, **{**OPTIONS, "batch_size": 5})  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="batch_size 4->5"):
        other.load_state_dict(state)
    with pytest.raises(UsageError, match="different shards"):
        make_loader(fx.shard_paths(five)[:-1], **{**OPTIONS, "split": None}).load_state_dict(state)  # type: ignore[arg-type]


RUN = """
import json, sys
from pipeline.loader import make_loader
build, state_in, state_out, stop = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
options = json.loads(sys.argv[5])
loader = make_loader(build, num_workers=2, **options)
loader.set_epoch(1)
if state_in != "-":
    loader.load_state_dict(json.load(open(state_in)))
out = []
batches = iter(loader)
while len(out) != stop and (batch := next(batches, None)) is not None:
    out.append([batch["image_id"], batch["caption"], batch["caption_image"].tolist()])
json.dump(loader.state_dict(), open(state_out, "w"))
print(json.dumps(out))
"""


def _run(*args: str) -> list[list[object]]:
    done = subprocess.run([sys.executable, "-c", RUN, *args, json.dumps(OPTIONS)], capture_output=True, text=True,
                          timeout=240, check=True)
    return json.loads(done.stdout)


def test_resume_across_a_process_restart(five: Path, tmp_path: Path) -> None:
    state = str(tmp_path / "state.json")
    full = _run(str(five), "-", str(tmp_path / "ignored.json"), "-1")
    head = _run(str(five), "-", state, "5")
    assert json.loads(Path(state).read_text())["batches"] == 5
    tail = _run(str(five), state, str(tmp_path / "after.json"), "-1")
    assert len(full) == 15 and head + tail == full
