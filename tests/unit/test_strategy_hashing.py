"""Consistent hashing with bounded loads: keys stay put, loads stay bounded, few keys move."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.clock import FakeClock
from broker.core.runtimes import RuntimeModel
from broker.core.scheduler import PoolScheduler
from broker.core.strategies import ConsistentHash, StrategyEnv, WorkerSlot, make_strategy
from broker.core.strategies.hashing import ring_point, task_point
from broker.domain import Placement, Task, TaskSpec

KEYS = [f"user-{i}" for i in range(10_000)]


def task(task_id: int, key: str = "") -> Task:
    return Task(
        id=task_id, seq=task_id, spec=TaskSpec(task_type="t", placement=Placement(routing_key=key))
    )


def slot(worker_id: str, capacity: int = 10_000) -> WorkerSlot:
    return WorkerSlot(worker_id, "default", capacity, frozenset({"t"}))


def env(epsilon: float = 0.25, clock: FakeClock | None = None) -> StrategyEnv:
    return StrategyEnv(
        clock=clock or FakeClock(), runtimes=RuntimeModel("default"), hash_load_epsilon=epsilon
    )


class Pool:
    """Keeps a strategy's index of ready workers the way the scheduler does."""

    def __init__(self, strategy: ConsistentHash, *workers: WorkerSlot) -> None:
        self.strategy = strategy
        for worker in workers:
            self.connect(worker)

    def connect(self, worker: WorkerSlot) -> None:
        if worker.ready:
            self.strategy.add(worker)

    def take(self, worker: WorkerSlot, task_id: int) -> None:
        worker.held.add(task_id)
        if worker.ready:
            self.strategy.update(worker)
        else:
            self.strategy.remove(worker)

    def release(self, worker: WorkerSlot, task_id: int) -> None:
        was_ready = worker.ready
        worker.held.discard(task_id)
        if worker.ready and not was_ready:
            self.strategy.add(worker)
        elif worker.ready:
            self.strategy.update(worker)

    def place(self, task: Task) -> WorkerSlot:
        worker = self.strategy.pick(task)
        assert worker is not None
        self.take(worker, task.id)
        return worker


def mapping(strategy: ConsistentHash, keys: list[str]) -> dict[str, str]:
    """Where each key goes now (nothing placed, so the load bound never bites)."""
    placed = {}
    for i, key in enumerate(keys):
        worker = strategy.pick(task(i, key))
        assert worker is not None
        placed[key] = worker.worker_id
    return placed


def ring_of(n: int, epsilon: float = 0.25) -> tuple[ConsistentHash, list[WorkerSlot]]:
    strategy = ConsistentHash(env(epsilon))
    workers = [slot(f"w{i}") for i in range(n)]
    Pool(strategy, *workers)
    return strategy, workers


def test_the_same_key_goes_to_the_same_worker() -> None:
    strategy, workers = ring_of(8)
    pool = Pool(strategy)
    by_id = {w.worker_id: w for w in workers}
    first = mapping(strategy, KEYS[:500])
    for i, key in enumerate(KEYS[:500]):
        worker = pool.place(task(i, key))
        assert worker.worker_id == first[key]
        pool.release(by_id[worker.worker_id], i)
    # A fresh index over the same workers agrees: no salted hash() anywhere.
    assert mapping(ring_of(8)[0], KEYS[:500]) == first
    assert len(set(first.values())) == 8
    assert ring_point("key:user-1") == ring_point("key:user-1") < 1 << 64


def test_no_worker_goes_over_the_bound_across_10000_keys() -> None:
    n, epsilon = 10, 0.25
    strategy, workers = ring_of(n, epsilon=epsilon)
    pool = Pool(strategy)
    for i, key in enumerate(KEYS):
        worker = pool.place(task(i, key))
        # After each placement: at most ceil((1 + e) x the mean load, this task counted).
        assert len(worker.held) <= math.ceil((1 + epsilon) * (i + 1) / n)
    loads = sorted(len(w.held) for w in workers)
    assert sum(loads) == len(KEYS)
    assert loads[-1] <= math.ceil((1 + epsilon) * len(KEYS) / n)  # 1250


@pytest.mark.parametrize("vnodes", [1, 100])
def test_the_bound_holds_where_plain_hashing_is_uneven(vnodes: int) -> None:
    n, epsilon = 10, 0.25
    bound = math.ceil((1 + epsilon) * len(KEYS) / n)
    loads = {}
    for effective_epsilon in (epsilon, 1_000.0):  # bounded, and in effect plain hashing
        strategy = ConsistentHash(env(effective_epsilon), vnodes=vnodes)
        workers = [slot(f"w{i}") for i in range(n)]
        pool = Pool(strategy, *workers)
        for i, key in enumerate(KEYS):
            pool.place(task(i, key))
        loads[effective_epsilon] = max(len(w.held) for w in workers)
    assert loads[epsilon] <= bound
    if vnodes == 1:  # one point per worker: arcs, and so loads, differ wildly
        assert loads[1_000.0] > bound


