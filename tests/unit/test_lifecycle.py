"""The task lifecycle core on a fake clock: events in, effects out, no network, no loop."""

from __future__ import annotations

import random

import pytest

from broker.clock import FakeClock
from broker.config import BrokerConfig
from broker.core.lifecycle import TaskLifecycle
from broker.domain import (
    Placement,
    PoolConfig,
    RetryPolicy,
    Task,
    TaskError,
    TaskResult,
    TaskSpec,
    TaskState,
)
from broker.errors import FailedPrecondition, InvalidTransition

POOL = "default"


def state(task: Task) -> TaskState:
    """The task's state now (the lifecycle changes it in place)."""
    return task.state


def error_type(task: Task) -> str:
    return task.error.type if task.error is not None else ""


class World:
    """A lifecycle with one pool, a fake clock, and helpers to feed it events."""

    def __init__(self, config: BrokerConfig | None = None, **pool_settings: object) -> None:
        self.clock = FakeClock()
        self.core = TaskLifecycle(config or BrokerConfig(), self.clock, random.Random(7))
        self.core.add_pool(PoolConfig(name=POOL, **pool_settings))  # type: ignore[arg-type]
        self.effects = self.core.effects

    @property
    def now(self) -> float:
        return self.clock.now()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.core.tick(self.now)

    def submit(self, **spec: object) -> Task:
        specs = [TaskSpec(task_type="t", **spec)]  # type: ignore[arg-type]
        (task,) = self.core.admit(specs, {}, "", self.now)
        self.core.submitted([task], self.now)
        return task

    def join(self, worker_id: str = "w", capacity: int = 1, **labels: str) -> None:
        self.core.members.join(worker_id, POOL, capacity, frozenset({"t"}), labels, self.now)

    def place(self) -> list[Task]:
        """Place, and return the tasks assigned (the effects are cleared)."""
        self.effects.clear()
        self.core.place(POOL, self.now)
        assigned = [task for task, _ in self.effects.placed]
        self.effects.clear()
        return assigned

    def report(self, task: Task, success: bool = True, **fields: object) -> None:
        self.effects.clear()
        result = TaskResult(task_id=task.id, attempt=task.attempts, success=success, **fields)  # type: ignore[arg-type]
        self.core.reported(task.worker_id, (), (result,), self.now)


# The happy path ------------------------------------------------------------------


def test_submitted_placed_succeeded_and_the_effects_of_each_step() -> None:
    world = World()
    task = world.submit()
    assert state(task) is TaskState.PENDING
    assert world.effects.dispatch == {POOL}  # place again
    world.effects.clear()
    world.join()
    assert world.effects.worker_events == [("w", POOL, "connected")]
    world.effects.clear()
    world.clock.advance(0.5)
    world.core.place(POOL, world.now)
    assert world.effects.placed == [(task, 0.5)]  # to send, with its queue wait
    assert world.effects.save == [task]
    assert (task.state, task.worker_id, task.attempts) == (TaskState.ASSIGNED, "w", 1)
    assert world.core.leases[task.id] == world.now + BrokerConfig().heartbeat_timeout_s
    assert world.core.active == 1
    world.clock.advance(2.0)
    world.core.reported("w", (task.id,), (), world.now)  # the start notice
    assert state(task) is TaskState.RUNNING
    world.clock.advance(1.0)
    world.report(task, result=b"out")
    assert (task.state, task.result, task.finished_at) == (TaskState.SUCCEEDED, b"out", world.now)
    assert world.effects.finished == [task]  # tell watchers once durable
    assert world.effects.attempts == [(task, True, 3.0)]  # since assigned (no own measure)
    assert world.effects.dispatch == {POOL}
    assert world.core.active == 0
    assert task.id not in world.core.leases
    world.core.forget(world.effects.finished)
    assert task.id not in world.core.live


def test_a_result_for_a_task_the_worker_no_longer_holds_is_dropped() -> None:
    world = World()
    world.join()
    task = world.submit()
    world.place()
    world.report(task)
    world.report(task)  # again: stale
    assert world.core.stale_results == 1
    assert world.effects.finished == []


# Retries ---------------------------------------------------------------------------


