"""The strategy interface and what strategies work with: worker slots, outcomes, env."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from broker.clock import Clock, SystemClock
from broker.core.runtimes import RuntimeModel, worker_class
from broker.domain import Task, WorkerId, hot_record

UNLIMITED = 1 << 30


class WorkerSlot:
    """A worker's scheduling state: how much it can take and what it holds."""

    __slots__ = (
        "capacity",
        "class_name",
        "draining",
        "groups",
        "hard_groups",
        "held",
        "labels",
        "limit",
        "load",
        "paused",
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
        self.class_name = worker_class(self.labels)  # what the run-time model knows it by
        self.held: set[int] = set()
        self.groups: Counter[str] = Counter()  # anti-affinity groups of the tasks it holds
        self.hard_groups: Counter[str] = Counter()  # ... of those that allow no company
        self.draining = False
        self.paused = False  # cordoned, or its circuit breaker is open
        self.limit = UNLIMITED  # at most this many held (a half-open breaker's one trial)
        self.load = 0.0

    @property
    def free(self) -> int:
        limit = self.capacity if self.capacity < self.limit else self.limit
        return limit - len(self.held)

    @property
    def ready(self) -> bool:
        held = len(self.held)
        return held < self.capacity and held < self.limit and not self.draining and not self.paused

    @property
    def utilisation(self) -> float:
        return len(self.held) / self.capacity if self.capacity else 1.0


@hot_record()
class Outcome:
    """How one finished task went, for strategies that learn from it."""

    worker: WorkerSlot
    task: Task
    queue_wait_s: float  # from submission (or requeue) to assignment
    run_s: float  # from assignment to result
    success: bool


@dataclass(frozen=True, slots=True)
class StrategyEnv:
    """What a strategy may consult besides its workers: the time and learned run times."""

    clock: Clock
    runtimes: RuntimeModel
    hash_load_epsilon: float = 0.25  # consistent hashing: at most (1 + e) x the mean load
    adaptive_window: int = 200  # adaptive: costs kept per arm and task type
    adaptive_explore: float = 0.2  # adaptive: share of tasks placed by the challengers


def default_env(pool: str = "default") -> StrategyEnv:
    return StrategyEnv(clock=SystemClock(), runtimes=RuntimeModel(pool))


class Strategy(Protocol):
    """Ranks the ready workers of one pool and task type.

    The scheduler keeps one instance per task type. `add`/`remove`/`update` keep
    its index of ready workers; `pick` chooses for a task with no hints, `rank`
    among the workers the placement filters left; `observe` reports how a task
    it placed went.

    Two optional attributes spare calls on the busiest path (the scheduler and adaptive
    read them with `getattr`; a strategy without them is told of every change):
    `update_on_take = False` says `update` need not be called when a worker takes a
    task (the strategy finds a key that rose by itself, as `LowestKeyIndex` does), and
    `ignores_load = True` says `update` does nothing at all.
    """

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

    def observe(self, outcome: Outcome) -> None:
        """A task of this type finished on one of the pool's workers."""

    def __len__(self) -> int:
        """How many ready workers the index holds."""


class LowestKeyIndex:
    """Ready workers ordered by a key, lowest first, for strategies that rank by a score.

    Each worker has one live heap entry, (key, version), where the key is never above
    the worker's own:
    - a worker is pushed when it joins, when its key falls below its entry's, and
      when it is picked (its key then, and a new version: it goes behind its equals);
    - a key that rises (a take) or comes back to its entry's (the release after it)
      pushes nothing. An entry whose key rose since is re-keyed when it reaches the
      top, and the top looked at again.
    So among workers of equal key the one picked (or whose key fell) longest ago comes
    first, and the scheduler need not report a take (`update_on_take` False). Entries
    left behind (an older version, or a worker no longer in the index) are skipped at
    the top, and the heap is rebuilt once they outnumber the live ones, so every call
    stays O(log n) amortised.
    """

    def __init__(self, key: Callable[[WorkerSlot], float]) -> None:
        self._key = key
        # Each worker, the version of its live entry and that entry's key.
        self._members: dict[WorkerId, tuple[WorkerSlot, int, float]] = {}
        self._heap: list[tuple[float, int, WorkerId]] = []
        self._tick = itertools.count()

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._members

    def add(self, worker: WorkerSlot) -> None:
        """Add the worker (`update` if it is in already)."""
        if worker.worker_id in self._members:
            self.update(worker)
        else:
            self._push(worker, self._key(worker))

    def update(self, worker: WorkerSlot) -> None:
        """The member's key may have changed: a new entry if it fell below its entry's."""
        member = self._members.get(worker.worker_id)
        if member is not None:
            key = self._key(worker)
            if key < member[2]:
                self._push(worker, key)

    def picked(self, worker: WorkerSlot) -> None:
        """The member was picked (by a rank): it goes behind its equals."""
        if worker.worker_id in self._members:
            self._push(worker, self._key(worker))

    def _push(self, worker: WorkerSlot, key: float) -> None:
        version = next(self._tick)
        self._members[worker.worker_id] = (worker, version, key)
        heapq.heappush(self._heap, (key, version, worker.worker_id))
        if len(self._heap) > 4 * len(self._members) + 64:
            self._heap = [(k, v, wid) for wid, (_, v, k) in self._members.items()]
            heapq.heapify(self._heap)

    def discard(self, worker: WorkerSlot) -> None:
        self._members.pop(worker.worker_id, None)

    def member(self, worker_id: WorkerId) -> WorkerSlot | None:
        entry = self._members.get(worker_id)
        return entry[0] if entry is not None else None

    def version(self, worker: WorkerSlot) -> int:
        """When the worker's entry was pushed: a tie-breaker, older first."""
        entry = self._members.get(worker.worker_id)
        return entry[1] if entry is not None else 0

    def pick(self) -> WorkerSlot | None:
        """The worker with the lowest key, now behind its equals; None if there is none."""
        heap = self._heap
        members = self._members
        key_of = self._key
        while heap:
            key, version, worker_id = heap[0]
            entry = members.get(worker_id)
            if entry is None or entry[1] != version:
                heapq.heappop(heap)
                continue
            worker = entry[0]
            now = key_of(worker)
            version = next(self._tick)  # re-keyed: picked, or its key rose since
            members[worker_id] = (worker, version, now)
            heapq.heapreplace(heap, (now, version, worker_id))
            if now <= key:
                return worker
        return None
