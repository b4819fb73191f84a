"""The worker registry: ids, lookups with the right error, silence by the clock."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from broker.clock import FakeClock
from broker.core.strategies import WorkerSlot
from broker.domain import Task, TaskId, TaskResult, WorkerSpec
from broker.errors import AlreadyExists, BrokerError, FailedPrecondition, NotFound
from broker.runtime.registry import WorkerRegistry


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, float]] = []

    def worker_connected(self, spec: WorkerSpec, at: float) -> None:
        self.events.append(("connected", spec.worker_id, at))

    def worker_disconnected(self, worker_id: str, at: float) -> None:
        self.events.append(("disconnected", worker_id, at))


class Channel:
    def send_assignments(self, tasks: Sequence[Task]) -> None: ...
    def send_cancel(self, task_ids: Sequence[TaskId]) -> None: ...
    def send_drain(self, reason: str, deadline: float = 0.0, stopping: bool = False) -> None: ...
    def send_dropped(self, dropped: Sequence[tuple[TaskResult, str]]) -> None: ...
    def close(self, error: BrokerError | None) -> None: ...
    def in_transit(self, seen: int) -> set[TaskId]:
        return set()


def spec(worker_id: str = "") -> WorkerSpec:
    return WorkerSpec(worker_id=worker_id, pool="default", capacity=1, task_types=frozenset("t"))


def add(registry: WorkerRegistry, worker_id: str = "") -> str:
    named = registry.with_id(spec(worker_id))
    slot = WorkerSlot(named.worker_id, "default", 1, named.task_types)
    return registry.add(named, slot, Channel()).spec.worker_id


def test_ids_are_given_and_unique() -> None:
    registry = WorkerRegistry(Log(), FakeClock())
    given = add(registry)
    assert given.startswith("w-")
    assert add(registry, "named") == "named"
    with pytest.raises(AlreadyExists, match="named"):
        add(registry, "named")
    assert len(registry) == 2


def test_lookups_raise_what_the_caller_means() -> None:
    registry = WorkerRegistry(Log(), FakeClock())
    with pytest.raises(FailedPrecondition, match="not registered"):
        registry.registered("ghost")
    with pytest.raises(NotFound, match="not connected"):
        registry.connected("ghost")
    assert registry.get("ghost") is None
    assert registry.remove("ghost") is None


def test_silence_is_measured_by_the_clock_and_logged() -> None:
    clock, log = FakeClock(), Log()
    registry = WorkerRegistry(log, clock)
    add(registry, "quiet")
    add(registry, "chatty")
    clock.advance(10)
    registry.heard_from(registry.registered("chatty"))
    clock.advance(6)
    assert registry.silent(15) == ["quiet"]
    registry.remove("quiet")
    assert [e[:2] for e in log.events] == [
        ("connected", "quiet"),
        ("connected", "chatty"),
        ("disconnected", "quiet"),
    ]
