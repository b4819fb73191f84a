"""The broker's task lifecycle in simulation: retries and dead letters, circuit
breakers, bulkheads, execution timeouts and leases act on simulated workers as they
do in the broker, because the simulator drives the same lifecycle core."""

from __future__ import annotations

import itertools

import pytest

from broker.domain import BulkheadConfig, PoolConfig, RetryPolicy, Task
from broker.sim import run
from broker.sim.simulator import (
    ANY_CLASS,
    POOL,
    SimTask,
    SimulationError,
    SimWorker,
    Workload,
    simulate,
)

WORK = frozenset({"work"})
NO_BREAKER = PoolConfig(name=POOL, breaker_failures=1000)


def task(
    at_s: float,
    duration_s: float = 1.0,
    retry: RetryPolicy | None = None,
    execution_timeout_s: float = 0.0,
) -> SimTask:
    return SimTask(
        arrival_s=at_s,
        task_type="work",
        duration_s={ANY_CLASS: duration_s},
        retry=retry or RetryPolicy(),
        execution_timeout_s=execution_timeout_s,
    )


def workload(
    workers: list[SimWorker], tasks: list[SimTask], pool: PoolConfig = NO_BREAKER
) -> Workload:
    return Workload(name="test", workers=tuple(workers), tasks=tuple(tasks), pool=pool)


def failing(worker_id: str, capacity: int = 1, fail_rate: float = 1.0) -> SimWorker:
    return SimWorker(worker_id=worker_id, capacity=capacity, task_types=WORK, fail_rate=fail_rate)


def steady(worker_id: str, capacity: int = 1) -> SimWorker:
    return SimWorker(worker_id=worker_id, capacity=capacity, task_types=WORK)


def record_starts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, str, int]]:
    """(time, worker, attempt) of every attempt the simulation starts."""
    starts: list[tuple[float, str, int]] = []
    original = run._Run._start

    def start(self: run._Run, heap: list[run._Event], task: Task, now: float) -> None:
        starts.append((now, task.worker_id, task.attempts))
        original(self, heap, task, now)

    monkeypatch.setattr(run._Run, "_start", start)
    return starts


# Retries and dead letters ------------------------------------------------------


def test_a_failing_task_is_retried_after_its_backoff_then_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    starts = record_starts(monkeypatch)
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=2.0, max_backoff_s=2.0)
    result = simulate(workload([failing("f")], [task(0.0, 1.0, policy)]), "round_robin")
    assert [attempt for _, _, attempt in starts] == [1, 2, 3]
    for (before, _, _), (after, _, _) in itertools.pairwise(starts):
        assert before + 1.0 <= after <= before + 1.0 + 2.0  # run, then at most the backoff
    assert (result.completed, result.failed, result.dead_lettered) == (1, 1, 1)
    assert result.retried == 2
    assert result.makespan_s == pytest.approx(starts[-1][0] + 1.0)
    assert result.wait_p99_s == 0.0  # a retry waits for its backoff, not in the queue


def test_retries_turn_failed_attempts_into_successes() -> None:
    tasks = [task(i * 0.5, 0.2) for i in range(40)]
    flaky = [failing("f", fail_rate=0.5)]
    without = simulate(workload(flaky, tasks), "round_robin", seed=3)
    policy = RetryPolicy(max_attempts=10, initial_backoff_s=0.1, max_backoff_s=0.5)
    retried = [task(t.arrival_s, 0.2, policy) for t in tasks]
    with_retries = simulate(workload(flaky, retried), "round_robin", seed=3)
    assert without.failed > 0
    assert without.retried == 0
    assert (with_retries.completed, with_retries.failed) == (40, 0)
    assert with_retries.retried >= without.failed  # the same first draws fail
    assert with_retries.dead_lettered == 0


def test_a_non_retryable_error_is_not_retried() -> None:
    policy = RetryPolicy(max_attempts=5, non_retryable_errors=frozenset({"Error"}))
    result = simulate(workload([failing("f")], [task(0.0, 1.0, policy)]), "round_robin")
    assert (result.completed, result.failed, result.retried, result.dead_lettered) == (1, 1, 0, 0)


# Circuit breakers ----------------------------------------------------------------


