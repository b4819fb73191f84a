"""The broker's own types: what a task, a pool and a worker are, free of protobuf."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TypeVar, dataclass_transform

DEFAULT_POOL = "default"
DEFAULT_STICKY_TIMEOUT_S = 5.0
DEFAULT_RETENTION_S = 7 * 86_400.0  # finished tasks are deleted after a week
MAX_RETENTION_S = 3650 * 86_400.0
DEFAULT_BREAKER_FAILURES = 5
DEFAULT_BREAKER_WINDOW = 20
DEFAULT_BREAKER_COOLDOWN_S = 30.0
# The error types of failed attempts that are the worker's fault, not the task's: the
# worker was lost while holding the task, its lease ran out, the attempt timed out on it,
# or the worker's SDK said so (a handler raising worker_sdk.WorkerError).
WORKER_LOST = "WorkerLost"
LEASE_EXPIRED = "LeaseExpired"
WORKER_FAULTS: frozenset[str] = frozenset({WORKER_LOST, LEASE_EXPIRED, "Timeout", "WorkerError"})
# Every error type the broker itself (or a worker SDK) puts in a TaskError; the wire's
# TaskError.BrokerType lists them, and says what each means.
BROKER_ERROR_TYPES: tuple[str, ...] = (
    "Cancelled",
    "Timeout",
    "DeadlineExceeded",
    "ResultTooLarge",
    WORKER_LOST,
    LEASE_EXPIRED,
    "Error",
    "WorkerError",
    "UnknownTaskType",
)
RATE_MODES = ("reject", "queue")
MIN_PRIORITY = -1000
MAX_PRIORITY = 1000

TaskId = int
WorkerId = str

_R = TypeVar("_R")


@dataclass_transform(frozen_default=True)
def hot_record(*, kw_only: bool = False) -> Callable[[type[_R]], type[_R]]:
    """A dataclass with slots, frozen to the type checker, for what the broker makes once
    or more for every task (a spec, a result, a strategy's outcome).

    At run time it is not frozen: a frozen dataclass's __init__ sets each field through
    object.__setattr__, four times as slow as plain assignment (2.0 against 0.5 µs for a
    TaskSpec). It is equal and hashed by its fields, as a frozen one is; code that assigns
    a field fails the type check (`make lint`) instead of raising.
    """

    def make(cls: type[_R]) -> type[_R]:
        return dataclass(slots=True, kw_only=kw_only, unsafe_hash=True)(cls)

    return make


class TaskState(enum.IntEnum):
    """Where a task is in its life; the numbers match the wire enum."""

    PENDING = 1
    ASSIGNED = 2
    RUNNING = 3
    SUCCEEDED = 4
    FAILED = 5
    CANCELLED = 6
    DEAD_LETTER = 7  # failed every attempt its retry policy allowed

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def active(self) -> bool:
        """Held by a worker: assigned or running."""
        return self in ACTIVE_STATES


# The states a task ends in.
TERMINAL_STATES = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.DEAD_LETTER}
)
# The states of a task a worker holds.
ACTIVE_STATES = frozenset({TaskState.ASSIGNED, TaskState.RUNNING})


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
class RetryPolicy:
    """How often and how soon a failed task is tried again.

    Attempt n (1-based) that fails with a retryable error is retried after a random
    delay in [0, min(max_backoff_s, initial_backoff_s * backoff_multiplier**(n-1))]
    ("full jitter"); one that fails its last attempt goes to DEAD_LETTER.
    """

    max_attempts: int = 1
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    backoff_multiplier: float = 2.0
    retryable_errors: frozenset[str] = frozenset()  # empty: every type not listed below
    non_retryable_errors: frozenset[str] = frozenset()

    def retryable(self, error_type: str, hint: bool | None = None) -> bool:
        """Whether an attempt failing with `error_type` is tried again: never if the
        policy lists the type as non-retryable, always if it lists it as retryable;
        else as the worker's `hint` says, if it said; else only if the policy lists no
        retryable types."""
        if error_type in self.non_retryable_errors:
            return False
        if error_type in self.retryable_errors:
            return True
        if hint is not None:
            return hint
        return not self.retryable_errors

    def backoff_cap(self, attempt: int) -> float:
        """The longest wait after failed attempt `attempt` (1-based)."""
        exponent = min(max(attempt - 1, 0), 64)
        return min(self.max_backoff_s, self.initial_backoff_s * self.backoff_multiplier**exponent)


NO_RETRY = RetryPolicy()


@hot_record(kw_only=True)
class TaskSpec:
    """What a client asks to run."""

    task_type: str
    payload: bytes = b""
    priority: int = 0
    pool: str = DEFAULT_POOL
    placement: Placement = ANYWHERE
    retry: RetryPolicy = NO_RETRY
    not_before: float = 0.0  # a delayed task: pending from this epoch second on
    start_timeout_s: float = 0.0  # fail unless started this long after becoming pending
    execution_timeout_s: float = 0.0  # fail an attempt that runs longer than this
    idempotency_key: str = ""
    fairness_key: str = ""  # a tenant; keys of a pool share it by weighted round robin
    trace_context: Mapping[str, str] = field(default_factory=dict)  # W3C traceparent etc.
    payload_content_type: str = ""  # the payload's media type, as the client said
    submitter: str = ""  # the authenticated identity that submitted it; set by the broker

    @property
    def has_retry(self) -> bool:
        """Whether its retry policy is not the default one (most specs share NO_RETRY,
        recognised by identity before a comparison field by field)."""
        return self.retry is not NO_RETRY and self.retry != NO_RETRY

    @property
    def has_options(self) -> bool:
        """Whether any of the retry policy, delay, deadlines, keys or trace context is set;
        checked fast, since most tasks have none."""
        return not (
            self.retry is NO_RETRY
            and not self.not_before
            and not self.start_timeout_s
            and not self.execution_timeout_s
            and not self.idempotency_key
            and not self.fairness_key
            and not self.trace_context
            and not self.payload_content_type
            and not self.submitter
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskError:
    """Why a task failed: the handler's exception, or the broker's reason."""

    type: str
    message: str = ""
    traceback: str = ""
    # A worker's word on its failure: whether trying again may help (None: it did not
    # say; see RetryPolicy.retryable), and whether it is the task's fault rather than
    # the worker's (then the worker's breaker does not count it).
    retryable: bool | None = None
    task_fault: bool = False


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
    result_content_type: str = ""  # the result's media type, as the worker said
    error: TaskError | None = None
    placement_note: str = ""  # why it went where it went, or why it still waits
    unschedulable: bool = False  # pending, and no connected worker can take it
    not_before: float = 0.0  # pending, but waiting until then (delay, backoff, rate limit)


@hot_record(kw_only=True)
class TaskResult:
    """A worker's report of one attempt."""

    task_id: TaskId
    attempt: int
    success: bool
    result: bytes = b""
    error: TaskError | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    result_content_type: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadConfig:
    """Limits of one task type within a pool; 0 = no limit (max_queue: the pool's)."""

    task_type: str
    max_inflight: int = 0
    max_queue: int = 0
    rate_per_s: float = 0.0  # token bucket over the type's submits
    rate_burst: int = 0  # 0 = max(1, rate_per_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    """A pool of workers with its own queue, placement strategy and limits."""

    name: str
    strategy: str = "round_robin"
    ab_strategy: str = ""  # A/B split: ab_percent of the tasks are placed by this one
    ab_percent: int = 0
    sticky_timeout_s: float = DEFAULT_STICKY_TIMEOUT_S
    max_inflight: int = 0  # tasks its workers hold at once; 0 = no limit
    max_queue: int = 0  # tasks waiting; 0 = the broker's default_max_queue
    rate_per_s: float = 0.0  # token bucket over all of the pool's submits; 0 = no limit
    rate_burst: int = 0  # 0 = max(1, rate_per_s)
    client_rate_per_s: float = 0.0  # token bucket per client identity; 0 = no limit
    client_rate_burst: int = 0  # 0 = max(1, client_rate_per_s)
    rate_mode: str = "reject"  # over a rate limit: "reject" or "queue" (delay the task)
    breaker_failures: int = DEFAULT_BREAKER_FAILURES  # consecutive failures that open it
    breaker_failure_rate: float = 0.0  # or this share of the last window failed; 0 = off
    breaker_window: int = DEFAULT_BREAKER_WINDOW
    breaker_cooldown_s: float = DEFAULT_BREAKER_COOLDOWN_S
    lease_s: float = 0.0  # unconfirmed held tasks are requeued after; 0 = heartbeat timeout
    retention_s: float = DEFAULT_RETENTION_S  # finished tasks are deleted after; 0 = never
    adaptive_window: int = 200  # adaptive: costs kept per strategy and task type
    adaptive_explore_percent: int = 20  # adaptive: share of tasks the challengers place
    bulkheads: tuple[BulkheadConfig, ...] = ()
    fairness_weights: Mapping[str, int] = field(default_factory=dict)

    def bulkhead(self, task_type: str) -> BulkheadConfig | None:
        for bulkhead in self.bulkheads:
            if bulkhead.task_type == task_type:
                return bulkhead
        return None


# A pool's settings that are one value each: every field of PoolConfig but its name and the
# nested bulkheads and fairness weights, in order. The config file, the store, the audit log
# and the wire name them so; the broker's modules derive their lists from these, and
# tests/unit/test_pool_settings.py holds them equal to the SDK's table
# (worker_sdk/_pool_settings.py) and to message Pool.
POOL_SCALAR_SETTINGS: tuple[str, ...] = tuple(
    f.name for f in fields(PoolConfig) if f.name not in ("name", "bulkheads", "fairness_weights")
)
# The limits of a bulkhead, in order: every field of BulkheadConfig but its task type.
BULKHEAD_LIMITS: tuple[str, ...] = tuple(
    f.name for f in fields(BulkheadConfig) if f.name != "task_type"
)


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
    cordoned: bool = False
    breaker: str = "closed"  # closed, open or half_open
    consecutive_failures: int = 0


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
    delayed: int = 0  # pending, waiting for a time (delay, backoff, rate limit)
    dead_letter: int = 0
    rejected: int = 0  # tasks refused for a full queue
    rate_limited: int = 0  # tasks refused or delayed by a rate limit
    retried: int = 0  # failed attempts sent back for another
    timed_out: int = 0  # attempts past their execution timeout
    expired: int = 0  # tasks past their start deadline
    lease_expired: int = 0  # held tasks requeued for an expired lease
    reconciled: int = 0  # slot count drifts repaired
    deduplicated: int = 0  # tasks answered with an earlier one (idempotency key)
    max_queue: int = 0
    max_inflight: int = 0
    bulkheads: tuple[BulkheadStats, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadStats:
    """One task type's bulkhead in a pool, now."""

    task_type: str
    pending: int
    in_flight: int
    max_queue: int
    max_inflight: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFilter:
    """Which tasks a listing returns, newest first."""

    pool: str = ""
    states: frozenset[TaskState] = frozenset()
    task_type: str = ""
    limit: int = 100
    before_id: TaskId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Backlog:
    """Waiting work of a pool (task_type "") or of one task type in it, now: what an
    autoscaler watches."""

    pool: str
    task_type: str
    pending: int  # waiting, delayed ones included
    delayed: int
    in_flight: int
    oldest_age_s: float  # how long the oldest runnable waiting task has waited; 0 = none


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigChange:
    """One audited change of a pool's settings."""

    at: float
    who: str
    source: str  # create_pool, update_pool, reload
    pool: str
    before: str  # JSON of the settings; "" for a new pool
    after: str
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiToken:
    """A bearer token the broker accepts. Its secret is never kept: only its SHA-256
    (`digest`, hex), against which a presented secret is checked."""

    name: str  # the caller's identity, in audit records, rate limits and logs
    roles: tuple[str, ...]  # of broker.auth.ROLES
    pools: tuple[str, ...]  # the pools it may use; () = every pool
    digest: str
    created_at: float
    revoked_at: float | None = None
