"""The simulator's workload: workers, their comings and goings, and the tasks.

A task's run time is the mean for its worker's class (``SimTask.duration_s``, ``"*"``
for any class) times its lognormal factor (mean 1, ``jitter_sigma``), times
``warm_factor`` when the worker ran the task's sticky (else routing) key recently (an
LRU of ``key_cache`` keys per worker), times the worker's ``fail_time_factor`` when the
attempt fails. A task may carry a retry policy and an execution timeout, and the pool
its settings (bulkheads, in-flight limits, breakers, leases): the simulation applies
them as the broker does.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from broker.config import validate_pool
from broker.core.validation import validate_options
from broker.domain import ANYWHERE, NO_RETRY, Placement, PoolConfig, RetryPolicy, TaskSpec, WorkerId
from broker.errors import BrokerError

POOL = "sim"
ANY_CLASS = "*"
DEFAULT_CLASS = "default"
DEFAULT_TRACE_WORKERS = "4x2"
DURATION_PREFIX = "duration_s_"


class SimulationError(BrokerError):
    """The simulation cannot run: an unknown scenario or strategy, or a bad workload."""


class TraceError(SimulationError):
    """A trace file is malformed; the message names the line (or JSON path) and field."""


# The workload -----------------------------------------------------------------


class WorkerChange(enum.StrEnum):
    """What happens to a worker during a run."""

    JOIN = "join"
    LEAVE = "leave"  # drain: no new tasks, disconnect once the running ones finish
    CRASH = "crash"  # disconnect at once; its running tasks are requeued


# Changes at the same moment apply in this order (joins first, so a worker may leave at
# the moment it joins).
CHANGE_ORDER = {WorkerChange.JOIN: 0, WorkerChange.LEAVE: 1, WorkerChange.CRASH: 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class SimWorker:
    """A simulated worker: what it registers, plus how fast and reliable it is."""

    worker_id: WorkerId
    capacity: int
    task_types: frozenset[str]
    labels: Mapping[str, str] = field(default_factory=dict)
    worker_class: str = DEFAULT_CLASS  # picks the task's run time, see SimTask.duration_s
    fail_rate: float = 0.0  # share of its attempts that report success=False
    fail_time_factor: float = 1.0  # a failing attempt takes this share of its run time
    join_s: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    """A worker joins, leaves or crashes at a moment of the run."""

    at_s: float
    worker_id: WorkerId
    change: WorkerChange


@dataclass(frozen=True, slots=True, kw_only=True)
class SimTask:
    """A task of the workload: when it arrives and how long it runs where."""

    arrival_s: float
    task_type: str
    duration_s: Mapping[str, float]  # mean run time by worker class; "*" for any class
    priority: int = 0
    placement: Placement = ANYWHERE
    retry: RetryPolicy = NO_RETRY  # a failed attempt is retried as the broker would
    execution_timeout_s: float = 0.0  # an attempt running longer is cancelled; 0 = none

    def spec(self) -> TaskSpec:
        """The task as a client would submit it to the simulated pool."""
        return TaskSpec(
            task_type=self.task_type,
            priority=self.priority,
            pool=POOL,
            placement=self.placement,
            retry=self.retry,
            execution_timeout_s=self.execution_timeout_s,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """Everything one simulation run replays; tasks in arrival order."""

    name: str
    workers: tuple[SimWorker, ...]
    tasks: tuple[SimTask, ...]
    worker_events: tuple[WorkerEvent, ...] = ()
    jitter_sigma: float = 0.0  # sigma of the lognormal run-time factor (mean 1)
    sticky_timeout_s: float = 5.0
    key_cache: int = 0  # keys each worker keeps warm (LRU); 0 = no cache effect
    warm_factor: float = 1.0  # run-time factor of a task whose key is warm
    # The pool's settings (bulkheads, max_inflight, breakers, lease_s); its name, strategy
    # and sticky timeout come from the run.
    pool: PoolConfig = field(default_factory=lambda: PoolConfig(name=POOL))

    def pool_config(self, strategy: str) -> PoolConfig:
        """The simulated pool's settings under this strategy."""
        return replace(
            self.pool, name=POOL, strategy=strategy, sticky_timeout_s=self.sticky_timeout_s
        )


# Checking a workload ------------------------------------------------------------


