"""Placement strategies: which ready worker gets the next task.

A strategy is an index over the workers that can take a task right now (they
have free credit and are not draining). The scheduler tells it when a worker
becomes ready, stops being ready, or changes load, and asks it to pick one for
a task. Keeping the index inside the strategy is what keeps a pick cheap in
big pools: no strategy scans every worker per task.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from typing import ClassVar, Protocol

from broker.domain import Task, WorkerId


class WorkerSlot:
    """A worker's scheduling state: how much it can take and what it holds."""

    __slots__ = (
        "capacity",
        "draining",
        "groups",
        "hard_groups",
        "held",
        "labels",
        "load",
        "pool",
        "task_types",
        "worker_id",
    )

    def __init__(
        self,
        worker_id: WorkerId,
        pool: str,
        capacity: int,
        task_types: frozenset[str],
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.pool = pool
        self.capacity = capacity
        self.task_types = task_types
        self.labels: Mapping[str, str] = labels or {}
        self.held: set[int] = set()
        self.groups: Counter[str] = Counter()  # anti-affinity groups of the tasks it holds
        self.hard_groups: Counter[str] = Counter()  # ... of those that allow no company
        self.draining = False
        self.load = 0.0

    @property
    def free(self) -> int:
        return self.capacity - len(self.held)

    @property
    def ready(self) -> bool:
        return self.free > 0 and not self.draining

    @property
    def utilisation(self) -> float:
        return len(self.held) / self.capacity if self.capacity else 1.0


class Strategy(Protocol):
    """Ranks the ready workers of one pool and task type."""

    name: ClassVar[str]

    def add(self, worker: WorkerSlot) -> None:
        """The worker has become ready."""

    def remove(self, worker: WorkerSlot) -> None:
        """The worker is no longer ready (full, draining or gone)."""

    def update(self, worker: WorkerSlot) -> None:
        """The ready worker's load changed."""

    def pick(self, task: Task) -> WorkerSlot | None:
        """The worker to run this task, or None if there is no ready worker."""

    def rank(self, task: Task, allowed: Sequence[WorkerSlot]) -> WorkerSlot:
        """The worker to run this task among `allowed` (ready workers that passed the
        placement filters; never empty)."""

    def __len__(self) -> int:
        """How many ready workers the index holds."""


class RoundRobin:
    """Ready workers take turns: the one picked longest ago goes next."""

    name: ClassVar[str] = "round_robin"

    def __init__(self) -> None:
        self._ring: OrderedDict[WorkerId, WorkerSlot] = OrderedDict()
        self._turns: dict[WorkerId, int] = {}  # when each worker was last picked
        self._tick = itertools.count()

    def add(self, worker: WorkerSlot) -> None:
        self._ring[worker.worker_id] = worker

    def remove(self, worker: WorkerSlot) -> None:
        self._ring.pop(worker.worker_id, None)

    def update(self, worker: WorkerSlot) -> None:
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


class LeastLoaded:
    """The ready worker with the smallest share of its capacity in use."""

    name: ClassVar[str] = "least_loaded"

    def __init__(self) -> None:
        self._members: dict[WorkerId, tuple[WorkerSlot, int]] = {}
        self._heap: list[tuple[float, int, WorkerId]] = []
        self._tick = itertools.count()

    def add(self, worker: WorkerSlot) -> None:
        self._push(worker)

    def remove(self, worker: WorkerSlot) -> None:
        self._members.pop(worker.worker_id, None)

    def update(self, worker: WorkerSlot) -> None:
        if worker.worker_id in self._members:
            self._push(worker)

    def __len__(self) -> int:
        return len(self._members)

    def pick(self, task: Task) -> WorkerSlot | None:
        heap = self._heap
        while heap:
            _, version, worker_id = heap[0]
            member = self._members.get(worker_id)
            if member is not None and member[1] == version:
                return member[0]
            heapq.heappop(heap)
        return None

    def rank(self, task: Task, allowed: Sequence[WorkerSlot]) -> WorkerSlot:
        return min(
            allowed, key=lambda w: (w.utilisation, self._members.get(w.worker_id, (w, 0))[1])
        )

    def _push(self, worker: WorkerSlot) -> None:
        version = next(self._tick)
        self._members[worker.worker_id] = (worker, version)
        heapq.heappush(self._heap, (worker.utilisation, version, worker.worker_id))
        if len(self._heap) > 4 * len(self._members) + 64:
            self._heap = [(w.utilisation, v, wid) for wid, (w, v) in self._members.items()]
            heapq.heapify(self._heap)


STRATEGIES: dict[str, type[RoundRobin] | type[LeastLoaded]] = {
    RoundRobin.name: RoundRobin,
    LeastLoaded.name: LeastLoaded,
}


def make_strategy(name: str) -> Strategy:
    """A new, empty strategy index by name; KeyError for an unknown name."""
    return STRATEGIES[name]()
