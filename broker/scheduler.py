"""Pure placement decisions for one pool: which pending task goes to which worker.

No I/O and no clock: the engine feeds it tasks and workers and applies the
assignments it returns, so tests and tools can drive it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.domain import Task, TaskId, WorkerId
from broker.errors import AlreadyExists, NotFound
from broker.queue import PoolQueue
from broker.strategies import Strategy, WorkerSlot, make_strategy


@dataclass(frozen=True, slots=True)
class Placement:
    """A decision: this task goes to this worker."""

    task: Task
    worker: WorkerSlot


class PoolScheduler:
    """A pool's queue, its workers' credit, and one strategy index per task type."""

    def __init__(self, name: str, strategy: str, starvation_interval: int = 10) -> None:
        self.name = name
        self.strategy_name = strategy
        self.queue = PoolQueue(starvation_interval)
        self.workers: dict[WorkerId, WorkerSlot] = {}
        self._ready: dict[str, Strategy] = {}

    # Workers -----------------------------------------------------------------

    def add_worker(self, worker: WorkerSlot) -> None:
        if worker.worker_id in self.workers:
            raise AlreadyExists(f"worker {worker.worker_id!r} is connected already")
        self.workers[worker.worker_id] = worker
        if worker.ready:
            self._index_add(worker)

    def remove_worker(self, worker_id: WorkerId) -> WorkerSlot:
        """Forget a worker; the caller requeues what it held (``slot.held``)."""
        worker = self._get(worker_id)
        self._index_remove(worker)
        del self.workers[worker_id]
        return worker

    def set_capacity(self, worker_id: WorkerId, capacity: int) -> None:
        worker = self._get(worker_id)
        was_ready = worker.ready
        worker.capacity = capacity
        self._reindex(worker, was_ready)

    def set_draining(self, worker_id: WorkerId, draining: bool = True) -> None:
        worker = self._get(worker_id)
        was_ready = worker.ready
        worker.draining = draining
        self._reindex(worker, was_ready)

    def release(self, worker_id: WorkerId, task_id: TaskId) -> None:
        """The worker no longer holds this task: one credit back."""
        worker = self.workers.get(worker_id)
        if worker is not None and task_id in worker.held:
            was_ready = worker.ready
            worker.held.discard(task_id)
            self._reindex(worker, was_ready)

    def set_strategy(self, strategy: str) -> None:
        """Switch strategy: rebuild the ready indexes under the new one."""
        make_strategy(strategy)  # raises KeyError before anything changes
        self.strategy_name = strategy
        self._ready.clear()
        for worker in self.workers.values():
            if worker.ready:
                self._index_add(worker)

    # Tasks -------------------------------------------------------------------

    def enqueue(self, task: Task) -> None:
        self.queue.push(task)

    def dequeue(self, task_id: TaskId) -> Task | None:
        return self.queue.remove(task_id)

    def place(self) -> list[Placement]:
        """Match queued tasks to ready workers until one side runs out."""
        placements: list[Placement] = []
        ready = self._ready
        queue = self.queue
        while types := [t for t in queue.types_waiting() if t in ready and len(ready[t])]:
            # These types all have a ready worker until some worker fills up.
            while (task := queue.pop(types)) is not None:
                worker = ready[task.spec.task_type].pick(task)
                assert worker is not None, "a non-empty strategy index always picks"
                worker.held.add(task.id)
                placements.append(Placement(task, worker))
                if worker.ready:
                    for task_type in worker.task_types:
                        ready[task_type].update(worker)
                else:
                    self._index_remove(worker)
                    break
        return placements

    # Internals ---------------------------------------------------------------

    def _get(self, worker_id: WorkerId) -> WorkerSlot:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise NotFound(f"worker {worker_id!r} is not connected to pool {self.name!r}")
        return worker

    def _reindex(self, worker: WorkerSlot, was_ready: bool) -> None:
        """Keep the ready indexes in step with a change to the worker."""
        if was_ready and not worker.ready:
            self._index_remove(worker)
        elif worker.ready and not was_ready:
            self._index_add(worker)
        elif worker.ready:
            for task_type in worker.task_types:
                self._ready[task_type].update(worker)

    def _index_add(self, worker: WorkerSlot) -> None:
        for task_type in worker.task_types:
            strategy = self._ready.get(task_type)
            if strategy is None:
                strategy = self._ready[task_type] = make_strategy(self.strategy_name)
            strategy.add(worker)

    def _index_remove(self, worker: WorkerSlot) -> None:
        for task_type in worker.task_types:
            strategy = self._ready.get(task_type)
            if strategy is not None:
                strategy.remove(worker)
