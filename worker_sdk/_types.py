"""The SDK's data types: what a task, a pool and a worker look like to SDK users."""

from __future__ import annotations

import enum
import json as _json
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
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
    DEAD_LETTER = "dead_letter"  # failed every attempt its retry policy allowed

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, FAILED, CANCELLED and DEAD_LETTER: the task will not change
        again (unless `Client.retry` sends a failed or dead-lettered one back to its queue)."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.DEAD_LETTER}
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how soon, the broker tries a failed task again.

    A failure whose error type is retryable (listed in `retryable_errors`, or any type when
    that is empty, but never one in `non_retryable_errors`) goes back to the queue after a
    random wait of up to `initial_backoff_s * backoff_multiplier**(attempt - 1)`, capped at
    `max_backoff_s`; a task that fails its last of `max_attempts` goes to DEAD_LETTER.
    """

    max_attempts: int = 1  # 1 = no retries; the broker allows at most 100
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    backoff_multiplier: float = 2.0
    retryable_errors: tuple[str, ...] = ()  # error types, e.g. "TimeoutError"
    non_retryable_errors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # The wire reads 0 as "the default", so a 0 here could not mean what it says.
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if not (self.initial_backoff_s > 0 and self.max_backoff_s > 0):
            raise ValueError("RetryPolicy.initial_backoff_s and max_backoff_s must be > 0")
        if not self.backoff_multiplier >= 1:
            raise ValueError("RetryPolicy.backoff_multiplier must be at least 1")
        for name in ("retryable_errors", "non_retryable_errors"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"RetryPolicy.{name} is a sequence of error type names, not a str")
            object.__setattr__(self, name, tuple(value))  # a list stays hashable this way


@dataclass(frozen=True, slots=True)
class TaskErrorInfo:
    """Why a task failed, as its worker (or the broker) reported it.

    `retryable`: the worker's word on whether trying again may help (None: it did not
    say; the task's RetryPolicy decides). `task_fault`: the failure is the task's own
    (its payload), not the worker's.
    """

    type: str
    message: str
    traceback: str
    retryable: bool | None = None
    task_fault: bool = False


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
    `not_before` is the time before which a pending task is not handed out (its delay, a
    retry's backoff or a rate limit), else the `not_before` it was submitted with. The
    other submit options (`retry`, `start_timeout`, `execution_timeout` in seconds,
    `idempotency_key`, `fairness_key`) are as submitted; None = not set. `submitter` is
    the authenticated identity that submitted it; None when the broker authenticates no one.
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
    retry: RetryPolicy | None = None
    not_before: datetime | None = None
    start_timeout: float | None = None
    execution_timeout: float | None = None
    idempotency_key: str | None = None
    fairness_key: str | None = None
    submitter: str | None = None

    def json(self) -> Any:
        """The result parsed as JSON (what a handler returning a dict or list produced)."""
        return _json.loads(self.result)

    @property
    def done(self) -> bool:
        """True once the task is in a terminal state."""
        return self.state.terminal


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One task to submit, for `Client.submit_many`; the fields are `submit()`'s arguments.

    Give at most one of `delay` (seconds, counted from when the task is submitted) and
    `not_before` (a timezone-aware datetime).
    """

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
    retry: RetryPolicy | None = None
    delay: float | None = None
    not_before: datetime | None = None
    start_timeout: float | None = None
    execution_timeout: float | None = None
    idempotency_key: str | None = None
    fairness_key: str | None = None
    # The payload's media type (TaskSpec.payload_content_type); None: none for an empty
    # payload, else "application/octet-stream". `Client.submit` sets it (see README).
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Bulkhead:
    """Limits of one task type within a pool; 0 = no limit (`max_queue`: the pool's).

    `rate_per_s` and `rate_burst` make a token bucket over the type's submits.
    """

    task_type: str
    max_inflight: int = 0
    max_queue: int = 0
    rate_per_s: float = 0.0
    rate_burst: int = 0


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """A pool of workers and how its tasks are placed.

    `ab_percent` (0..100) of its tasks are placed by `ab_strategy` ("" = no A/B split), the
    rest by `strategy`; a task with a sticky key waits up to `sticky_timeout_s` for the
    worker that last ran its key.

    Limits, where 0 means the broker's default (or no limit): `max_inflight` tasks held by
    the pool's workers at once and `max_queue` waiting; token buckets over all its submits
    (`rate_per_s`, `rate_burst`) and per client identity (`client_rate_per_s`,
    `client_rate_burst`), whose `rate_mode` is
    "reject" (refuse with a retry hint) or "queue" (accept and delay); a circuit breaker
    per worker (`breaker_failures` consecutive failures, or a `breaker_failure_rate` over
    the last `breaker_window` results, then `breaker_cooldown_s`); `lease_s`, after which
    a task its worker has not confirmed is requeued; `bulkheads` per task type; and
    `fairness_weights` per fairness key (default 1). Finished tasks are deleted
    `retention_s` after they finished (0 = kept forever). An adaptive strategy compares
    its candidates over the last `adaptive_window` costs of each, and lets the
    challengers place `adaptive_explore_percent` of the tasks.
    """

    name: str
    strategy: str
    ab_strategy: str = ""
    ab_percent: int = 0
    sticky_timeout_s: float = 5.0
    max_inflight: int = 0
    max_queue: int = 0
    rate_per_s: float = 0.0
    rate_burst: int = 0
    client_rate_per_s: float = 0.0
    client_rate_burst: int = 0
    rate_mode: str = "reject"
    breaker_failures: int = 0
    breaker_failure_rate: float = 0.0
    breaker_window: int = 0
    breaker_cooldown_s: float = 0.0
    lease_s: float = 0.0
    retention_s: float = 7 * 86_400.0
    adaptive_window: int = 0
    adaptive_explore_percent: int = 0
    bulkheads: tuple[Bulkhead, ...] = ()
    fairness_weights: dict[str, int] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A connected worker as the broker sees it.

    A `cordoned` worker gets no new work until uncordoned; `breaker` is its circuit breaker
    ("closed", "open" or "half_open"), opened by `consecutive_failures` or a failure rate.
    """

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
    cordoned: bool = False
    breaker: str = "closed"
    consecutive_failures: int = 0


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
class BulkheadStats:
    """One task type's bulkhead in a pool, now: `max_queue` 0 = the pool's, `max_inflight`
    0 = no limit."""

    task_type: str
    pending: int
    in_flight: int
    max_queue: int
    max_inflight: int


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Task counts and worker capacity of one pool; `active` = assigned or running, and
    `unschedulable` counts the pending tasks that no connected worker can take.

    `arms` has one entry per strategy placing the pool's tasks, `runtimes` one per task
    type with learned run times; `sticky_hits` counts the sticky tasks that ran where
    their key ran last, `sticky_misses` those placed elsewhere (first run, or fallback).
    `strategy_notes` is what strategies say of themselves (e.g. which one adaptive runs).

    Flow control: `delayed` pending tasks wait for a time (a delay, a retry's backoff or a
    rate limit), `dead_letter` tasks failed every attempt; submits `rejected` for a full
    queue, `rate_limited` (refused or delayed), answered with an earlier task
    (`deduplicated`); attempts `retried`, `timed_out`, tasks `expired` before they started,
    held tasks requeued for an expired lease (`lease_expired`), slot-count drifts repaired
    (`reconciled`). `max_queue` and `max_inflight` are the pool's limits in force and
    `bulkheads` the per-task-type ones.

    Live figures over the last minute: tasks finished per second (`throughput_per_s`),
    the median and 99th percentile of the queue wait (submit or requeue to assignment) and
    of the run time on the worker, and how long the oldest waiting task has waited
    (`oldest_pending_age_s`); 0 when there is nothing to measure.
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
    delayed: int = 0
    dead_letter: int = 0
    rejected: int = 0
    rate_limited: int = 0
    retried: int = 0
    timed_out: int = 0
    expired: int = 0
    lease_expired: int = 0
    reconciled: int = 0
    deduplicated: int = 0
    max_queue: int = 0
    max_inflight: int = 0
    bulkheads: tuple[BulkheadStats, ...] = ()
    throughput_per_s: float = 0.0
    wait_p50_s: float = 0.0
    wait_p99_s: float = 0.0
    run_p50_s: float = 0.0
    run_p99_s: float = 0.0
    oldest_pending_age_s: float = 0.0

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


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One bucket of the broker's metrics history: what happened from `start` for
    `bucket_s` seconds in `pool`, for one `task_type` and `worker_id` ("" when summed over
    them). `completed` counts the tasks that finished, whatever the outcome, `failed` those
    of them that failed; the wait (in the queue) and run (on the worker) figures are over
    the finished tasks, in seconds, 0 with none.
    """

    start: datetime
    bucket_s: int
    pool: str
    task_type: str
    worker_id: str
    submitted: int
    completed: int
    failed: int
    wait_mean_s: float
    wait_p50_s: float
    wait_p99_s: float
    run_mean_s: float
    run_p50_s: float
    run_p99_s: float

    @property
    def end(self) -> datetime:
        """Where the bucket ends (exclusive)."""
        return self.start + timedelta(seconds=self.bucket_s)


