"""Replay a workload through the real scheduler on a virtual clock, and measure placement.

A discrete-event simulation: a heap of events (task arrivals and completions,
workers joining, leaving and crashing) drives one `PoolScheduler` whose clock is
a `FakeClock`, so hours of simulated time take seconds. Each strategy runs the
same workload from scratch with the same random draws: a task's run-time factor
and its failure draw are drawn per task up front (common random numbers), so
the differences between rows come from placement alone.

The simulator checks every placement itself, independently of the scheduler:
the worker must be connected and not draining, take the task's type, have a
free slot, carry the required labels and run no task that hard anti-affinity
excludes. Any miss is a constraint violation; there should be none.

A task's run time is the mean for its worker's class (``SimTask.duration_s``,
``"*"`` for any class) times its lognormal factor (mean 1, ``jitter_sigma``),
times ``warm_factor`` when the worker ran the task's sticky (else routing) key
recently (an LRU of ``key_cache`` keys per worker), times the worker's
``fail_time_factor`` when the attempt fails.

Trace files (`load_trace`) are JSON or CSV. JSON is either a list of task
objects, or an object ``{"workers": [...], "worker_events": [...], "tasks":
[...], "jitter_sigma": 0, "sticky_timeout_s": 5}`` where only "tasks" is
required. A task (a JSON object, or a CSV row under a header) has:

    arrival_s            seconds from the start (required)
    task_type            (required)
    duration_s           mean run time on any worker class
    duration_s_<class>   mean run time on workers of that class (overrides duration_s)
    priority             -1000..1000, default 0
    required_labels      k=v;k=v (or a JSON object)
    anti_affinity_group  hard unless anti_affinity_soft is true
    anti_affinity_soft   true/false
    sticky_key, routing_key

A worker object has "id", "capacity", and optionally "task_types" (default:
every type in the trace), "labels", "class" (default "default"), "fail_rate"
(0..1), "fail_time_factor", "join_s". A worker event has "at_s", "worker" and
"change" (join, leave = drain then disconnect, crash = disconnect at once, its
tasks requeued). Without a workers section (CSV, or a JSON list) the workers come
from a spec, `DEFAULT_TRACE_WORKERS` unless given: ``COUNTxCAPACITY[:CLASS]``,
comma-separated, e.g. ``4x2:fast,4x2:slow``; each takes every task type and
carries the label class=CLASS when a class is named.
"""

from __future__ import annotations

import csv
import enum
import heapq
import inspect
import itertools
import json
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.clock import FakeClock
from broker.core.runtimes import RuntimeModel
from broker.core.scheduler import PoolScheduler
from broker.core.strategies import STRATEGIES, StrategyEnv, WorkerSlot
from broker.domain import (
    ANYWHERE,
    MAX_PRIORITY,
    MIN_PRIORITY,
    Placement,
    PoolConfig,
    Task,
    TaskSpec,
    TaskState,
    WorkerId,
)
from broker.errors import BrokerError

POOL = "sim"
ANY_CLASS = "*"
DEFAULT_CLASS = "default"
DEFAULT_TRACE_WORKERS = "4x2"
DURATION_PREFIX = "duration_s_"
# A scheduler whose next_deadline() keeps waking the simulation without placing
# anything would otherwise loop for ever.
MAX_IDLE_WAKES = 10_000

# The keys of `SimResult.as_row()`, in table order.
ROW_KEYS = (
    "scenario",
    "strategy",
    "seed",
    "tasks",
    "completed",
    "failed",
    "requeued",
    "unfinished",
    "throughput_per_s",
    "makespan_s",
    "wait_p50_s",
    "wait_p95_s",
    "wait_p99_s",
    "run_mean_s",
    "utilisation",
    "violations",
    "sticky_placements",
    "sticky_hit_rate",
)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class SimResult:
    """What one strategy did with one workload. Times in simulated seconds."""

    scenario: str
    strategy: str
    seed: int
    tasks: int
    completed: int  # succeeded or failed
    failed: int
    requeued: int  # attempts lost to a crashed worker and queued again
    unfinished: int  # never completed (e.g. no worker could take them)
    throughput_per_s: float
    makespan_s: float  # the last completion
    wait_p50_s: float  # queue wait: arrival (or requeue) to placement, per placement
    wait_p95_s: float
    wait_p99_s: float
    run_mean_s: float
    utilisation: float  # busy slot-seconds / connected slot-seconds, up to the makespan
    violations: int
    sticky_placements: int  # placements of a task whose sticky key had run before
    sticky_hit_rate: float | None  # ... that went to the worker that last ran the key
    violation_examples: tuple[str, ...] = ()

    def as_row(self) -> dict[str, Any]:
        """The result as a JSON-ready dict with the keys of `ROW_KEYS`."""
        row: dict[str, Any] = {}
        for key in ROW_KEYS:
            value = getattr(self, key)
            row[key] = round(value, 6) if isinstance(value, float) else value
        return row


