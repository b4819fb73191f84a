"""A pool's queue of pending tasks.

Fairness first: every task has a fairness key (a tenant; "" is a key like any other)
and ``pop`` chooses the key before the task. Keys share the pool by weighted round
robin, done as stride scheduling: each key has a pass (its virtual time), the key
with the lowest pass among those with a task of the asked-for types wins, and its
pass grows by its stride (``_STRIDE // weight``). So while keys are backlogged, a key
of weight 3 is served three times as often as one of weight 1, and a key with one
task waits behind at most one round (a task per unit of weight of each other key),
however many tasks the others have. Ties go to the key that reached the pass first.
Two rules keep credit from piling up: a key that becomes active (gets its first
waiting task) starts at the lowest pass of the keys already waiting for its type, so
idle time earns nothing; and a winner never lags the runner-up by more than the
runner-up's stride, so a key whose tasks waited for types no worker could take does
not burst once one can.

Then, within the chosen key: higher priority first, FIFO (by submission sequence)
within a priority. Starvation rule: every Nth task taken from a key
(N = ``starvation_interval``) is the key's oldest eligible task whatever its
priority, so a steady stream of high-priority work slows low-priority work down but
never stops it. The count is per key, kept while the key has waiting tasks.

Tasks are kept per key and task type ("lanes"), because a worker can only take the
types it registered; ``pop`` takes the best task among the types a caller can place.
Removal (cancel) is lazy: entries of removed tasks are skipped when reached.

Cost, for n waiting tasks, t types asked for and k keys with waiting tasks of them:
with a single key (the common case) ``pop`` does no fairness bookkeeping at all,
O(t + log n) as before fairness. With several keys each task type keeps a heap of
its keys by pass, updated lazily (a key's entry is re-sorted when it reaches the
top with an outdated pass), so ``pop`` is O((t + u) log k + log n) amortized, u being
the number of types the served key has waiting; no pop scans all keys.
``push`` is O(log n + log k), ``count`` and ``len`` O(1).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence

from broker.domain import Task, TaskId

# Passes are integers, so shares are exact: a key's stride is _STRIDE // weight,
# exact for every weight that divides it (1 to 16, 20, 25, 100, 1000, ...).
_STRIDE = 720_720_000

# A key's place in a type's heap: (pass, stamp, fairness key). Stamps are unique
# and grow, so they break ties by who got there first and the key is never compared.
_Entry = tuple[int, int, str]


class _Lane:
    """The waiting tasks of one fairness key and one task type."""

    __slots__ = ("by_age", "by_priority", "entry", "index", "task_type", "tasks", "tenant")

    def __init__(self, tenant: _Tenant, task_type: str, index: _TypeIndex) -> None:
        self.tenant = tenant
        self.task_type = task_type
        self.index = index
        self.tasks: dict[TaskId, Task] = {}
        self.by_priority: list[tuple[int, int, TaskId]] = []
        self.by_age: list[tuple[int, TaskId]] = []
        self.entry: _Entry | None = None  # this lane's live entry in index.heap

    def push(self, task: Task) -> None:
        self.tasks[task.id] = task
        heapq.heappush(self.by_priority, (-task.spec.priority, task.seq, task.id))
        heapq.heappush(self.by_age, (task.seq, task.id))

    def head_by_priority(self) -> tuple[int, int, TaskId]:
        heap = self.by_priority
        while heap[0][2] not in self.tasks:
            heapq.heappop(heap)
        return heap[0]

    def head_by_age(self) -> tuple[int, TaskId]:
        heap = self.by_age
        while heap[0][1] not in self.tasks:
            heapq.heappop(heap)
        return heap[0]

    def compact(self) -> None:
        """Drop stale heap entries (the caller checks they outnumber the live ones)."""
        self.by_priority = [e for e in self.by_priority if e[2] in self.tasks]
        heapq.heapify(self.by_priority)
        self.by_age = [e for e in self.by_age if e[1] in self.tasks]
        heapq.heapify(self.by_age)


class _Tenant:
    """A fairness key with waiting tasks: its place in the round robin, and its lanes."""

    __slots__ = ("key", "lanes", "pass_", "pops", "size", "stamp", "stride")

    def __init__(self, key: str, pass_: int, stamp: int, stride: int) -> None:
        self.key = key
        self.pass_ = pass_
        self.stamp = stamp  # changes whenever pass_ does
        self.stride = stride
        self.pops = 0  # for the starvation rule
        self.size = 0
        self.lanes: dict[str, _Lane] = {}  # by task type; only lanes with tasks


class _TypeIndex:
    """The lanes of one task type, and a heap of their keys by pass."""

    __slots__ = ("count", "heap", "lanes")

    def __init__(self) -> None:
        self.count = 0  # waiting tasks of this type
        self.lanes: dict[str, _Lane] = {}  # by fairness key; only lanes with tasks
        self.heap: list[_Entry] = []  # the lanes' entries, and stale ones skipped lazily


class PoolQueue:
    """Pending tasks of one pool: fair across keys, by priority and age within a key.

    `weights` gives fairness keys a bigger share (a key not listed weighs 1).
    """

    def __init__(
        self, starvation_interval: int = 10, weights: Mapping[str, int] | None = None
    ) -> None:
        if starvation_interval < 2:
            raise ValueError("starvation_interval must be at least 2")
        self._interval = starvation_interval
        self._weights: dict[str, int] = {}
        self._types: dict[str, _TypeIndex] = {}
        self._tenants: dict[str, _Tenant] = {}
        self._where: dict[TaskId, _Lane] = {}
        self._stamp = 0
        self._vtime = 0  # the pass the last winner was served at
        if weights:
            self.set_weights(weights)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._where

    def __iter__(self) -> Iterator[Task]:
        for tenant in self._tenants.values():
            for lane in tenant.lanes.values():
                yield from lane.tasks.values()

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Each fairness key's share of the pool (a key not listed weighs 1), from now on."""
        for key, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise ValueError(f"fairness weight of {key!r} must be an integer >= 1: {weight!r}")
        self._weights = dict(weights)
        for tenant in self._tenants.values():
            tenant.stride = self._stride(tenant.key)

    def count(self, task_type: str) -> int:
        """How many tasks of this type are queued."""
        index = self._types.get(task_type)
        return index.count if index is not None else 0

    def fairness_keys(self) -> dict[str, int]:
        """Queued tasks per fairness key, for the keys that have any."""
        return {key: tenant.size for key, tenant in self._tenants.items()}

    def oldest(self, task_type: str | None = None) -> Task | None:
        """The task waiting longest (lowest seq), of one type or of any; O(lanes)."""
        indexes = (
            list(self._types.values())
            if task_type is None
            else [i for i in [self._types.get(task_type)] if i is not None]
        )
        best: tuple[int, TaskId] | None = None
        lane_of_best: _Lane | None = None
        for index in indexes:
            for lane in index.lanes.values():
                if lane.tasks:
                    head = lane.head_by_age()
                    if best is None or head < best:
                        best, lane_of_best = head, lane
        return None if lane_of_best is None or best is None else lane_of_best.tasks[best[1]]

    def types_waiting(self) -> list[str]:
        """Task types with at least one queued task."""
        return [name for name, index in self._types.items() if index.count]

    def push(self, task: Task) -> None:
        if task.id in self._where:
            raise ValueError(f"task {task.id} is queued already")
        key, task_type = task.spec.fairness_key, task.spec.task_type
        index = self._types.get(task_type)
        if index is None:
            index = self._types[task_type] = _TypeIndex()
        tenant = self._tenants.get(key)
        if tenant is None:
            # Active again (or for the first time): start level with the keys waiting
            # for this type, or where the last winner was served if none wait.
            head = self._head(index) if self._tenants else None
            floor = head[0] if head is not None else self._vtime
            tenant = self._tenants[key] = _Tenant(key, floor, self._next_stamp(), self._stride(key))
        lane = tenant.lanes.get(task_type)
        if lane is None:
            lane = tenant.lanes[task_type] = index.lanes[key] = _Lane(tenant, task_type, index)
            self._index(lane)
        lane.push(task)
        tenant.size += 1
        index.count += 1
        self._where[task.id] = lane

    def remove(self, task_id: TaskId) -> Task | None:
        """Take a task out of the queue (e.g. cancelled); None if it is not queued."""
        lane = self._where.pop(task_id, None)
        if lane is None:
            return None
        task = lane.tasks.pop(task_id)
        self._taken(lane)
        return task

    def pop(self, task_types: Sequence[str]) -> Task | None:
        """Take the next task among these types, or None if none of them has one."""
        if len(self._tenants) == 1:
            # One key has no one to share with: its pass stays where it is.
            tenant = next(iter(self._tenants.values()))
            if len(task_types) == 1:
                lane = tenant.lanes.get(task_types[0])
                lanes = [lane] if lane is not None else []
            else:
                lanes = [lane for name in task_types if (lane := tenant.lanes.get(name))]
            if not lanes:
                return None
            self._vtime = tenant.pass_
            return self._take_best(tenant, lanes)
        indexes = [
            index
            for name in dict.fromkeys(task_types)
            if (index := self._types.get(name)) is not None and index.count
        ]
        if not indexes:
            return None
        return self._take_fair(indexes)

    # Fairness ----------------------------------------------------------------

    def _stride(self, key: str) -> int:
        return max(1, _STRIDE // self._weights.get(key, 1))

    def _next_stamp(self) -> int:
        self._stamp += 1
        return self._stamp

    def _index(self, lane: _Lane) -> None:
        """Give a lane a current entry in its type's heap."""
        tenant, index = lane.tenant, lane.index
        lane.entry = (tenant.pass_, tenant.stamp, tenant.key)
        heapq.heappush(index.heap, lane.entry)
        if len(index.heap) > 2 * len(index.lanes) + 64:
            for other in index.lanes.values():
                owner = other.tenant
                other.entry = (owner.pass_, owner.stamp, owner.key)
            index.heap = [other.entry for other in index.lanes.values() if other.entry]
            heapq.heapify(index.heap)

    def _head(self, index: _TypeIndex) -> _Entry | None:
        """The current entry of the type's key with the lowest pass, or None.

        Passes only grow, so an outdated entry sorts too early, never too late:
        re-sorting the entries that reach the top is enough.
        """
        heap = index.heap
        while heap:
            entry = heap[0]
            lane = index.lanes.get(entry[2])
            if lane is None or lane.entry is not entry:
                heapq.heappop(heap)  # a lane that has emptied since
                continue
            tenant = lane.tenant
            if entry[1] == tenant.stamp:
                return entry
            lane.entry = (tenant.pass_, tenant.stamp, tenant.key)
            heapq.heapreplace(heap, lane.entry)
        return None

    def _take_fair(self, indexes: list[_TypeIndex]) -> Task:
        """Serve the key with the lowest pass among these types, and move it on."""
        best: _Entry | None = None
        for index in indexes:
            head = self._head(index)
            if head is not None and (best is None or head < best):
                best = head
        assert best is not None, "every index given has a waiting task"
        tenant = self._tenants[best[2]]
        lanes: list[_Lane] = []
        for index in indexes:
            lane = index.lanes.get(tenant.key)
            if lane is not None:
                lanes.append(lane)
                # The winner heads this heap; set it aside so the runner-up shows.
                if index.heap[0] is lane.entry:
                    heapq.heappop(index.heap)
                    lane.entry = None
        runner_up: _Entry | None = None
        for index in indexes:
            head = self._head(index)
            if head is not None and (runner_up is None or head < runner_up):
                runner_up = head
        served_at = tenant.pass_
        if runner_up is not None:
            # Within one stride of the runner-up: no burst for time it could not be served.
            served_at = max(served_at, runner_up[0] - self._tenants[runner_up[2]].stride)
        self._vtime = served_at
        tenant.pass_ = served_at + tenant.stride
        tenant.stamp = self._next_stamp()
        task = self._take_best(tenant, lanes)
        for lane in lanes:
            if lane.entry is None and lane.tasks:
                self._index(lane)
        return task

    # Within a key --------------------------------------------------------------

    def _take_best(self, tenant: _Tenant, lanes: list[_Lane]) -> Task:
        """The key's best task among these lanes: by priority, or every Nth by age."""
        tenant.pops += 1
        by_age = tenant.pops % self._interval == 0
        if len(lanes) == 1:
            lane = lanes[0]
            task_id = lane.head_by_age()[1] if by_age else lane.head_by_priority()[2]
        elif by_age:
            aged = [(lane.head_by_age(), lane) for lane in lanes]
            (_, task_id), lane = min(aged, key=lambda pair: pair[0])
        else:
            ranked = [(lane.head_by_priority(), lane) for lane in lanes]
            (_, _, task_id), lane = min(ranked, key=lambda pair: pair[0])
        del self._where[task_id]
        task = lane.tasks.pop(task_id)
        self._taken(lane)
        return task

    def _taken(self, lane: _Lane) -> None:
        """A task has left this lane: drop the lane, and its key, once empty."""
        tenant = lane.tenant
        tenant.size -= 1
        lane.index.count -= 1
        if lane.tasks:
            if len(lane.by_age) > 2 * len(lane.tasks) + 64:
                lane.compact()
            return
        del tenant.lanes[lane.task_type]
        del lane.index.lanes[tenant.key]
        if not tenant.size:
            del self._tenants[tenant.key]
