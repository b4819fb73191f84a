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
    `prefer`, `anti_affinity`, `anti_affinity_soft`, `sticky_key` and `routing_key`."""

    required_labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    preferred_labels: tuple[PreferredLabel, ...] = ()
    anti_affinity_group: str = ""  # "" = none
    anti_affinity_soft: bool = False
    sticky_key: str = ""  # "" = none
    routing_key: str = ""  # "" = none

    @property
    def free(self) -> bool:
        """No constraint, preference or sticky key: the pool strategy's own pick will do.

        A routing key alone leaves a task free, as the broker sees it: the consistent_hash
        strategy reads it in that very pick, and other strategies ignore it.
        """
        return not (
            self.required_labels
            or self.preferred_labels
            or self.anti_affinity_group
            or self.sticky_key
        )


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
    sticky_key: str | None = None
    routing_key: str | None = None


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """A pool of workers and how its tasks are placed.

    `ab_percent` (0..100) of its tasks are placed by `ab_strategy` ("" = no A/B split), the
    rest by `strategy`; a task with a sticky key waits up to `sticky_timeout_s` for the
    worker that last ran its key.
    """

    name: str
    strategy: str
    ab_strategy: str = ""
    ab_percent: int = 0
    sticky_timeout_s: float = 5.0


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
class ArmStats:
    """How the tasks that one strategy placed in a pool went (an A/B split has two arms).

    The means are over the finished tasks: `mean_wait_s` in the queue, `mean_run_s` running.
    """

    strategy: str
    placed: int
    finished: int
    failed: int
    mean_wait_s: float
    mean_run_s: float


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    """What the broker has learned about one task type's run time, and how well it predicts
    it: `predictions` were scored against the actual run time, off by `mean_abs_error_s`."""

    task_type: str
    samples: int
    mean_run_s: float
    stddev_run_s: float
    predictions: int
    mean_abs_error_s: float


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Task counts and worker capacity of one pool; `active` = assigned or running, and
    `unschedulable` counts the pending tasks that no connected worker can take.

    `arms` has one entry per strategy placing the pool's tasks, `runtimes` one per task
    type with learned run times; `sticky_hits` counts the sticky tasks that ran where
    their key ran last, `sticky_misses` those placed elsewhere (first run, or fallback).
    `strategy_notes` is what strategies say of themselves (e.g. which one adaptive runs).
    """

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
    arms: tuple[ArmStats, ...] = ()
    runtimes: tuple[RuntimeStats, ...] = ()
    sticky_hits: int = 0
    sticky_misses: int = 0
    strategy_notes: tuple[str, ...] = ()

    @property
    def sticky_hit_rate(self) -> float | None:
        """The share (0..1) of sticky tasks that ran where their key ran last; None if none."""
        total = self.sticky_hits + self.sticky_misses
        return self.sticky_hits / total if total else None


@dataclass(frozen=True, slots=True)
class Stats:
    """The broker's lifecycle state and per-pool statistics."""

    broker_state: str
    pools: tuple[PoolStats, ...]
