"""Broker metrics with OpenTelemetry: what autoscalers and dashboards watch.

`BrokerMetrics` is an engine observer (see `broker.observability.observe`) that reports on a
`MeterProvider` it is given, never the global one:

Counters (cumulative, attributes ``pool``, ``task_type`` and as listed):
  ``taskbroker.tasks.submitted``; ``taskbroker.tasks.completed`` (``outcome``:
  succeeded, failed, cancelled or dead_letter); ``taskbroker.tasks.failed_attempts``
  (the handler's failures and the broker's timeouts); ``taskbroker.tasks.retried``
  (failed attempts sent back for another); ``taskbroker.tasks.requeued`` (``reason``:
  worker lost, lease expired, ...); ``taskbroker.workers.events`` (``pool``, ``event``:
  connected, disconnected, cordoned, breaker open, ...).

Histograms (seconds, buckets from 1 ms to 1 h, `DURATION_BUCKETS_S`):
  ``taskbroker.queue.wait`` (``pool``, ``task_type``): from when the task became
  placeable (it joined its pool's queue: submitted, or its delay, retry backoff or
  rate-limit wait over, or requeued) to a worker being picked for it; the engine's own
  measure. ``taskbroker.dispatch.latency`` (``pool``, ``task_type``): from when the task
  became pending for this attempt (submitted, or due if the client asked for a delay;
  the failed attempt's end for a retry; the requeue) to being assigned and handed to
  the worker's stream, in the same dispatch pass. It differs from the queue wait by the
  waits the broker imposed (retry backoff, rate limiting). ``taskbroker.task.run_time``
  (``pool``, ``task_type``): one attempt, as the worker measured it.

Gauges, read from the engine at collection time:
  ``taskbroker.backlog.pending``, ``taskbroker.backlog.delayed``,
  ``taskbroker.backlog.oldest_age`` (s) and ``taskbroker.inflight``: one series per pool
  with the attribute ``pool`` only (the whole pool), and one per task type with ``pool``
  and ``task_type`` (that type's bulkhead). In PromQL ``{task_type=""}`` selects the pool
  series; do not sum over task_type without it, or the pool is counted twice. A task type
  once seen keeps reporting 0 rather than vanishing. ``taskbroker.workers.connected``,
  ``taskbroker.credit.capacity`` and ``taskbroker.credit.in_use`` per pool (the sum of the
  connected workers' capacity and held tasks; cordoned and breaker-open workers
  included); ``taskbroker.workers.breaker`` per pool and ``state`` (closed, open,
  half_open): how many workers are in each. ``taskbroker.worker.in_flight`` per ``pool``
  and ``worker_id``: the tasks one connected worker holds. Only a gauge carries a worker
  id: a series of a worker that has left is not observed again, and so ends (a histogram
  keeps every series it ever recorded).

Cost: the observer runs on the event loop for every task, so counters are kept in plain
ints and reported through observable counters (an SDK ``add`` costs ~10 µs); only the
three histogram records per task go through the SDK. Attribute dicts are cached. Every
instrument of one collection reads the same snapshot of the engine and the counts, taken
on the broker's loop (`broker.observability.snapshots`).

`meter_provider` builds the provider the broker needs for its configuration, with a
Prometheus scrape endpoint when ``prometheus_port`` is set (the optional ``prometheus``
extra).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from broker.domain import Backlog, Task, TaskState, WorkerId, WorkerStatus

# Re-exported: the sources' types and the logger moved to broker.observability.snapshots.
from broker.observability.snapshots import BacklogSource as BacklogSource
from broker.observability.snapshots import Counter, Snapshot, Snapshots, running_loop
from broker.observability.snapshots import FlowSource as FlowSource
from broker.observability.snapshots import WorkersSource as WorkersSource
from broker.observability.snapshots import log as log

METER_NAME: Final = "taskbroker"
# Explicit buckets for every duration histogram: 1 ms to 1 h, about 2.5x apart.
DURATION_BUCKETS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
)
BREAKER_STATES: Final = ("closed", "open", "half_open")
MAX_REASONS: Final = 32  # distinct requeue reasons and worker events; then "other"
OTHER: Final = "other"

Attrs = Mapping[str, str]

_OUTCOMES: Final = {state: state.name.lower() for state in TaskState if state.terminal}


class BrokerMetrics:
    """The engine's metrics: an Observer for `engine.observers.add`.

    `backlog` and `workers` are the engine's `backlog` and `workers` methods (or fakes).
    Construct it on the broker's event loop: a collection from another thread (the
    Prometheus endpoint's, a periodic exporter's) reads the engine on that loop, so it
    never sees the engine mid-change. Without a running loop, collections read directly.
    """

    def __init__(
        self,
        provider: MeterProvider,
        *,
        backlog: BacklogSource,
        workers: WorkersSource,
        flow: FlowSource | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        meter = provider.get_meter(METER_NAME)

        self._submitted = Counter(
            "taskbroker.tasks.submitted", ("pool", "task_type"), "Tasks accepted."
        )
        self._completed = Counter(
            "taskbroker.tasks.completed",
            ("pool", "task_type", "outcome"),
            "Tasks that reached a terminal state, durably, by outcome.",
        )
        self._failed_attempts = Counter(
            "taskbroker.tasks.failed_attempts",
            ("pool", "task_type"),
            "Attempts that failed: the handler's error or the broker's timeout.",
        )
        self._retried = Counter(
            "taskbroker.tasks.retried",
            ("pool", "task_type"),
            "Failed attempts sent back to pending for another attempt.",
        )
        self._requeued = Counter(
            "taskbroker.tasks.requeued",
            ("pool", "task_type", "reason"),
            "Held tasks that went back to pending without a result.",
        )
        self._worker_events = Counter(
            "taskbroker.workers.events",
            ("pool", "event"),
            "Workers connecting, disconnecting, cordoned, or their breaker changing.",
        )
        self._flow_events = Counter(
            "taskbroker.flow.events",
            ("pool", "event"),
            "The engine's flow control, in tasks: rejected (a full queue), rate_limited, "
            "deduplicated, retried, timed_out, expired, lease_expired, reconciled.",
        )
        self._counters = (
            self._flow_events,
            self._submitted,
            self._completed,
            self._failed_attempts,
            self._retried,
            self._requeued,
            self._worker_events,
        )
        self._snapshots = Snapshots(
            backlog=backlog,
            workers=workers,
            counters=self._counters,
            flow=flow,
            flow_counter=self._flow_events,
            loop=loop if loop is not None else running_loop(),
        )
        for counter in self._counters:
            meter.create_observable_counter(
                counter.name,
                callbacks=[self._count_callback(counter)],
                unit="{task}" if counter.name.startswith("taskbroker.tasks.") else "{event}",
                description=counter.description,
            )

        buckets = DURATION_BUCKETS_S
        self._queue_wait = meter.create_histogram(
            "taskbroker.queue.wait",
            unit="s",
            description="From a task becoming placeable to a worker being picked for it.",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self._dispatch_latency = meter.create_histogram(
            "taskbroker.dispatch.latency",
            unit="s",
            description="From a task becoming pending for an attempt (submitted, due, "
            "failed, requeued) to being sent to a worker; includes backoff and rate limits.",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self._run_time = meter.create_histogram(
            "taskbroker.task.run_time",
            unit="s",
            description="Run time of one attempt, per pool and task type.",
            explicit_bucket_boundaries_advisory=buckets,
        )

        gauges: tuple[tuple[str, str, str, Callable[[Snapshot], Iterable[Observation]]], ...] = (
            (
                "taskbroker.backlog.pending",
                "{task}",
                "Tasks waiting, delayed ones included; per pool, and per task type.",
                self._observe_pending,
            ),
            (
                "taskbroker.backlog.delayed",
                "{task}",
                "Waiting tasks held back until a time (delay, backoff, rate limit).",
                self._observe_delayed,
            ),
            (
                "taskbroker.backlog.oldest_age",
                "s",
                "How long the oldest runnable waiting task has waited; 0 = none.",
                self._observe_oldest_age,
            ),
            (
                "taskbroker.inflight",
                "{task}",
                "Tasks held by workers; per pool, and per task type.",
                self._observe_inflight,
            ),
            (
                "taskbroker.workers.connected",
                "{worker}",
                "Connected workers per pool.",
                self._observe_connected,
            ),
            (
                "taskbroker.credit.capacity",
                "{task}",
                "Tasks the pool's connected workers can hold at once.",
                self._observe_capacity,
            ),
            (
                "taskbroker.credit.in_use",
                "{task}",
                "Tasks the pool's connected workers hold.",
                self._observe_in_use,
            ),
            (
                "taskbroker.workers.breaker",
                "{worker}",
                "Connected workers per pool and circuit breaker state.",
                self._observe_breakers,
            ),
            (
                "taskbroker.worker.in_flight",
                "{task}",
                "Tasks one connected worker holds; its series ends when the worker leaves.",
                self._observe_worker_in_flight,
            ),
        )
        for name, unit, description, observe in gauges:
            meter.create_observable_gauge(
                name,
                callbacks=[self._gauge_callback(name, observe)],
                unit=unit,
                description=description,
            )

        # Attribute dicts, made once per (pool, type).
        self._type_attrs: dict[tuple[str, str], Attrs] = {}
        self._labels: dict[str, str] = {}  # free-text reasons and events, bounded
        self._pending_since: dict[int, float] = {}  # retried and requeued tasks
        self._seen_types: set[tuple[str, str]] = set()  # per-type backlog series reported
        self._seen_lock = threading.Lock()  # collections may run on more than one thread

    # Observer --------------------------------------------------------------------

    def submitted(self, tasks: Sequence[Task], at: float) -> None:
        counts = self._submitted.counts
        for task in tasks:
            key = (task.spec.pool, task.spec.task_type)
            counts[key] = counts.get(key, 0) + 1

    def placed(self, task: Task, queue_wait_s: float, at: float) -> None:
        spec = task.spec
        attrs = self._attrs(spec.pool, spec.task_type)
        self._queue_wait.record(max(0.0, queue_wait_s), attrs)
        since = self._pending_since.pop(task.id, None)
        if since is None:
            # First attempt (or requeued by a restart): pending since submitted, or due.
            since = max(task.created_at, spec.not_before) if task.attempts <= 1 else 0.0
        latency = at - since if since else queue_wait_s
        self._dispatch_latency.record(max(0.0, latency), attrs)

    def attempt_ended(self, task: Task, success: bool, run_s: float, at: float) -> None:
        spec = task.spec
        self._run_time.record(max(0.0, run_s), self._attrs(spec.pool, spec.task_type))
        if success:
            return
        key = (spec.pool, spec.task_type)
        counts = self._failed_attempts.counts
        counts[key] = counts.get(key, 0) + 1
        if task.state is TaskState.PENDING:
            counts = self._retried.counts
            counts[key] = counts.get(key, 0) + 1
            self._pending_since[task.id] = at

    def requeued(self, task: Task, reason: str, at: float) -> None:
        key = (task.spec.pool, task.spec.task_type, self._label(reason))
        counts = self._requeued.counts
        counts[key] = counts.get(key, 0) + 1
        self._pending_since[task.id] = at

    def finished(self, task: Task) -> None:
        self._pending_since.pop(task.id, None)
        outcome = _OUTCOMES.get(task.state) or task.state.name.lower()
        key = (task.spec.pool, task.spec.task_type, outcome)
        counts = self._completed.counts
        counts[key] = counts.get(key, 0) + 1

    def worker_changed(self, worker_id: WorkerId, pool: str, event: str, at: float) -> None:
        key = (pool, self._label(event))
        counts = self._worker_events.counts
        counts[key] = counts.get(key, 0) + 1

    def close(self) -> None:
        """Report from now on what the engine and the counts are now, without reading
        the engine again. Call it on the loop before shutting the provider down, so that
        a final export from another thread (a periodic reader's) need not wait for a
        loop that is busy shutting down."""
        self._snapshots.close()

    # Attributes ------------------------------------------------------------------

    def _attrs(self, pool: str, task_type: str) -> Attrs:
        attrs = self._type_attrs.get((pool, task_type))
        if attrs is None:
            attrs = self._type_attrs[(pool, task_type)] = {"pool": pool, "task_type": task_type}
        return attrs

    def _label(self, text: str) -> str:
        """A free-text reason or event as an attribute value: the first MAX_REASONS
        distinct ones as they are, any later one as "other" (bounded cardinality)."""
        label = self._labels.get(text)
        if label is not None:
            return label
        if len(self._labels) >= MAX_REASONS:
            return OTHER
        self._labels[text] = text
        return text

    # Collection ------------------------------------------------------------------

    def _read(self, reader: str, options: CallbackOptions) -> Snapshot:
        return self._snapshots.read(reader, options.timeout_millis / 1000)

    def _count_callback(
        self, counter: Counter
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            counts = self._read(counter.name, options).counts.get(counter.name, {})
            return [
                Observation(value, dict(zip(counter.keys, key, strict=True)))
                for key, value in counts.items()
            ]

        return observe

    def _gauge_callback(
        self, name: str, observe: Callable[[Snapshot], Iterable[Observation]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return observe(self._read(name, options))

        return callback

    def _backlog_observations(
        self, snapshot: Snapshot, value: Callable[[Backlog], float]
    ) -> list[Observation]:
        observations = []
        reported = set()
        for row in snapshot.backlog:
            if row.task_type:
                reported.add((row.pool, row.task_type))
                attrs = self._attrs(row.pool, row.task_type)
            else:
                attrs = {"pool": row.pool}
            observations.append(Observation(value(row), attrs))
        with self._seen_lock:
            self._seen_types |= reported
            gone = self._seen_types - reported
        pools = {row.pool for row in snapshot.backlog}
        observations.extend(
            Observation(0, self._attrs(pool, task_type))
            for pool, task_type in sorted(gone)
            if pool in pools
        )
        return observations

    def _observe_pending(self, snapshot: Snapshot) -> Iterable[Observation]:
        return self._backlog_observations(snapshot, lambda row: row.pending)

    def _observe_delayed(self, snapshot: Snapshot) -> Iterable[Observation]:
        return self._backlog_observations(snapshot, lambda row: row.delayed)

    def _observe_oldest_age(self, snapshot: Snapshot) -> Iterable[Observation]:
        return self._backlog_observations(snapshot, lambda row: row.oldest_age_s)

    def _observe_inflight(self, snapshot: Snapshot) -> Iterable[Observation]:
        return self._backlog_observations(snapshot, lambda row: row.in_flight)

    def _observe_connected(self, snapshot: Snapshot) -> Iterable[Observation]:
        return self._per_pool(snapshot, lambda worker: 1)

    def _observe_capacity(self, snapshot: Snapshot) -> Iterable[Observation]:
        return self._per_pool(snapshot, lambda worker: worker.capacity)

    def _observe_in_use(self, snapshot: Snapshot) -> Iterable[Observation]:
        return self._per_pool(snapshot, lambda worker: worker.in_flight)

    def _per_pool(
        self, snapshot: Snapshot, value: Callable[[WorkerStatus], int]
    ) -> Iterable[Observation]:
        totals = dict.fromkeys(_pools(snapshot), 0)
        for worker in snapshot.workers:
            totals[worker.spec.pool] += value(worker)
        return [Observation(total, {"pool": pool}) for pool, total in totals.items()]

    def _observe_worker_in_flight(self, snapshot: Snapshot) -> Iterable[Observation]:
        # Observed, not recorded: a worker that has left is in no snapshot, so its series
        # ends with it and new worker ids cannot grow the series without bound.
        return [
            Observation(
                worker.in_flight, {"pool": worker.spec.pool, "worker_id": worker.spec.worker_id}
            )
            for worker in snapshot.workers
        ]

    def _observe_breakers(self, snapshot: Snapshot) -> Iterable[Observation]:
        counts = {(pool, state): 0 for pool in _pools(snapshot) for state in BREAKER_STATES}
        for worker in snapshot.workers:
            key = (worker.spec.pool, worker.breaker)
            counts[key] = counts.get(key, 0) + 1
        return [
            Observation(count, {"pool": pool, "state": state})
            for (pool, state), count in counts.items()
        ]


def _pools(snapshot: Snapshot) -> list[str]:
    """Every pool: those in the backlog (all of them) and any a worker is in."""
    pools = dict.fromkeys(row.pool for row in snapshot.backlog)
    pools.update(dict.fromkeys(worker.spec.pool for worker in snapshot.workers))
    return list(pools)