# Running ------------------------------------------------------------------------


def strategy_names() -> list[str]:
    """The strategies the scheduler knows now."""
    return list(STRATEGIES)


def check_strategies(names: Iterable[str]) -> list[str]:
    """The names, checked; SimulationError names the first unknown one."""
    names = list(names)
    if not names:
        raise SimulationError("no strategies given")
    for name in names:
        if name not in STRATEGIES:
            known = ", ".join(STRATEGIES)
            raise SimulationError(f"unknown strategy {name!r}; choose from: {known}")
    return names


def compare(workload: Workload, strategies: Sequence[str], *, seed: int = 0) -> list[SimResult]:
    """Run the workload once per strategy, each from scratch with the same draws."""
    check_strategies(strategies)
    check_workload(workload)
    return [_Run(workload, name, seed).run() for name in strategies]


def simulate(workload: Workload, strategy: str, *, seed: int = 0) -> SimResult:
    """Run the workload under one strategy."""
    return compare(workload, [strategy], seed=seed)[0]


# Events at the same moment apply in this order, then the pool places once.
_JOIN, _FINISH, _LEAVE, _CRASH, _ARRIVE, _WAKE = range(6)
_CHANGE_KIND = {WorkerChange.JOIN: _JOIN, WorkerChange.LEAVE: _LEAVE, WorkerChange.CRASH: _CRASH}

_Event = tuple[float, int, int, int, str]  # time, kind, sequence, task index or run id, worker


@dataclass(slots=True)
class _Attempt:
    run_id: int
    task: Task
    worker_id: WorkerId
    started_s: float
    queue_wait_s: float
    success: bool


@dataclass(slots=True)
class _Connected:
    spec: SimWorker
    joined_s: float
    running: dict[int, _Attempt] = field(default_factory=dict)  # by task id
    draining: bool = False
    warm: OrderedDict[str, None] = field(default_factory=OrderedDict)


def _new_pool(strategy: str, env: StrategyEnv, config: PoolConfig) -> PoolScheduler:
    """The pool's scheduler, given the env and config if this scheduler takes them."""
    accepted = inspect.signature(PoolScheduler).parameters
    extra: dict[str, Any] = {}
    if "env" in accepted:
        extra["env"] = env
    if "config" in accepted:
        extra["config"] = config
    return PoolScheduler(POOL, strategy, **extra)


