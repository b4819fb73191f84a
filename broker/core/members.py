"""The connected workers as scheduling sees them: a slot, a circuit breaker, a cordon.

A worker whose breaker is open, or that an operator cordoned, is paused in its pool's
scheduler (it keeps what it holds and gets nothing new); a half-open breaker lets one
trial task through at a time. A breaker's cool-down is a key in the lifecycle's timers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping

from broker.core.breaker import BreakerSettings, BreakerState, CircuitBreaker
from broker.core.effects import Effects
from broker.core.scheduler import PoolScheduler
from broker.core.strategies import WorkerSlot
from broker.core.strategies._base import UNLIMITED
from broker.core.timers import Timers
from broker.domain import WORKER_FAULTS, PoolConfig, Task, WorkerId


class Member:
    """A connected worker: its pool, slot (credit, held tasks), breaker and cordon."""

    __slots__ = ("breaker", "cordoned", "pool", "slot")

    def __init__(self, pool: str, slot: WorkerSlot, breaker: CircuitBreaker) -> None:
        self.pool = pool
        self.slot = slot
        self.breaker = breaker
        self.cordoned = False


def breaker_settings(pool: PoolConfig) -> BreakerSettings:
    return BreakerSettings(
        failures=pool.breaker_failures,
        failure_rate=pool.breaker_failure_rate,
        window=pool.breaker_window,
        cooldown_s=pool.breaker_cooldown_s,
    )


class Members:
    """The connected workers of every pool, by id."""

    def __init__(self, pools: dict[str, PoolScheduler], timers: Timers, effects: Effects) -> None:
        self._pools = pools
        self._timers = timers
        self._effects = effects
        self._by_id: dict[WorkerId, Member] = {}
        self.half_open: set[WorkerId] = set()  # breakers that let a trial through

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._by_id

    def __getitem__(self, worker_id: WorkerId) -> Member:
        return self._by_id[worker_id]

    def __iter__(self) -> Iterator[Member]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, worker_id: WorkerId) -> Member | None:
        return self._by_id.get(worker_id)

    def join(
        self,
        worker_id: WorkerId,
        pool: str,
        capacity: int,
        task_types: frozenset[str],
        labels: Mapping[str, str],
        now: float,
    ) -> Member:
        """A worker connected to a pool: a slot in its scheduler and a closed breaker."""
        scheduler = self._pools[pool]
        slot = WorkerSlot(worker_id, pool, capacity, task_types, labels)
        scheduler.add_worker(slot)
        breaker = CircuitBreaker(breaker_settings(scheduler.config), len(task_types))
        member = Member(pool, slot, breaker)
        self._by_id[worker_id] = member
        effects = self._effects
        effects.now = now
        effects.worker_events.append((worker_id, pool, "connected"))
        effects.dispatch.add(pool)
        return member

    def leave(self, worker_id: WorkerId) -> Member | None:
        """Forget a worker (its slot leaves the scheduler); the caller requeues what the
        slot held."""
        member = self._by_id.pop(worker_id, None)
        if member is not None:
            self._pools[member.pool].remove_worker(worker_id)
            self._timers.cancel(("breaker", worker_id))
            self.half_open.discard(worker_id)
        return member

    def assigned(self, worker_id: WorkerId) -> None:
        """The worker was given a task: while its breaker is half-open, that is the trial."""
        if worker_id in self.half_open:
            self._by_id[worker_id].breaker.on_assign()

    def record(
        self,
        member: Member,
        success: bool,
        now: float,
        task_type: str = "",
        error_type: str = "",
    ) -> None:
        """Feed a result to the worker's circuit breaker; pause or free it on a change.
        A failure whose `error_type` is in WORKER_FAULTS is the worker's own."""
        breaker = member.breaker
        changed = breaker.record(success, now, task_type, error_type in WORKER_FAULTS)
        if changed is not None:
            worker_id = member.slot.worker_id
            effects = self._effects
            effects.logs.append(
                (
                    logging.WARNING,
                    "worker %s: circuit breaker %s (%d consecutive failures)",
                    (worker_id, changed.value, breaker.consecutive_failures),
                    None,
                )
            )
            self.refresh(worker_id, member, now)
            effects.worker_events.append((worker_id, member.pool, f"breaker {changed.value}"))

    def refresh(self, worker_id: WorkerId, member: Member, now: float) -> None:
        """Pause the worker while cordoned or its breaker is open; one trial task at a
        time while half-open. An open breaker past its cool-down turns half-open here."""
        breaker = member.breaker
        breaker.allows(now)
        state = breaker.state
        half_open = state is BreakerState.HALF_OPEN
        if half_open:
            self.half_open.add(worker_id)
        else:
            self.half_open.discard(worker_id)
        limit = len(member.slot.held) + 1 if half_open else UNLIMITED
        paused = member.cordoned or state is BreakerState.OPEN
        self._pools[member.pool].set_paused(worker_id, paused, limit)
        reopen_at = breaker.reopen_at()
        if reopen_at is not None:
            self._timers.set(("breaker", worker_id), reopen_at)

    def cooled_down(self, worker_id: WorkerId, now: float) -> None:
        """A breaker's cool-down ran out (its timer): let a trial through."""
        member = self._by_id.get(worker_id)
        if member is not None:
            self.refresh(worker_id, member, now)
            self._effects.dispatch.add(member.pool)

    def cordon(self, worker_id: WorkerId, cordon: bool, now: float) -> bool:
        """Send a worker no new work (or again); what it holds, it keeps. Whether that
        changed anything."""
        member = self._by_id[worker_id]
        if member.cordoned == cordon:
            return False
        effects = self._effects
        effects.now = now
        member.cordoned = cordon
        self.refresh(worker_id, member, now)
        event = "cordoned" if cordon else "uncordoned"
        effects.logs.append((logging.INFO, "worker %s %s", (worker_id, event), None))
        effects.worker_events.append((worker_id, member.pool, event))
        effects.dispatch.add(member.pool)
        return True

    def set_draining(self, worker_id: WorkerId, draining: bool = True) -> bool:
        """Send the worker no more work (or again); whether that changed anything."""
        member = self._by_id[worker_id]
        if member.slot.draining == draining:
            return False
        self._pools[member.pool].set_draining(worker_id, draining)
        if not draining:
            self._effects.dispatch.add(member.pool)
        return True

    def set_capacity(self, worker_id: WorkerId, capacity: int) -> None:
        """The worker takes this many tasks at once from now on (0 pauses it)."""
        member = self._by_id[worker_id]
        self._pools[member.pool].set_capacity(worker_id, capacity)
        self._effects.dispatch.add(member.pool)

    def reconfigure(self, pool: PoolConfig) -> None:
        """The pool's new breaker settings, for its workers' breakers."""
        settings = breaker_settings(pool)
        for member in self._by_id.values():
            if member.pool == pool.name:
                member.breaker.reconfigure(settings)