def test_a_failed_attempt_is_retried_after_its_backoff_then_dead_lettered() -> None:
    world = World()
    world.join()
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=1.0, max_backoff_s=4.0)
    task = world.submit(retry=policy)
    for attempt, cap in ((1, 1.0), (2, 2.0)):
        assert world.place() == [task]
        assert task.attempts == attempt
        world.report(task, success=False, error=TaskError(type="Flaky", message="no"))
        assert state(task) is TaskState.PENDING
        assert world.now < task.not_before <= world.now + cap  # full jitter, capped
        assert task.placement_note.startswith(f"attempt {attempt} of 3 failed (Flaky)")
        assert world.effects.attempts == [(task, False, 0.0)]
        assert world.effects.finished == []
        assert world.core.timers.next_at() == task.not_before  # one heap of wake-ups
        assert world.place() == []  # not before its backoff is over
        world.advance(task.not_before - world.now)
        assert world.effects.dispatch == {POOL}
    assert world.place() == [task]
    world.report(task, success=False, error=TaskError(type="Flaky"))
    assert state(task) is TaskState.DEAD_LETTER
    assert world.effects.finished == [task]
    assert task.error == TaskError(type="Flaky")
    assert world.core.events[(POOL, "retried")] == 2
    assert [level for level, *_ in world.effects.logs] == [30]  # a warning: dead-lettered


def test_a_non_retryable_error_fails_at_once() -> None:
    world = World()
    world.join()
    policy = RetryPolicy(max_attempts=3, non_retryable_errors=frozenset({"Fatal"}))
    task = world.submit(retry=policy)
    world.place()
    world.report(task, success=False, error=TaskError(type="Fatal"))
    assert state(task) is TaskState.FAILED


def test_a_result_too_large_fails_and_a_long_traceback_is_cut() -> None:
    world = World(BrokerConfig(max_result_bytes=4, max_traceback_chars=100))
    world.join(capacity=2)
    big, broken = world.submit(), world.submit()
    world.place()
    world.report(big, result=b"12345")
    assert big.state is TaskState.FAILED
    assert error_type(big) == "ResultTooLarge"
    world.report(broken, success=False, error=TaskError(type="E", traceback="x" * 1000))
    assert broken.error is not None
    assert len(broken.error.traceback) <= 100
    assert broken.error.traceback.endswith("characters cut)")


# Time: leases, deadlines, timeouts -----------------------------------------------------


def test_an_unconfirmed_task_is_requeued_when_its_lease_runs_out() -> None:
    world = World(lease_s=5.0)
    world.join()
    task = world.submit()
    world.place()
    world.clock.advance(4.0)
    world.core.heartbeat("w", 0.0, [task.id], set, world.now)  # confirmed: renewed
    world.clock.advance(4.0)
    world.core.expire_leases(world.now)
    assert state(task) is TaskState.ASSIGNED
    world.clock.advance(1.5)
    world.effects.clear()
    world.core.expire_leases(world.now)
    assert state(task) is TaskState.PENDING
    assert world.effects.cancel == [("w", [task.id])]  # the worker should stop it
    assert world.effects.requeued == [(task, "lease expired")]
    assert world.core.events[(POOL, "lease_expired")] == 1
    assert world.core.active == 0
    assert world.place() == [task]  # its slot came back
    assert task.attempts == 2


def test_a_task_not_started_by_its_deadline_fails() -> None:
    world = World()
    task = world.submit(start_timeout_s=5.0)
    world.advance(4.9)
    assert state(task) is TaskState.PENDING
    world.effects.clear()
    world.advance(0.1)
    assert state(task) is TaskState.FAILED
    assert error_type(task) == "DeadlineExceeded"
    assert world.effects.finished == [task]
    world.join()
    assert world.place() == []  # it left its queue
    assert world.core.admission.backlog[POOL] == 0


def test_an_attempt_past_its_execution_timeout_is_cancelled_on_its_worker() -> None:
    world = World()
    world.join()
    task = world.submit(execution_timeout_s=2.0)
    world.place()
    world.effects.clear()
    world.advance(2.0)
    assert state(task) is TaskState.FAILED
    assert error_type(task) == "Timeout"
    assert world.effects.cancel == [("w", [task.id])]
    assert world.effects.attempts == [(task, False, 2.0)]
    assert world.effects.finished == [task]
    assert world.core.events[(POOL, "timed_out")] == 1
    assert world.core.active == 0


# Workers and breakers -------------------------------------------------------------------


def test_a_lost_worker_s_tasks_are_requeued() -> None:
    world = World()
    world.join(capacity=2)
    first, second = world.submit(), world.submit()
    world.place()
    world.effects.clear()
    assert world.core.worker_lost("w", "stream broke", world.now) == 2
    assert world.effects.requeued == [(first, "stream broke"), (second, "stream broke")]
    assert world.effects.worker_events == [("w", POOL, "disconnected")]
    assert {first.state, second.state} == {TaskState.PENDING}
    world.join("v", capacity=2)
    assert world.place() == [first, second]


