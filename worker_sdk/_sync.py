"""SyncClient: the async Client behind blocking methods, on an event loop of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from worker_sdk._client import Client
from worker_sdk._payload import UNSET
from worker_sdk._types import (
    DEFAULT_ADDRESS,
    DEFAULT_POOL,
    PoolInfo,
    PreferredLabel,
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

    def __init__(self, address: str = DEFAULT_ADDRESS, *, batch_size: int = 500) -> None:
        self._runner = asyncio.Runner()
        self._client = Client(address, batch_size=batch_size)
        self._closed = False

    @property
    def address(self) -> str:
        return self._client.address

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
    ) -> PoolInfo:
        """Create a pool; the arguments are `Client.create_pool`'s."""
        return self._run(
            self._client.create_pool(
                name,
                strategy,
                ab_strategy=ab_strategy,
                ab_percent=ab_percent,
                sticky_timeout_s=sticky_timeout_s,
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
    ) -> PoolInfo:
        """Change the given settings of a pool; the arguments are `Client.update_pool`'s."""
        return self._run(
            self._client.update_pool(
                name,
                strategy=strategy,
                ab_strategy=ab_strategy,
                ab_percent=ab_percent,
                sticky_timeout_s=sticky_timeout_s,
            )
        )

    def list_workers(self, pool: str | None = None) -> list[WorkerInfo]:
        return self._run(self._client.list_workers(pool))

    def drain_worker(self, worker_id: str) -> WorkerInfo:
        return self._run(self._client.drain_worker(worker_id))

    def stats(self) -> Stats:
        return self._run(self._client.stats())
