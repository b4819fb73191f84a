"""The two simple strategies: round robin and least loaded."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from typing import ClassVar

from broker.core.strategies._base import LowestKeyIndex, Outcome, StrategyEnv, WorkerSlot
from broker.domain import Task, WorkerId


class RoundRobin:
    """Ready workers take turns: the one picked longest ago goes next."""

    name: ClassVar[str] = "round_robin"
    ignores_load: ClassVar[bool] = True  # `update` does nothing
    update_on_take: ClassVar[bool] = False

    def __init__(self, env: StrategyEnv | None = None) -> None:
        self._ring: OrderedDict[WorkerId, WorkerSlot] = OrderedDict()
        self._turns: dict[WorkerId, int] = {}  # when each worker was last picked
        self._tick = itertools.count()

    def add(self, worker: WorkerSlot) -> None:
        self._ring[worker.worker_id] = worker

    def remove(self, worker: WorkerSlot) -> None:
        self._ring.pop(worker.worker_id, None)

    def update(self, worker: WorkerSlot) -> None:
        pass

    def observe(self, outcome: Outcome) -> None:
        pass

    def __len__(self) -> int:
        return len(self._ring)

    def pick(self, task: Task) -> WorkerSlot | None:
        for worker in self._ring.values():
            return self._picked(worker)
        return None

    def rank(self, task: Task, allowed: Sequence[WorkerSlot]) -> WorkerSlot:
        return self._picked(min(allowed, key=lambda w: self._turns.get(w.worker_id, -1)))

    def _picked(self, worker: WorkerSlot) -> WorkerSlot:
        if worker.worker_id in self._ring:
            self._ring.move_to_end(worker.worker_id)
        self._turns[worker.worker_id] = next(self._tick)
        return worker


def _utilisation(worker: WorkerSlot) -> float:
    """`WorkerSlot.utilisation`, without the property's call."""
    capacity = worker.capacity
    return len(worker.held) / capacity if capacity else 1.0


class LeastLoaded:
    """The ready worker with the smallest share of its capacity in use."""

    name: ClassVar[str] = "least_loaded"
    update_on_take: ClassVar[bool] = False  # a worker whose key rose is re-keyed at the top

    def __init__(self, env: StrategyEnv | None = None) -> None:
        self._index = LowestKeyIndex(_utilisation)

    def add(self, worker: WorkerSlot) -> None:
        self._index.add(worker)

    def remove(self, worker: WorkerSlot) -> None:
        self._index.discard(worker)

    def update(self, worker: WorkerSlot) -> None:
        self._index.update(worker)

    def observe(self, outcome: Outcome) -> None:
        pass

    def __len__(self) -> int:
        return len(self._index)

    def pick(self, task: Task) -> WorkerSlot | None:
        return self._index.pick()

    def rank(self, task: Task, allowed: Sequence[WorkerSlot]) -> WorkerSlot:
        worker = min(allowed, key=lambda w: (w.utilisation, self._index.version(w)))
        self._index.picked(worker)
        return worker
