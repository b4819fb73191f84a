"""Watchers: who waits for which task to end, told once it is terminal and durable.

A task the lifecycle finishes stays in its `live` map until the store has made its
end durable; only then are its watchers called, the observers told, and the task
counted among the finished ones of its pool (for stats) and forgotten.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Protocol

from broker.core.lifecycle import TaskLifecycle
from broker.domain import Task, TaskId, TaskState
from broker.errors import InvalidArgument, NotFound
from broker.observability.observe import Observers

log = logging.getLogger("taskbroker.engine")

TaskCallback = Callable[[Task], None]


class TaskLog(Protocol):
    """Where tasks are kept (the store): read some, queue a save, wait for durability."""

    async def get_tasks(self, task_ids: Collection[TaskId]) -> list[Task]: ...
    def save(self, task: Task) -> None: ...
    def durable(self) -> asyncio.Future[None]: ...


class Watchers:
    """Callbacks per task id, and the durable terminal tasks per (pool, state)."""

    def __init__(self, core: TaskLifecycle, store: TaskLog, observers: Observers) -> None:
        self._core = core
        self._store = store
        self._observers = observers
        self._waiters: dict[TaskId, list[TaskCallback]] = defaultdict(list)
        self.finished: Counter[tuple[str, TaskState]] = Counter()  # durable terminal tasks

    async def watch(self, task_ids: Iterable[TaskId], callback: TaskCallback) -> list[TaskId]:
        """Call `callback` once with each task when it is terminal and durable.

        A task already finished is passed at once. Returns the ids that do not exist.
        """
        stored: list[TaskId] = []
        live = self._core.live
        for task_id in task_ids:
            if task_id in live:
                self._waiters[task_id].append(callback)
            else:
                stored.append(task_id)
        not_found: list[TaskId] = []
        if not stored:
            return not_found
        # Watched before the read: a task another broker schedules (several brokers on one
        # database) may end meanwhile, and `told` must find the watcher. One read for all
        # of them: a read waits for the commit under way, so one each would wait in turn.
        for task_id in stored:
            self._waiters[task_id].append(callback)
        found = {task.id: task for task in await self._store.get_tasks(stored)}
        for task_id in stored:
            task = found.get(task_id)
            if task is None or task.state.terminal:
                self.unwatch([task_id], callback)
                if task is None:
                    not_found.append(task_id)
                else:
                    callback(task)
        return not_found

    def watched(self) -> set[TaskId]:
        """The ids someone waits for."""
        return set(self._waiters)

    def told(self, tasks: Iterable[Task]) -> None:
        """Terminal tasks that another broker finished: call their watchers."""
        for task in tasks:
            for callback in self._waiters.pop(task.id, ()):
                try:
                    callback(task)
                except Exception:
                    log.exception("a task watcher failed")

    def unwatch(self, task_ids: Iterable[TaskId], callback: TaskCallback) -> None:
        for task_id in task_ids:
            callbacks = self._waiters.get(task_id)
            if callbacks is not None:
                if callback in callbacks:
                    callbacks.remove(callback)
                if not callbacks:
                    del self._waiters[task_id]

    async def wait(
        self,
        task_ids: Sequence[TaskId],
        max_wait: float,
        get: Callable[[TaskId], Awaitable[Task]],
        *,
        max_batch_size: int,
        max_wait_s: float,
    ) -> list[Task]:
        """The tasks once all are terminal, or as they are after `max_wait` seconds
        (at most `max_wait_s`); `get` reads a task as it is."""
        if not task_ids:
            raise InvalidArgument("name at least one task id")
        if len(task_ids) > max_batch_size:
            raise InvalidArgument(f"wait for at most {max_batch_size} tasks")
        done: dict[TaskId, Task] = {}
        wanted = set(task_ids)
        all_done = asyncio.Event()

        def finished(task: Task) -> None:
            done[task.id] = task
            if len(done) == len(wanted):
                all_done.set()

        not_found = await self.watch(wanted, finished)
        try:
            if not_found:
                raise NotFound(f"task {not_found[0]} does not exist")
            if len(done) < len(wanted):
                try:
                    async with asyncio.timeout(min(max_wait, max_wait_s)):
                        await all_done.wait()
                except TimeoutError:
                    pass
        finally:
            self.unwatch(wanted, finished)
        return [done[i] if i in done else await get(i) for i in task_ids]

    def finish(self, tasks: list[Task], durable: asyncio.Future[None]) -> None:
        """Once these terminal tasks are durable, tell their watchers and forget them."""

        def notify(future: asyncio.Future[None]) -> None:
            if future.cancelled() or future.exception() is not None:
                log.error("could not store %d finished tasks; retrying", len(tasks))
                for task in tasks:
                    self._store.save(task)
                self.finish(tasks, self._store.durable())
                return
            self._core.forget(tasks)
            observers = self._observers
            for task in tasks:
                self.finished[(task.spec.pool, task.state)] += 1
                if observers:
                    observers.finished(task)
                for callback in self._waiters.pop(task.id, ()):
                    try:
                        callback(task)
                    except Exception:
                        log.exception("a task watcher failed")

        durable.add_done_callback(notify)
