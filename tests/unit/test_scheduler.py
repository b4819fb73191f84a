"""Placement: credit is never exceeded, types are respected, strategies rank as documented."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.scheduler import Decision, PoolScheduler
from broker.core.strategies import LeastLoaded, RoundRobin, WorkerSlot
from broker.domain import Task, TaskSpec


def task(task_id: int, task_type: str = "t", priority: int = 0) -> Task:
    return Task(id=task_id, seq=task_id, spec=TaskSpec(task_type=task_type, priority=priority))


def slot(
    worker_id: str,
    capacity: int = 1,
    types: tuple[str, ...] = ("t",),
    labels: dict[str, str] | None = None,
) -> WorkerSlot:
    return WorkerSlot(worker_id, "default", capacity, frozenset(types), labels)


def placed(decisions: list[Decision]) -> list[tuple[int, str]]:
    """(task id, worker id) of the decisions that placed a task."""
    return [(d.task.id, d.worker.worker_id) for d in decisions if d.worker is not None]


def workers_of(decisions: list[Decision]) -> list[str]:
    return [worker for _, worker in placed(decisions)]


def test_round_robin_takes_turns() -> None:
    pool = PoolScheduler("default", "round_robin", starvation_interval=1000)
    for name in ("a", "b", "c"):
        pool.add_worker(slot(name, capacity=10))
    for i in range(1, 7):
        pool.enqueue(task(i))
    assert workers_of(pool.place()) == ["a", "b", "c", "a", "b", "c"]


def test_least_loaded_prefers_the_emptiest_worker() -> None:
    pool = PoolScheduler("default", "least_loaded")
    big, small = slot("big", capacity=10), slot("small", capacity=2)
    pool.add_worker(big)
    pool.add_worker(small)
    big.held.update({100, 101, 102})  # 30% busy
    pool.set_capacity("big", 10)  # tell the index its load changed
    pool.enqueue(task(1))
    pool.enqueue(task(2))
    # small (0%) first, then small is at 50% and big at 30%: big.
    assert workers_of(pool.place()) == ["small", "big"]


def test_no_worker_gets_more_than_its_capacity_and_credit_comes_back() -> None:
    pool = PoolScheduler("default", "round_robin")
    pool.add_worker(slot("a", capacity=2))
    for i in range(1, 6):
        pool.enqueue(task(i))
    first = pool.place()
    assert [p.task.id for p in first] == [1, 2]
    assert pool.place() == []
    pool.release("a", 1)
    assert [p.task.id for p in pool.place()] == [3]


def test_tasks_only_go_to_workers_of_their_type() -> None:
    pool = PoolScheduler("default", "round_robin")
    pool.add_worker(slot("img", capacity=5, types=("resize",)))
    pool.enqueue(task(1, "email"))
    pool.enqueue(task(2, "resize"))
    assert placed(pool.place()) == [(2, "img")]
    assert 1 in pool.queue


def test_draining_and_removed_workers_get_nothing() -> None:
    pool = PoolScheduler("default", "least_loaded")
    pool.add_worker(slot("a", capacity=5))
    pool.add_worker(slot("b", capacity=5))
    pool.set_draining("a")
    removed = pool.remove_worker("b")
    assert removed.worker_id == "b"
    pool.enqueue(task(1))
    assert pool.place() == []


def test_switching_strategy_keeps_the_ready_workers() -> None:
    pool = PoolScheduler("default", "round_robin")
    pool.add_worker(slot("a", capacity=1))
    pool.set_strategy("least_loaded")
    pool.enqueue(task(1))
    assert workers_of(pool.place()) == ["a"]


def test_strategies_pick_nothing_when_empty() -> None:
    for strategy in (RoundRobin(), LeastLoaded()):
        assert strategy.pick(task(1)) is None
        assert len(strategy) == 0


workers_st = st.lists(
    st.tuples(st.integers(1, 4), st.sets(st.sampled_from("abc"), min_size=1)),
    min_size=1,
    max_size=8,
)
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from("abcd"), st.integers(-5, 5)),
        st.tuples(st.just("finish"), st.integers(0, 7), st.integers(0, 3)),
        st.tuples(st.just("drain"), st.integers(0, 7), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(workers=workers_st, ops=ops_st, strategy=st.sampled_from(["round_robin", "least_loaded"]))
def test_placement_invariants(
    workers: list[tuple[int, set[str]]], ops: list[tuple[str, object, int]], strategy: str
) -> None:
    pool = PoolScheduler("default", strategy, starvation_interval=3)
    slots = [slot(f"w{i}", cap, tuple(types)) for i, (cap, types) in enumerate(workers)]
    for s in slots:
        pool.add_worker(s)
    next_id = 1
    for op, arg, value in ops:
        if op == "submit":
            assert isinstance(arg, str)
            pool.enqueue(task(next_id, arg, value))
            next_id += 1
        elif op == "finish":
            assert isinstance(arg, int)
            s = slots[arg % len(slots)]
            if s.held:
                pool.release(s.worker_id, sorted(s.held)[value % len(s.held)])
        else:
            assert isinstance(arg, int)
            pool.set_draining(slots[arg % len(slots)].worker_id)
        for decision in pool.place():
            w = decision.worker
            assert w is not None
            assert decision.task.spec.task_type in w.task_types
            assert not w.draining
        for s in slots:
            assert len(s.held) <= s.capacity
        # Nothing placeable is left waiting: every queued type has no ready worker.
        for t in pool.queue:
            assert not any(s.ready and t.spec.task_type in s.task_types for s in slots), (
                "a schedulable task was left in the queue"
            )
