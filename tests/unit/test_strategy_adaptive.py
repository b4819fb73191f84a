"""The adaptive strategy: switches to the arm that measures best, with hysteresis."""

from __future__ import annotations

from broker.core.strategies import Outcome, WorkerSlot
from broker.core.strategies.adaptive import Adaptive
from broker.domain import Task, TaskSpec


def task(task_id: int) -> Task:
    return Task(id=task_id, seq=task_id, spec=TaskSpec(task_type="t"))


def feed(strategy: Adaptive, worker: WorkerSlot, costs: dict[str, float], tasks: int) -> None:
    """Place `tasks` tasks and report each back with the cost of the arm that placed it."""
    for task_id in range(1, tasks + 1):
        placed = task(task_id)
        arm = strategy._arm_for_next_task()
        strategy._placed_by[placed.id] = arm
        strategy.observe(Outcome(worker, placed, queue_wait_s=0.0, run_s=costs[arm], success=True))


def make(**options: float) -> tuple[Adaptive, WorkerSlot]:
    strategy = Adaptive(
        candidates=("round_robin", "least_loaded"),
        window=20,
        explore_every=4,
        **options,  # type: ignore[arg-type]
    )
    worker = WorkerSlot("w", "default", 4, frozenset({"t"}))
    strategy.add(worker)
    return strategy, worker


def test_starts_with_the_first_candidate_and_picks() -> None:
    strategy, worker = make()
    assert strategy.active == "round_robin"
    assert strategy.pick(task(1)) is worker
    assert len(strategy) == 1


def test_switches_to_a_clearly_better_arm_after_confirmations() -> None:
    strategy, worker = make()
    feed(strategy, worker, {"round_robin": 1.0, "least_loaded": 0.5}, 400)
    assert strategy.active == "least_loaded"
    assert len(strategy.switches) == 1
    assert "round_robin -> least_loaded" in strategy.switches[0]
    assert "active least_loaded" in strategy.describe()


def test_does_not_switch_within_the_hysteresis_band() -> None:
    strategy, worker = make(hysteresis=0.15)
    feed(strategy, worker, {"round_robin": 1.0, "least_loaded": 0.9}, 1000)
    assert strategy.active == "round_robin"
    assert not strategy.switches


def test_failures_count_against_an_arm() -> None:
    strategy, worker = make()
    for task_id in range(1, 600):
        placed = task(task_id)
        arm = strategy._arm_for_next_task()
        strategy._placed_by[placed.id] = arm
        ok = arm == "least_loaded" or task_id % 2 == 0  # round robin fails half its tasks
        strategy.observe(Outcome(worker, placed, queue_wait_s=0.0, run_s=1.0, success=ok))
    assert strategy.active == "least_loaded"


def test_does_not_flap_when_the_lead_keeps_changing() -> None:
    strategy, worker = make(confirmations=2)
    for round_ in range(10):
        better = "least_loaded" if round_ % 2 else "round_robin"
        costs = {"round_robin": 1.0, "least_loaded": 1.0}
        costs[better] = 0.5
        feed(strategy, worker, costs, 20 * 4 // 3)
    assert len(strategy.switches) <= 1