class _Run:
    """One strategy over one workload."""

    def __init__(self, workload: Workload, strategy: str, seed: int) -> None:
        self.workload = workload
        self.strategy = strategy
        self.seed = seed
        self.clock = FakeClock()
        self.epoch = self.clock.now()
        env = StrategyEnv(clock=self.clock, runtimes=RuntimeModel(POOL))
        config = PoolConfig(
            name=POOL, strategy=strategy, sticky_timeout_s=workload.sticky_timeout_s
        )
        self.pool = _new_pool(strategy, env, config)
        self.finish: Callable[..., Any] | None = getattr(self.pool, "finish", None)
        self.next_deadline: Callable[[], float | None] | None = getattr(
            self.pool, "next_deadline", None
        )

        rng = random.Random(seed)
        sigma = workload.jitter_sigma
        count = len(workload.tasks)
        mu = -sigma * sigma / 2  # so that the factor's mean is 1
        self.factors = [rng.lognormvariate(mu, sigma) for _ in range(count)] if sigma else []
        self.fail_draws = [rng.random() for _ in range(count)]
        self.retry_rng = random.Random(rng.getrandbits(64))  # draws of later attempts

        self.specs = {w.worker_id: w for w in workload.workers}
        self.connected: dict[WorkerId, _Connected] = {}
        self.attempts: dict[int, _Attempt] = {}  # by run id
        self.queued_at: dict[int, float] = {}  # by task id: arrival or requeue
        self.sequence = itertools.count()
        self.run_ids = itertools.count(1)
        self.wakes: set[float] = set()

        self.completed = 0
        self.failed = 0
        self.requeued = 0
        self.waits: list[float] = []
        self.run_total_s = 0.0
        self.busy_s = 0.0
        self.connected_spans: list[tuple[float, float, int]] = []  # from, to, capacity
        self.makespan_s = 0.0
        self.last_worker_of_key: dict[str, WorkerId] = {}
        self.sticky_placements = 0
        self.sticky_hits = 0
        self.violations = 0
        self.violation_examples: list[str] = []

    # The loop ---------------------------------------------------------------

    def run(self) -> SimResult:
        heap = self._initial_events()
        idle_wakes = 0
        while heap:
            now = heap[0][0]
            self._set_clock(now)
            only_wakes = True
            while heap and heap[0][0] == now:
                _, kind, _, ref, worker_id = heapq.heappop(heap)
                if kind != _WAKE:
                    only_wakes = False
                if kind == _FINISH:
                    self._finish(ref, now)
                elif kind == _ARRIVE:
                    self._arrive(ref, now)
                elif kind == _WAKE:
                    self.wakes.discard(now)
                elif kind == _JOIN:
                    self._join(worker_id, now)
                elif kind == _LEAVE:
                    self._leave(worker_id, now)
                else:
                    self._crash(worker_id, now)
            placed = self._place(heap, now)
            idle_wakes = idle_wakes + 1 if only_wakes and not placed else 0
            if idle_wakes > MAX_IDLE_WAKES:
                raise SimulationError(
                    f"the scheduler's next_deadline() woke the simulation {idle_wakes} times "
                    f"at {now:.3f} s without a placement"
                )
        return self._result()

    def _initial_events(self) -> list[_Event]:
        seq = self.sequence
        events: list[_Event] = [
            (w.join_s, _JOIN, next(seq), 0, w.worker_id) for w in self.specs.values()
        ]
        events += [
            (e.at_s, _CHANGE_KIND[e.change], next(seq), 0, e.worker_id)
            for e in self.workload.worker_events
        ]
        events += [
            (t.arrival_s, _ARRIVE, next(seq), i, "") for i, t in enumerate(self.workload.tasks)
        ]
        heapq.heapify(events)
        return events

    def _set_clock(self, at_s: float) -> None:
        # epoch + at_s rounds the same way every time, so the clock never goes back.
        step = (self.epoch + at_s) - self.clock.now()
        if step > 0:
            self.clock.advance(step)

    def _place(self, heap: list[_Event], now: float) -> int:
        placed = 0
        for decision in self.pool.place():
            task = decision.task
            if decision.worker is None:  # still waiting, for a new reason
                task.placement_note = decision.note
                task.unschedulable = decision.unschedulable
                continue
            self._start(heap, task, decision.worker.worker_id, decision.note, now)
            placed += 1
        if self.next_deadline is not None:
            deadline = self.next_deadline()
            if deadline is not None and deadline > self.clock.now():
                at_s = deadline - self.epoch  # exact: the two are close (Sterbenz)
                if at_s not in self.wakes:
                    self.wakes.add(at_s)
                    heapq.heappush(heap, (at_s, _WAKE, next(self.sequence), 0, ""))
        return placed

    # Tasks ------------------------------------------------------------------

    def _arrive(self, index: int, now: float) -> None:
        sim = self.workload.tasks[index]
        task_id = index + 1
        task = Task(
            id=task_id,
            spec=TaskSpec(
                task_type=sim.task_type,
                priority=sim.priority,
                pool=POOL,
                placement=sim.placement,
            ),
            seq=task_id,
            created_at=self.clock.now(),
        )
        self.queued_at[task_id] = now
        self.pool.enqueue(task)

    def _start(
        self, heap: list[_Event], task: Task, worker_id: WorkerId, note: str, now: float
    ) -> None:
        worker = self.connected.get(worker_id)
        if worker is None:
            raise SimulationError(
                f"the scheduler placed task {task.id} on worker {worker_id!r}, "
                "which is not connected"
            )
        problem = _violation(task, worker)
        if problem is not None:
            self.violations += 1
            if len(self.violation_examples) < 5:
                self.violation_examples.append(f"task {task.id} on {worker_id}: {problem}")

        wait = now - self.queued_at.pop(task.id)
        self.waits.append(wait)
        hints = task.spec.placement
        if key := hints.sticky_key:
            last = self.last_worker_of_key.get(key)
            if last is not None:
                self.sticky_placements += 1
                self.sticky_hits += last == worker_id
            self.last_worker_of_key[key] = worker_id

        task.state = TaskState.ASSIGNED
        task.attempts += 1
        task.worker_id = worker_id
        task.assigned_at = task.started_at = self.clock.now()
        task.placement_note = note
        task.unschedulable = False

        spec = worker.spec
        sim = self.workload.tasks[task.id - 1]
        if task.attempts == 1:
            factor = self.factors[task.id - 1] if self.factors else 1.0
            fail_draw = self.fail_draws[task.id - 1]
        else:
            sigma = self.workload.jitter_sigma
            factor = self.retry_rng.lognormvariate(-sigma * sigma / 2, sigma) if sigma else 1.0
            fail_draw = self.retry_rng.random()
        duration = _mean_duration(sim, spec.worker_class) * factor
        if self._warm(worker, hints.sticky_key or hints.routing_key):
            duration *= self.workload.warm_factor
        success = fail_draw >= spec.fail_rate
        if not success:
            duration *= spec.fail_time_factor

        attempt = _Attempt(next(self.run_ids), task, worker_id, now, wait, success)
        self.attempts[attempt.run_id] = attempt
        worker.running[task.id] = attempt
        heapq.heappush(heap, (now + duration, _FINISH, next(self.sequence), attempt.run_id, ""))

    def _warm(self, worker: _Connected, key: str) -> bool:
        """Whether the worker ran this key recently; it has now."""
        size = self.workload.key_cache
        if not key or not size:
            return False
        cache = worker.warm
        if key in cache:
            cache.move_to_end(key)
            return True
        cache[key] = None
        if len(cache) > size:
            cache.popitem(last=False)
        return False

    def _finish(self, run_id: int, now: float) -> None:
        attempt = self.attempts.pop(run_id, None)
        if attempt is None:  # its worker crashed; the task was requeued
            return
        task = attempt.task
        worker = self.connected[attempt.worker_id]
        del worker.running[task.id]
        run_s = now - attempt.started_s
        self.busy_s += run_s
        self.run_total_s += run_s
        task.state = TaskState.SUCCEEDED if attempt.success else TaskState.FAILED
        task.finished_at = self.clock.now()
        if self.finish is not None:
            self.finish(
                task,
                attempt.worker_id,
                queue_wait_s=attempt.queue_wait_s,
                run_s=run_s,
                success=attempt.success,
            )
        else:
            self.pool.release(attempt.worker_id, task.id)
        self.completed += 1
        self.failed += not attempt.success
        self.makespan_s = now
        if worker.draining and not worker.running:
            self._disconnect(attempt.worker_id, now)

    # Workers ----------------------------------------------------------------

    def _join(self, worker_id: WorkerId, now: float) -> None:
        present = self.connected.get(worker_id)
        if present is not None:  # came back before its drain finished
            present.draining = False
            self.pool.set_draining(worker_id, False)
            return
        spec = self.specs[worker_id]
        self.connected[worker_id] = _Connected(spec, now)
        self.pool.add_worker(
            WorkerSlot(worker_id, POOL, spec.capacity, spec.task_types, dict(spec.labels))
        )

    def _leave(self, worker_id: WorkerId, now: float) -> None:
        worker = self.connected.get(worker_id)
        if worker is None or worker.draining:
            return
        worker.draining = True
        self.pool.set_draining(worker_id)
        if not worker.running:
            self._disconnect(worker_id, now)

    def _crash(self, worker_id: WorkerId, now: float) -> None:
        worker = self.connected.get(worker_id)
        if worker is None:
            return
        self._disconnect(worker_id, now)
        for task_id in sorted(worker.running):
            attempt = worker.running[task_id]
            del self.attempts[attempt.run_id]
            self.busy_s += now - attempt.started_s
            task = attempt.task
            task.state = TaskState.PENDING
            task.worker_id = ""
            self.queued_at[task_id] = now
            self.pool.enqueue(task)
            self.requeued += 1

    def _disconnect(self, worker_id: WorkerId, now: float) -> None:
        worker = self.connected.pop(worker_id)
        self.pool.remove_worker(worker_id)
        self.connected_spans.append((worker.joined_s, now, worker.spec.capacity))

    # Results ----------------------------------------------------------------

    def _result(self) -> SimResult:
        end = self.makespan_s
        spans = self.connected_spans + [
            (w.joined_s, end, w.spec.capacity) for w in self.connected.values()
        ]
        available = sum(cap * max(0.0, min(to, end) - start) for start, to, cap in spans)
        waits = sorted(self.waits)
        tasks = len(self.workload.tasks)
        return SimResult(
            scenario=self.workload.name,
            strategy=self.strategy,
            seed=self.seed,
            tasks=tasks,
            completed=self.completed,
            failed=self.failed,
            requeued=self.requeued,
            unfinished=tasks - self.completed,
            throughput_per_s=self.completed / end if end > 0 else 0.0,
            makespan_s=end,
            wait_p50_s=percentile(waits, 50),
            wait_p95_s=percentile(waits, 95),
            wait_p99_s=percentile(waits, 99),
            run_mean_s=self.run_total_s / self.completed if self.completed else 0.0,
            utilisation=min(1.0, self.busy_s / available) if available > 0 else 0.0,
            violations=self.violations,
            sticky_placements=self.sticky_placements,
            sticky_hit_rate=(
                self.sticky_hits / self.sticky_placements if self.sticky_placements else None
            ),
            violation_examples=tuple(self.violation_examples),
        )


