"""Strategies that learn from finished tasks: weighted response time and predictive.

Both only read what the pool has learned: the scheduler records each success's run
time in the shared `RuntimeModel` before it calls `observe`, so a strategy never
records anything there itself.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from broker.core.runtimes import worker_class
from broker.core.strategies._base import (
    LowestKeyIndex,
    Outcome,
    StrategyEnv,
    WorkerSlot,
    default_env,
)
from broker.domain import Task, TaskId, WorkerId

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
    """

    name: ClassVar[str] = "weighted_response_time"

    ALPHA: ClassVar[float] = 0.2

    def __init__(self, env: StrategyEnv | None = None, *, alpha: float = ALPHA) -> None:
        self._env = env or default_env()
        self._alpha = alpha
        # Kept for every worker seen (a few floats each), ready or not: a full
        # worker's outcomes still count when it frees a slot.
        self._stats: dict[WorkerId, ResponseStats] = {}
        self._index = LowestKeyIndex(lambda w: -self.score(w))

    def add(self, worker: WorkerSlot) -> None:
        self._index.push(worker)

    def remove(self, worker: WorkerSlot) -> None:
        self._index.discard(worker)

    def update(self, worker: WorkerSlot) -> None:
        if worker.worker_id in self._index:
            self._index.push(worker)

    def observe(self, outcome: Outcome) -> None:
        stats = self.stats(outcome.worker.worker_id)
        alpha = self._alpha
        if outcome.success:
            stats.latency_s += alpha * (outcome.run_s - stats.latency_s)
        stats.success += alpha * (float(outcome.success) - stats.success)
        member = self._index.member(outcome.worker.worker_id)
        if member is not None:
            self._index.push(member)

    def __len__(self) -> int:
        return len(self._index)

    def stats(self, worker_id: WorkerId) -> ResponseStats:
        """What this strategy has learned about a worker (the prior if nothing yet)."""
        stats = self._stats.get(worker_id)
        if stats is None:
            stats = self._stats[worker_id] = ResponseStats(self._env.runtimes.prior_s)
        return stats

    def score(self, worker: WorkerSlot) -> float:
        if worker.capacity <= 0:
            return 0.0
        return self.stats(worker.worker_id).weight * worker.free / worker.capacity

    def pick(self, task: Task) -> WorkerSlot | None:
        return self._index.top()

    def rank(self, task: Task, allowed: Sequence[WorkerSlot]) -> WorkerSlot:
        return min(allowed, key=lambda w: (-self.score(w), self._index.version(w)))


@dataclass(slots=True)
class _WorkerClass:
    """The ready workers of one label set, by queued work per slot, least first."""

    labels: Mapping[str, str]
    size: int = 0
    heap: list[tuple[float, int, WorkerId]] = field(default_factory=list)


