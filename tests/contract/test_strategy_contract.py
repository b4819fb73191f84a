"""The placement-strategy contract: every strategy in `STRATEGIES` is held to it.

A strategy is an index of the ready workers of one pool and task type (see
broker.core.strategies). Whatever it learns or prefers, it must only ever choose a worker
that is in its index now, choose one whenever the index is not empty, rank only among the
workers it is offered, and count its workers right. A new strategy registered in
`STRATEGIES` is run through every test here without further ado.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.clock import FakeClock
from broker.core.runtimes import RuntimeModel
from broker.core.strategies import STRATEGIES, Outcome, Strategy, StrategyEnv, WorkerSlot
from broker.domain import Placement, Task, TaskSpec


def make(name: str) -> Strategy:
    return STRATEGIES[name](StrategyEnv(clock=FakeClock(), runtimes=RuntimeModel("default")))


def slot(worker_id: str, capacity: int = 4) -> WorkerSlot:
    return WorkerSlot(worker_id, "default", capacity, frozenset({"t"}), {"zone": worker_id[-1]})


_ids = iter(range(1, 1_000_000))


def task(routing_key: str = "") -> Task:
    task_id = next(_ids)
    spec = TaskSpec(task_type="t", placement=Placement(routing_key=routing_key))
    return Task(id=task_id, seq=task_id, spec=spec)


@pytest.fixture(params=sorted(STRATEGIES))
def name(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


def test_a_strategy_is_registered_under_its_own_name(name: str) -> None:
    assert make(name).name == name


def test_an_empty_index_picks_nobody(name: str) -> None:
    strategy = make(name)
    assert len(strategy) == 0
    assert strategy.pick(task()) is None


def test_it_picks_only_workers_it_holds_and_counts_them(name: str) -> None:
    strategy = make(name)
    workers = [slot(f"w{i}") for i in range(5)]
    for count, worker in enumerate(workers, start=1):
        strategy.add(worker)
        assert len(strategy) == count
    for _ in range(50):
        assert strategy.pick(task(routing_key=f"k{_ % 7}")) in workers
    gone = workers.pop(2)
    strategy.remove(gone)
    assert len(strategy) == 4
    for _ in range(50):
        picked = strategy.pick(task(routing_key=f"k{_ % 7}"))
        assert picked is not None
        assert picked is not gone


def test_it_ranks_among_the_offered_workers_only(name: str) -> None:
    strategy = make(name)
    workers = [slot(f"w{i}") for i in range(6)]
    for worker in workers:
        strategy.add(worker)
    for size in range(1, 7):
        offered = workers[-size:]
        for _ in range(10):
            assert strategy.rank(task(routing_key=f"k{_}"), offered) in offered


def test_load_changes_and_outcomes_keep_it_whole(name: str) -> None:
    strategy = make(name)
    workers = [slot(f"w{i}") for i in range(3)]
    for worker in workers:
        strategy.add(worker)
    for step in range(30):
        placed = task()
        chosen = strategy.pick(placed)
        assert chosen is not None
        chosen.load = (step % 5) / 5
        strategy.update(chosen)
        strategy.observe(
            Outcome(chosen, placed, queue_wait_s=0.01, run_s=0.1 * (1 + step % 3), success=True)
        )
        assert len(strategy) == 3
    assert {strategy.pick(task()) for _ in range(60)} <= set(workers)


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, int]]:
    kinds = st.sampled_from(["add", "remove", "update", "pick", "observe"])
    return draw(st.lists(st.tuples(kinds, st.integers(0, 7)), max_size=60))


@pytest.mark.parametrize("strategy_name", sorted(STRATEGIES))
@settings(max_examples=40, deadline=None)
@given(ops=operations())
def test_any_sequence_of_changes_keeps_the_contract(
    strategy_name: str, ops: list[tuple[str, int]]
) -> None:
    """Whatever happens, a pick is one of the workers in the index, and None only when
    the index is empty; the count is right."""
    strategy = make(strategy_name)
    slots = {i: slot(f"w{i}") for i in range(8)}
    ready: set[int] = set()
    for kind, i in ops:
        worker = slots[i]
        if kind == "add" and i not in ready:
            strategy.add(worker)
            ready.add(i)
        elif kind == "remove" and i in ready:
            strategy.remove(worker)
            ready.discard(i)
        elif kind == "update" and i in ready:
            worker.load = (worker.load + 0.3) % 1
            strategy.update(worker)
        elif kind == "observe":
            strategy.observe(Outcome(worker, task(), 0.0, 0.05 * (i + 1), success=i % 3 != 0))
        picked = strategy.pick(task(routing_key=f"k{i}"))
        if ready:
            assert picked is not None
            assert picked in (slots[j] for j in ready)
        else:
            assert picked is None
        assert len(strategy) == len(ready)


TAKES_UNHEARD = sorted(n for n in STRATEGIES if not getattr(make(n), "update_on_take", True))


def test_the_strategies_that_need_not_hear_of_takes() -> None:
    # The scheduler skips their `update` on a take: the ones that rank by load say so.
    assert set(TAKES_UNHEARD) == {
        "least_loaded",
        "weighted_response_time",
        "predictive",
        "round_robin",
        "adaptive",  # all its arms are among them
    }


@st.composite
def pool_events(draw: st.DrawFn) -> list[tuple[str, int]]:
    kinds = st.sampled_from(["add", "remove", "take", "release", "pick", "observe"])
    return draw(st.lists(st.tuples(kinds, st.integers(0, 5)), min_size=10, max_size=120))


@pytest.mark.parametrize("strategy_name", TAKES_UNHEARD)
@settings(max_examples=60, deadline=None)
@given(events=pool_events())
def test_one_that_need_not_hear_of_takes_places_the_same_without_them(
    strategy_name: str, events: list[tuple[str, int]]
) -> None:
    """`update_on_take` False: told of every take or of none, it picks the same workers."""
    told, untold = make(strategy_name), make(strategy_name)
    workers = {i: slot(f"w{i}", capacity=1 + i % 3) for i in range(6)}
    ready: set[int] = set()
    where: dict[int, WorkerSlot] = {}
    held: list[Task] = []

    def both(method: str, *args: object) -> list[object]:
        return [getattr(told, method)(*args), getattr(untold, method)(*args)]

    for kind, i in events:
        worker = workers[i]
        if kind == "add" and i not in ready and worker.ready:
            both("add", worker)
            ready.add(i)
        elif kind == "remove" and i in ready:
            both("remove", worker)
            ready.discard(i)
        elif kind == "take" and i in ready:
            placed = task()
            worker.held.add(placed.id)
            where[placed.id] = worker
            held.append(placed)
            if worker.ready:
                told.update(worker)  # the untold one hears nothing
            else:
                both("remove", worker)
                ready.discard(i)
        elif kind == "release" and held:
            done = held.pop(i % len(held))
            owner = where.pop(done.id)
            owner.held.discard(done.id)
            index = next(k for k, w in workers.items() if w is owner)
            if index in ready:
                both("update", owner)
            elif owner.ready:
                both("add", owner)
                ready.add(index)
            both("observe", Outcome(owner, done, 0.0, 0.05 * (index + 1), success=i % 4 != 0))
        elif kind == "pick":
            placed = task()
            picked = both("pick", placed)
            assert picked[0] is picked[1]


@pytest.mark.parametrize("strategy_name", ["least_loaded", "weighted_response_time", "predictive"])
def test_one_task_at_a_time_goes_round_equal_workers(strategy_name: str) -> None:
    """A take is not reported and the release after it brings the worker back to where
    it was: the next task still goes to another of the equal workers."""
    strategy = make(strategy_name)
    workers = [slot(f"w{i}", capacity=2) for i in range(3)]
    for worker in workers:
        strategy.add(worker)
    chosen = []
    for _ in range(9):
        placed = task()
        picked = strategy.pick(placed)
        assert picked is not None
        chosen.append(picked.worker_id)
        picked.held.add(placed.id)
        picked.held.discard(placed.id)
        strategy.update(picked)
    assert sorted(chosen) == sorted(["w0", "w1", "w2"] * 3)
