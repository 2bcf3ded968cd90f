"""The epoch partition (pipeline.loader.plan) over open-ended shard layouts and job shapes."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.loader.plan import (
    EpochPlan,
    PlanConfig,
    batches_done_by_worker,
    caption_indices,
    plan_worker,
    worker_batches,
    yield_order,
)


@st.composite
def jobs(draw: st.DrawFn) -> tuple[list[int], PlanConfig, int]:
    counts = draw(st.lists(st.integers(0, 40), min_size=1, max_size=12))
    world = draw(st.integers(1, 5))
    config = PlanConfig(
        seed=draw(st.integers(0, 2**32)),
        rank=0,
        world_size=world,
        batch_size=draw(st.integers(1, 9)),
        num_workers=draw(st.integers(1, 4)),
        window_batches=draw(st.integers(1, 4)),
        shuffle=draw(st.booleans()),
        drop_last=draw(st.booleans()),
    )
    return counts, config, draw(st.integers(0, 50))


def rank_plans(counts: list[int], config: PlanConfig, epoch: int) -> list[EpochPlan]:
    return [
        EpochPlan(counts, PlanConfig(**{**config.__dict__, "rank": r}), epoch) for r in range(config.world_size)
    ]


def samples_of(plan: EpochPlan) -> list[tuple[int, int]]:
    return [plan.locate(int(p)) for b in range(plan.n_batches) for p in plan.batch_positions(b)]


@settings(max_examples=150, deadline=None)
@given(jobs())
def test_every_rank_same_batches_no_sample_twice(job: tuple[list[int], PlanConfig, int]) -> None:
    counts, config, epoch = job
    plans = rank_plans(counts, config, epoch)
    assert len({p.n_batches for p in plans}) == 1
    everything = [s for p in plans for s in samples_of(p)]
    assert len(everything) == len(set(everything)), "a sample is yielded twice in one epoch"
    assert all(0 <= off < counts[shard] for shard, off in everything)
    total, world, bs = sum(counts), config.world_size, config.batch_size
    assert len(everything) == total - plans[0].left_out
    # Left out per epoch: the world-size remainder, plus each rank's short batch with drop_last.
    assert plans[0].left_out <= (world - 1) + (world * (bs - 1) if config.drop_last else 0)
    for p in plans:
        sizes = [len(p.batch_positions(b)) for b in range(p.n_batches)]
        assert all(s == bs for s in sizes[:-1])
        assert not sizes or (sizes[-1] == bs if config.drop_last else 1 <= sizes[-1] <= bs)


@settings(max_examples=150, deadline=None)
@given(jobs())
def test_workers_read_their_own_stretch_and_nothing_else(job: tuple[list[int], PlanConfig, int]) -> None:
    counts, config, epoch = job
    plan = EpochPlan(counts, config, epoch)
    nw = config.num_workers
    runs = [worker_batches(plan.n_batches, nw, w) for w in range(nw)]
    assert [b for r in runs for b in r] == list(range(plan.n_batches))
    assert max(map(len, runs)) - min(map(len, runs)) <= 1
    read_by: dict[int, int] = {}
    for w in range(nw):
        work = plan.worker(w)
        assert work.batches == runs[w]
        readable = {s.position + i for s in work.segments for i in range(s.stop - s.start)}
        assert not readable & set(read_by), "two workers read the same sample"
        read_by.update(dict.fromkeys(readable, w))
        for seg in work.segments:
            for i in range(seg.stop - seg.start):
                assert plan.locate(seg.position + i) == (seg.shard, seg.start + i)
        for b in work.batches:
            assert plan.worker_of(b) == w
            assert set(plan.batch_positions(b).tolist()) <= readable
    assert len(read_by) == plan.samples_used


@settings(max_examples=150, deadline=None)
@given(jobs(), st.data())
def test_resume_skips_exactly_the_batches_already_yielded(
    job: tuple[list[int], PlanConfig, int], data: st.DataObject
) -> None:
    counts, config, epoch = job
    plan = EpochPlan(counts, config, epoch)
    order = yield_order(plan.n_batches, config.num_workers)
    assert sorted(order) == list(range(plan.n_batches))
    done = data.draw(st.integers(0, plan.n_batches))
    # What torch's DataLoader does: ask its workers in turn, starting at worker 0, and
    # leave out a worker once it is exhausted.
    nw = config.num_workers
    queues = [list(plan.worker(plan_worker(i, done, nw), done).batches) for i in range(nw)]
    yielded = []
    while any(queues):
        for q in queues:
            if q:
                yielded.append(q.pop(0))
    assert yielded == order[done:]
    assert sum(batches_done_by_worker(done, config.num_workers, w) for w in range(config.num_workers)) == done


@settings(max_examples=50, deadline=None)
@given(jobs())
def test_same_inputs_same_plan(job: tuple[list[int], PlanConfig, int]) -> None:
    counts, config, epoch = job
    a, b = EpochPlan(counts, config, epoch), EpochPlan(counts, config, epoch)
    assert samples_of(a) == samples_of(b)


def test_shuffle_changes_with_the_epoch_and_not_without() -> None:
    config = PlanConfig(seed=3, rank=0, world_size=1, batch_size=4, num_workers=1, window_batches=3, shuffle=True,
                        drop_last=True)
    counts = [7] * 9
    orders = {tuple(samples_of(EpochPlan(counts, config, e))) for e in range(5)}
    assert len(orders) == 5
    fixed = PlanConfig(**{**config.__dict__, "shuffle": False})
    assert samples_of(EpochPlan(counts, fixed, 0)) == samples_of(EpochPlan(counts, fixed, 4))
    assert samples_of(EpochPlan(counts, fixed, 0))[:8] == [(0, i) for i in range(7)] + [(1, 0)]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 100), st.integers(0, 2**32), st.text(max_size=8))
def test_caption_choice(n: int, k: int, epoch: int, seed: int, image_id: str) -> None:
    chosen = caption_indices(n, k, epoch=epoch, seed=seed, image_id=image_id, repeat=False)
    assert len(chosen) == min(n, k) and len(set(chosen)) == len(chosen)
    repeated = caption_indices(n, k, epoch=epoch, seed=seed, image_id=image_id, repeat=True)
    assert len(repeated) == k
    assert set(Counter(repeated).values()) <= {k // n, -(-k // n)}
    assert caption_indices(n, None, epoch=epoch, seed=seed, image_id=image_id, repeat=False) == list(range(n))


@given(st.integers(1, 12), st.integers(0, 1000), st.integers(0, 2**32), st.text(max_size=8))
def test_one_caption_per_epoch_visits_all_of_them(n: int, first: int, seed: int, image_id: str) -> None:
    epochs = range(first, first + n)
    seen = [caption_indices(n, 1, epoch=e, seed=seed, image_id=image_id, repeat=False)[0] for e in epochs]
    assert sorted(seen) == list(range(n))
