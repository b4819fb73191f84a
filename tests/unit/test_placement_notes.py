"""Placement notes with numbers: why a task went where it went, or why it waits."""

from __future__ import annotations

from broker.clock import FakeClock
from broker.core.runtimes import RuntimeModel
from broker.core.scheduler import PoolScheduler
from broker.core.strategies import StrategyEnv, WorkerSlot
from broker.domain import Placement, PoolConfig, Task, TaskSpec


def task(task_id: int, sticky_key: str = "", routing_key: str = "") -> Task:
    placement = Placement(sticky_key=sticky_key, routing_key=routing_key)
    return Task(id=task_id, seq=task_id, spec=TaskSpec(task_type="t", placement=placement))


def pool_of(strategy: str, *workers: str, capacity: int = 1) -> tuple[PoolScheduler, FakeClock]:
    clock = FakeClock()
    config = PoolConfig(name="p", strategy=strategy, sticky_timeout_s=5.0)
    pool = PoolScheduler(
        "p", strategy, 1000, env=StrategyEnv(clock, RuntimeModel("p")), config=config
    )
    for worker_id in workers:
        pool.add_worker(WorkerSlot(worker_id, "p", capacity, frozenset({"t"})))
    return pool, clock


def notes(pool: PoolScheduler) -> dict[int, str]:
    return {d.task.id: d.note for d in pool.place()}


def test_a_sticky_wait_counts_down_and_says_how_long_it_waited() -> None:
    pool, clock = pool_of("round_robin", "a", "b", "c")
    pool.enqueue(task(1, "k"))
    pool.enqueue(task(2))  # keeps b busy; c stays free
    assert {d.task.id: d.worker.worker_id for d in pool.place() if d.worker} == {1: "a", 2: "b"}
    pool.enqueue(task(3, "k"))
    assert notes(pool)[3] == (
        "waiting: sticky key 'k' waits for worker a for up to 5.0 s more (waited 0.0 s)"
    )
    clock.advance(2.0)
    pool.release("b", 2)  # b frees up: the waiting task is looked at again
    assert notes(pool)[3] == (
        "waiting: sticky key 'k' waits for worker a for up to 3.0 s more (waited 2.0 s)"
    )
    clock.advance(0.8)
    pool.release("a", 1)
    assert notes(pool)[3] == "sticky: key 'k' held by a, waited 2.8 s"
    pool.release("a", 3)
    pool.enqueue(task(4, "k"))
    assert notes(pool)[4] == "sticky: key 'k' stays on a"


def test_a_sticky_key_that_moves_says_so() -> None:
    pool, clock = pool_of("round_robin", "a", "b")
    pool.enqueue(task(1, "k"))
    pool.place()
    pool.enqueue(task(2, "k"))
    pool.place()
    clock.advance(5.1)
    assert notes(pool)[2] == (
        "round_robin: 1 of 1 ready workers allowed; score 0; "
        "sticky key 'k' held by a, waited 5.1 s, moved to b"
    )
    assert pool.sticky["k"] == "b"
    pool.remove_worker("b")
    pool.enqueue(task(3, "k"))
    pool.release("a", 1)
    assert notes(pool)[3].endswith("sticky key 'k' held by b, which is gone, moved to a")


def test_a_ring_owner_over_its_bounded_load_spills_and_says_to_whom() -> None:
    pool, _ = pool_of("consistent_hash", "a", "b", "c", "d", capacity=100)
    said = [notes_of_one(pool, i) for i in range(1, 41)]
    spilled = [n for n in said if "over its bounded load" in n]
    assert spilled, "a hot key spills once its owner holds (1 + 0.25) x the mean load"
    assert spilled[0].startswith("consistent_hash: ring owner ")
    assert ", spilled to " in spilled[0]
    assert said[0] == "consistent_hash"  # the owner took it: nothing more to say


def notes_of_one(pool: PoolScheduler, task_id: int) -> str:
    pool.enqueue(task(task_id, routing_key="hot"))
    (decision,) = pool.place()
    return decision.note
