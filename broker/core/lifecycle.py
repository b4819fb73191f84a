"""The task lifecycle, decided without I/O: events in, effects out, on one clock.

`TaskLifecycle` holds what scheduling needs to know — the pools' schedulers, the tasks
in flight, the connected workers' slots and circuit breakers, the tasks they hold with
their leases (broker.core.held), and one heap of timers — and takes the lifecycle's
events: a task submitted, placed, started or reported on, cancelled or retried (an
operator's or client's events, broker.core.operators); a worker heard from or lost
(joining, cordons and drains are `members` events, broker.core.members); time passing
(`tick`). Each event moves tasks through the checked state machine in place (a copy
per change would cost more than all the rest) and leaves what others must do in
`effects` (broker.core.effects): persist, send, cancel, notify, place again. The
runtime applies those to the store, the worker channels and the observers; the
simulator applies the same events to virtual workers, so retries, leases, bulkheads
and breakers act there as here.

Every event takes `now`, the injected clock's time when it happened; every wake-up
(a delay or backoff running out, a start deadline, an execution timeout, a breaker's
cool-down, a sticky task's wait) is a key in `timers`, due at a time on that clock.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, cast

from broker.clock import Clock
from broker.config import BrokerConfig
from broker.core.admission import Admission
from broker.core.attempts import Outcomes, move
from broker.core.effects import Effects
from broker.core.held import Held
from broker.core.members import Members, why_waiting
from broker.core.operators import Operators
from broker.core.runtimes import RuntimeModel
from broker.core.scheduler import PoolScheduler
from broker.core.states import check_move
from broker.core.strategies import StrategyEnv
from broker.core.timers import Timers
from broker.core.waiting import Waiting
from broker.domain import (
    LEASE_EXPIRED,
    WORKER_LOST,
    PoolConfig,
    Task,
    TaskError,
    TaskId,
    TaskResult,
    TaskSpec,
    TaskState,
    WorkerId,
)

PENDING = TaskState.PENDING
ASSIGNED = TaskState.ASSIGNED
RUNNING = TaskState.RUNNING


# Why a result was dropped (see TaskLifecycle.reported).
DROP_UNKNOWN = "unknown"  # not a task in flight: no such task, or it has ended
DROP_WRONG_ATTEMPT = "wrong_attempt"  # the task is on another attempt now
DROP_NOT_HELD = "not_held"  # the task is not held by this worker


def _why_stale(task: Task | None, worker_id: WorkerId) -> str:
    if task is None:
        return DROP_UNKNOWN
    if not task.state.active or task.worker_id != worker_id:
        return DROP_NOT_HELD
    return DROP_WRONG_ATTEMPT


class TaskLifecycle:
    """Tasks, pools and workers of one broker (or one simulation), decided in memory."""

    def __init__(self, config: BrokerConfig, clock: Clock, rng: random.Random) -> None:
        self.config = config
        self.clock = clock  # the strategies' and sticky waits' time
        self.effects = Effects()
        self.pools: dict[str, PoolScheduler] = {}
        self.live: dict[TaskId, Task] = {}  # not yet terminal, or terminal and not yet durable
        self.events: Counter[tuple[str, str]] = Counter()  # (pool, event) for stats
        self.admission = Admission(config, lambda name: self.pools[name].config, self.events)
        self.timers = Timers()  # every wake-up, on the injected clock
        self.members = Members(self.pools, self.timers, self.effects)
        self.waiting = Waiting(self.pools, self.timers, self.admission)
        self.held = Held(self.pools, self.timers, self.effects, self.admission, self.waiting)
        self.stale_results = 0  # results for tasks the worker no longer holds
        self.outcomes = Outcomes(
            max_result_bytes=config.max_result_bytes,
            max_traceback_chars=config.max_traceback_chars,
            rng=rng,  # the retry backoff's jitter
            events=self.events,
            logs=self.effects.logs,
        )
        self.operators = Operators(
            self.live, self.effects, self.admission, self.waiting, self.held, self.members
        )

    @property
    def leases(self) -> dict[TaskId, float]:
        """Each held task's lease: when it runs out."""
        return self.held.leases

    @property
    def active(self) -> int:
        """Tasks held by workers."""
        return self.held.active

    # Pools ---------------------------------------------------------------------

    def add_pool(self, pool: PoolConfig) -> PoolScheduler:
        env = StrategyEnv(clock=self.clock, runtimes=RuntimeModel(pool.name))
        scheduler = PoolScheduler(
            pool.name, pool.strategy, self.config.starvation_interval, env=env, config=pool
        )
        self.pools[pool.name] = scheduler
        return scheduler

    def reconfigure(self, pool: PoolConfig, now: float) -> None:
        """New settings for a pool: its strategy, limits and its workers' breakers.
        (The runtime places again once the change is recorded.)"""
        self.pools[pool.name].reconfigure(pool)
        self.admission.reconfigure(pool, now)
        self.members.reconfigure(pool)

    def lease_s(self, pool: str) -> float:
        return self.pools[pool].config.lease_s or self.config.heartbeat_timeout_s

    def next_wake(self) -> float | None:
        """When the next timer is due, if any."""
        return self.timers.next_at()

    # Tasks coming in -----------------------------------------------------------

    def admit(
        self, specs: Sequence[TaskSpec], found: dict[int, Task], client: str, now: float
    ) -> list[Task]:
        """Make and count the batch's tasks (see `Waiting.admit`); ResourceExhausted if
        a bound or a rate limit refuses them."""
        return self.waiting.admit(specs, found, client, now)

    def not_stored(self, tasks: Iterable[Task]) -> None:
        """Admitted tasks whose insert failed: they wait nowhere."""
        self.waiting.not_stored(tasks)

    def submitted(self, tasks: Iterable[Task], now: float) -> None:
        """Admitted (counted) tasks are stored: they wait in their pools' queues."""
        self.effects.now = now
        dispatch = self.effects.dispatch
        for task in tasks:
            self.live[task.id] = task
            self.waiting.wait(task, now)
            dispatch.add(task.spec.pool)

    def forget(self, tasks: Iterable[Task]) -> None:
        """These ended tasks are durable: the lifecycle lets go of them."""
        live = self.live
        for task in tasks:
            live.pop(task.id, None)

    def recovered(self, task: Task, now: float) -> None:
        """An unfinished task loaded from the store after a restart waits again."""
        self.effects.now = now
        if task.state is not PENDING:
            # Held when the broker stopped: the broker's fault, not the task's, so that
            # delivery does not count against max_deliveries (nor max_attempts).
            task.attempts = max(0, task.attempts - 1)
            move(task, PENDING)
            self.effects.save.append(task)
        self.live[task.id] = task
        self.admission.count(task, 1)
        self.waiting.wait(task, now)

    # Placing ---------------------------------------------------------------------

    def place(self, name: str, now: float) -> int:
        """Place what can be placed in this pool; returns how many tasks were assigned."""
        pool = self.pools[name]
        decisions = pool.place()
        self.waiting.wake_for_sticky(pool)
        if not decisions:
            return 0
        effects = self.effects
        effects.now = now
        save = effects.save
        placed = effects.placed
        lease_until = now + self.lease_s(name)
        recent = self.admission.placements(name)
        queued_at = self.waiting.queued_at
        held = self.held
        leases = held.leases
        timers = self.timers
        count = self.admission.count
        half_open = self.members.half_open
        assigned = 0
        for decision in decisions:
            task = decision.task
            if decision.worker is None:  # still waiting, for a new reason
                task.placement_note = decision.note
                task.unschedulable = decision.unschedulable
                save.append(task)
                continue
            if task.state is not PENDING:
                check_move(task.state, ASSIGNED)  # raises: only a pending task is placed
            task.state = ASSIGNED
            task.attempts += 1
            task.worker_id = worker_id = decision.worker.worker_id
            task.assigned_at = now
            task.placement_note = decision.note
            task.unschedulable = False
            task.not_before = 0.0
            save.append(task)
            count(task, -1)
            placed.append((task, now - queued_at.pop(task.id, task.created_at)))
            leases[task.id] = lease_until
            recent.append(now)
            if half_open and worker_id in half_open:
                self.members.assigned(worker_id)  # the breaker's trial
            spec = task.spec
            if spec.start_timeout_s:
                timers.cancel(("start", task.id))
            if timeout := spec.execution_timeout_s:
                timers.set(("timeout", (task.id, task.attempts)), now + timeout)
            assigned += 1
        held.active += assigned
        return assigned

    # What workers report -----------------------------------------------------------

    def reported(
        self,
        worker_id: WorkerId,
        started: Sequence[TaskId],
        results: Sequence[TaskResult],
        now: float,
    ) -> list[tuple[TaskResult, str]]:
        """A worker's start notices and results. Stale ones (a task it no longer holds)
        are counted and dropped; returned, each with why (DROP_UNKNOWN, DROP_WRONG_ATTEMPT,
        DROP_NOT_HELD). A failed attempt goes back to pending after a backoff if its retry
        policy allows another, else it fails or is dead-lettered."""
        effects = self.effects
        effects.now = now
        member = self.members[worker_id]
        live = self.live
        save = effects.save
        record = self.members.record
        finish = self.outcomes.finish
        came_back = self.held.came_back
        if started and results:  # a start and a result in one message: the result will do
            finishing = {r.task_id for r in results}
            started = [task_id for task_id in started if task_id not in finishing]
        if started:
            lease_until = now + self.lease_s(member.pool)
            leases = self.held.leases
            for task_id in started:
                task = live.get(task_id)
                if task is not None and task.state is ASSIGNED and task.worker_id == worker_id:
                    task.state = RUNNING  # ASSIGNED -> RUNNING is always allowed
                    task.started_at = now
                    save.append(task)
                    leases[task_id] = lease_until
        dropped: list[tuple[TaskResult, str]] = []
        for result in results:
            task = live.get(result.task_id)
            if (
                task is None
                or not task.state.active
                or task.worker_id != worker_id
                or task.attempts != result.attempt
            ):
                self.stale_results += 1
                dropped.append((result, _why_stale(task, worker_id)))
                continue
            run_s = came_back(task, result, now)
            if result.success:
                record(member, True, now)
            else:
                error = result.error
                if error is None or not error.task_fault:
                    record(member, False, now, task.spec.task_type, error.type if error else "")
            finish(task, result, now)
            save.append(task)
            effects.attempts.append((task, result.success, run_s))
            if task.state is PENDING:  # to be tried again, after a backoff
                self.admission.count(task, 1)
                self.waiting.wait(task, now)
            else:
                effects.finished.append(task)
        if results:
            effects.dispatch.add(member.pool)
        return dropped

    # Operators and clients -------------------------------------------------------------

    def cancel(self, task: Task, now: float) -> bool:
        """Cancel a pending or running task; False if it was cancelled already,
        FailedPrecondition if it ended otherwise (see `Operators.cancel`)."""
        return self.operators.cancel(task, now)

    check_retryable = staticmethod(Operators.check_retryable)

    def retry(self, task: Task, now: float) -> bool:
        """Send a durable failed or dead-lettered task round again; False if it is not
        (yet) durable and terminal (see `Operators.retry`)."""
        return self.operators.retry(task, now)

    # Workers -----------------------------------------------------------------------

    def worker_lost(
        self, worker_id: WorkerId, reason: str, now: float, *, counts: bool = True
    ) -> int:
        """A worker is gone: every task it held is requeued (at-least-once delivery).

        Unless `counts` is False (the broker itself ends the stream, shutting down), the
        loss is a failed attempt of each task (WorkerLost, see `attempt_lost`): a task
        that keeps taking its workers down ends in the dead letter. Returns how many
        tasks were given back."""
        member = self.members.leave(worker_id)
        if member is None:
            return 0
        effects = self.effects
        effects.now = now
        held = self.held
        requeued = 0
        for task_id in sorted(member.slot.held):
            task = self.live.get(task_id)
            held.dropped(task_id)
            if task is None or not task.state.active or task.worker_id != worker_id:
                continue
            if counts:
                self.attempt_lost(task, WORKER_LOST, reason, now)
            else:
                held.requeue(task, reason, now)
            requeued += 1
        effects.worker_events.append((worker_id, member.pool, "disconnected"))
        effects.dispatch.add(member.pool)
        return requeued

    def heartbeat(
        self,
        worker_id: WorkerId,
        load: float,
        held: Iterable[TaskId] | None,
        unseen: Callable[[], set[TaskId]],
        now: float,
    ) -> None:
        """A worker's heartbeat: its load and the tasks it holds, each lease renewed.

        A task it should hold but does not, sent in a message it has seen (`unseen()`
        gives those it cannot know of yet), was lost: requeued. A task it holds that it
        should not is cancelled on it. Without `held`, every task it holds is confirmed.
        """
        member = self.members[worker_id]
        slot = member.slot
        slot.load = load
        until = now + self.lease_s(member.pool)
        leases = self.held.leases
        if held is None:
            for task_id in slot.held:
                leases[task_id] = until
            return
        effects = self.effects
        effects.now = now
        claimed = set(held)
        for task_id in claimed & slot.held:
            leases[task_id] = until
        lost = slot.held - claimed
        if lost:
            lost -= unseen()
        for task_id in sorted(lost):
            task = self.live.get(task_id)
            if task is None or not task.state.active or task.worker_id != worker_id:
                continue
            effects.logs.append(
                (
                    logging.WARNING,
                    "worker %s no longer holds task %d, though it saw its assignment: "
                    "requeued (slot count reconciled)",
                    (worker_id, task_id),
                    task,
                )
            )
            self.events[(member.pool, "reconciled")] += 1
            self.held.take_back(task, "the worker no longer held it", now)
        unknown = claimed - slot.held
        if unknown:
            # Cancelled or requeued by the broker meanwhile: the worker should stop them.
            effects.cancel.append((worker_id, sorted(unknown)))
        if lost:
            effects.dispatch.add(member.pool)

    def why_waiting(self, task: Task, now: float) -> str:
        """Why a pending task waits when no worker that could take it takes work; ""
        otherwise (see broker.core.members.why_waiting)."""
        if task.state is not PENDING or task.not_before > now:
            return ""
        return why_waiting(self.members, task)

    # Time ----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Act on every timer due by `now`: delayed tasks becoming ready, start deadlines,
        execution timeouts, breakers' cool-downs, sticky waits running out."""
        effects = self.effects
        effects.now = now
        for key in self.timers.pop_due(now):
            kind, ident = cast(tuple[str, Any], key)
            if kind == "ready":
                pool = self.waiting.ready(ident)
                if pool is not None:
                    effects.dispatch.add(pool)
            elif kind == "start":
                self._start_deadline_passed(ident, now)
            elif kind == "timeout":
                task_id, attempt = ident
                self._execution_timed_out(task_id, attempt, now)
            elif kind == "breaker":
                self.members.cooled_down(ident, now)
            elif kind == "sticky":
                self.waiting.sticky_due(ident)
                effects.dispatch.add(ident)

    def keep_leases(self, worker_id: WorkerId, until: float) -> None:
        """The worker's stream broke and the broker keeps its tasks for it until then:
        their leases run at least that long, so a resume in time finds them."""
        member = self.members.get(worker_id)
        if member is None:
            return
        leases = self.held.leases
        for task_id in member.slot.held:
            if task_id in leases:
                leases[task_id] = max(leases[task_id], until)

    def expire_leases(self, now: float) -> None:
        """Requeue held tasks whose worker did not confirm them in time."""
        effects = self.effects
        effects.now = now
        held = self.held
        leases = held.leases
        expired = [task_id for task_id, until in leases.items() if until < now]
        for task_id in expired:
            del leases[task_id]
            task = self.live.get(task_id)
            if task is None or not task.state.active:
                continue
            effects.logs.append(
                (
                    logging.WARNING,
                    "task %d: worker %s did not confirm it for %.1f s; lease expired, requeued",
                    (task_id, task.worker_id, self.lease_s(task.spec.pool)),
                    task,
                )
            )
            self.events[(task.spec.pool, "lease_expired")] += 1
            worker_id = task.worker_id
            if worker_id in self.members:
                held.release(task)
                effects.cancel.append((worker_id, [task_id]))
            self.attempt_lost(task, LEASE_EXPIRED, "lease expired", now)
            effects.dispatch.add(task.spec.pool)

    def attempt_lost(self, task: Task, error_type: str, reason: str, now: float) -> None:
        """The worker holding this task was lost, or its lease on it ran out: a failed
        attempt, the worker's fault rather than the handler's, whose error names the cause.

        If the task's retry policy retries this error type, it decides as for any failure
        (a backoff, or the dead letter after max_attempts). Otherwise the task is
        delivered again at once, until it has been delivered `max_deliveries` times
        (a broker setting): then it is dead-lettered, so that a task that crashes every
        worker it is sent to stops taking them down. (The task's slot is already freed.)
        """
        effects = self.effects
        error = TaskError(
            type=error_type, message=f"attempt {task.attempts} on worker {task.worker_id}: {reason}"
        )
        policy = task.spec.retry
        if policy.max_attempts > 1 and policy.retryable(error_type):
            self.held.let_go(task)
            effects.requeued.append((task, reason))
            self.outcomes.fail(task, error, now, task.started_at)
        elif task.attempts < self.config.max_deliveries:
            task.error = error
            self.held.requeue(task, reason, now)
            return
        else:
            self.held.let_go(task)
            effects.logs.append(
                (
                    logging.WARNING,
                    "task %d: dead-lettered after %d deliveries, each ending in a lost "
                    "worker (max_deliveries)",
                    (task.id, task.attempts),
                    task,
                )
            )
            move(
                task,
                TaskState.DEAD_LETTER,
                finished_at=now,
                error=replace(
                    error,
                    message=f"{error.message}; delivered {task.attempts} times, each "
                    f"ending in a lost worker (max_deliveries = {self.config.max_deliveries})",
                ),
            )
        effects.save.append(task)
        if task.state is PENDING:
            self.admission.count(task, 1)
            self.waiting.wait(task, now)
        else:
            effects.finished.append(task)

    def _start_deadline_passed(self, task_id: TaskId, now: float) -> None:
        task = self.live.get(task_id)
        if task is None or task.state is not PENDING or task.attempts:
            return
        self.waiting.unwait(task)
        self.events[(task.spec.pool, "expired")] += 1
        move(
            task,
            TaskState.FAILED,
            finished_at=now,
            not_before=0.0,
            error=TaskError(
                type="DeadlineExceeded",
                message=f"no worker started it within {task.spec.start_timeout_s:g} s "
                "(start_timeout_s)",
            ),
        )
        self.effects.save.append(task)
        self.effects.finished.append(task)

    def _execution_timed_out(self, task_id: TaskId, attempt: int, now: float) -> None:
        task = self.live.get(task_id)
        if task is None or not task.state.active or task.attempts != attempt:
            return
        effects = self.effects
        worker_id = task.worker_id
        member = self.members.get(worker_id)
        self.events[(task.spec.pool, "timed_out")] += 1
        effects.logs.append(
            (
                logging.INFO,
                "task %d: attempt %d timed out on worker %s",
                (task_id, attempt, worker_id),
                task,
            )
        )
        result = TaskResult(task_id=task_id, attempt=attempt, success=False)
        run_s = self.held.came_back(task, result, now)
        if member is not None:
            effects.cancel.append((worker_id, [task_id]))
            self.members.record(member, False, now, task.spec.task_type, "Timeout")
        error = TaskError(
            type="Timeout",
            message=f"attempt {attempt} ran longer than its execution timeout of "
            f"{task.spec.execution_timeout_s:g} s on worker {worker_id}; cancelled there",
        )
        self.outcomes.fail(task, error, now, task.started_at)
        effects.save.append(task)
        effects.attempts.append((task, False, run_s))
        if task.state is PENDING:
            self.admission.count(task, 1)
            self.waiting.wait(task, now)
        else:
            effects.finished.append(task)
        effects.dispatch.add(task.spec.pool)