def test_a_hot_key_spills_over_within_the_bound() -> None:
    n, epsilon = 4, 0.25
    strategy, _ = ring_of(n, epsilon=epsilon)
    pool = Pool(strategy)
    home = mapping(strategy, ["hot"])["hot"]
    placed = Counter(pool.place(task(i, "hot")).worker_id for i in range(1_000))
    assert placed.most_common(1)[0][0] == home
    assert max(placed.values()) <= math.ceil((1 + epsilon) * 1_000 / n)
    assert len(placed) == n


def test_adding_a_worker_moves_about_one_in_n_keys_all_to_it() -> None:
    n = 10
    strategy, _ = ring_of(n)
    before = mapping(strategy, KEYS)
    strategy.add(slot("new"))
    after = mapping(strategy, KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert {after[k] for k in moved} == {"new"}
    share = len(moved) / len(KEYS)
    assert 0.5 / (n + 1) < share < 2 / (n + 1)


def test_removing_a_worker_moves_only_its_keys() -> None:
    n = 10
    strategy, workers = ring_of(n)
    before = mapping(strategy, KEYS)
    strategy.remove(workers[3])
    after = mapping(strategy, KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert {before[k] for k in moved} == {"w3"}
    assert len(moved) / len(KEYS) < 2 / n


def test_a_worker_that_fills_up_gets_its_keys_back_when_it_frees_a_slot() -> None:
    strategy = ConsistentHash(env())
    workers = [slot(f"w{i}", capacity=1) for i in range(5)]
    pool = Pool(strategy, *workers)
    before = mapping(strategy, KEYS[:1000])
    home = next(w for w in workers if w.worker_id == before["user-0"])
    pool.take(home, 999_999)  # full: out of the index
    during = mapping(strategy, KEYS[:1000])
    assert during["user-0"] != home.worker_id
    assert all(during[k] == before[k] for k in KEYS[:1000] if before[k] != home.worker_id)
    pool.release(home, 999_999)
    assert mapping(strategy, KEYS[:1000]) == before


def test_keyless_tasks_spread_within_the_bound() -> None:
    strategy, workers = ring_of(4)
    pool = Pool(strategy)
    for i in range(1_000):
        pool.place(task(i))
    assert max(len(w.held) for w in workers) <= math.ceil(1.25 * 1_000 / 4)
    assert min(len(w.held) for w in workers) > 0


def test_rank_follows_the_ring_among_the_allowed() -> None:
    strategy, workers = ring_of(6)
    for i, key in enumerate(KEYS[:300]):
        assert strategy.rank(task(i, key), workers) is strategy.pick(task(i, key))
    allowed = workers[1:4]
    only_allowed = ConsistentHash(env())
    Pool(only_allowed, *allowed)
    for i, key in enumerate(KEYS[:300]):
        ranked = strategy.rank(task(i, key), allowed)
        assert ranked in allowed
        assert ranked is only_allowed.pick(task(i, key))


def test_workers_long_not_ready_leave_the_ring_without_moving_keys() -> None:
    clock = FakeClock()
    strategy = ConsistentHash(env(clock=clock), vnodes=20, prune_after_s=60.0)
    workers = [slot(f"w{i}") for i in range(6)]
    late = slot("late")
    Pool(strategy, *workers)
    strategy.remove(workers[0])
    strategy.remove(workers[1])
    clock.advance(59.0)
    strategy.add(late)
    assert strategy.ring_members == 7  # w0 and w1 not ready for 59 s: still on the ring
    before = mapping(strategy, KEYS[:2000])
    clock.advance(2.0)
    strategy.remove(workers[2])
    assert strategy.ring_members == 5  # w0 and w1 pruned; w2 only just stopped
    strategy.add(workers[2])
    assert mapping(strategy, KEYS[:2000]) == before  # pruning moved no key
    strategy.add(workers[0])  # back, at the same points as ever
    assert strategy.ring_members == 6
    fresh = ConsistentHash(env(), vnodes=20)
    Pool(fresh, workers[0], *workers[2:], late)
    assert mapping(strategy, KEYS[:2000]) == mapping(fresh, KEYS[:2000])


def test_an_empty_index_picks_nothing() -> None:
    strategy = make_strategy("consistent_hash", env())
    assert isinstance(strategy, ConsistentHash)
    assert strategy.pick(task(1, "k")) is None
    assert len(strategy) == 0


def test_the_scheduler_places_by_routing_key_within_the_bound() -> None:
    pool = PoolScheduler("default", "consistent_hash", 1000, env=env())
    for name in ("a", "b", "c", "d"):
        pool.add_worker(slot(name, capacity=100))
    homes = set()
    for i in range(1, 11):  # one at a time: the key's worker is never over the bound
        pool.enqueue(task(i, "user-7"))
        ((task_id, worker_id),) = placed_by(pool)
        homes.add(worker_id)
        pool.release(worker_id, task_id)
    assert len(homes) == 1
    for i in range(11, 211):
        pool.enqueue(task(i, f"key-{i % 5}"))
    loads = Counter(worker_id for _, worker_id in placed_by(pool))
    assert sum(loads.values()) == 200
    assert max(loads.values()) <= math.ceil(1.25 * 200 / 4)


def placed_by(pool: PoolScheduler) -> list[tuple[int, str]]:
    return [(d.task.id, d.worker.worker_id) for d in pool.place() if d.worker is not None]


ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("place"), st.integers(0, 20), st.integers(0, 7)),
        st.tuples(st.just("finish"), st.integers(0, 7), st.integers(0, 100)),
        st.tuples(st.just("drain"), st.integers(0, 7), st.booleans()),
        st.tuples(st.just("rank"), st.integers(0, 20), st.integers(1, 255)),
        st.tuples(st.just("tick"), st.integers(0, 100), st.just(0)),
    ),
    max_size=150,
)


