"""Consistent hashing with bounded loads: the same routing key goes to the same worker.

Each worker owns `vnodes` points on a 64-bit ring (blake2b of "worker#i", never the
salted built-in `hash`). A task's key hashes to a point; the task goes to the first
worker clockwise from it that is ready and below its bounded load (Mirrokni, Thorup
and Zadimoghaddam, "Consistent Hashing with Bounded Loads", SODA 2018):

    len(held) < ceil((1 + hash_load_epsilon) * (H + 1) * capacity / C)

where H and C are the tasks held by and the capacity of all ready workers, so with
equal capacities the bound is (1 + e) times the mean load counting the new task.
If no ready worker passes the bound (it cannot happen while the counts are exact:
the bounds sum to more than H), the first ready worker clockwise takes the task.

Where a key lands depends only on which workers are ready and their loads: a worker
that is not ready is skipped exactly as if it had no points. So a worker that fills
up, or leaves, moves only its own keys, to their next worker clockwise, and a worker
that frees a slot gets them back. That leaves ring membership free to lag behind
readiness: `remove()` (called both when a worker fills up and when it leaves) only
marks it not ready, in O(1); its points are pruned, in one O(ring) pass, once it has
not been ready for `prune_after_s`, and come back (the same points, always) if it is
ready again. Pruning only makes walks shorter; it never changes a placement.

A task with no routing key is placed by the same walk from the hash of its id, so
keyless work spreads over the ring under the same load bound.

The bound is relative: while the ready workers hold fewer tasks than there are of
them, it is one task each, so concurrent tasks of one key spread out; a key's tasks
that come one at a time, or into a busy pool, stay on its worker.

Cost of `pick`: a bisect, then a walk of about n / r ring points for n ring members
of which r are ready, plus the over-bound workers it passes (O(1/e^2) expected, per
the paper); it checks each worker's bound at most once. A worker joining costs one
O(ring) merge at the next pick. `rank` is O(a log a) for `a` allowed workers.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence
from typing import ClassVar

from broker.core.strategies._base import Outcome, StrategyEnv, WorkerSlot, default_env
from broker.domain import Task, WorkerId

RING_SIZE = 1 << 64
_SLOT_BITS = 32  # a ring entry is (point << _SLOT_BITS) | the owner's slot number
_SLOT_MASK = (1 << _SLOT_BITS) - 1


def ring_point(text: str) -> int:
    """Where a key or a worker's virtual node sits on the ring: 64 bits of blake2b."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def worker_points(worker_id: WorkerId, vnodes: int) -> list[int]:
    """A worker's virtual nodes, sorted: the same for the same worker id, always."""
    return sorted(ring_point(f"{worker_id}#{i}") for i in range(vnodes))


def task_point(task: Task) -> int:
    """The ring point a task starts its walk from: its routing key's, else its id's."""
    key = task.spec.placement.routing_key
    return ring_point(f"key:{key}" if key else f"task:{task.id}")