def why_waiting(members: Iterable[Member], task: Task) -> str:
    """Why a pending task waits when no worker that could take it takes work: no
    connected worker of its pool serves its type (and labels), or every one that does
    has an open circuit breaker, is cordoned or is draining. "" otherwise (its
    `placement_note` says the rest: busy workers, a backoff, a sticky wait). Asked
    when someone looks at the task, so placement pays nothing for it."""
    spec = task.spec
    task_type = spec.task_type
    required = spec.placement.required_labels
    serving = breaker_open = cordoned = draining = 0
    for member in members:
        slot = member.slot
        if (
            member.pool != spec.pool
            or task_type not in slot.task_types
            or any(slot.labels.get(k) != v for k, v in required.items())
        ):
            continue
        serving += 1
        if member.cordoned:
            cordoned += 1
        elif slot.draining:
            draining += 1
        elif member.breaker.state is BreakerState.OPEN:
            breaker_open += 1
        else:
            return ""  # this one may take it
    wanted = f"type {task_type!r}"
    if required:
        wanted += " and labels " + ",".join(f"{k}={v}" for k, v in sorted(required.items()))
    if not serving:
        return f"unschedulable: no connected worker takes {wanted}"
    reasons = [
        f"{count} {why}"
        for count, why in (
            (breaker_open, "with an open circuit breaker"),
            (cordoned, "cordoned"),
            (draining, "draining"),
        )
        if count
    ]
    return f"waiting: no worker for {wanted} takes work: {', '.join(reasons)}"