@dataclass(frozen=True, slots=True)
class PoolRecommendation:
    """How many workers a pool needs for its target queue wait, from its history.

    The broker forecasts the arrival rate (`arrival_rate_per_s`, by `method`) and, with the
    mean run time and the workers' mean capacity (`slots_per_worker`), finds the fewest slots
    (`servers`, c in M/M/c) whose Erlang C mean wait is within the target:
    `recommended_workers` of them. `utilisation`, `expected_wait_s` and
    `probability_of_wait` (that a task waits at all) hold at the recommendation;
    `reasoning` gives the steps in words and numbers.
    """

    pool: str
    current_workers: int
    recommended_workers: int
    arrival_rate_per_s: float
    mean_run_s: float
    slots_per_worker: float
    servers: int
    utilisation: float
    expected_wait_s: float
    probability_of_wait: float
    method: str
    reasoning: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """One audited change of a pool's settings: `at` when, `who` asked (a client id or
    peer, "config file" or "sighup") through which `source` ("create_pool", "update_pool",
    "reload"), and the settings `before` (None for a new pool) and `after`, as the broker
    reports them; `fields` names the settings that changed.
    """

    at: datetime
    who: str
    source: str
    pool: str
    before: Mapping[str, Any] | None = field(hash=False)
    after: Mapping[str, Any] | None = field(hash=False)
    fields: tuple[str, ...] = ()