class ConsistentHash:
    """Keeps each routing key on one worker, within (1 + e) of the mean load."""

    name: ClassVar[str] = "consistent_hash"

    VNODES: ClassVar[int] = 100
    PRUNE_AFTER_S: ClassVar[float] = 300.0

    def __init__(
        self,
        env: StrategyEnv | None = None,
        *,
        vnodes: int = VNODES,
        prune_after_s: float = PRUNE_AFTER_S,
    ) -> None:
        self._env = env or default_env()
        self._vnodes = vnodes
        self._prune_after_s = prune_after_s
        # The ring: sorted ints, each a point and the slot number of the worker that
        # owns it (ints sort in C, about 50x faster than (point, id) tuples). Points of
        # workers that joined since the last pick wait in `_joining`, merged in one sort.
        self._ring: list[int] = []
        self._joining: list[int] = []
        self._slot_of: dict[WorkerId, int] = {}  # every worker ever seen, by join order
        self._owners: list[WorkerId] = []  # ... and back
        self._points_of: dict[WorkerId, list[int]] = {}  # each ring member's sorted points
        self._ready: dict[WorkerId, WorkerSlot] = {}
        # What each ready worker adds to the totals below, as of its last add/update.
        self._counted: dict[WorkerId, tuple[int, int]] = {}
        self._held_total = 0
        self.note = ""  # why the last pick went where it did, when the ring owner was full
        self._capacity_total = 0
        self._idle: OrderedDict[WorkerId, float] = OrderedDict()  # not ready since, oldest first

    # The index ---------------------------------------------------------------

    def add(self, worker: WorkerSlot) -> None:
        worker_id = worker.worker_id
        if worker_id in self._ready:
            self.update(worker)
            return
        self._ready[worker_id] = worker
        self._count(worker)
        self._idle.pop(worker_id, None)
        if worker_id not in self._points_of:
            self._join(worker_id)
        self._prune()

    def remove(self, worker: WorkerSlot) -> None:
        worker_id = worker.worker_id
        if self._ready.pop(worker_id, None) is None:
            return
        self._uncount(worker_id)
        self._idle[worker_id] = self._env.clock.now()
        self._prune()

    def update(self, worker: WorkerSlot) -> None:
        if worker.worker_id in self._ready:
            self._uncount(worker.worker_id)
            self._count(worker)

    def observe(self, outcome: Outcome) -> None:
        pass

    def __len__(self) -> int:
        return len(self._ready)

    @property
    def ring_members(self) -> int:
        """Workers with points on the ring: the ready ones and those not yet pruned."""
        return len(self._points_of)

    # Choosing ----------------------------------------------------------------

    def pick(self, task: Task) -> WorkerSlot | None:
        ready = self._ready
        if not ready:
            return None
        if self._joining:
            self._ring += self._joining
            self._ring.sort()
            self._joining.clear()
        ring, owners = self._ring, self._owners
        start = bisect_left(ring, task_point(task) << _SLOT_BITS)
        first: WorkerSlot | None = None
        rejected: set[WorkerId] = set()
        for i in itertools.chain(range(start, len(ring)), range(start)):
            worker = ready.get(owners[ring[i] & _SLOT_MASK])
            if worker is None or worker.worker_id in rejected:
                continue
            if self._under_bound(worker):
                if first is None:
                    self.note = ""
                else:
                    self.note = (
                        f"{self.name}: ring owner {first.worker_id} over its bounded load, "
                        f"spilled to {worker.worker_id}"
                    )
                return worker
            if first is None:
                first = worker
            rejected.add(worker.worker_id)
            if len(rejected) == len(ready):
                break
        if first is not None:
            self.note = (
                f"{self.name}: every ready worker over its bounded load; "
                f"ring owner {first.worker_id}"
            )
        return first

    def rank(self, task: Task, allowed: Sequence[WorkerSlot]) -> WorkerSlot:
        # The allowed workers in the order the ring walk would meet them: the
        # clockwise distance from the key to each one's nearest point, by bisect.
        point = task_point(task)

        def distance(worker: WorkerSlot) -> tuple[int, int]:
            points = self._points_of.get(worker.worker_id)
            if points is None:
                points = worker_points(worker.worker_id, self._vnodes)
            i = bisect_left(points, point)
            ahead = points[i] - point if i < len(points) else points[0] + RING_SIZE - point
            return ahead, self._slot_of.get(worker.worker_id, _SLOT_MASK)

        in_ring_order = sorted(allowed, key=distance)
        return next((w for w in in_ring_order if self._under_bound(w)), in_ring_order[0])

    def _under_bound(self, worker: WorkerSlot) -> bool:
        """Whether the worker may take one more task under the bounded-load rule."""
        if self._capacity_total <= 0:
            return True
        epsilon = self._env.hash_load_epsilon
        share = (self._held_total + 1) * worker.capacity / self._capacity_total
        return len(worker.held) < math.ceil((1 + epsilon) * share)

    # Internals ---------------------------------------------------------------

    def _count(self, worker: WorkerSlot) -> None:
        held, capacity = len(worker.held), worker.capacity
        self._counted[worker.worker_id] = (held, capacity)
        self._held_total += held
        self._capacity_total += capacity

    def _uncount(self, worker_id: WorkerId) -> None:
        held, capacity = self._counted.pop(worker_id)
        self._held_total -= held
        self._capacity_total -= capacity

    def _join(self, worker_id: WorkerId) -> None:
        """Put a worker's points on the ring, at the next pick: O(ring) then, as timsort
        merges the sorted runs, and once for all the workers that joined meanwhile."""
        slot = self._slot_of.get(worker_id)
        if slot is None:
            slot = self._slot_of[worker_id] = len(self._owners)
            self._owners.append(worker_id)
        points = self._points_of[worker_id] = worker_points(worker_id, self._vnodes)
        self._joining += [point << _SLOT_BITS | slot for point in points]

    def _prune(self) -> None:
        """Take the points of workers not ready for `prune_after_s` off the ring."""
        cutoff = self._env.clock.now() - self._prune_after_s
        stale: set[WorkerId] = set()
        while self._idle:
            worker_id, since = next(iter(self._idle.items()))
            if since > cutoff:
                break
            del self._idle[worker_id]
            del self._points_of[worker_id]
            stale.add(worker_id)
        if stale:
            slots = {self._slot_of[worker_id] for worker_id in stale}
            self._ring = [e for e in self._ring if e & _SLOT_MASK not in slots]
            self._joining = [e for e in self._joining if e & _SLOT_MASK not in slots]