def _violation(task: Task, worker: _Connected) -> str | None:
    """Why the worker may not take this task now, by the placement rules; None if it may."""
    spec = worker.spec
    hints = task.spec.placement
    if worker.draining:
        return "the worker is draining"
    if task.spec.task_type not in spec.task_types:
        return f"the worker does not take type {task.spec.task_type!r}"
    if len(worker.running) >= spec.capacity:
        return f"the worker runs {len(worker.running)} tasks already (capacity {spec.capacity})"
    missing = {k: v for k, v in hints.required_labels.items() if spec.labels.get(k) != v}
    if missing:
        return f"the worker lacks required labels {_format_labels(missing)}"
    if group := hints.anti_affinity_group:
        for attempt in worker.running.values():
            other = attempt.task.spec.placement
            if other.anti_affinity_group == group and not (
                hints.anti_affinity_soft and other.anti_affinity_soft
            ):
                return f"the worker runs task {attempt.task.id} of anti-affinity group {group!r}"
    return None


def _mean_duration(task: SimTask, worker_class: str) -> float:
    durations = task.duration_s
    mean = durations.get(worker_class)
    return durations[ANY_CLASS] if mean is None else mean


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The pct-th percentile of sorted values, interpolated between ranks; 0 if empty."""
    if not ordered:
        return 0.0
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _format_labels(labels: Mapping[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(labels.items()))


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
    classes = classes_by_type(workload.workers)
    previous = 0.0
    for number, task in enumerate(workload.tasks, 1):
        if task.arrival_s < previous:
            raise SimulationError(f"task {number} arrives before task {number - 1}")
        previous = task.arrival_s
        if problem := task_problem(task, classes):
            raise SimulationError(f"task {number}: {problem}")


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
    changes = [(w.join_s, _JOIN, w.worker_id, WorkerChange.JOIN) for w in workload.workers]
    for event in workload.worker_events:
        if event.worker_id not in ids:
            return f"a worker event names unknown worker {event.worker_id!r}"
        if not (math.isfinite(event.at_s) and event.at_s >= 0):
            return f"worker event at_s must be a number >= 0, got {event.at_s}"
        changes.append((event.at_s, _CHANGE_KIND[event.change], event.worker_id, event.change))
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


# Trace files --------------------------------------------------------------------

_TASK_FIELDS = frozenset(
    {
        "arrival_s",
        "task_type",
        "duration_s",
        "priority",
        "required_labels",
        "anti_affinity_group",
        "anti_affinity_soft",
        "sticky_key",
        "routing_key",
    }
)
_WORKER_FIELDS = frozenset(
    {"id", "capacity", "task_types", "labels", "class", "fail_rate", "fail_time_factor", "join_s"}
)
_EVENT_FIELDS = frozenset({"at_s", "worker", "change"})
_TOP_FIELDS = frozenset({"workers", "worker_events", "tasks", "jitter_sigma", "sticky_timeout_s"})


class _Bad(Exception):
    """A field's value is wrong; the caller adds where."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


