"""Pending tasks: admitted, then queued in their pool, or delayed until a time first.

A task waits from admission until a worker is assigned it, or it is cancelled or
misses its start deadline. A delayed one (a not-before time, a retry's backoff, a
rate limit in "queue" mode) waits for a "ready" timer before it joins its queue; a
task with a start deadline has a "start" timer; a pool whose sticky tasks wait for
their worker has a "sticky" timer for when the first wait runs out. All are keys of
the lifecycle's one timer heap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from broker.core.admission import Admission
from broker.core.scheduler import PoolScheduler
from broker.core.timers import Timers
from broker.domain import Task, TaskId, TaskSpec

# A placeholder in `found` for a spec whose idempotency key an earlier spec of the same
# batch has: it gets that spec's task once it is made.
_SAME_AS_FIRST = Task(id=0, spec=TaskSpec(task_type="-"))


class Waiting:
    """The pending tasks of every pool: counted, queued or delayed, and since when."""

    def __init__(
        self, pools: dict[str, PoolScheduler], timers: Timers, admission: Admission
    ) -> None:
        self._pools = pools
        self._timers = timers
        self._admission = admission
        self.next_id = 1
        self.next_seq = 1
        # Pending tasks waiting for a time (delay, retry backoff, rate limit): not queued yet.
        self.delayed: dict[TaskId, Task] = {}
        self.delayed_by_pool: Counter[str] = Counter()
        self.queued_at: dict[TaskId, float] = {}  # when each waiting task joined its queue
        self._sticky_wakes: dict[str, float] = {}  # pool -> when its timer is set for

    def admit(
        self, specs: Sequence[TaskSpec], found: dict[int, Task], client: str, now: float
    ) -> list[Task]:
        """Check the bounds and rate limits for the new specs (not those in `found`, which
        had an idempotency key seen before) and make their tasks, counted as waiting;
        ResourceExhausted if a bound is hit. Returns a task for every spec, in order.

        Everything here is synchronous, so no other submit slips past a bound meanwhile.
        """
        first_of: dict[tuple[str, str], int] = {}  # a key's first spec in this batch
        for index, spec in enumerate(specs):
            if spec.idempotency_key and index not in found:
                first = first_of.setdefault((spec.pool, spec.idempotency_key), index)
                if first != index:
                    found[index] = found.get(first, _SAME_AS_FIRST)
        new = [spec for index, spec in enumerate(specs) if index not in found]
        delays = iter(self._admission.check(new, client, now))
        count = self._admission.count
        tasks: list[Task] = []
        for index, spec in enumerate(specs):
            if index in found:
                earlier = found[index]
                if earlier is _SAME_AS_FIRST:
                    found[index] = earlier = tasks[first_of[(spec.pool, spec.idempotency_key)]]
                tasks.append(earlier)
                continue
            not_before = max(spec.not_before, now + next(delays))
            task = Task(
                id=self.next_id,
                spec=spec,
                seq=self.next_seq,
                created_at=now,
                not_before=not_before if not_before > now else 0.0,
            )
            self.next_id += 1
            self.next_seq += 1
            count(task, 1)
            tasks.append(task)
        return tasks

    def not_stored(self, tasks: Iterable[Task]) -> None:
        """Admitted tasks whose insert failed: they wait nowhere."""
        for task in tasks:
            self._admission.count(task, -1)

    def wait(self, task: Task, now: float, deadline_from: float | None = None) -> None:
        """A pending task joins its pool's queue, or waits for its not-before time first.

        A task that has never run gets its start deadline here, if it has one: counted
        from `deadline_from`, by default from when it was submitted to become pending.
        """
        if task.not_before > now:
            self.delayed[task.id] = task
            self.delayed_by_pool[task.spec.pool] += 1
            self._timers.set(("ready", task.id), task.not_before)
            self.queued_at[task.id] = task.not_before
        else:
            self._pools[task.spec.pool].enqueue(task)
            self.queued_at[task.id] = now
        if task.spec.start_timeout_s and not task.attempts:
            start = deadline_from or max(task.created_at, task.spec.not_before)
            self._timers.set(("start", task.id), start + task.spec.start_timeout_s)

    def ready(self, task_id: TaskId) -> str | None:
        """A delayed task's time has come (its timer): it joins its queue. Its pool."""
        task = self.delayed.pop(task_id, None)
        if task is None:
            return None
        pool = task.spec.pool
        self.delayed_by_pool[pool] -= 1
        self._pools[pool].enqueue(task)
        return pool

    def unwait(self, task: Task) -> None:
        """Take a pending task out of its queue (or its wait) for good."""
        if self._pools[task.spec.pool].dequeue(task.id) is None and (
            self.delayed.pop(task.id, None) is not None
        ):
            self.delayed_by_pool[task.spec.pool] -= 1
            self._timers.cancel(("ready", task.id))
        self._timers.cancel(("start", task.id))
        self.queued_at.pop(task.id, None)
        self._admission.count(task, -1)

    def wake_for_sticky(self, pool: PoolScheduler) -> None:
        """Place again when a sticky task's wait runs out, even if nothing else happens."""
        deadline = pool.next_deadline()
        name = pool.name
        if deadline is None:
            if self._sticky_wakes.pop(name, None) is not None:
                self._timers.cancel(("sticky", name))
        elif self._sticky_wakes.get(name) != deadline:
            self._sticky_wakes[name] = deadline
            self._timers.set(("sticky", name), deadline)

    def sticky_due(self, pool: str) -> None:
        """A pool's sticky timer fired: it is no longer set."""
        self._sticky_wakes.pop(pool, None)
