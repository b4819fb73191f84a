"""The engine's wake-ups: one heap of (time, what) instead of a loop timer per task.

Delayed tasks, start deadlines, execution timeouts and circuit breakers' cool-downs
all become due at some time. The engine asks `pop_due(now)` when its one loop timer
fires (or when a test advances a fake clock and calls `Engine.tick`). Setting a key
again replaces its time; `cancel` forgets it; entries that were replaced or
cancelled are skipped, and the heap is compacted once they outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable


class Timers:
    """Named wake-up times; each key is due at most once per `set`."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._live: dict[Hashable, tuple[float, int]] = {}
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def set(self, key: Hashable, when: float) -> None:
        """Be due at `when` (replacing any earlier time for this key)."""
        entry = (when, next(self._order))
        self._live[key] = entry
        heapq.heappush(self._heap, (*entry, key))
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [(w, n, k) for k, (w, n) in self._live.items()]
            heapq.heapify(self._heap)

    def cancel(self, key: Hashable) -> None:
        self._live.pop(key, None)

    def next_at(self) -> float | None:
        """When the next key is due, or None if none is set."""
        heap = self._heap
        while heap and self._live.get(heap[0][2]) != heap[0][:2]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[Hashable]:
        """The keys due at or before `now`, earliest first; they are forgotten."""
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, order, key = heapq.heappop(heap)
            if self._live.get(key) == (when, order):
                del self._live[key]
                due.append(key)
        return due
