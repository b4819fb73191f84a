"""Operators' actions on finished tasks: sending them round again, and deleting them.

A retry reads failed or dead-lettered tasks and moves them back to pending; a purge (an
operator's, or the pools' retention, run in the broker's TaskGroup) deletes finished tasks
with their payloads, results and idempotency keys. One lock keeps the two apart, so a
task read for a retry is never deleted under it. The stats' counts of finished tasks,
which count what is stored, follow both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Sequence

from broker.clock import Clock
from broker.config import BrokerConfig
from broker.core.lifecycle import TaskLifecycle
from broker.domain import TERMINAL_STATES, Task, TaskFilter, TaskId, TaskState
from broker.errors import InvalidArgument, NotFound, Unavailable
from broker.runtime.watchers import Watchers
from broker.storage.contract import Store, check_purge

log = logging.getLogger("taskbroker.engine")


class FinishedTasks:
    """Retry and purge of finished tasks, for the Engine."""

    def __init__(
        self,
        config: BrokerConfig,
        core: TaskLifecycle,
        store: Store,
        clock: Clock,
        watchers: Watchers,
        apply: Callable[[], object],
        request_dispatch: Callable[[Iterable[str]], None],
    ) -> None:
        self._config = config
        self._core = core
        self._store = store
        self._clock = clock
        self._watchers = watchers
        self._apply = apply
        self._request_dispatch = request_dispatch
        self._lock = asyncio.Lock()

    async def retry(
        self, task_ids: Sequence[TaskId], dead_letter_pool: str, limit: int
    ) -> list[Task]:
        """Send failed or dead-lettered tasks round again, with a fresh set of attempts:
        these ids, and with `dead_letter_pool`, up to `limit` of its dead-lettered tasks."""
        if not task_ids and not dead_letter_pool:
            raise InvalidArgument("name task ids or a pool whose dead letters to retry")
        if not 1 <= limit <= 10_000:
            raise InvalidArgument(f"limit must be 1..10000, got {limit}")
        if len(task_ids) > self._config.max_batch_size:
            raise InvalidArgument(f"retry at most {self._config.max_batch_size} tasks at once")
        async with self._lock:
            return await self._retry(task_ids, dead_letter_pool, limit)

    async def _retry(
        self, task_ids: Sequence[TaskId], dead_letter_pool: str, limit: int
    ) -> list[Task]:
        core = self._core
        live = core.live
        # The finished ones (most) in one read: a read waits for the commit under way.
        stored = [task_id for task_id in task_ids if task_id not in live]
        found = {task.id: task for task in await self._store.get_tasks(stored)} if stored else {}
        tasks: dict[TaskId, Task] = {}
        for task_id in task_ids:
            task = live.get(task_id) or found.get(task_id)
            if task is None:
                raise NotFound(f"task {task_id} does not exist")
            core.check_retryable(task)
            tasks[task_id] = task
        if dead_letter_pool:
            if dead_letter_pool not in core.pools:
                raise NotFound(f"pool {dead_letter_pool!r} does not exist")
            flt = TaskFilter(
                pool=dead_letter_pool, states=frozenset({TaskState.DEAD_LETTER}), limit=limit
            )
            for task in await self._store.list_tasks(flt):
                tasks.setdefault(task.id, task)
        retried = []
        now = self._clock.now()
        for task in tasks.values():
            was = task.state
            if core.retry(task, now):
                self._watchers.finished[(task.spec.pool, was)] -= 1
                retried.append(task)
        self._apply()
        await self._store.flush()
        self._request_dispatch({task.spec.pool for task in retried})
        log.info("%d tasks retried by an operator", len(retried))
        return retried

    async def purge(self, pool: str, finished_before: float, states: Collection[TaskState]) -> int:
        """Delete the finished tasks in `states` of `pool` ("" = every pool) that finished
        before `finished_before`, with their payloads, results and idempotency keys, in
        transactions of at most `task_purge_batch` tasks; how many went.

        Tasks that are not finished are never deleted (InvalidArgument for such a state).
        The stats' finished counts, which count the finished tasks stored, go down with
        them.
        """
        chosen = check_purge(states, self._config.task_purge_batch)
        if pool and pool not in self._core.pools:
            raise NotFound(f"pool {pool!r} does not exist")
        names = [pool] if pool else list(self._core.pools)
        return sum([await self._purge_pool(name, finished_before, chosen) for name in names])

    async def purge_expired(self) -> int:
        """Delete every pool's finished tasks older than its `retention_s` (0 = kept
        forever), as of the engine's clock; how many went."""
        now = self._clock.now()
        purged = 0
        for scheduler in list(self._core.pools.values()):
            retention_s = scheduler.config.retention_s
            if retention_s > 0:
                name = scheduler.config.name
                purged += await self._purge_pool(name, now - retention_s, TERMINAL_STATES)
        if purged:
            log.info("%d finished tasks past their pools' retention deleted", purged)
        return purged

    async def _purge_pool(
        self, pool: str, finished_before: float, states: Collection[TaskState]
    ) -> int:
        batch = self._config.task_purge_batch
        purged = 0
        while True:
            async with self._lock:
                deleted = await self._store.purge_tasks(pool, finished_before, states, batch)
            for state, count in deleted.items():
                self._watchers.finished[(pool, state)] -= count
            purged += sum(deleted.values())
            if sum(deleted.values()) < batch:
                return purged
            await asyncio.sleep(0)  # the event loop's other work goes between batches

    async def run_retention(self) -> None:
        """Delete finished tasks past their pools' retention every `task_purge_interval_s`,
        for as long as the broker runs. A failed purge is logged and tried again at the
        next interval: retention must never take the broker down."""
        while True:
            await asyncio.sleep(self._config.task_purge_interval_s)
            try:
                await self.purge_expired()
            except Unavailable:
                log.debug("retention: the store is closed; stopping")
                return
            except Exception:
                log.exception("retention: purging finished tasks failed; trying again later")
