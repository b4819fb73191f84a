"""The broker's own types: what a task, a pool and a worker are, free of protobuf."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_POOL = "default"
DEFAULT_STICKY_TIMEOUT_S = 5.0
MIN_PRIORITY = -1000
MAX_PRIORITY = 1000

TaskId = int
WorkerId = str


class TaskState(enum.IntEnum):
    """Where a task is in its life; the numbers match the wire enum."""

    PENDING = 1
    ASSIGNED = 2
    RUNNING = 3
    SUCCEEDED = 4
    FAILED = 5
    CANCELLED = 6

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def active(self) -> bool:
        """Held by a worker: assigned or running."""
        return self in (TaskState.ASSIGNED, TaskState.RUNNING)


_TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


@dataclass(frozen=True, slots=True)
class PreferredLabel:
    """A soft preference: a worker with label key=value scores `weight` more."""

    key: str
    value: str
    weight: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Where a task may run (hard constraints, filters) and should run (preferences)."""

    required_labels: Mapping[str, str] = field(default_factory=dict)
    preferred_labels: tuple[PreferredLabel, ...] = ()
    anti_affinity_group: str = ""
    anti_affinity_soft: bool = False
    sticky_key: str = ""  # go where this key last ran, within the pool's sticky timeout
    routing_key: str = ""  # the key the consistent_hash strategy places by

    @property
    def free(self) -> bool:
        """No filter, preference or sticky key: the strategy's pick will do."""
        return not (
            self.required_labels
            or self.preferred_labels
            or self.anti_affinity_group
            or self.sticky_key
        )


ANYWHERE = Placement()


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    """What a client asks to run."""

    task_type: str
    payload: bytes = b""
    priority: int = 0
    pool: str = DEFAULT_POOL
    placement: Placement = ANYWHERE


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskError:
    """Why a task failed: the handler's exception, or the broker's reason."""

    type: str
    message: str = ""
    traceback: str = ""


@dataclass(slots=True, kw_only=True)
class Task:
    """A task as the broker stores it. Times are Unix epoch seconds (0.0 = not yet).

    Not frozen, on purpose: the engine owns the tasks in flight and moves them through
    their states in place (a copy per state change cost more than all the rest the
    broker does for a task). Everyone else treats a Task as read-only and converts it
    at once; the engine's state changes go through the checked state machine.
    """

    id: TaskId
    spec: TaskSpec
    state: TaskState = TaskState.PENDING
    seq: int = 0  # submission order within the broker; FIFO tie-breaker
    attempts: int = 0
    worker_id: WorkerId = ""
    created_at: float = 0.0
    assigned_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    result: bytes = b""
    error: TaskError | None = None
    placement_note: str = ""  # why it went where it went, or why it still waits
    unschedulable: bool = False  # pending, and no connected worker can take it


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskResult:
    """A worker's report of one attempt."""

    task_id: TaskId
    attempt: int
    success: bool
    result: bytes = b""
    error: TaskError | None = None
    started_at: float = 0.0
    finished_at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    """A pool of workers with its own queue and placement strategy."""

    name: str
    strategy: str = "round_robin"
    ab_strategy: str = ""  # A/B split: ab_percent of the tasks are placed by this one
    ab_percent: int = 0
    sticky_timeout_s: float = DEFAULT_STICKY_TIMEOUT_S


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    """What a worker announces when it registers."""

    worker_id: WorkerId
    pool: str
    capacity: int
    task_types: frozenset[str]
    labels: Mapping[str, str] = field(default_factory=dict)
    sdk_version: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStatus:
    """A connected worker as the registry sees it now."""

    spec: WorkerSpec
    in_flight: int
    capacity: int
    load: float
    connected_at: float
    last_heartbeat: float
    draining: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ArmSummary:
    """How the tasks one strategy of a pool placed went."""

    strategy: str
    placed: int
    finished: int
    failed: int
    mean_wait_s: float
    mean_run_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeSummary:
    """What a pool learned of a task type's run time, and how well it predicts it."""

    task_type: str
    samples: int
    mean_run_s: float
    stddev_run_s: float
    predictions: int
    mean_abs_error_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolStats:
    """Counts for one pool, for `taskbroker stats`."""

    pool: str
    strategy: str
    pending: int
    active: int
    succeeded: int
    failed: int
    cancelled: int
    workers: int
    capacity: int
    unschedulable: int = 0  # pending tasks no connected worker can take
    arms: tuple[ArmSummary, ...] = ()
    runtimes: tuple[RuntimeSummary, ...] = ()
    sticky_hits: int = 0
    sticky_misses: int = 0
    strategy_notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFilter:
    """Which tasks a listing returns, newest first."""

    pool: str = ""
    states: frozenset[TaskState] = frozenset()
    task_type: str = ""
    limit: int = 100
    before_id: TaskId | None = None
