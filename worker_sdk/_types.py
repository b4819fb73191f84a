"""The SDK's data types: what a task, a pool and a worker look like to SDK users."""

from __future__ import annotations

import enum
import json as _json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_POOL = "default"


class TaskState(enum.Enum):
    """Where a task is in its life."""

    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, FAILED and CANCELLED: the task will not change again."""
        return self in _TERMINAL


_TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


@dataclass(frozen=True, slots=True)
class TaskErrorInfo:
    """Why a task failed, as its worker (or the broker) reported it."""

    type: str
    message: str
    traceback: str


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task as the broker stores it. Times are timezone-aware UTC, None = not yet."""

    id: str
    task_type: str
    pool: str
    priority: int
    payload: bytes
    state: TaskState
    attempts: int
    worker_id: str
    created_at: datetime | None
    assigned_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    result: bytes
    error: TaskErrorInfo | None

    def json(self) -> Any:
        """The result parsed as JSON (what a handler returning a dict or list produced)."""
        return _json.loads(self.result)

    @property
    def done(self) -> bool:
        """True once the task is in a terminal state."""
        return self.state.terminal


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One task to submit, for `Client.submit_many`."""

    task_type: str
    payload: bytes = b""
    priority: int = 0
    pool: str = DEFAULT_POOL


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """A pool of workers and its placement strategy."""

    name: str
    strategy: str


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A connected worker as the broker sees it."""

    worker_id: str
    pool: str
    labels: dict[str, str] = field(hash=False)
    capacity: int
    task_types: tuple[str, ...]
    in_flight: int
    load: float
    connected_at: datetime | None
    last_heartbeat: datetime | None
    draining: bool


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Task counts and worker capacity of one pool; `active` = assigned or running."""

    pool: str
    strategy: str
    pending: int
    active: int
    succeeded: int
    failed: int
    cancelled: int
    workers: int
    capacity: int


@dataclass(frozen=True, slots=True)
class Stats:
    """The broker's lifecycle state and per-pool statistics."""

    broker_state: str
    pools: tuple[PoolStats, ...]
