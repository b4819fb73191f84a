"""The registry of connected workers: who they are, how to reach them, when they last spoke.

Each connection is recorded in the store too, so an operator can see which workers
came and went. Scheduling state (credit, held tasks) lives in the worker's slot,
which the pool's scheduler owns; the registry only keeps a reference to it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from broker.clock import Clock
from broker.core.members import Member
from broker.core.strategies import WorkerSlot
from broker.domain import Task, TaskId, TaskResult, WorkerId, WorkerSpec, WorkerStatus
from broker.errors import AlreadyExists, BrokerError, FailedPrecondition, NotFound
from broker.storage.contract import WorkerLog


class WorkerChannel(Protocol):
    """How the broker speaks to one connected worker; the gRPC edge implements it."""

    def send_assignments(self, tasks: Sequence[Task]) -> None: ...
    def send_cancel(self, task_ids: Sequence[TaskId]) -> None: ...
    def send_drain(self, reason: str, deadline: float = 0.0, stopping: bool = False) -> None:
        """No more work: finish by `deadline` (epoch seconds; 0 = none). `stopping`: the
        broker itself is stopping, not this worker."""
        ...

    def send_dropped(self, dropped: Sequence[tuple[TaskResult, str]]) -> None:
        """Results the broker did not take, each with why (see TaskLifecycle.reported)."""
        ...

    def close(self, error: BrokerError | None) -> None:
        """End the stream: with this error, or cleanly (None)."""
        ...

    def in_transit(self, seen: int) -> set[TaskId]:
        """Tasks sent in messages after the `seen`th, or not sent yet: the worker cannot
        know of them. (Messages up to `seen` are forgotten.)"""
        ...


@dataclass(slots=True)
class WorkerSession:
    """One connected worker."""

    spec: WorkerSpec
    slot: WorkerSlot
    channel: WorkerChannel
    connected_at: float
    last_heartbeat: float
    member: Member | None = None  # its breaker and cordon, as the lifecycle keeps them
    # The secret a new stream shows to resume this session (Register.resume_token).
    resume_token: str = ""
    # When its stream broke, if it did: its tasks are kept for a resume until then plus
    # the resume window (None: connected).
    detached_at: float | None = None
    drain_until: float = 0.0  # draining: the stream is ended at this time at the latest
    # The seq of the last Results message taken from this session (any of its streams).
    results_seen: int = 0
    # When it was last sent work while it held none: a worker holding nothing heartbeats
    # only every idle interval, so its heartbeat timeout runs from then at the earliest.
    busy_since: float = float("-inf")
    # When the reaper last saw it hold a task (its leases may run out before it is reaped).
    held_at: float = float("-inf")

    @property
    def busy(self) -> bool:
        """Whether the heartbeat timeout (not the idle one) applies: it holds a task, or
        has held one since it last spoke (sent work, or seen holding it by the reaper,
        whose tasks went back when their leases ran out)."""
        last = self.last_heartbeat
        return bool(self.slot.held) or self.busy_since >= last or self.held_at >= last

    def status(self) -> WorkerStatus:
        member = self.member
        breaker = member.breaker if member is not None else None
        return WorkerStatus(
            spec=self.spec,
            in_flight=len(self.slot.held),
            capacity=self.slot.capacity,
            load=self.slot.load,
            connected_at=self.connected_at,
            last_heartbeat=self.last_heartbeat,
            draining=self.slot.draining,
            cordoned=member.cordoned if member is not None else False,
            breaker=breaker.state.value if breaker is not None else "closed",
            consecutive_failures=breaker.consecutive_failures if breaker is not None else 0,
        )


class WorkerRegistry:
    """The connected workers, by id."""

    def __init__(self, log: WorkerLog, clock: Clock) -> None:
        self._log = log
        self._clock = clock
        self._sessions: dict[WorkerId, WorkerSession] = {}

    def __iter__(self) -> Iterator[WorkerSession]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def with_id(self, spec: WorkerSpec) -> WorkerSpec:
        """The spec with a fresh id if it came without one; AlreadyExists if the id is taken."""
        if not spec.worker_id:
            spec = replace(spec, worker_id=f"w-{secrets.token_hex(4)}")
        if spec.worker_id in self._sessions:
            raise AlreadyExists(
                f"a worker with id {spec.worker_id!r} is connected already (a stream that "
                "shows its resume_token takes its place)"
            )
        return spec

    def resumable(self, worker_id: WorkerId, token: str) -> WorkerSession | None:
        """The session a stream showing `token` may take over: that worker id's, if the
        token is its own (compared in constant time)."""
        session = self._sessions.get(worker_id)
        if session is None or not token or not session.resume_token:
            return None
        if not secrets.compare_digest(token.encode(), session.resume_token.encode()):
            return None
        return session

    def attach(self, session: WorkerSession, channel: WorkerChannel) -> None:
        """A new stream takes over the session: a fresh token, heard from now."""
        session.channel = channel
        session.detached_at = None
        session.resume_token = secrets.token_urlsafe(24)
        session.last_heartbeat = self._clock.now()

    def add(
        self,
        spec: WorkerSpec,
        slot: WorkerSlot,
        channel: WorkerChannel,
        member: Member | None = None,
    ) -> WorkerSession:
        spec = self.with_id(spec)
        now = self._clock.now()
        session = WorkerSession(
            spec, slot, channel, now, now, member, resume_token=secrets.token_urlsafe(24)
        )
        self._sessions[spec.worker_id] = session
        self._log.worker_connected(spec, now)
        return session

    def remove(self, worker_id: WorkerId) -> WorkerSession | None:
        session = self._sessions.pop(worker_id, None)
        if session is not None:
            self._log.worker_disconnected(worker_id, self._clock.now())
        return session

    def get(self, worker_id: WorkerId) -> WorkerSession | None:
        return self._sessions.get(worker_id)

    def registered(self, worker_id: WorkerId) -> WorkerSession:
        """The session of a worker speaking on its stream; it must be registered."""
        session = self._sessions.get(worker_id)
        if session is None:
            raise FailedPrecondition(f"worker {worker_id!r} is not registered")
        return session

    def connected(self, worker_id: WorkerId) -> WorkerSession:
        """The session of a worker an operator names; NotFound if it is not connected."""
        session = self._sessions.get(worker_id)
        if session is None:
            raise NotFound(f"worker {worker_id!r} is not connected")
        return session

    def heard_from(self, session: WorkerSession) -> None:
        session.last_heartbeat = self._clock.now()

    def sent_work(self, session: WorkerSession, count: int) -> None:
        """The worker was sent `count` tasks. If it held none before, it may have been
        silent for up to the idle heartbeat timeout: its heartbeat timeout runs from now."""
        if len(session.slot.held) <= count:
            session.busy_since = self._clock.now()

    def silent(self, timeout: float, idle_timeout: float | None = None) -> list[WorkerId]:
        """Connected workers not heard from for more than `timeout` seconds (counted from
        when they were last sent work while holding none, if later), or, idle (not
        `busy`), for more than `idle_timeout` (default: `timeout`)."""
        now = self._clock.now()
        deadline = now - timeout
        idle_deadline = now - (timeout if idle_timeout is None else idle_timeout)
        return [
            wid
            for wid, s in self._sessions.items()
            if s.detached_at is None
            and (
                max(s.last_heartbeat, s.busy_since) < deadline
                if s.busy
                else s.last_heartbeat < idle_deadline
            )
        ]