def test_an_open_breaker_pauses_its_worker_until_a_trial_after_the_cool_down() -> None:
    world = World(breaker_failures=2, breaker_cooldown_s=10.0)
    world.join()
    tasks = [world.submit() for _ in range(4)]
    for task in tasks[:2]:
        assert world.place() == [task]
        world.report(task, success=False)
    assert ("w", POOL, "breaker open") in world.effects.worker_events
    assert world.place() == []  # open: nothing for it
    world.advance(9.9)
    assert world.place() == []
    world.advance(0.1)
    assert world.effects.dispatch == {POOL}
    assert world.place() == [tasks[2]]  # half-open: one trial
    world.report(tasks[2])
    assert ("w", POOL, "breaker closed") in world.effects.worker_events
    assert world.place() == [tasks[3]]


def test_a_cordoned_worker_gets_nothing_new() -> None:
    world = World()
    world.join()
    task = world.submit()
    assert world.core.members.cordon("w", True, world.now)
    assert not world.core.members.cordon("w", True, world.now)  # no change
    assert world.place() == []
    world.core.members.cordon("w", False, world.now)
    assert world.place() == [task]


def test_a_sticky_task_s_wait_is_a_timer_of_the_one_heap() -> None:
    world = World(sticky_timeout_s=2.0)
    world.join("a")
    world.join("b")
    sticky = Placement(sticky_key="k")
    first = world.submit(placement=sticky)
    assert world.place() == [first]
    held_by = first.worker_id
    world.submit(placement=sticky)  # its worker is busy: it waits for it
    other = world.submit()
    assert [t.worker_id for t in world.place()] == [other.worker_id]
    assert other.worker_id != held_by
    assert world.core.next_wake() == world.now + 2.0
    world.report(other)
    world.effects.clear()
    world.advance(2.0)
    assert world.effects.dispatch == {POOL}  # the wait ran out: place again
    (fallback,) = world.place()
    assert fallback.worker_id != held_by


# Clients and operators --------------------------------------------------------------------


def test_cancelling_pending_and_running_tasks() -> None:
    world = World()
    world.join()
    running, pending = world.submit(), world.submit()
    world.place()
    world.effects.clear()
    assert world.core.cancel(pending, world.now)
    assert world.core.cancel(running, world.now)
    assert world.effects.cancel == [("w", [running.id])]
    assert world.effects.finished == [pending, running]
    assert {pending.state, running.state} == {TaskState.CANCELLED}
    assert not world.core.cancel(running, world.now)  # already
    assert world.core.active == 0
    world.core.forget(world.effects.finished)
    done = world.submit()
    world.place()
    world.report(done)
    with pytest.raises(FailedPrecondition, match="succeeded already"):
        world.core.cancel(done, world.now)


def test_an_operator_retries_a_dead_letter_with_fresh_attempts() -> None:
    world = World()
    world.join()
    task = world.submit(retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.1))
    world.place()
    world.report(task, success=False)
    world.advance(0.1)
    world.place()
    world.report(task, success=False)
    assert state(task) is TaskState.DEAD_LETTER
    assert not world.core.retry(task, world.now)  # not durable yet
    world.core.forget([task])
    world.core.check_retryable(task)
    assert world.core.retry(task, world.now)
    assert (task.state, task.attempts, task.error) == (TaskState.PENDING, 0, None)
    assert world.place() == [task]


def test_moves_the_state_machine_forbids_are_refused() -> None:
    world = World()
    world.join()
    task = world.submit()
    task.state = TaskState.SUCCEEDED  # as if it had ended behind the lifecycle's back
    with pytest.raises(FailedPrecondition, match="retried"):
        world.core.check_retryable(task)
    with pytest.raises(InvalidTransition):
        world.place()


# Lost workers count against the task ---------------------------------------------------


def test_a_task_that_loses_its_worker_each_time_is_dead_lettered_after_max_deliveries() -> None:
    world = World(BrokerConfig(max_deliveries=3))
    task = world.submit()
    for delivery in (1, 2):
        world.join()
        world.place()
        world.effects.clear()
        world.core.worker_lost("w", "stream ended", world.now)
        assert (state(task), task.attempts, error_type(task)) == (
            TaskState.PENDING,
            delivery,
            "WorkerLost",
        )
        assert world.effects.requeued == [(task, "stream ended")]
    world.join()
    world.place()
    world.effects.clear()
    world.core.worker_lost("w", "stream ended", world.now)
    assert (state(task), task.attempts, error_type(task)) == (
        TaskState.DEAD_LETTER,
        3,
        "WorkerLost",
    )
    assert task.error is not None
    assert "max_deliveries = 3" in task.error.message
    assert world.effects.finished == [task]
    assert world.core.active == 0


