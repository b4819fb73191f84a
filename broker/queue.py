"""A pool's queue of pending tasks.

Order: higher priority first, FIFO (by submission sequence) within a priority.
Starvation rule: every Nth task taken from the queue (N = ``starvation_interval``)
is the oldest eligible task whatever its priority, so a steady stream of
high-priority work slows low-priority work down but never stops it.

Tasks are kept per task type, because a worker can only take the types it
registered; ``pop`` takes the best task among the types a caller can place.
Removal (cancel) is lazy: entries of removed tasks are skipped when reached.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from broker.domain import Task, TaskId


class _TypeQueue:
    __slots__ = ("by_age", "by_priority", "tasks")

    def __init__(self) -> None:
        self.tasks: dict[TaskId, Task] = {}
        self.by_priority: list[tuple[int, int, TaskId]] = []
        self.by_age: list[tuple[int, TaskId]] = []

    def push(self, task: Task) -> None:
        self.tasks[task.id] = task
        heapq.heappush(self.by_priority, (-task.spec.priority, task.seq, task.id))
        heapq.heappush(self.by_age, (task.seq, task.id))

    def head_by_priority(self) -> tuple[int, int, TaskId] | None:
        heap = self.by_priority
        while heap and heap[0][2] not in self.tasks:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def head_by_age(self) -> tuple[int, TaskId] | None:
        heap = self.by_age
        while heap and heap[0][1] not in self.tasks:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def take(self, task_id: TaskId) -> Task:
        return self.tasks.pop(task_id)

    def compact(self) -> None:
        """Drop stale heap entries once they outnumber the live ones."""
        if len(self.by_age) > 2 * len(self.tasks) + 64:
            self.by_priority = [e for e in self.by_priority if e[2] in self.tasks]
            heapq.heapify(self.by_priority)
            self.by_age = [e for e in self.by_age if e[1] in self.tasks]
            heapq.heapify(self.by_age)


class PoolQueue:
    """Pending tasks of one pool, by type, with priority order and the starvation rule."""

    def __init__(self, starvation_interval: int = 10) -> None:
        if starvation_interval < 2:
            raise ValueError("starvation_interval must be at least 2")
        self._interval = starvation_interval
        self._types: dict[str, _TypeQueue] = {}
        self._where: dict[TaskId, str] = {}
        self._pops = 0

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._where

    def __iter__(self) -> Iterator[Task]:
        for queue in self._types.values():
            yield from queue.tasks.values()

    def push(self, task: Task) -> None:
        if task.id in self._where:
            raise ValueError(f"task {task.id} is queued already")
        queue = self._types.get(task.spec.task_type)
        if queue is None:
            queue = self._types[task.spec.task_type] = _TypeQueue()
        queue.push(task)
        self._where[task.id] = task.spec.task_type

    def remove(self, task_id: TaskId) -> Task | None:
        """Take a task out of the queue (e.g. cancelled); None if it is not queued."""
        task_type = self._where.pop(task_id, None)
        if task_type is None:
            return None
        queue = self._types[task_type]
        task = queue.take(task_id)
        queue.compact()
        return task

    def types_waiting(self) -> list[str]:
        """Task types with at least one queued task."""
        return [name for name, queue in self._types.items() if queue.tasks]

    def pop(self, task_types: Iterable[str]) -> Task | None:
        """Take the next task among these types, or None if none of them has one."""
        queues = [q for name in task_types if (q := self._types.get(name)) and q.tasks]
        if not queues:
            return None
        self._pops += 1
        if self._pops % self._interval == 0:
            aged = [(head, q) for q in queues if (head := q.head_by_age()) is not None]
            (_, task_id), best_queue = min(aged, key=lambda pair: pair[0])
        else:
            ranked = [(top, q) for q in queues if (top := q.head_by_priority()) is not None]
            (_, _, task_id), best_queue = min(ranked, key=lambda pair: pair[0])
        del self._where[task_id]
        task = best_queue.take(task_id)
        best_queue.compact()
        return task
