"""The SDK's data types: what a task, a pool and a worker look like to SDK users."""

from __future__ import annotations

import enum
import json as _json
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
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
class PreferredLabel:
    """A soft placement preference: a worker whose label `key` equals `value` scores
    `weight` (1..1000) more, and the best-scoring allowed worker gets the task."""

    key: str
    value: str
    weight: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """A task's placement hints, as the broker stored them from `submit()`'s `require`,
    `prefer`, `anti_affinity` and `anti_affinity_soft`."""

    required_labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    preferred_labels: tuple[PreferredLabel, ...] = ()
    anti_affinity_group: str = ""  # "" = none
    anti_affinity_soft: bool = False

    @property
    def free(self) -> bool:
        """No constraint and no preference: any worker of the task's type will do."""
        return not (self.required_labels or self.preferred_labels or self.anti_affinity_group)


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task as the broker stores it. Times are timezone-aware UTC, None = not yet.

    `placement_note` says why the task went to its worker or, while it is pending, why
    it still waits; `unschedulable` is True while no connected worker could ever take it.
    """

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
    placement: Placement = field(default_factory=Placement)
    placement_note: str = ""
    unschedulable: bool = False

    def json(self) -> Any:
        """The result parsed as JSON (what a handler returning a dict or list produced)."""
        return _json.loads(self.result)

    @property
    def done(self) -> bool:
        """True once the task is in a terminal state."""
        return self.state.terminal


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One task to submit, for `Client.submit_many`; the fields are `submit()`'s arguments."""

    task_type: str
    payload: bytes = b""
    priority: int = 0
    pool: str = DEFAULT_POOL
    _: KW_ONLY
    require: Mapping[str, str] | None = field(default=None, hash=False)
    prefer: Sequence[PreferredLabel] = field(default=(), hash=False)
    anti_affinity: str | None = None
    anti_affinity_soft: bool = False


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
    """Task counts and worker capacity of one pool; `active` = assigned or running, and
    `unschedulable` counts the pending tasks that no connected worker can take."""

    pool: str
    strategy: str
    pending: int
    active: int
    succeeded: int
    failed: int
    cancelled: int
    workers: int
    capacity: int
    unschedulable: int


@dataclass(frozen=True, slots=True)
class Stats:
    """The broker's lifecycle state and per-pool statistics."""

    broker_state: str
    pools: tuple[PoolStats, ...]
