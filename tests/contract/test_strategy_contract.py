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