class Predictive:
    """The ready worker expected to finish this task first.

    expected finish = now + predicted run time of the task's type on the worker's
    class (`env.runtimes.predict`: its class's mean, else the type's, else the
    prior) + the predicted run times of the tasks it holds, divided by its capacity.

    The held work counted is what this instance placed (by task id, dropped when
    its outcome is observed, or when the worker no longer holds it); work placed by
    other strategy instances (other task types, the other A/B arm, sticky keys)
    is not counted. Each task counts its whole predicted run time until it ends.

    Workers are bucketed by class, since a prediction depends only on the class:
    each bucket has a heap of queued work per slot with lazy invalidation, so a
    pick costs one prediction and one heap peek per class, O(classes + log n),
    and needs no rebuild when the run-time model learns.
    """

    name: ClassVar[str] = "predictive"

    def __init__(self, env: StrategyEnv | None = None) -> None:
        self._env = env or default_env()
        self._members: dict[WorkerId, tuple[WorkerSlot, int, str]] = {}  # version, class
        self._classes: dict[str, _WorkerClass] = {}
        self._tick = itertools.count()
        # Predicted run times of the tasks this instance placed, and their sum per worker.
        self._placed: dict[TaskId, WorkerId] = {}
        self._on: dict[WorkerId, dict[TaskId, float]] = {}
        self._queued_s: dict[WorkerId, float] = {}

    def add(self, worker: WorkerSlot) -> None:
        worker_id = worker.worker_id
        if worker_id not in self._members:
            name = worker_class(worker.labels)
            bucket = self._classes.get(name)
            if bucket is None:
                bucket = self._classes[name] = _WorkerClass(worker.labels)
            bucket.size += 1
            self._members[worker_id] = (worker, -1, name)
        self._forget_released(worker)
        self._push(worker)

    def remove(self, worker: WorkerSlot) -> None:
        member = self._members.pop(worker.worker_id, None)
        if member is not None:
            bucket = self._classes[member[2]]
            bucket.size -= 1
            if not bucket.size:
                del self._classes[member[2]]

    def update(self, worker: WorkerSlot) -> None:
        if worker.worker_id in self._members:
            self._forget_released(worker)
            self._push(worker)

    def observe(self, outcome: Outcome) -> None:
        worker_id = self._forget(outcome.task.id)
        if worker_id is not None and worker_id in self._members:
            self._push(self._members[worker_id][0])

    def __len__(self) -> int:
        return len(self._members)

    def expected_finish(self, task_type: str, worker: WorkerSlot) -> float:
        """When a task of this type placed on the worker now is expected to end."""
        return self._env.clock.now() + self._finish_in(task_type, worker)

    def pick(self, task: Task) -> WorkerSlot | None:
        task_type = task.spec.task_type
        best: tuple[float, int, WorkerSlot, float] | None = None
        predict = self._env.runtimes.predict_class
        for name, bucket in self._classes.items():
            top = self._top(bucket)
            if top is None:
                continue
            queued_per_slot, version, worker = top
            run_s = predict(task_type, name)
            finish_in = run_s + queued_per_slot
            if best is None or (finish_in, version) < best[:2]:
                best = (finish_in, version, worker, run_s)
        if best is None:
            return None
        worker, run_s = best[2], best[3]
        self._placing(task, worker, run_s)
        return worker

    def rank(self, task: Task, allowed: Sequence[WorkerSlot]) -> WorkerSlot:
        task_type = task.spec.task_type
        worker = min(allowed, key=lambda w: (self._finish_in(task_type, w), self._version(w)))
        self._placing(task, worker, self._env.runtimes.predict(task_type, worker.labels))
        return worker

    # Internals ---------------------------------------------------------------

    def _finish_in(self, task_type: str, worker: WorkerSlot) -> float:
        return self._env.runtimes.predict(task_type, worker.labels) + self._per_slot(worker)

    def _per_slot(self, worker: WorkerSlot) -> float:
        """Predicted work the worker holds (of this instance's placing), per slot."""
        queued_s = self._queued_s.get(worker.worker_id, 0.0)
        if not queued_s:
            return 0.0
        return queued_s / worker.capacity if worker.capacity > 0 else float("inf")

    def _version(self, worker: WorkerSlot) -> int:
        member = self._members.get(worker.worker_id)
        return member[1] if member is not None else 0

    def _top(self, bucket: _WorkerClass) -> tuple[float, int, WorkerSlot] | None:
        heap = bucket.heap
        while heap:
            queued_per_slot, version, worker_id = heap[0]
            member = self._members.get(worker_id)
            if member is not None and member[1] == version:
                return queued_per_slot, version, member[0]
            heapq.heappop(heap)
        return None

    def _push(self, worker: WorkerSlot) -> None:
        worker_id = worker.worker_id
        name = self._members[worker_id][2]
        version = next(self._tick)
        self._members[worker_id] = (worker, version, name)
        bucket = self._classes[name]
        heapq.heappush(bucket.heap, (self._per_slot(worker), version, worker_id))
        if len(bucket.heap) > 4 * bucket.size + 64:
            bucket.heap = [
                (self._per_slot(w), v, wid) for wid, (w, v, n) in self._members.items() if n == name
            ]
            heapq.heapify(bucket.heap)

    def _placing(self, task: Task, worker: WorkerSlot, run_s: float) -> None:
        """Count the task's predicted run time against the worker it is going to."""
        before = self._forget(task.id)  # placed before, and requeued without an outcome
        if before is not None and before in self._members:
            self._push(self._members[before][0])
        worker_id = worker.worker_id
        self._placed[task.id] = worker_id
        self._on.setdefault(worker_id, {})[task.id] = run_s
        self._queued_s[worker_id] = self._queued_s.get(worker_id, 0.0) + run_s
        if worker_id in self._members:
            self._push(worker)

    def _forget(self, task_id: TaskId) -> WorkerId | None:
        """Stop counting a task; the worker it was counted against, if any."""
        worker_id = self._placed.pop(task_id, None)
        if worker_id is None:
            return None
        on = self._on[worker_id]
        run_s = on.pop(task_id)
        if on:
            self._queued_s[worker_id] = max(0.0, self._queued_s[worker_id] - run_s)
        else:  # start again from exactly zero, without float residue
            del self._on[worker_id]
            del self._queued_s[worker_id]
        return worker_id

    def _forget_released(self, worker: WorkerSlot) -> None:
        """Drop tasks the worker no longer holds though no outcome came (cancelled,
        or a new connection under the same id). Only when they must exist: counting
        more tasks than it holds; O(its tasks) then, O(1) otherwise."""
        on = self._on.get(worker.worker_id)
        if on and len(on) > len(worker.held):
            for task_id in [t for t in on if t not in worker.held]:
                self._forget(task_id)