def load_trace(path: Path, workers: str | None = None) -> Workload:
    """A workload from a JSON or CSV trace file; TraceError names the first bad line/field.

    `workers` (a spec like "4x2:fast,4x2:slow") replaces the trace's own workers;
    a trace without them gets `DEFAULT_TRACE_WORKERS`.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read: {exc}") from None
    is_json = path.suffix.lower() == ".json" or (
        path.suffix.lower() != ".csv" and text.lstrip()[:1] in ("[", "{")
    )
    if is_json:
        return _load_json(path, text, workers)
    return _load_csv(path, text, workers)


def parse_workers(spec: str, task_types: Iterable[str]) -> tuple[SimWorker, ...]:
    """Workers from COUNTxCAPACITY[:CLASS],...; each takes every one of `task_types`."""
    types = frozenset(task_types)
    made: list[SimWorker] = []
    for part in spec.split(","):
        size, _, worker_class = part.strip().partition(":")
        count_text, x, capacity_text = size.partition("x")
        try:
            count, capacity = int(count_text), int(capacity_text)
        except ValueError:
            count = capacity = 0
        if not x or count < 1 or capacity < 1:
            raise SimulationError(
                f"bad workers spec {part.strip()!r}: expected COUNTxCAPACITY[:CLASS], e.g. 4x2:fast"
            )
        name = worker_class or DEFAULT_CLASS
        made += [
            SimWorker(
                worker_id=f"{name}-{i}",
                capacity=capacity,
                task_types=types,
                labels={"class": worker_class} if worker_class else {},
                worker_class=name,
            )
            for i in range(1, count + 1)
        ]
    ids = [w.worker_id for w in made]
    if len(set(ids)) != len(ids):
        raise SimulationError(f"bad workers spec {spec!r}: a class is named twice")
    return tuple(made)


def _load_csv(path: Path, text: str, workers: str | None) -> Workload:
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames
    if not header:
        raise TraceError(f"{path}: empty CSV, expected a header line")
    for name in header:
        if name not in _TASK_FIELDS and not name.startswith(DURATION_PREFIX):
            raise TraceError(f"{path}: line 1: unknown column {name!r}")
    for required in ("arrival_s", "task_type"):
        if required not in header:
            raise TraceError(f"{path}: line 1: missing column {required!r}")
    tasks: list[tuple[SimTask, str]] = []
    for row in reader:
        where = f"line {reader.line_num}"
        if None in row:
            raise TraceError(f"{path}: {where}: more fields than the header has")
        record = {k: v for k, v in row.items() if v not in (None, "")}
        tasks.append((_task(path, where, record), where))
    if not tasks:
        raise TraceError(f"{path}: no tasks")
    types = {t.task_type for t, _ in tasks}
    return _workload(path, tasks, parse_workers(workers or DEFAULT_TRACE_WORKERS, types))


def _load_json(path: Path, text: str, workers: str | None) -> Workload:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(
            f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})"
        ) from None
    if isinstance(data, list):
        data = {"tasks": data}
    if not isinstance(data, dict):
        raise TraceError(f"{path}: expected a list of tasks or an object with 'tasks'")
    for key in data:
        if key not in _TOP_FIELDS:
            raise TraceError(f"{path}: unknown key {key!r}")
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise TraceError(f"{path}: 'tasks' must be a non-empty list")
    tasks: list[tuple[SimTask, str]] = []
    for i, record in enumerate(raw_tasks):
        where = f"tasks[{i}]"
        if not isinstance(record, dict):
            raise TraceError(f"{path}: {where}: expected an object")
        record = {k: v for k, v in record.items() if v is not None}
        tasks.append((_task(path, where, record), where))
    types = {t.task_type for t, _ in tasks}
    raw_workers = data.get("workers")
    if workers is not None or raw_workers is None:
        fleet = parse_workers(workers or DEFAULT_TRACE_WORKERS, types)
    else:
        if not isinstance(raw_workers, list) or not raw_workers:
            raise TraceError(f"{path}: 'workers' must be a non-empty list")
        fleet = tuple(_worker(path, f"workers[{i}]", w, types) for i, w in enumerate(raw_workers))
    raw_events = data.get("worker_events", [])
    if not isinstance(raw_events, list):
        raise TraceError(f"{path}: 'worker_events' must be a list")
    events = tuple(_event(path, f"worker_events[{i}]", e) for i, e in enumerate(raw_events))
    try:
        jitter_sigma = _number("jitter_sigma", data.get("jitter_sigma", 0.0))
        sticky_timeout_s = _number("sticky_timeout_s", data.get("sticky_timeout_s", 5.0))
    except _Bad as exc:
        raise TraceError(f"{path}: field {exc.field_name!r}: {exc}") from None
    return _workload(
        path, tasks, fleet, events, jitter_sigma=jitter_sigma, sticky_timeout_s=sticky_timeout_s
    )


def _workload(
    path: Path,
    located: list[tuple[SimTask, str]],
    workers: tuple[SimWorker, ...],
    events: tuple[WorkerEvent, ...] = (),
    *,
    jitter_sigma: float = 0.0,
    sticky_timeout_s: float = 5.0,
) -> Workload:
    classes = classes_by_type(workers)
    for task, where in located:
        if problem := task_problem(task, classes):
            raise TraceError(f"{path}: {where}: {problem}")
    tasks = sorted((t for t, _ in located), key=lambda t: t.arrival_s)  # stable
    workload = Workload(
        name=path.name,
        workers=workers,
        tasks=tuple(tasks),
        worker_events=events,
        jitter_sigma=jitter_sigma,
        sticky_timeout_s=sticky_timeout_s,
    )
    try:
        check_workload(workload)
    except SimulationError as exc:
        raise TraceError(f"{path}: {exc}") from None
    return workload


def _task(path: Path, where: str, record: Mapping[str, Any]) -> SimTask:
    try:
        for key in record:
            if key not in _TASK_FIELDS and not key.startswith(DURATION_PREFIX):
                raise _Bad(key, "unknown field")
        for key in ("arrival_s", "task_type"):
            if key not in record:
                raise _Bad(key, "missing")
        durations: dict[str, float] = {}
        if "duration_s" in record:
            durations[ANY_CLASS] = _number("duration_s", record["duration_s"])
        for key, value in record.items():
            if key.startswith(DURATION_PREFIX):
                worker_class = key.removeprefix(DURATION_PREFIX)
                if not worker_class:
                    raise _Bad(key, "a per-class duration needs a class name after the prefix")
                durations[worker_class] = _number(key, value)
        if not durations:
            raise _Bad("duration_s", "missing (give duration_s or duration_s_<class>)")
        group = _text("anti_affinity_group", record.get("anti_affinity_group", ""))
        soft = _flag("anti_affinity_soft", record.get("anti_affinity_soft", False))
        if soft and not group:
            raise _Bad("anti_affinity_soft", "needs an anti_affinity_group")
        task_type = _text("task_type", record["task_type"])
        if not task_type.strip():
            raise _Bad("task_type", "must not be empty")
        return SimTask(
            arrival_s=_number("arrival_s", record["arrival_s"]),
            task_type=task_type,
            duration_s=durations,
            priority=_priority(record.get("priority", 0)),
            placement=Placement(
                required_labels=_labels("required_labels", record.get("required_labels", "")),
                anti_affinity_group=group,
                anti_affinity_soft=soft,
                sticky_key=_text("sticky_key", record.get("sticky_key", "")),
                routing_key=_text("routing_key", record.get("routing_key", "")),
            ),
        )
    except _Bad as exc:
        raise TraceError(f"{path}: {where}, field {exc.field_name!r}: {exc}") from None


def _worker(path: Path, where: str, record: object, all_types: set[str]) -> SimWorker:
    try:
        if not isinstance(record, dict):
            raise _Bad("", "expected an object")
        for key in record:
            if key not in _WORKER_FIELDS:
                raise _Bad(key, "unknown field")
        for key in ("id", "capacity"):
            if key not in record:
                raise _Bad(key, "missing")
        worker_id = _text("id", record["id"])
        if not worker_id:
            raise _Bad("id", "must not be empty")
        capacity = record["capacity"]
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise _Bad("capacity", f"expected a whole number >= 1, got {capacity!r}")
        raw_types = record.get("task_types", sorted(all_types))
        if (
            not isinstance(raw_types, list)
            or not raw_types
            or not all(isinstance(t, str) and t for t in raw_types)
        ):
            raise _Bad("task_types", "expected a non-empty list of task type names")
        fail_rate = _number("fail_rate", record.get("fail_rate", 0.0))
        if fail_rate > 1:
            raise _Bad("fail_rate", f"must be 0..1, got {fail_rate}")
        return SimWorker(
            worker_id=worker_id,
            capacity=capacity,
            task_types=frozenset(raw_types),
            labels=_labels("labels", record.get("labels", "")),
            worker_class=_text("class", record.get("class", DEFAULT_CLASS)) or DEFAULT_CLASS,
            fail_rate=fail_rate,
            fail_time_factor=_number("fail_time_factor", record.get("fail_time_factor", 1.0)),
            join_s=_number("join_s", record.get("join_s", 0.0)),
        )
    except _Bad as exc:
        named = f", field {exc.field_name!r}" if exc.field_name else ""
        raise TraceError(f"{path}: {where}{named}: {exc}") from None


def _event(path: Path, where: str, record: object) -> WorkerEvent:
    try:
        if not isinstance(record, dict):
            raise _Bad("", "expected an object")
        for key in _EVENT_FIELDS:
            if key not in record:
                raise _Bad(key, "missing")
        for key in record:
            if key not in _EVENT_FIELDS:
                raise _Bad(key, "unknown field")
        change = _text("change", record["change"])
        if change not in {c.value for c in WorkerChange}:
            raise _Bad("change", f"expected join, leave or crash, got {change!r}")
        return WorkerEvent(
            _number("at_s", record["at_s"]), _text("worker", record["worker"]), WorkerChange(change)
        )
    except _Bad as exc:
        named = f", field {exc.field_name!r}" if exc.field_name else ""
        raise TraceError(f"{path}: {where}{named}: {exc}") from None


def _number(name: str, value: object) -> float:
    """A finite number >= 0, from a JSON number or a CSV cell."""
    if isinstance(value, bool):
        raise _Bad(name, f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise _Bad(name, f"expected a number, got {value!r}") from None
    else:
        raise _Bad(name, f"expected a number, got {value!r}")
    if not math.isfinite(number) or number < 0:
        raise _Bad(name, f"expected a finite number >= 0, got {value!r}")
    return number


def _priority(value: object) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise _Bad("priority", f"expected a whole number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad("priority", f"expected a whole number, got {value!r}")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise _Bad("priority", f"must be {MIN_PRIORITY}..{MAX_PRIORITY}, got {value}")
    return value


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise _Bad(name, f"expected a string, got {value!r}")
    return value


def _flag(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise _Bad(name, f"expected true or false, got {value!r}")


def _labels(name: str, value: object) -> dict[str, str]:
    """k=v;k=v, or a JSON object of strings."""
    if isinstance(value, dict):
        if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()):
            raise _Bad(name, "expected an object of string labels")
        return dict(value)
    if not isinstance(value, str):
        raise _Bad(name, f"expected k=v;k=v, got {value!r}")
    labels: dict[str, str] = {}
    for item in value.split(";"):
        if not item.strip():
            continue
        key, sep, label_value = item.strip().partition("=")
        if not sep or not key:
            raise _Bad(name, f"expected k=v;k=v, got {item.strip()!r}")
        if key in labels:
            raise _Bad(name, f"label {key!r} given twice")
        labels[key] = label_value
    return labels
