"""The broker's commands and queries, on domain types: what every transport calls.

The gRPC servicers (broker.server) parse a request, call one method here and convert
the answer; an HTTP dashboard or an autoscaler's endpoint would do the same. Nothing
here knows protobuf or gRPC. The service holds no state of its own but a lock that puts
pool updates in a row: it composes the runtime (the Engine), the metrics history and the
broker's lifecycle, which the composition root (broker.app) hands it.

Errors are BrokerErrors (broker.errors); each transport maps them to its own codes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from opentelemetry.trace import Tracer

from broker.config import BrokerConfig
from broker.core import validation
from broker.core.states import BrokerState
from broker.domain import (
    TERMINAL_STATES,
    Backlog,
    ConfigChange,
    PoolConfig,
    PoolStats,
    Task,
    TaskFilter,
    TaskId,
    TaskResult,
    TaskSpec,
    TaskState,
    WorkerId,
    WorkerSpec,
    WorkerStatus,
)
from broker.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from broker.observability import scaling, tracing
from broker.observability.recommend import Recommendation, recommend
from broker.observability.rollups import LiveStats, MetricPoint, MetricsHistory
from broker.runtime.activity import ActivityFeed
from broker.runtime.engine import Engine, WorkerConnection
from broker.runtime.registry import WorkerChannel
from broker.runtime.watchers import TaskCallback

DEFAULT_TARGET_WAIT_S = 1.0
DEFAULT_HORIZON_S = 900.0
MAX_PURGE_AGE_S: Final = 3650 * 86_400.0  # a purge's older_than_s, at most ten years

ConfigReloader = Callable[[str], Awaitable[list[ConfigChange]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolOverview:
    """One pool as `taskbroker stats` shows it: its counts, its last minute, its oldest
    waiting task."""

    stats: PoolStats
    live: LiveStats
    oldest_pending_age_s: float  # 0 when nothing runnable waits


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerStats:
    """The broker's lifecycle state and an overview of each pool."""

    broker_state: BrokerState
    pools: tuple[PoolOverview, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalingSignal:
    """What an autoscaler acts on for one pool: whether it needs any worker, how many,
    and the recommendation they come from."""

    pool: str
    active: bool  # work waits or runs, or is forecast (broker.observability.scaling)
    desired_workers: int  # the recommendation while active, else 0
    pending: int
    in_flight: int
    forecast_tasks: float  # arrivals forecast over the horizon, the backlog included
    recommendation: Recommendation


def pool_etag(pool: PoolConfig) -> str:
    """A pool's etag (AIP-154): a hash of its settings, so it changes exactly when they do
    and needs nothing stored."""
    text = json.dumps(dataclasses.asdict(pool), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class BrokerService:
    """Tasks, pools, workers and statistics of one running broker.

    `broker_state` reports the broker's lifecycle state; `reload_config` re-reads the
    config file (None: this broker has none to reload); with a `tracer`, each submitted
    task without a trace context gets one.
    """

    def __init__(
        self,
        engine: Engine,
        history: MetricsHistory,
        *,
        broker_state: Callable[[], BrokerState],
        reload_config: ConfigReloader | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._engine = engine
        self._history = history
        self._broker_state = broker_state
        self._reload_config = reload_config
        self._tracer = tracer
        self._activity = ActivityFeed()
        engine.observers.add(self._activity)
        # Pool updates one at a time, so that an etag is checked against what is applied.
        self._pool_updates = asyncio.Lock()

    # -- tasks ---------------------------------------------------------------------------

    async def submit(self, specs: Sequence[TaskSpec], client: str = "") -> list[Task]:
        """Store a batch durably, all or nothing, then queue it; `client` names the
        caller for per-client rate limits."""
        return await self._engine.submit(self._traced(specs), client)

    async def submit_detailed(
        self, specs: Sequence[TaskSpec], client: str = ""
    ) -> list[tuple[Task, bool]]:
        """As `submit`, with each task whether it existed already (an idempotency key)."""
        return await self._engine.submit_detailed(self._traced(specs), client)

    def _traced(self, specs: Sequence[TaskSpec]) -> Sequence[TaskSpec]:
        """The specs with the trace context to store with each task, when tracing."""
        return specs if self._tracer is None else tracing.with_trace_context(specs, self._tracer)

    async def get(self, task_id: TaskId) -> Task:
        return await self._engine.get(task_id)

    async def list_tasks(self, flt: TaskFilter) -> list[Task]:
        """Tasks matching `flt`, newest first."""
        validation.validate_names(pool=flt.pool, task_type=flt.task_type)
        return await self._engine.list_tasks(flt)

    async def wait(self, task_ids: Sequence[TaskId], timeout_s: float) -> list[Task]:
        """The tasks once all are terminal, or as they are after `timeout_s` seconds."""
        return await self._engine.wait(task_ids, timeout_s)

    async def watch(self, task_ids: Iterable[TaskId], callback: TaskCallback) -> list[TaskId]:
        """Call `callback` once with each task when it is terminal and durable (at once if
        it is already); returns the ids that do not exist. Undo with `unwatch`."""
        return await self._engine.watch(task_ids, callback)

    def unwatch(self, task_ids: Iterable[TaskId], callback: TaskCallback) -> None:
        self._engine.unwatch(task_ids, callback)

    async def cancel(self, task_id: TaskId) -> Task:
        return await self._engine.cancel(task_id)

    async def retry(
        self, task_ids: Sequence[TaskId], dead_letter_pool: str = "", limit: int = 1000
    ) -> list[Task]:
        """Send failed or dead-lettered tasks round again: these ids, and with
        `dead_letter_pool`, up to `limit` of its dead-lettered tasks."""
        validation.validate_ids("task_ids", task_ids)
        validation.validate_names(dead_letter_pool=dead_letter_pool)
        return await self._engine.retry(task_ids, dead_letter_pool, limit)

    async def purge_tasks(
        self, pool: str = "", older_than_s: float = 0.0, states: Iterable[TaskState] = ()
    ) -> int:
        """Delete finished tasks (with their payloads, results and idempotency keys) of
        `pool` ("" = every pool) in `states` (none = every finished state) that finished at
        least `older_than_s` seconds ago; how many went. A task that is not finished is
        never deleted: InvalidArgument for such a state, or a negative age; NotFound for an
        unknown pool."""
        if not 0 <= older_than_s <= MAX_PURGE_AGE_S:
            raise InvalidArgument(
                f"older_than_s must be 0..{MAX_PURGE_AGE_S:.0f} seconds, got {older_than_s}"
            )
        chosen = frozenset(states) or TERMINAL_STATES
        self._check_pool(pool)
        return await self._engine.purge(pool, self._engine.now() - older_than_s, chosen)

    # -- pools and configuration ---------------------------------------------------------

    def list_pools(self) -> list[PoolConfig]:
        return self._engine.pools()

    async def create_pool(self, pool: PoolConfig, who: str = "") -> PoolConfig:
        validation.validate_pool_request(pool)
        return await self._engine.create_pool(_ab_split(pool), who=who)

    async def update_pool(self, pool: PoolConfig, who: str = "") -> PoolConfig:
        """Replace a pool's settings. ab_percent 0 ends an A/B split: the A/B strategy is
        cleared, and with it the A/B arm and its statistics."""
        validation.validate_pool_request(pool)
        return await self._engine.update_pool(_ab_split(pool), who=who)

    async def change_pool(
        self, name: str, changes: Mapping[str, Any], etag: str = "", who: str = ""
    ) -> PoolConfig:
        """Change these settings of a pool (PoolConfig field names) and keep the others
        (ab_percent 0 ends an A/B split, as in update_pool); the pool as it is afterwards.
        With `etag`, Aborted unless the pool's settings are still those the etag was made
        from (see `pool_etag`); NotFound for no such pool."""
        async with self._pool_updates:
            current = next((p for p in self._engine.pools() if p.name == name), None)
            if current is None:
                raise NotFound(f"pool {name!r} does not exist", field="pool.name")
            if etag and etag != pool_etag(current):
                raise Aborted(
                    f"pool {name!r} changed since it was read (its etag is no longer "
                    f"{etag!r}); read it again, reapply the change and send it again",
                    field="etag",
                    reason="ETAG_MISMATCH",
                )
            pool = dataclasses.replace(current, **changes)
            validation.validate_pool_request(pool)
            return await self._engine.update_pool(_ab_split(pool), who=who)

    async def reload_config(self, who: str = "") -> list[ConfigChange]:
        """Re-read the config file and apply what changed in its pools."""
        if self._reload_config is None:
            raise FailedPrecondition("the broker was started without a config file to reload")
        return await self._reload_config(who)

    async def config_history(self, pool: str = "", limit: int = 100) -> list[ConfigChange]:
        """Audited changes of pool settings, newest first."""
        validation.validate_names(pool=pool)
        return await self._engine.config_history(pool, limit)

    # -- operating workers ---------------------------------------------------------------

    def list_workers(self, pool: str = "") -> list[WorkerStatus]:
        validation.validate_names(pool=pool)
        return self._engine.workers(pool)

    def drain_worker(self, worker_id: WorkerId) -> WorkerStatus:
        """Send the worker no more work and ask it to finish and disconnect."""
        validation.validate_names(worker_id=worker_id)
        return self._engine.drain_worker(worker_id)

    def cordon_worker(self, worker_id: WorkerId, cordon: bool = True) -> WorkerStatus:
        """Send the worker no new work (cordon) or let it have work again (cordon=False)."""
        validation.validate_names(worker_id=worker_id)
        return self._engine.cordon_worker(worker_id, cordon)

    # -- statistics ----------------------------------------------------------------------

    async def stats(self) -> BrokerStats:
        """Every pool's counts, live figures over the last minute and oldest wait."""
        pools = await self._engine.stats()
        oldest = {b.pool: b.oldest_age_s for b in self._engine.backlog() if not b.task_type}
        return BrokerStats(
            broker_state=self._broker_state(),
            pools=tuple(
                PoolOverview(
                    stats=stats,
                    live=self._history.live(stats.pool),
                    oldest_pending_age_s=oldest.get(stats.pool, 0.0),
                )
                for stats in pools
            ),
        )

    def backlog(self) -> list[Backlog]:
        """Waiting and running work per pool and per task type: what an autoscaler watches."""
        return self._engine.backlog()

    async def metrics_history(
        self,
        pool: str = "",
        task_type: str = "",
        worker_id: WorkerId = "",
        *,
        since: float | None = None,
        until: float | None = None,
        bucket_s: int = 0,
    ) -> list[MetricPoint]:
        """Points of the metrics history (see MetricsHistory.history); a pool must exist."""
        validation.validate_names(pool=pool, task_type=task_type, worker_id=worker_id)
        self._check_pool(pool)
        return await self._history.history(
            pool, task_type, worker_id, since=since, until=until, bucket_s=bucket_s
        )

    async def recommend(
        self,
        pool: str = "",
        *,
        target_wait_s: float = DEFAULT_TARGET_WAIT_S,
        horizon_s: float = DEFAULT_HORIZON_S,
    ) -> list[Recommendation]:
        """A worker count for each pool (or the one named), for a mean queue wait of
        `target_wait_s` over the next `horizon_s` seconds: its history and its workers
        now, through the queueing model of broker.observability.recommend."""
        validation.validate_names(pool=pool)
        engine = self._engine
        names = [p.name for p in engine.pools()]
        if pool and pool not in names:
            raise NotFound(f"pool {pool!r} does not exist")
        if not 0 < target_wait_s <= 86_400:
            raise InvalidArgument(
                f"target_wait_s must be more than 0 and at most 86400, got {target_wait_s}"
            )
        if not 60 <= horizon_s <= 7 * 86_400:
            raise InvalidArgument(f"horizon_s must be 60..604800 seconds, got {horizon_s}")
        now = engine.now()
        retention_s = engine.config.metrics_retention_s
        backlog = {b.pool: b.pending for b in engine.backlog() if not b.task_type}
        result = []
        for name in [pool] if pool else names:
            points = await self._history.history(name, since=now - retention_s, until=now)
            workers = engine.workers(name)
            slots = sum(w.capacity for w in workers) / len(workers) if workers else 1.0
            try:
                result.append(
                    recommend(
                        name,
                        points,
                        now=now,
                        current_workers=len(workers),
                        slots_per_worker=slots or 1.0,
                        target_wait_s=target_wait_s,
                        horizon_s=horizon_s,
                        backlog=backlog.get(name, 0),
                    )
                )
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
        return result

    async def scaling(
        self,
        pool: str,
        *,
        target_wait_s: float = DEFAULT_TARGET_WAIT_S,
        horizon_s: float = DEFAULT_HORIZON_S,
    ) -> ScalingSignal:
        """The autoscaling signal of one pool, from `recommend` at the same moment and the
        rule of broker.observability.scaling: the recommendation while the pool has work
        or a forecast of it, else 0 (an idle pool scales to zero; its next task wakes it).
        """
        if not pool:
            raise InvalidArgument("pool must be named")
        (recommendation,) = await self.recommend(
            pool, target_wait_s=target_wait_s, horizon_s=horizon_s
        )
        pending = in_flight = 0
        for backlog in self._engine.backlog():
            if backlog.pool == pool and not backlog.task_type:
                pending, in_flight = backlog.pending, backlog.in_flight
        decision = scaling.decide(
            recommendation, pending=pending, in_flight=in_flight, horizon_s=horizon_s
        )
        return ScalingSignal(
            pool=pool,
            active=decision.active,
            desired_workers=decision.desired_workers,
            pending=pending,
            in_flight=in_flight,
            forecast_tasks=decision.forecast_tasks,
            recommendation=recommendation,
        )

    def next_activity(self, pool: str) -> asyncio.Event:
        """An event set at the next change of `pool`'s work (a task submitted, placed,
        ended or requeued, a worker come or gone). Take it before reading `scaling`, then
        wait on it: nothing that happens in between is missed."""
        return self._activity.next_change(pool)

    def _check_pool(self, pool: str) -> None:
        if pool and pool not in {p.name for p in self._engine.pools()}:
            raise NotFound(f"pool {pool!r} does not exist")

    # -- the worker stream ---------------------------------------------------------------
    # A transport carrying a worker's connection calls these: connect_worker once, with a
    # WorkerChannel through which the broker sends it work; then what the worker says;
    # disconnect_worker when the connection ends, however it ends.

    @property
    def config(self) -> BrokerConfig:
        """The broker's configuration (its limits are part of the wire contract)."""
        return self._engine.config

    @property
    def max_response_bytes(self) -> int:
        """The most bytes one answer to a read may take (the broker's max_response_bytes)."""
        return self._engine.config.max_response_bytes

    @property
    def heartbeat_interval_s(self) -> float:
        """How often a connected worker should send a heartbeat."""
        return self._engine.config.heartbeat_interval_s

    @property
    def heartbeat_timeout_s(self) -> float:
        """How long a silent worker stays connected."""
        return self._engine.config.heartbeat_timeout_s

    @property
    def idle_heartbeat_s(self) -> tuple[float, float]:
        """How often a worker holding no task heartbeats, and how long it may stay silent."""
        config = self._engine.config
        return config.idle_heartbeat_s, config.idle_heartbeat_timeout_s

    def lease_s(self, pool: str) -> float:
        """The lease on the tasks a worker of `pool` holds, as it stands: the pool's
        lease_s, or the heartbeat timeout if it has none."""
        return self._engine.lease_s(pool)

    def connect_worker(self, spec: WorkerSpec, channel: WorkerChannel) -> WorkerSpec:
        """Register a worker; returns its spec with the id it was given."""
        return self._engine.connect_worker(spec, channel)

    def connect_worker_session(
        self, spec: WorkerSpec, channel: WorkerChannel, resume_token: str = ""
    ) -> WorkerConnection:
        """Register a worker, or resume its session with the token its last stream was
        given (see `Engine.connect_worker_session`)."""
        return self._engine.connect_worker_session(spec, channel, resume_token)

    def worker_stream_ended(
        self, worker_id: WorkerId, channel: WorkerChannel, *, broken: bool
    ) -> None:
        """A worker's stream ended: cleanly, or `broken` (its tasks are then kept for a
        resume, see `Engine.stream_ended`)."""
        self._engine.stream_ended(worker_id, channel, broken=broken)

    def heartbeat(
        self,
        worker_id: WorkerId,
        load: float,
        held: Iterable[TaskId] | None = None,
        assignments_seen: int = 0,
    ) -> None:
        """A worker's load and the tasks it holds (to reconcile the broker's count)."""
        held = None if held is None else list(held)
        validation.validate_heartbeat(load, held)
        self._engine.heartbeat(worker_id, load, held, assignments_seen)

    def report(
        self,
        worker_id: WorkerId,
        started: Sequence[TaskId],
        results: Sequence[TaskResult],
        seq: int = 0,
    ) -> asyncio.Future[None] | None:
        """A worker's start notices and results (`seq`: their message's number in the
        session); with results, a future that resolves once they are durable (see
        `Engine.report`)."""
        validation.validate_report(started, results)
        return self._engine.report(worker_id, started, results, seq)

    def set_capacity(self, worker_id: WorkerId, capacity: int) -> None:
        """A worker changes how many tasks it takes at once (0 pauses it)."""
        self._engine.set_capacity(worker_id, capacity)

    def disconnect_worker(self, worker_id: WorkerId, reason: str) -> None:
        """Forget a worker; what it held is requeued."""
        self._engine.disconnect_worker(worker_id, reason)


def _ab_split(pool: PoolConfig) -> PoolConfig:
    """The pool with no A/B strategy left behind by an ab_percent of 0."""
    return replace(pool, ab_strategy="") if pool.ab_strategy and not pool.ab_percent else pool
