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

The ring is kept in sorted blocks of at most `2 * RING_BLOCK` points, each block two
compact arrays (points, and their owners' slot numbers), with each block's first
point in a list, and a directory by a point's top bits of the block to start from
(about two entries a block): a lookup goes to its block at once and bisects it, over
machine integers rather than a million Python objects spread over the heap.

A task with no routing key is placed by the same walk from the hash of its id, so
keyless work spreads over the ring under the same load bound.

The bound is relative: while the ready workers hold fewer tasks than there are of
them, it is one task each, so concurrent tasks of one key spread out; a key's tasks
that come one at a time, or into a busy pool, stay on its worker.

Cost of `pick`: a directory look-up and a bisect, then a walk of about n / r ring
points for n ring members of which r are ready, plus the over-bound workers it passes
(O(1/e^2) expected, per the paper); it checks each worker's bound at most once (the
first point's owner before the walk starts, since most picks end there). A worker
joining inserts its points into their blocks at the next pick,
O(vnodes * (log ring + RING_BLOCK)), and the directory is made anew, O(blocks), when a
block splits or its first point changes; when more join at once than the ring holds
already, the ring is rebuilt in one sort.
`rank` is O(a log a) for `a` allowed workers.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import ClassVar

from broker.core.strategies._base import Outcome, StrategyEnv, WorkerSlot, default_env
from broker.domain import Task, WorkerId

RING_SIZE = 1 << 64
_SLOT_BITS = 32  # a ring entry is (point << _SLOT_BITS) | the owner's slot number
_SLOT_MASK = (1 << _SLOT_BITS) - 1
RING_BLOCK = 512  # ring points per block; a block splits past twice this


def ring_point(text: str) -> int:
    """Where a key or a worker's virtual node sits on the ring: 64 bits of blake2b."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def worker_points(worker_id: WorkerId, vnodes: int) -> list[int]:
    """A worker's virtual nodes, sorted: the same for the same worker id, always."""
    return sorted(ring_point(f"{worker_id}#{i}") for i in range(vnodes))


# blake2b's state after "key:" and after "task:": a task's point hashes only the rest
# (the same digest as ring_point of the whole text, without setting up blake2b anew).
_KEY_PREFIX = hashlib.blake2b(b"key:", digest_size=8)
_TASK_PREFIX = hashlib.blake2b(b"task:", digest_size=8)


def task_point(task: Task) -> int:
    """The ring point a task starts its walk from: its routing key's, else its id's
    (ring_point of "key:<key>", else of "task:<id>")."""
    key = task.spec.placement.routing_key
    if key:
        state = _KEY_PREFIX.copy()
        state.update(key.encode())
    else:
        state = _TASK_PREFIX.copy()
        state.update(str(task.id).encode())
    return int.from_bytes(state.digest(), "big")


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
        self._stretch = 1 + self._env.hash_load_epsilon  # the bound's factor, (1 + e)
        self._vnodes = vnodes
        self._prune_after_s = prune_after_s
        # The ring, in sorted blocks: each block's points, the slot numbers of the
        # workers that own them, and each block's first point. Points of workers that
        # joined since the last pick wait in `_joining` as ints (point << _SLOT_BITS |
        # slot), so that they sort as (point, slot) pairs.
        self._points: list[array[int]] = []
        self._slots: list[array[int]] = []
        self._firsts: list[int] = []
        # Where to start looking in `_firsts` for a point: by its top `64 - _shift` bits,
        # the block holding the first point of that stretch of the ring (made anew
        # whenever `_firsts` changes; about two stretches a block).
        self._directory: list[int] = [0]
        self._shift = 64
        self._size = 0
        self._joining: list[int] = []
        self._slot_of: dict[WorkerId, int] = {}  # every worker ever seen, by join order
        self._owners: list[WorkerId] = []  # ... and back
        self._ready_at: list[WorkerSlot | None] = []  # by slot number: the ready ones
        # Each ring member's sorted points, in an array (8 bytes a point).
        self._points_of: dict[WorkerId, array[int]] = {}
        self._ready: dict[WorkerId, WorkerSlot] = {}
        # What each ready worker adds to the totals below, as of its last add/update.
        # (Two dicts rather than one of pairs: `update` runs twice for every task
        # placed, and then only the held count changes.)
        self._counted_held: dict[WorkerId, int] = {}
        self._counted_capacity: dict[WorkerId, int] = {}
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
        self._ready_at[self._slot_of[worker_id]] = worker
        self._prune()

    def remove(self, worker: WorkerSlot) -> None:
        worker_id = worker.worker_id
        if self._ready.pop(worker_id, None) is None:
            return
        self._ready_at[self._slot_of[worker_id]] = None
        self._uncount(worker_id)
        self._idle[worker_id] = self._env.clock.now()
        self._prune()

    def update(self, worker: WorkerSlot) -> None:
        counted = self._counted_held
        worker_id = worker.worker_id
        was = counted.get(worker_id)  # present exactly while the worker is ready
        if was is not None:
            held = counted[worker_id] = len(worker.held)
            self._held_total += held - was
            capacity = worker.capacity
            was = self._counted_capacity[worker_id]
            if capacity != was:
                self._counted_capacity[worker_id] = capacity
                self._capacity_total += capacity - was

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
            self._merge_joining()
        point = task_point(task)
        firsts = self._firsts
        if firsts:
            # Most picks end at the first point clockwise: look at it before walking.
            # The block to look in: the last whose first point is below `point` (or the
            # first block), from the directory rather than a bisect of `firsts`.
            b = self._directory[point >> self._shift]
            blocks = len(firsts)
            while b + 1 < blocks and firsts[b + 1] < point:
                b += 1
            block = self._points[b]
            i = bisect_left(block, point)
            if i < len(block):
                worker = self._ready_at[self._slots[b][i]]
            elif b + 1 < blocks:
                worker = self._ready_at[self._slots[b + 1][0]]
            else:
                worker = self._ready_at[self._slots[0][0]]
            if worker is not None:
                # _under_bound, inline: len(held) < ceil(x) is len(held) < x for a whole
                # number len(held), so no ceil.
                capacity_total = self._capacity_total
                if capacity_total <= 0 or len(worker.held) < self._stretch * (
                    (self._held_total + 1) * worker.capacity / capacity_total
                ):
                    self.note = ""
                    return worker
        return self._pick_by_walk(point, ready)

    def _pick_by_walk(self, point: int, ready: dict[WorkerId, WorkerSlot]) -> WorkerSlot | None:
        """The first ready worker under its bound clockwise from `point`, else the first
        ready one, with the note saying why."""
        ready_at = self._ready_at
        first: WorkerSlot | None = None
        rejected: set[int] = set()  # slot numbers
        for slot in self._walk(point):
            worker = ready_at[slot]
            if worker is None or slot in rejected:
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
            rejected.add(slot)
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
            points: Sequence[int] | None = self._points_of.get(worker.worker_id)
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
        share = (self._held_total + 1) * worker.capacity / self._capacity_total
        return len(worker.held) < math.ceil(self._stretch * share)

    # Internals ---------------------------------------------------------------

    def _count(self, worker: WorkerSlot) -> None:
        held = self._counted_held[worker.worker_id] = len(worker.held)
        capacity = self._counted_capacity[worker.worker_id] = worker.capacity
        self._held_total += held
        self._capacity_total += capacity

    def _uncount(self, worker_id: WorkerId) -> None:
        held = self._counted_held.pop(worker_id)
        capacity = self._counted_capacity.pop(worker_id)
        self._held_total -= held
        self._capacity_total -= capacity

    def _walk(self, point: int) -> Iterator[int]:
        """The slot numbers of the ring's points clockwise from `point`, once round."""
        firsts = self._firsts
        if not firsts:
            return
        start = max(bisect_left(firsts, point) - 1, 0)
        offset = bisect_left(self._points[start], point)
        blocks = self._slots
        count = len(blocks)
        yield from blocks[start][offset:]  # a slice of an array: a copy in C
        for b in range(start + 1, count):
            yield from blocks[b]
        for b in range(start):
            yield from blocks[b]
        yield from blocks[start][:offset]

    def _merge_joining(self) -> None:
        """Put the points that wait in `_joining` on the ring: into their blocks, or,
        when they outnumber the ring's, by rebuilding it in one sort."""
        joining = sorted(self._joining)
        self._joining.clear()
        if len(joining) >= self._size:
            self._rebuild([*self._entries(), *joining])
            return
        points, slots, firsts = self._points, self._slots, self._firsts
        firsts_moved = False
        for entry in joining:
            point, slot = entry >> _SLOT_BITS, entry & _SLOT_MASK
            b = max(bisect_right(firsts, point) - 1, 0)
            block, owners = points[b], slots[b]
            i = bisect_left(block, point)
            while i < len(block) and block[i] == point and owners[i] < slot:
                i += 1  # equal points (vanishingly rare) in slot order, as the ints sort
            block.insert(i, point)
            owners.insert(i, slot)
            if i == 0:
                firsts[b] = point
                firsts_moved = True
            if len(block) > 2 * RING_BLOCK:
                points[b : b + 1] = [block[:RING_BLOCK], block[RING_BLOCK:]]
                slots[b : b + 1] = [owners[:RING_BLOCK], owners[RING_BLOCK:]]
                firsts[b : b + 1] = [block[0], block[RING_BLOCK]]
                firsts_moved = True
        self._size += len(joining)
        if firsts_moved:
            self._index_blocks()

    def _entries(self) -> list[int]:
        """The ring's points as ints (point << _SLOT_BITS | slot), in ring order."""
        return [
            point << _SLOT_BITS | slot
            for block, owners in zip(self._points, self._slots, strict=True)
            for point, slot in zip(block, owners, strict=True)
        ]

    def _rebuild(self, entries: list[int]) -> None:
        """Make the ring's blocks from these entries (ints as in `_entries`)."""
        entries.sort()
        self._points, self._slots, self._firsts = [], [], []
        for b in range(0, len(entries), RING_BLOCK):
            chunk = entries[b : b + RING_BLOCK]
            self._points.append(array("Q", [entry >> _SLOT_BITS for entry in chunk]))
            self._slots.append(array("I", [entry & _SLOT_MASK for entry in chunk]))
            self._firsts.append(chunk[0] >> _SLOT_BITS)
        self._size = len(entries)
        self._index_blocks()

    def _index_blocks(self) -> None:
        """Make `_directory` anew for `_firsts`: for each stretch of the ring, the last
        block whose first point is below the stretch's start (or the first block)."""
        firsts = self._firsts
        blocks = len(firsts)
        bits = blocks.bit_length() + 1
        shift = 64 - bits
        directory = []
        b = 0
        for stretch in range(1 << bits):
            start = stretch << shift
            while b + 1 < blocks and firsts[b + 1] < start:
                b += 1
            directory.append(b)
        self._directory, self._shift = directory, shift

    def _join(self, worker_id: WorkerId) -> None:
        """Put a worker's points on the ring, at the next pick (see `_merge_joining`)."""
        slot = self._slot_of.get(worker_id)
        if slot is None:
            slot = self._slot_of[worker_id] = len(self._owners)
            self._owners.append(worker_id)
            self._ready_at.append(None)
        points = worker_points(worker_id, self._vnodes)
        self._points_of[worker_id] = array("Q", points)
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
            self._rebuild([e for e in self._entries() if e & _SLOT_MASK not in slots])
            self._joining = [e for e in self._joining if e & _SLOT_MASK not in slots]