def check_workload(workload: Workload) -> None:
    """SimulationError if the workload cannot be replayed as given."""
    if not workload.tasks:
        raise SimulationError(f"workload {workload.name!r} has no tasks")
    if not workload.workers:
        raise SimulationError(f"workload {workload.name!r} has no workers")
    if workload.jitter_sigma < 0 or workload.key_cache < 0 or workload.warm_factor < 0:
        raise SimulationError("jitter_sigma, key_cache and warm_factor must not be negative")
    seen: set[WorkerId] = set()
    for worker in workload.workers:
        if problem := _worker_problem(worker):
            raise SimulationError(f"worker {worker.worker_id!r}: {problem}")
        if worker.worker_id in seen:
            raise SimulationError(f"worker {worker.worker_id!r} is defined twice")
        seen.add(worker.worker_id)
    if problem := _timeline_problem(workload):
        raise SimulationError(problem)
    try:
        validate_pool(workload.pool_config(workload.pool.strategy))
    except BrokerError as exc:
        raise SimulationError(f"pool settings: {exc}") from None
    classes = classes_by_type(workload.workers)
    previous = 0.0
    for number, task in enumerate(workload.tasks, 1):
        if task.arrival_s < previous:
            raise SimulationError(f"task {number} arrives before task {number - 1}")
        previous = task.arrival_s
        if problem := task_problem(task, classes):
            raise SimulationError(f"task {number}: {problem}")
        if task.retry is not NO_RETRY or task.execution_timeout_s:
            try:
                validate_options(task.spec(), f"task {number}: ", 0.0)
            except BrokerError as exc:
                raise SimulationError(str(exc)) from None


def classes_by_type(workers: Iterable[SimWorker]) -> dict[str, set[str]]:
    """The worker classes that take each task type."""
    classes: dict[str, set[str]] = {}
    for worker in workers:
        for task_type in worker.task_types:
            classes.setdefault(task_type, set()).add(worker.worker_class)
    return classes


def task_problem(task: SimTask, classes: Mapping[str, set[str]]) -> str | None:
    """What is wrong with this task given the workers' classes; None if nothing."""
    if not math.isfinite(task.arrival_s) or task.arrival_s < 0:
        return f"arrival_s must be a number >= 0, got {task.arrival_s}"
    takers = classes.get(task.task_type)
    if not takers:
        return f"no worker takes task type {task.task_type!r}"
    for value in task.duration_s.values():
        if not math.isfinite(value) or value < 0:
            return f"durations must be numbers >= 0, got {value}"
    if ANY_CLASS not in task.duration_s:
        lacking = sorted(c for c in takers if c not in task.duration_s)
        if lacking:
            return (
                f"no run time for worker class {lacking[0]!r} "
                f"(give duration_s or {DURATION_PREFIX}{lacking[0]})"
            )
    return None


def _worker_problem(worker: SimWorker) -> str | None:
    if not worker.worker_id:
        return "the id must not be empty"
    if worker.capacity < 1:
        return f"capacity must be at least 1, got {worker.capacity}"
    if not worker.task_types:
        return "it takes no task type"
    if not 0 <= worker.fail_rate <= 1:
        return f"fail_rate must be 0..1, got {worker.fail_rate}"
    if not worker.fail_time_factor >= 0:
        return f"fail_time_factor must be >= 0, got {worker.fail_time_factor}"
    if not (math.isfinite(worker.join_s) and worker.join_s >= 0):
        return f"join_s must be a number >= 0, got {worker.join_s}"
    return None


def _timeline_problem(workload: Workload) -> str | None:
    """Joins of connected workers, leaves and crashes of absent ones, unknown workers."""
    ids = {w.worker_id for w in workload.workers}
    changes = [(w.join_s, 0, w.worker_id, WorkerChange.JOIN) for w in workload.workers]
    for event in workload.worker_events:
        if event.worker_id not in ids:
            return f"a worker event names unknown worker {event.worker_id!r}"
        if not (math.isfinite(event.at_s) and event.at_s >= 0):
            return f"worker event at_s must be a number >= 0, got {event.at_s}"
        order = CHANGE_ORDER[event.change]
        changes.append((event.at_s, order, event.worker_id, event.change))
    present: set[WorkerId] = set()
    for at_s, _, worker_id, change in sorted(changes, key=lambda c: (c[0], c[1])):
        if change is WorkerChange.JOIN:
            if worker_id in present:
                return f"worker {worker_id!r} joins at {at_s} s while it is connected"
            present.add(worker_id)
        elif worker_id not in present:
            return f"worker {worker_id!r} does not {change.value} at {at_s} s: not connected"
        else:
            present.discard(worker_id)
    return None