def test_a_failing_worker_s_breaker_opens_and_it_gets_nothing_in_the_cool_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    starts = record_starts(monkeypatch)
    pool = PoolConfig(name=POOL, breaker_failures=3, breaker_cooldown_s=10.0)
    bad = SimWorker(worker_id="bad", capacity=1, task_types=WORK, fail_rate=1.0)
    tasks = [task(i * 0.5, 0.2) for i in range(80)]  # 40 s of steady arrivals
    result = simulate(workload([bad, steady("good")], tasks, pool), "round_robin")
    on_bad = [at for at, worker_id, _ in starts if worker_id == "bad"]
    assert len(on_bad) >= 4
    opened_at = on_bad[2] + 0.2  # its third failure came back
    assert on_bad[3] >= opened_at + 10.0  # nothing during the cool-down, then a trial
    trial_failed_at = on_bad[3] + 0.2
    assert all(at >= trial_failed_at + 10.0 for at in on_bad[4:])  # the trial failed: again
    assert result.breaker_trips == len(on_bad) - 2
    assert result.failed == len(on_bad)
    assert result.completed == len(tasks)
    # Without a breaker, round robin keeps sending it every other task.
    unguarded = simulate(workload([bad, steady("good")], tasks), "round_robin")
    assert unguarded.failed > 4 * result.failed
    assert unguarded.breaker_trips == 0


def test_a_successful_trial_closes_the_breaker(monkeypatch: pytest.MonkeyPatch) -> None:
    starts = record_starts(monkeypatch)
    pool = PoolConfig(name=POOL, breaker_failures=2, breaker_cooldown_s=5.0)
    flaky = SimWorker(worker_id="flaky", capacity=1, task_types=WORK, fail_rate=0.5)
    tasks = [task(0.0, 1.0), task(1.0, 1.0), task(3.0, 1.0), task(8.5, 1.0)]
    # Seed 7 draws fail, fail, succeed, fail for the four tasks' attempts.
    result = simulate(workload([flaky], tasks, pool), "round_robin", seed=7)
    # Two failures open it at 2 s; the third task waits out the cool-down, then is the
    # trial; it succeeds and closes the breaker, so the fourth task runs as soon as it
    # comes, and its failure alone (one in a row) does not open the breaker again.
    assert [at for at, _, _ in starts] == [0.0, 1.0, 7.0, 8.5]
    assert result.breaker_trips == 1
    assert result.failed == 3


# Bulkheads, timeouts and leases ------------------------------------------------------


def test_a_bulkhead_caps_the_type_s_tasks_in_flight() -> None:
    four = [task(0.0, 1.0) for _ in range(4)]
    workers = [steady("a", 2), steady("b", 2)]
    assert simulate(workload(workers, four), "round_robin").makespan_s == 1.0
    bulkhead = PoolConfig(
        name=POOL,
        breaker_failures=1000,
        bulkheads=(BulkheadConfig(task_type="work", max_inflight=1),),
    )
    capped = simulate(workload(workers, four, bulkhead), "round_robin")
    assert (capped.makespan_s, capped.completed) == (4.0, 4)
    assert capped.wait_p99_s == pytest.approx(2.97)


def test_an_attempt_past_its_execution_timeout_is_cancelled_then_retried() -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.5, max_backoff_s=0.5)
    result = simulate(
        workload([steady("w")], [task(0.0, 5.0, policy, execution_timeout_s=1.0)]), "round_robin"
    )
    assert (result.timed_out, result.retried, result.dead_lettered) == (2, 1, 1)
    assert result.makespan_s <= 2.5  # two attempts of 1 s, a backoff of at most 0.5 s


def test_heartbeats_keep_a_long_task_s_lease() -> None:
    pool = PoolConfig(name=POOL, lease_s=10.0, breaker_failures=1000)
    result = simulate(workload([steady("w")], [task(0.0, 100.0)], pool), "round_robin")
    assert (result.completed, result.failed, result.requeued) == (1, 0, 0)
    assert result.makespan_s == 100.0


def test_bad_task_options_and_pool_settings_are_refused() -> None:
    bad_retry = RetryPolicy(max_attempts=0)
    with pytest.raises(SimulationError, match="task 1: retry max_attempts"):
        simulate(workload([steady("w")], [task(0.0, 1.0, bad_retry)]), "round_robin")
    with pytest.raises(SimulationError, match="pool settings"):
        simulate(
            workload([steady("w")], [task(0.0)], PoolConfig(name=POOL, breaker_failures=-1)),
            "round_robin",
        )
