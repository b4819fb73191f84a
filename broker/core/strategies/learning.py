"""Weighted response time: a strategy that learns from finished tasks (predictive,
the other one, is in broker.core.strategies.predictive).

It only reads what the pool has learned: the scheduler records each success's run
time in the shared `RuntimeModel` before it calls `observe`, so a strategy never
records anything there itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from broker.core.strategies._base import (
    LowestKeyIndex,
    Outcome,
    StrategyEnv,
    WorkerSlot,
    default_env,
)
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

    The ready workers are kept in a `LowestKeyIndex` by -score, each worker's weight
    kept beside its stats (they change together, in `observe`).
    """

    name: ClassVar[str] = "weighted_response_time"
    update_on_take: ClassVar[bool] = False  # a worker whose key rose is re-keyed at the top

    ALPHA: ClassVar[float] = 0.2

    def __init__(self, env: StrategyEnv | None = None, *, alpha: float = ALPHA) -> None:
        self._env = env or default_env()
        self._alpha = alpha
        # Kept for every worker seen (a few floats each), ready or not: a full
        # worker's outcomes still count when it frees a slot.
        self._stats: dict[WorkerId, ResponseStats] = {}
        self._weights: dict[WorkerId, float] = {}  # each one's stats.weight
        self._index = LowestKeyIndex(self._key)

    def add(self, worker: WorkerSlot) -> None:
        self._index.add(worker)

    def remove(self, worker: WorkerSlot) -> None:
        self._index.discard(worker)

    def update(self, worker: WorkerSlot) -> None:
        self._index.update(worker)

    def observe(self, outcome: Outcome) -> None:
        worker_id = outcome.worker.worker_id
        stats = self.stats(worker_id)
        alpha = self._alpha
        if outcome.success:
            stats.latency_s += alpha * (outcome.run_s - stats.latency_s)
        stats.success += alpha * (float(outcome.success) - stats.success)
        self._weights[worker_id] = stats.weight
        member = self._index.member(worker_id)
        if member is not None:
            self._index.update(member)

    def __len__(self) -> int:
        return len(self._index)

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
        return self._index.pick()

    def rank(self, task: Task, allowed: Sequence[WorkerSlot]) -> WorkerSlot:
        index = self._index
        worker = min(allowed, key=lambda w: (-self.score(w), index.version(w)))
        index.picked(worker)
        return worker

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