def test_a_lost_worker_is_a_failed_attempt_under_the_task_s_retry_policy() -> None:
    world = World(BrokerConfig(max_deliveries=10))
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=1.0)
    task = world.submit(retry=policy)
    world.join()
    world.place()
    world.core.worker_lost("w", "stream ended", world.now)
    assert state(task) is TaskState.PENDING
    assert task.not_before <= world.now + 1.0  # a backoff, as for other failures
    world.join()
    world.advance(1.0)
    assert world.place() == [task]
    world.effects.clear()
    world.core.worker_lost("w", "stream ended", world.now)
    assert (state(task), error_type(task)) == (TaskState.DEAD_LETTER, "WorkerLost")


def test_an_expired_lease_is_a_failed_attempt_named_lease_expired() -> None:
    world = World(BrokerConfig(max_deliveries=1), lease_s=5.0)
    world.join()
    task = world.submit()
    world.place()
    world.clock.advance(6.0)
    world.effects.clear()
    world.core.expire_leases(world.now)
    assert (state(task), error_type(task)) == (TaskState.DEAD_LETTER, "LeaseExpired")
    assert world.effects.cancel == [("w", [task.id])]


def test_the_broker_s_own_shutdown_and_restart_do_not_count_against_the_task() -> None:
    world = World(BrokerConfig(max_deliveries=1))
    task = world.submit()
    world.join()
    world.place()
    world.core.worker_lost("w", "the broker is shutting down", world.now, counts=False)
    assert (state(task), task.attempts) == (TaskState.PENDING, 1)
    # Restarted: a task that was held at the crash waits again, its delivery not counted.
    restarted = World(BrokerConfig(max_deliveries=1))
    task.state = TaskState.ASSIGNED
    restarted.core.recovered(task, restarted.now)
    assert (state(task), task.attempts) == (TaskState.PENDING, 0)
    restarted.join()
    assert restarted.place() == [task]
    assert task.attempts == 1


def test_one_type_s_handler_errors_do_not_stop_a_worker_s_other_types() -> None:
    world = World(breaker_failures=2, breaker_cooldown_s=10.0)
    world.core.members.join("w", POOL, 1, frozenset({"a", "b"}), {}, world.now)

    def run(task_type: str, success: bool) -> Task:
        (task,) = world.core.admit([TaskSpec(task_type=task_type)], {}, "", world.now)
        world.core.submitted([task], world.now)
        assert world.place() == [task]
        world.report(task, success, error=TaskError(type="ValueError"))
        return task

    for _ in range(5):
        run("a", False)
    assert world.core.members["w"].breaker.state.value == "closed"
    assert state(run("b", True)) is TaskState.SUCCEEDED
    run("a", False)
    run("b", False)  # a second type fails too: the worker's fault
    assert ("w", POOL, "breaker open") in world.effects.worker_events


def test_a_pending_task_s_note_says_why_no_worker_takes_it() -> None:
    world = World(breaker_failures=1, breaker_cooldown_s=10.0)
    task = world.submit()
    assert world.core.why_waiting(task, world.now) == (
        "unschedulable: no connected worker takes type 't'"
    )
    world.join("w")
    world.join("x")
    world.core.members.cordon("x", True, world.now)
    (first,) = world.place()
    world.report(first, False, error=TaskError(type="WorkerError"))  # opens w's breaker
    waiting = world.submit()
    assert world.core.why_waiting(waiting, world.now) == (
        "waiting: no worker for type 't' takes work: 1 with an open circuit breaker, 1 cordoned"
    )
    world.core.members.set_draining("w")
    world.core.members.cordon("x", False, world.now)
    world.core.members.set_draining("x")
    assert world.core.why_waiting(waiting, world.now) == (
        "waiting: no worker for type 't' takes work: 2 draining"
    )
    world.core.members.set_draining("x", False)
    assert world.core.why_waiting(waiting, world.now) == ""  # x may take it


# The worker's clock ---------------------------------------------------------------


def test_a_workers_run_time_is_learned_only_when_it_fits_what_the_broker_saw() -> None:
    world = World()
    world.join()
    task = world.submit()
    world.place()
    world.clock.advance(2.0)
    # An hour, by a worker's clock set to 1970: the broker saw two seconds.
    world.report(task, started_at=1.0, finished_at=3601.0)
    ((_, _, run_s),) = world.effects.attempts
    assert run_s == 2.0
    assert task.started_at == task.assigned_at  # clamped, not 1970
    assert task.finished_at == world.now


def test_a_workers_own_run_time_is_learned_when_it_is_sane() -> None:
    world = World()
    world.join()
    task = world.submit()
    world.place()
    world.clock.advance(2.0)
    world.report(task, started_at=world.now - 1.5, finished_at=world.now - 0.25)
    ((_, _, run_s),) = world.effects.attempts
    assert run_s == pytest.approx(1.25)  # finer than the broker's 2 s: no network in it
    assert task.started_at == pytest.approx(world.now - 1.5)
