"""Weighted response time: a strategy that learns from finished tasks (predictive,
the other one, is in broker.core.strategies.predictive).

It only reads what the pool has learned: the scheduler records each success's run
time in the shared `RuntimeModel` before it calls `observe`, so a strategy never
records anything there itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from typing import ClassVar

from broker.core.strategies._base import Outcome, StrategyEnv, WorkerSlot, default_env
from broker.domain import Task, WorkerId

MIN_LATENCY_S = 1e-3  # a worker reporting 0 s runs does not get an infinite weight
MIN_SUCCESS = 0.05  # nor does a failing one get none: it still runs when others are busy


@dataclass(slots=True)
class ResponseStats:
    """A worker's smoothed run time (of successes) and success rate."""

    latency_s: float
    success: float = 1.0

    @property
    def weight(self) -> float:
        """success^2 / latency: a worker failing half its tasks needs two attempts per
        success, and each failure costs another attempt elsewhere."""
        return max(self.success, MIN_SUCCESS) ** 2 / max(self.latency_s, MIN_LATENCY_S)


class WeightedResponseTime:
    """The ready worker with the best weight, scaled by the share of its slots free.

    score = success^2 / latency * free / capacity, where latency and success are
    exponentially smoothed (factor `alpha`) over the outcomes of this task type on
    the worker, starting from the pool's prior run time and full success. Only
    successes update the latency: a worker that fails fast must not look fast.

    `pick` peeks a heap keyed by -score with lazy invalidation (a version per
    worker), so a pick is O(log n) amortised; `add`/`update`/`observe` push.
    The heap is `LowestKeyIndex`'s, kept here with the score worked out in line
    and each worker's weight kept beside its stats (they change together, in
    `observe`): `update` runs twice for every task placed.
    """

    name: ClassVar[str] = "weighted_response_time"

    ALPHA: ClassVar[float] = 0.2

    def __init__(self, env: StrategyEnv | None = None, *, alpha: float = ALPHA) -> None:
        self._env = env or default_env()
        self._alpha = alpha
        # Kept for every worker seen (a few floats each), ready or not: a full
        # worker's outcomes still count when it frees a slot.
        self._stats: dict[WorkerId, ResponseStats] = {}
        self._weights: dict[WorkerId, float] = {}  # each one's stats.weight
        # The ready workers, and when each was last (re-)keyed: a tie-breaker, older
        # first. The heap holds (-score, version, worker id); an entry whose version
        # is not its worker's, or whose worker left, is stale and skipped at the top.
        self._members: dict[WorkerId, tuple[WorkerSlot, int]] = {}
        self._heap: list[tuple[float, int, WorkerId]] = []
        self._tick = itertools.count()

    def add(self, worker: WorkerSlot) -> None:
        self._push(worker)

    def remove(self, worker: WorkerSlot) -> None:
        self._members.pop(worker.worker_id, None)

    def update(self, worker: WorkerSlot) -> None:
        worker_id = worker.worker_id
        members = self._members
        if worker_id not in members:
            return
        # _push and _key, in line.
        version = next(self._tick)
        members[worker_id] = (worker, version)
        capacity = worker.capacity
        if capacity <= 0:
            key = -0.0
        else:
            weight = self._weights.get(worker_id)
            if weight is None:
                weight = self.stats(worker_id).weight
            limit = worker.limit
            key = -(
                weight * ((capacity if capacity < limit else limit) - len(worker.held)) / capacity
            )
        heap = self._heap
        heappush(heap, (key, version, worker_id))
        if len(heap) > 4 * len(members) + 64:
            self._rekey()

    def observe(self, outcome: Outcome) -> None:
        worker_id = outcome.worker.worker_id
        stats = self.stats(worker_id)
        alpha = self._alpha
        if outcome.success:
            stats.latency_s += alpha * (outcome.run_s - stats.latency_s)
        stats.success += alpha * (float(outcome.success) - stats.success)
        self._weights[worker_id] = stats.weight
        member = self._members.get(worker_id)
        if member is not None:
            self._push(member[0])

    def __len__(self) -> int:
        return len(self._members)

    def stats(self, worker_id: WorkerId) -> ResponseStats:
        """What this strategy has learned about a worker (the prior if nothing yet)."""
        stats = self._stats.get(worker_id)
        if stats is None:
            stats = self._stats[worker_id] = ResponseStats(self._env.runtimes.prior_s)
            self._weights[worker_id] = stats.weight
        return stats

    def score(self, worker: WorkerSlot) -> float:
        if worker.capacity <= 0:
            return 0.0
        return self.stats(worker.worker_id).weight * worker.free / worker.capacity

    def pick(self, task: Task) -> WorkerSlot | None:
        heap = self._heap
        members = self._members
        while heap:
            _, version, worker_id = heap[0]
            entry = members.get(worker_id)
            if entry is not None and entry[1] == version:
                return entry[0]
            heappop(heap)
        return None

    def rank(self, task: Task, allowed: Sequence[WorkerSlot]) -> WorkerSlot:
        return min(allowed, key=lambda w: (-self.score(w), self._version(w)))

    def _version(self, worker: WorkerSlot) -> int:
        entry = self._members.get(worker.worker_id)
        return entry[1] if entry is not None else 0

    def _key(self, worker: WorkerSlot) -> float:
        """-score(worker), from the weight kept beside the worker's stats."""
        capacity = worker.capacity
        if capacity <= 0:
            return -0.0
        weight = self._weights.get(worker.worker_id)
        if weight is None:
            weight = self.stats(worker.worker_id).weight
        limit = worker.limit
        return -(weight * ((capacity if capacity < limit else limit) - len(worker.held)) / capacity)

    def _push(self, worker: WorkerSlot) -> None:
        """Add the worker, or re-key it after its score changed."""
        version = next(self._tick)
        self._members[worker.worker_id] = (worker, version)
        heappush(self._heap, (self._key(worker), version, worker.worker_id))
        if len(self._heap) > 4 * len(self._members) + 64:
            self._rekey()

    def _rekey(self) -> None:
        """Rebuild the heap from the live entries, once the stale ones outnumber them."""
        key = self._key
        self._heap = [(key(w), v, wid) for wid, (w, v) in self._members.items()]
        heapify(self._heap)
