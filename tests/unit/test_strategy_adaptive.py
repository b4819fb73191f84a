"""The adaptive strategy: switches to the arm that measures better, on evidence."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from broker.clock import FakeClock
from broker.core.runtimes import RuntimeModel
from broker.core.scheduler import PoolScheduler
from broker.core.strategies import Outcome, StrategyEnv, WorkerSlot
from broker.core.strategies.adaptive import Adaptive
from broker.domain import PoolConfig, Task, TaskSpec


def task(task_id: int) -> Task:
    return Task(id=task_id, seq=task_id, spec=TaskSpec(task_type="t"))


def feed(
    strategy: Adaptive,
    worker: WorkerSlot,
    costs: dict[str, float],
    tasks: int,
    *,
    spread: float = 0.3,
    seed: int = 0,
    first: int = 1,
) -> None:
    """Place `tasks` tasks and report each back with a cost drawn around its arm's mean."""
    rng = random.Random(seed)
    for task_id in range(first, first + tasks):
        placed = task(task_id)
        assert strategy.pick(placed) is worker
        arm = strategy._placed_by[placed.id]
        run_s = costs[arm] * rng.lognormvariate(-spread * spread / 2, spread)
        strategy.observe(Outcome(worker, placed, queue_wait_s=0.0, run_s=run_s, success=True))


def make(**options: float) -> tuple[Adaptive, WorkerSlot]:
    strategy = Adaptive(candidates=("round_robin", "least_loaded"), **options)  # type: ignore[arg-type]
    worker = WorkerSlot("w", "default", 4, frozenset({"t"}))
    strategy.add(worker)
    return strategy, worker


def test_starts_with_the_first_candidate_and_takes_its_settings_from_the_pool() -> None:
    env = StrategyEnv(FakeClock(), RuntimeModel("p"), adaptive_window=80, adaptive_explore=0.5)
    strategy = Adaptive(env)
    assert (strategy.active, strategy.window, strategy.explore_share) == ("least_loaded", 80, 0.5)
    strategy, worker = make()
    assert strategy.active == "round_robin"
    assert strategy.pick(task(1)) is worker
    assert len(strategy) == 1


def test_explores_its_share_of_the_tasks() -> None:
    strategy, worker = make(explore_share=0.25)
    feed(strategy, worker, {"round_robin": 1.0, "least_loaded": 1.0}, 400)
    assert not strategy.switches
    assert strategy._windows["least_loaded"].seen == 100


def test_switches_to_a_clearly_better_arm_within_a_few_hundred_tasks() -> None:
    strategy, worker = make()
    feed(strategy, worker, {"round_robin": 1.0, "least_loaded": 0.8}, 500)
    assert strategy.active == "least_loaded"
    assert len(strategy.switches) == 1
    assert strategy.switched_at[0] <= 500
    assert "round_robin -> least_loaded" in strategy.switches[0]
    assert "Welch t" in strategy.switches[0]
    assert "active least_loaded" in strategy.describe()


def test_does_not_switch_for_a_gain_below_the_minimum() -> None:
    strategy, worker = make(min_gain=0.1)
    feed(strategy, worker, {"round_robin": 1.0, "least_loaded": 0.95}, 5000, spread=0.05)
    assert strategy.active == "round_robin"
    assert not strategy.switches


@pytest.mark.parametrize("seed", range(5))
def test_settles_when_the_arms_are_equal(seed: int) -> None:
    strategy, worker = make()
    feed(strategy, worker, {"round_robin": 1.0, "least_loaded": 1.0}, 5000, spread=0.6, seed=seed)
    assert len(strategy.switches) <= 1


def test_failures_count_against_an_arm() -> None:
    strategy, worker = make()
    for task_id in range(1, 600):
        placed = task(task_id)
        strategy.pick(placed)
        arm = strategy._placed_by[placed.id]
        ok = arm == "least_loaded" or task_id % 2 == 0  # round robin fails half its tasks
        strategy.observe(Outcome(worker, placed, queue_wait_s=0.0, run_s=1.0, success=ok))
    assert strategy.active == "least_loaded"


def test_switches_back_only_on_new_evidence() -> None:
    strategy, worker = make()
    feed(strategy, worker, {"round_robin": 1.0, "least_loaded": 0.7}, 600)
    assert strategy.active == "least_loaded"
    feed(strategy, worker, {"round_robin": 0.5, "least_loaded": 0.7}, 1000, first=1000)
    assert strategy.active == "round_robin"
    assert len(strategy.switches) == 2


def test_a_held_task_is_placed_again_by_the_arm_that_held_it() -> None:
    clock = FakeClock()
    runtimes = RuntimeModel("default")
    for _ in range(20):
        runtimes.record("t", {"class": "fast"}, 0.1)
        runtimes.record("t", {"class": "slow"}, 1.0)
    env = StrategyEnv(clock, runtimes)
    pool = PoolScheduler("default", "adaptive", 1000, env=env)
    pool.add_worker(WorkerSlot("fast", "default", 1, frozenset({"t"}), {"class": "fast"}))
    pool.add_worker(WorkerSlot("slow", "default", 1, frozenset({"t"}), {"class": "slow"}))
    (adaptive,) = pool.indexes("t")
    assert isinstance(adaptive, Adaptive)
    adaptive.active = "predictive"
    adaptive.explore_share = 0.0
    pool.enqueue(task(1))
    pool.enqueue(task(2))
    placed, held = pool.place()
    assert placed.worker is pool.workers["fast"]
    assert placed.note.startswith("adaptive (predictive): predictive: expected finish 0.10 s")
    assert held.worker is None
    assert "holds it for busy worker fast" in held.note
    clock.advance(0.1)
    pool.finish(task(1), "fast", queue_wait_s=0.0, run_s=0.1, success=True)
    (again,) = pool.place()
    assert again.worker is pool.workers["fast"]


def test_the_pool_settings_reach_its_adaptive_strategy() -> None:
    config = PoolConfig(
        name="p", strategy="adaptive", adaptive_window=80, adaptive_explore_percent=50
    )
    pool = PoolScheduler("p", "adaptive", 1000, config=config)
    (adaptive,) = pool.indexes("t")
    assert isinstance(adaptive, Adaptive)
    assert (adaptive.window, adaptive.explore_share) == (80, 0.5)
    pool.reconfigure(replace(config, adaptive_window=300, adaptive_explore_percent=5))
    (adaptive,) = pool.indexes("t")
    assert isinstance(adaptive, Adaptive)
    assert (adaptive.window, adaptive.explore_share) == (300, 0.05)


def test_what_it_keeps_of_tasks_without_an_outcome_is_bounded() -> None:
    # A task cancelled where it ran reports no outcome: the arm that placed it is
    # forgotten once more than `kept` tasks wait for theirs, the oldest first.
    strategy, worker = make()
    strategy.kept = 100
    for task_id in range(1, 1_001):
        assert strategy.pick(task(task_id)) is worker
    assert len(strategy._placed_by) <= 100
    assert 1_000 in strategy._placed_by
    assert 1 not in strategy._placed_by
    strategy.observe(Outcome(worker, task(1_000), queue_wait_s=0.0, run_s=0.1, success=True))
    assert strategy.outcomes == 1
