"""SyncClient: the async Client behind blocking methods, on an event loop of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from worker_sdk._client import Client
from worker_sdk._payload import UNSET
from worker_sdk._types import (
    DEFAULT_ADDRESS,
    DEFAULT_POOL,
    Bulkhead,
    ConfigChange,
    MetricPoint,
    PoolInfo,
    PoolRecommendation,
    PreferredLabel,
    RetryPolicy,
    Stats,
    TaskInfo,
    TaskRequest,
    TaskState,
    WorkerInfo,
)

_T = TypeVar("_T")


class SyncClient:
    """A blocking client for scripts and threads without an event loop.

    It keeps one event loop (an asyncio.Runner) for its whole life, so the channel and the
    submit stream are reused across calls. Not for use from inside a running event loop.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        batch_size: int = 500,
        client_id: str | None = None,
        max_submit_retries: int = 5,
        max_submit_backoff_s: float = 10.0,
    ) -> None:
        """The arguments are `Client`'s."""
        self._client = Client(
            address,
            batch_size=batch_size,
            client_id=client_id,
            max_submit_retries=max_submit_retries,
            max_submit_backoff_s=max_submit_backoff_s,
        )
        self._runner = asyncio.Runner()
        self._closed = False

    @property
    def address(self) -> str:
        return self._client.address

    @property
    def client_id(self) -> str:
        """The identity this client sends with every call (`x-taskbroker-client`)."""
        return self._client.client_id

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and its event loop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._runner.run(self._client.close())
        finally:
            self._runner.close()

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        return self._runner.run(coro)

    def submit(
        self,
        task_type: str,
        payload: bytes | str | None = None,
        *,
        json: Any = UNSET,
        priority: int = 0,
        pool: str = DEFAULT_POOL,
        require: Mapping[str, str] | None = None,
        prefer: Sequence[PreferredLabel] = (),
        anti_affinity: str | None = None,
        anti_affinity_soft: bool = False,
        sticky_key: str | None = None,
        routing_key: str | None = None,
        retry: RetryPolicy | None = None,
        delay: float | None = None,
        not_before: datetime | None = None,
        start_timeout: float | None = None,
        execution_timeout: float | None = None,
        idempotency_key: str | None = None,
        fairness_key: str | None = None,
    ) -> str:
        """Submit one task and return its id; the arguments are `Client.submit`'s."""
        return self._run(
            self._client.submit(
                task_type,
                payload,
                json=json,
                priority=priority,
                pool=pool,
                require=require,
                prefer=prefer,
                anti_affinity=anti_affinity,
                anti_affinity_soft=anti_affinity_soft,
                sticky_key=sticky_key,
                routing_key=routing_key,
                retry=retry,
                delay=delay,
                not_before=not_before,
                start_timeout=start_timeout,
                execution_timeout=execution_timeout,
                idempotency_key=idempotency_key,
                fairness_key=fairness_key,
            )
        )

    def submit_many(self, tasks: Iterable[TaskRequest]) -> list[str]:
        """Submit tasks as one batch, all accepted or none; their ids in order."""
        return self._run(self._client.submit_many(tasks))

    def get(self, task_id: str) -> TaskInfo:
        return self._run(self._client.get(task_id))

    def wait(self, task_id: str, timeout: float | None = None) -> TaskInfo:
        return self._run(self._client.wait(task_id, timeout))

    def wait_many(self, task_ids: Sequence[str], timeout: float | None = None) -> list[TaskInfo]:
        return self._run(self._client.wait_many(task_ids, timeout))

    def result(self, task_id: str, timeout: float | None = None) -> bytes:
        return self._run(self._client.result(task_id, timeout))

    def cancel(self, task_id: str) -> TaskInfo:
        return self._run(self._client.cancel(task_id))

    def retry(
        self,
        task_ids: Iterable[str] = (),
        *,
        dead_letter_pool: str | None = None,
        limit: int | None = None,
    ) -> list[TaskInfo]:
        """Requeue failed or dead-lettered tasks; the arguments are `Client.retry`'s."""
        return self._run(
            self._client.retry(task_ids, dead_letter_pool=dead_letter_pool, limit=limit)
        )

    def list_tasks(
        self,
        *,
        pool: str | None = None,
        states: Iterable[TaskState] = (),
        task_type: str | None = None,
        limit: int = 100,
        before_id: str | None = None,
    ) -> list[TaskInfo]:
        return self._run(
            self._client.list_tasks(
                pool=pool, states=states, task_type=task_type, limit=limit, before_id=before_id
            )
        )

    def list_pools(self) -> list[PoolInfo]:
        return self._run(self._client.list_pools())

    def create_pool(
        self,
        name: str,
        strategy: str = "round_robin",
        *,
        ab_strategy: str = "",
        ab_percent: int = 0,
        sticky_timeout_s: float = 5.0,
        max_inflight: int = 0,
        max_queue: int = 0,
        rate_per_s: float = 0.0,
        rate_burst: int = 0,
        client_rate_per_s: float = 0.0,
        client_rate_burst: int = 0,
        rate_mode: str = "reject",
        breaker_failures: int = 0,
        breaker_failure_rate: float = 0.0,
        breaker_window: int = 0,
        breaker_cooldown_s: float = 0.0,
        lease_s: float = 0.0,
        bulkheads: Sequence[Bulkhead] = (),
        fairness_weights: Mapping[str, int] | None = None,
    ) -> PoolInfo:
        """Create a pool; the arguments are `Client.create_pool`'s."""
        return self._run(
            self._client.create_pool(
                name,
                strategy,
                ab_strategy=ab_strategy,
                ab_percent=ab_percent,
                sticky_timeout_s=sticky_timeout_s,
                max_inflight=max_inflight,
                max_queue=max_queue,
                rate_per_s=rate_per_s,
                rate_burst=rate_burst,
                client_rate_per_s=client_rate_per_s,
                client_rate_burst=client_rate_burst,
                rate_mode=rate_mode,
                breaker_failures=breaker_failures,
                breaker_failure_rate=breaker_failure_rate,
                breaker_window=breaker_window,
                breaker_cooldown_s=breaker_cooldown_s,
                lease_s=lease_s,
                bulkheads=bulkheads,
                fairness_weights=fairness_weights,
            )
        )

    def update_pool(
        self,
        name: str,
        *,
        strategy: str | None = None,
        ab_strategy: str | None = None,
        ab_percent: int | None = None,
        sticky_timeout_s: float | None = None,
        max_inflight: int | None = None,
        max_queue: int | None = None,
        rate_per_s: float | None = None,
        rate_burst: int | None = None,
        client_rate_per_s: float | None = None,
        client_rate_burst: int | None = None,
        rate_mode: str | None = None,
        breaker_failures: int | None = None,
        breaker_failure_rate: float | None = None,
        breaker_window: int | None = None,
        breaker_cooldown_s: float | None = None,
        lease_s: float | None = None,
        bulkheads: Sequence[Bulkhead] | None = None,
        fairness_weights: Mapping[str, int] | None = None,
    ) -> PoolInfo:
        """Change the given settings of a pool; the arguments are `Client.update_pool`'s."""
        return self._run(
            self._client.update_pool(
                name,
                strategy=strategy,
                ab_strategy=ab_strategy,
                ab_percent=ab_percent,
                sticky_timeout_s=sticky_timeout_s,
                max_inflight=max_inflight,
                max_queue=max_queue,
                rate_per_s=rate_per_s,
                rate_burst=rate_burst,
                client_rate_per_s=client_rate_per_s,
                client_rate_burst=client_rate_burst,
                rate_mode=rate_mode,
                breaker_failures=breaker_failures,
                breaker_failure_rate=breaker_failure_rate,
                breaker_window=breaker_window,
                breaker_cooldown_s=breaker_cooldown_s,
                lease_s=lease_s,
                bulkheads=bulkheads,
                fairness_weights=fairness_weights,
            )
        )

    def list_workers(self, pool: str | None = None) -> list[WorkerInfo]:
        return self._run(self._client.list_workers(pool))

    def drain_worker(self, worker_id: str) -> WorkerInfo:
        return self._run(self._client.drain_worker(worker_id))

    def cordon_worker(self, worker_id: str) -> WorkerInfo:
        """Cordon a worker: no new work until `uncordon_worker`; it keeps what it holds."""
        return self._run(self._client.cordon_worker(worker_id))

    def uncordon_worker(self, worker_id: str) -> WorkerInfo:
        return self._run(self._client.uncordon_worker(worker_id))

    def stats(self) -> Stats:
        return self._run(self._client.stats())

    def metrics_history(
        self,
        *,
        pool: str | None = None,
        task_type: str | None = None,
        worker_id: str | None = None,
        since: datetime | timedelta | None = None,
        until: datetime | None = None,
        bucket_s: int = 0,
    ) -> list[MetricPoint]:
        """The broker's metrics history, oldest first; the arguments are
        `Client.metrics_history`'s."""
        return self._run(
            self._client.metrics_history(
                pool=pool,
                task_type=task_type,
                worker_id=worker_id,
                since=since,
                until=until,
                bucket_s=bucket_s,
            )
        )

    def recommend(
        self,
        *,
        pool: str | None = None,
        target_wait_s: float = 1.0,
        horizon_s: float = 900.0,
    ) -> list[PoolRecommendation]:
        """Worker counts per pool for a target queue wait; the arguments are
        `Client.recommend`'s."""
        return self._run(
            self._client.recommend(pool=pool, target_wait_s=target_wait_s, horizon_s=horizon_s)
        )

    def reload_config(self) -> list[ConfigChange]:
        """Make the broker re-read its config file; the changes it applied."""
        return self._run(self._client.reload_config())

    def config_history(self, *, pool: str | None = None, limit: int = 100) -> list[ConfigChange]:
        """The audited changes of pool settings, newest first."""
        return self._run(self._client.config_history(pool=pool, limit=limit))