@settings(max_examples=100, deadline=None)
@given(capacities=st.lists(st.integers(1, 4), min_size=1, max_size=8), ops=ops_st)
def test_picks_come_from_the_index_and_ranks_from_the_allowed(
    capacities: list[int], ops: list[tuple[str, int, int]]
) -> None:
    clock = FakeClock()
    strategy = ConsistentHash(env(clock=clock), vnodes=8, prune_after_s=30.0)
    workers = [slot(f"w{i}", capacity) for i, capacity in enumerate(capacities)]
    pool = Pool(strategy, *workers)
    for task_id, (op, a, b) in enumerate(ops):
        ready = [w for w in workers if w.ready]
        key = f"k{a}" if a else ""
        if op == "place":
            picked = strategy.pick(task(task_id, key))
            assert (picked is None) == (not ready)
            if picked is not None:
                assert picked in ready
                pool.take(picked, task_id)
        elif op == "finish":
            worker = workers[a % len(workers)]
            if worker.held:
                pool.release(worker, sorted(worker.held)[b % len(worker.held)])
        elif op == "drain":
            worker = workers[a % len(workers)]
            was_ready = worker.ready
            worker.draining = bool(b)
            if was_ready and not worker.ready:
                strategy.remove(worker)
            elif worker.ready and not was_ready:
                strategy.add(worker)
        elif op == "rank" and ready:
            allowed = [w for i, w in enumerate(ready) if b >> (i % 8) & 1] or ready[:1]
            assert strategy.rank(task(task_id, key), allowed) in allowed
        elif op == "tick":
            clock.advance(float(a))
        assert len(strategy) == sum(w.ready for w in workers)


@pytest.mark.parametrize("epsilon", [0.1, 0.25, 1.0])
def test_the_bound_holds_for_other_epsilons(epsilon: float) -> None:
    n = 7
    strategy, workers = ring_of(n, epsilon=epsilon)
    pool = Pool(strategy)
    for i, key in enumerate(KEYS[:3000]):
        pool.place(task(i, key))
    assert max(len(w.held) for w in workers) <= math.ceil((1 + epsilon) * 3000 / n)


@given(
    batches=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=8),
    prune_at=st.integers(min_value=0, max_value=8),
)
@settings(max_examples=40, deadline=None)
def test_the_ring_in_blocks_keeps_every_point_in_order(batches: list[int], prune_at: int) -> None:
    # Small blocks, so that joins insert into blocks and split them, and a first join
    # (or a big one) rebuilds the ring; the walk from any point must meet every point
    # clockwise, in (point, slot) order, as one sorted list would, and a pick (which
    # finds its block from the directory) must end at the first ready owner of them.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("broker.core.strategies.hashing.RING_BLOCK", 3)
        clock = FakeClock()
        strategy = ConsistentHash(env(clock=clock), vnodes=5, prune_after_s=10.0)
        workers = []
        for batch, size in enumerate(batches):
            for i in range(size):
                workers.append(slot(f"w{batch}-{i}"))
                strategy.add(workers[-1])
            if batch == prune_at and len(workers) > 2:
                strategy.remove(workers[0])
                clock.advance(11.0)
                strategy.remove(workers[1])  # prunes the first
            assert strategy.pick(task(batch)) is not None  # the joins reach the ring
    members = [w for w in workers if w.worker_id in strategy._points_of]
    expected = sorted(
        (point, strategy._slot_of[w.worker_id])
        for w in members
        for point in strategy._points_of[w.worker_id]
    )
    for start in (0, expected[len(expected) // 2][0], expected[-1][0] + 1):
        walked = list(strategy._walk(start))
        first = next((i for i, (point, _) in enumerate(expected) if point >= start), 0)
        assert walked == [s for _, s in expected[first:] + expected[:first]]
    ready = {strategy._slot_of[w.worker_id]: w for w in workers if w in strategy._ready.values()}
    for task_id in range(100, 140):
        start = task_point(task(task_id))
        first = next((i for i, (point, _) in enumerate(expected) if point >= start), 0)
        owners = [ready[s] for _, s in expected[first:] + expected[:first] if s in ready]
        assert strategy.pick(task(task_id)) is owners[0]
