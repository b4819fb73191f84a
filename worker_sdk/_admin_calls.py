"""The Client's AdminService calls: pools, workers, statistics, metrics history,
recommendations and config changes."""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from datetime import datetime, timedelta
from typing import TypeVar, Unpack

from worker_sdk import _convert, _tracing
from worker_sdk._errors import NotFound
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc
from worker_sdk._pool_settings import (
    DEFAULT_STRATEGY,
    PoolSettings,
    create_defaults,
    with_settings_signature,
)
from worker_sdk._types import (
    ConfigChange,
    MetricPoint,
    PoolInfo,
    PoolRecommendation,
    Stats,
    TaskState,
    WorkerInfo,
)

_T = TypeVar("_T")


class AdminCalls:
    """Administration, for Client: each call is one unary AdminService call (update_pool
    two) over the client's channel, with its metadata and its errors."""

    # Client's plumbing, which these calls use.

    @property
    def _metadata(self) -> _tracing.Metadata:
        raise NotImplementedError

    def _stubs(self) -> tuple[_tasks_grpc.TaskServiceAsyncStub, _admin_grpc.AdminServiceAsyncStub]:
        raise NotImplementedError

    async def _unary(self, call: Awaitable[_T]) -> _T:
        raise NotImplementedError

    # -- the calls ---------------------------------------------------------------------

    async def list_pools(self) -> list[PoolInfo]:
        _, admin_stub = self._stubs()
        request = _convert.list_pools_request()
        response = await self._unary(admin_stub.ListPools(request, metadata=self._metadata))
        return _convert.listed_pools(response)

    @with_settings_signature(changes=False)
    async def create_pool(
        self, name: str, strategy: str = DEFAULT_STRATEGY, **settings: Unpack[PoolSettings]
    ) -> PoolInfo:
        """Create a pool; AlreadyExists if there is one of that name.

        `ab_percent` (0..100) of its tasks are placed by `ab_strategy` instead of `strategy`
        ("" = no A/B split). The broker checks the names and says InvalidArgument, listing
        the strategies it knows, for an unknown one. The limits, breaker, lease, bulkhead
        and fairness settings are PoolInfo's; 0 leaves a setting at the broker's default.
        """
        _, admin_stub = self._stubs()
        given = {key: value for key, value in settings.items() if value is not None}
        request = _convert.create_pool_request(
            name, {**create_defaults(), "strategy": strategy, **given}
        )
        response = await self._unary(admin_stub.CreatePool(request, metadata=self._metadata))
        return _convert.pool_info(response)

    @with_settings_signature(changes=True)
    async def update_pool(
        self, name: str, *, strategy: str | None = None, **settings: Unpack[PoolSettings]
    ) -> PoolInfo:
        """Change the given settings of a pool, keep the others; the pool as it is now.

        `bulkheads` and `fairness_weights` replace the pool's whole list or map (pass `()`
        or `{}` to clear them). Reads the pool, changes it and sends it back whole, so a
        concurrent change to another setting can be lost. NotFound for an unknown pool;
        ValueError if no setting is given.
        """
        given = {"strategy": strategy, **settings}
        changes = {key: value for key, value in given.items() if value is not None}
        if not changes:
            raise ValueError("update_pool needs at least one setting to change")
        _, admin_stub = self._stubs()
        listed = await self._unary(
            admin_stub.ListPools(_convert.list_pools_request(), metadata=self._metadata)
        )
        request = _convert.update_pool_request(listed, name, changes)
        if request is None:
            raise NotFound(f"pool {name!r} does not exist")
        response = await self._unary(admin_stub.UpdatePool(request, metadata=self._metadata))
        return _convert.pool_info(response)

    async def list_workers(self, pool: str | None = None) -> list[WorkerInfo]:
        _, admin_stub = self._stubs()
        request = _convert.list_workers_request(pool)
        response = await self._unary(admin_stub.ListWorkers(request, metadata=self._metadata))
        return _convert.listed_workers(response)

    async def drain_worker(self, worker_id: str) -> WorkerInfo:
        """Ask the broker to drain a worker: it gets no more work and disconnects when idle."""
        _, admin_stub = self._stubs()
        request = _convert.drain_worker_request(worker_id)
        response = await self._unary(admin_stub.DrainWorker(request, metadata=self._metadata))
        return _convert.drained_worker(response)

    async def cordon_worker(self, worker_id: str) -> WorkerInfo:
        """Cordon a worker: it gets no new work, keeps what it holds and stays connected."""
        return await self._cordon(worker_id, cordon=True)

    async def uncordon_worker(self, worker_id: str) -> WorkerInfo:
        """Let a cordoned worker take new work again."""
        return await self._cordon(worker_id, cordon=False)

    async def _cordon(self, worker_id: str, *, cordon: bool) -> WorkerInfo:
        _, admin_stub = self._stubs()
        request = _convert.cordon_worker_request(worker_id, cordon)
        response = await self._unary(admin_stub.CordonWorker(request, metadata=self._metadata))
        return _convert.worker_info(response)

    async def stats(self) -> Stats:
        _, admin_stub = self._stubs()
        request = _convert.stats_request()
        return _convert.stats(await self._unary(admin_stub.Stats(request, metadata=self._metadata)))

    async def metrics_history(
        self,
        *,
        pool: str | None = None,
        task_type: str | None = None,
        worker_id: str | None = None,
        since: datetime | timedelta | None = None,
        until: datetime | None = None,
        bucket_s: int = 0,
    ) -> list[MetricPoint]:
        """The broker's metrics history, oldest first: per-minute rollups (hourly once
        compacted) of the pool, task type and worker given (None = all, and the task types
        and workers summed over), merged into buckets of `bucket_s` seconds (0 = as stored).

        `since` is an aware datetime or a timedelta back from now (None = an hour ago),
        `until` an aware datetime (None = now).
        """
        _, admin_stub = self._stubs()
        request = _convert.metrics_history_request(
            pool=pool,
            task_type=task_type,
            worker_id=worker_id,
            since=since,
            until=until,
            bucket_s=bucket_s,
        )
        response = await self._unary(admin_stub.MetricsHistory(request, metadata=self._metadata))
        return _convert.metric_points(response)

    async def recommend(
        self,
        *,
        pool: str | None = None,
        target_wait_s: float = 1.0,
        horizon_s: float = 900.0,
    ) -> list[PoolRecommendation]:
        """How many workers each pool (or just `pool`) needs so that a task waits
        `target_wait_s` on average, for the arrival rate the broker forecasts over the next
        `horizon_s` seconds from the pool's history (an M/M/c queue, Erlang C)."""
        _, admin_stub = self._stubs()
        request = _convert.recommend_request(pool, target_wait_s, horizon_s)
        response = await self._unary(admin_stub.Recommend(request, metadata=self._metadata))
        return _convert.recommendations(response)

    async def reload_config(self) -> list[ConfigChange]:
        """Make the broker re-read its config file and apply what changed in its pools;
        the changes, empty if there were none."""
        _, admin_stub = self._stubs()
        request = _convert.reload_config_request()
        response = await self._unary(admin_stub.ReloadConfig(request, metadata=self._metadata))
        return _convert.config_changes(response)

    async def config_history(
        self, *, pool: str | None = None, limit: int = 100
    ) -> list[ConfigChange]:
        """The audited changes of pool settings (of `pool` only if given), newest first,
        at most `limit`."""
        _, admin_stub = self._stubs()
        request = _convert.config_history_request(pool, limit)
        response = await self._unary(admin_stub.ConfigHistory(request, metadata=self._metadata))
        return _convert.config_changes(response)

    async def purge_tasks(
        self,
        *,
        pool: str | None = None,
        older_than: float | timedelta = 0.0,
        states: Iterable[TaskState] = (),
    ) -> int:
        """Delete finished tasks, with their payloads, results and idempotency keys: those
        of `pool` (None: every pool) in `states` (empty: every finished state) that finished
        at least `older_than` (seconds or a timedelta) ago. Tasks that have not finished are
        never deleted (InvalidArgument for such a state). How many were deleted."""
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
        _, admin_stub = self._stubs()
        request = _convert.purge_tasks_request(pool, float(seconds), states)
        response = await self._unary(admin_stub.PurgeTasks(request, metadata=self._metadata))
        return _convert.purged(response)
