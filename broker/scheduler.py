"""Pure placement decisions for one pool: which pending task goes to which worker.

No I/O and no clock: the engine feeds it tasks and workers and applies the
decisions it returns, so tests and tools can drive it directly.

How a task is placed:
1. Hard constraints are filters, applied first: the task's type, free credit,
   its required labels (looked up in a label index, not by scanning workers) and
   hard anti-affinity (no worker already running a task of the same group).
2. Preferences score what is left: each matching preferred label adds its
   weight, each running task of the same soft anti-affinity group costs
   ``SOFT_ANTI_AFFINITY_PENALTY``.
3. The pool's strategy picks among the best-scoring workers.
A task without hints skips 1-2 and takes the strategy's pick from its index. A
task that no ready worker may take is parked, with the reason, until a worker
of its type changes; one that no connected worker could ever take is marked
unschedulable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from broker.domain import Task, TaskId, WorkerId
from broker.errors import AlreadyExists, NotFound
from broker.queue import PoolQueue
from broker.strategies import Strategy, WorkerSlot, make_strategy

SOFT_ANTI_AFFINITY_PENALTY = 1_000_000


@dataclass(frozen=True, slots=True)
class Decision:
    """This task goes to this worker, or (worker None) waits, for the reason in `note`."""

    task: Task
    worker: WorkerSlot | None
    note: str
    unschedulable: bool = False


class PoolScheduler:
    """A pool's queue, its workers' credit, one strategy index per task type, and the
    label index behind placement filters."""

    def __init__(self, name: str, strategy: str, starvation_interval: int = 10) -> None:
        self.name = name
        self.strategy_name = strategy
        self.queue = PoolQueue(starvation_interval)
        self.workers: dict[WorkerId, WorkerSlot] = {}
        self._ready: dict[str, Strategy] = {}
        self._ready_by_type: dict[str, dict[WorkerId, WorkerSlot]] = {}
        self._by_label: dict[tuple[str, str], set[WorkerId]] = {}
        # The anti-affinity group of each placed task that has one, and whether it is hard.
        self._group_of: dict[TaskId, tuple[str, bool]] = {}
        self._parked: dict[str, dict[TaskId, Task]] = {}  # by task type
        self._recheck: set[str] = set()  # task types whose parked tasks may fit now

    @property
    def pending(self) -> int:
        """Tasks waiting: queued or parked."""
        return len(self.queue) + sum(len(p) for p in self._parked.values())

    def parked(self) -> list[Task]:
        return [task for tasks in self._parked.values() for task in tasks.values()]

    # Workers -----------------------------------------------------------------

    def add_worker(self, worker: WorkerSlot) -> None:
        if worker.worker_id in self.workers:
            raise AlreadyExists(f"worker {worker.worker_id!r} is connected already")
        self.workers[worker.worker_id] = worker
        for label in worker.labels.items():
            self._by_label.setdefault(label, set()).add(worker.worker_id)
        if worker.ready:
            self._index_add(worker)
        self._recheck.update(worker.task_types)

    def remove_worker(self, worker_id: WorkerId) -> WorkerSlot:
        """Forget a worker; the caller requeues what it held (``slot.held``)."""
        worker = self._get(worker_id)
        self._index_remove(worker)
        del self.workers[worker_id]
        for label in worker.labels.items():
            holders = self._by_label[label]
            holders.discard(worker_id)
            if not holders:
                del self._by_label[label]
        for task_id in worker.held:
            self._group_of.pop(task_id, None)
        self._recheck.update(worker.task_types)
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
            grouped = self._group_of.pop(task_id, None)
            if grouped is not None:
                group, hard = grouped
                _decrement(worker.groups, group)
                if hard:
                    _decrement(worker.hard_groups, group)
                self._recheck.update(worker.task_types)
            self._reindex(worker, was_ready)

    def set_strategy(self, strategy: str) -> None:
        """Switch strategy: rebuild the ready indexes under the new one."""
        make_strategy(strategy)  # raises KeyError before anything changes
        self.strategy_name = strategy
        self._ready.clear()
        self._ready_by_type.clear()
        for worker in self.workers.values():
            if worker.ready:
                self._index_add(worker)

    # Tasks -------------------------------------------------------------------

    def enqueue(self, task: Task) -> None:
        self.queue.push(task)

    def dequeue(self, task_id: TaskId) -> Task | None:
        """Take a waiting task out (queued or parked); None if it is not waiting here."""
        task = self.queue.remove(task_id)
        if task is None:
            for parked in self._parked.values():
                task = parked.pop(task_id, None)
                if task is not None:
                    break
        return task

    def place(self) -> list[Decision]:
        """Match waiting tasks to ready workers until one side runs out.

        Returns the placements, and the parked tasks whose reason for waiting changed.
        """
        decisions: list[Decision] = []
        self._unpark(decisions)
        ready = self._ready
        queue = self.queue
        while types := [t for t in queue.types_waiting() if t in ready and len(ready[t])]:
            # These types all have a ready worker until some worker fills up.
            while (task := queue.pop(types)) is not None:
                if task.spec.placement.free:
                    worker = ready[task.spec.task_type].pick(task)
                    assert worker is not None, "a non-empty strategy index always picks"
                    decision = Decision(task, worker, self.strategy_name)
                else:
                    decision = self._choose(task)
                    if decision.worker is None:
                        self._park(task, decision, decisions)
                        continue
                    worker = decision.worker
                decisions.append(decision)
                worker.held.add(task.id)
                hints = task.spec.placement
                if group := hints.anti_affinity_group:
                    self._group_of[task.id] = (group, not hints.anti_affinity_soft)
                    worker.groups[group] += 1
                    if not hints.anti_affinity_soft:
                        worker.hard_groups[group] += 1
                if worker.ready:
                    for task_type in worker.task_types:
                        ready[task_type].update(worker)
                else:
                    self._index_remove(worker)
                    break
        return decisions

    # Placement with hints ----------------------------------------------------

    def _choose(self, task: Task) -> Decision:
        hints = task.spec.placement
        task_type = task.spec.task_type
        ready = self._ready_by_type.get(task_type, {})
        removed: list[str] = []
        if hints.required_labels:
            matching = self._with_labels(hints.required_labels)
            allowed = [ready[w] for w in matching if w in ready]
            removed.append(f"required labels {_labels(hints.required_labels)}")
        else:
            allowed = list(ready.values())
        if group := hints.anti_affinity_group:
            # A hard task runs alone among its group; a soft one only avoids hard ones.
            running = "hard_groups" if hints.anti_affinity_soft else "groups"
            allowed = [w for w in allowed if not getattr(w, running).get(group)]
            removed.append(f"anti-affinity group {group!r}")
        if not allowed:
            return self._why_waiting(task)
        scores = {w.worker_id: self._score(task, w) for w in allowed}
        best = max(scores.values())
        top = [w for w in allowed if scores[w.worker_id] == best]
        worker = self._ready[task_type].rank(task, top)
        filters = f" after {' and '.join(removed)}" if removed else ""
        note = (
            f"{self.strategy_name}: {len(allowed)} of {len(ready)} ready workers "
            f"allowed{filters}; score {best}"
        )
        return Decision(task, worker, note)

    def _score(self, task: Task, worker: WorkerSlot) -> int:
        hints = task.spec.placement
        score = sum(p.weight for p in hints.preferred_labels if worker.labels.get(p.key) == p.value)
        if hints.anti_affinity_soft and hints.anti_affinity_group:
            score -= SOFT_ANTI_AFFINITY_PENALTY * worker.groups.get(hints.anti_affinity_group, 0)
        return score

    def _with_labels(self, labels: Mapping[str, str]) -> set[WorkerId]:
        """Connected workers (ready or not) whose labels include all of these."""
        holders = [self._by_label.get(item, set()) for item in labels.items()]
        holders.sort(key=len)
        return set(holders[0]).intersection(*holders[1:]) if holders else set(self.workers)

    def _why_waiting(self, task: Task) -> Decision:
        """The decision to park a task that no ready worker may take, with the reason."""
        hints = task.spec.placement
        task_type = task.spec.task_type
        able = [
            w
            for w in (self.workers[i] for i in self._with_labels(hints.required_labels))
            if task_type in w.task_types
        ]
        wanted = f"type {task_type!r}"
        if hints.required_labels:
            wanted += f" and labels {_labels(hints.required_labels)}"
        if not able:
            return Decision(task, None, f"unschedulable: no connected worker takes {wanted}", True)
        free = [w for w in able if w.ready]
        if not free:
            return Decision(task, None, f"waiting: all {len(able)} workers for {wanted} are busy")
        return Decision(
            task,
            None,
            f"waiting: all {len(free)} free workers for {wanted} run a task of "
            f"anti-affinity group {hints.anti_affinity_group!r}",
        )

    def _park(self, task: Task, decision: Decision, decisions: list[Decision]) -> None:
        self._parked.setdefault(task.spec.task_type, {})[task.id] = task
        if (decision.note, decision.unschedulable) != (task.placement_note, task.unschedulable):
            decisions.append(decision)

    def _unpark(self, decisions: list[Decision]) -> None:
        """Give parked tasks of the types that changed another chance."""
        recheck, self._recheck = self._recheck, set()
        for task_type in recheck:
            parked = self._parked.pop(task_type, None)
            if not parked:
                continue
            if task_type in self._ready and len(self._ready[task_type]):
                for task in parked.values():
                    self.queue.push(task)
            else:  # no ready worker of this type: only the reasons can change
                self._parked[task_type] = parked
                for task in parked.values():
                    decision = self._why_waiting(task)
                    if (decision.note, decision.unschedulable) != (
                        task.placement_note,
                        task.unschedulable,
                    ):
                        decisions.append(decision)

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
            self._recheck.update(worker.task_types)
        elif worker.ready:
            for task_type in worker.task_types:
                self._ready[task_type].update(worker)

    def _index_add(self, worker: WorkerSlot) -> None:
        for task_type in worker.task_types:
            strategy = self._ready.get(task_type)
            if strategy is None:
                strategy = self._ready[task_type] = make_strategy(self.strategy_name)
                self._ready_by_type[task_type] = {}
            strategy.add(worker)
            self._ready_by_type[task_type][worker.worker_id] = worker

    def _index_remove(self, worker: WorkerSlot) -> None:
        for task_type in worker.task_types:
            strategy = self._ready.get(task_type)
            if strategy is not None:
                strategy.remove(worker)
                self._ready_by_type[task_type].pop(worker.worker_id, None)


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
