"""Dispatch: place what can be placed in the pools that changed, once per loop turn.

Whatever frees a slot or brings a task asks for a dispatch of its pool; the requests
of one turn of the event loop are gathered and served together by one `call_soon`,
so a burst of results or submits costs one placement round per pool, and each worker
gets one assignments message for it.

What the pools learn goes to the store too: where sticky keys live after each round,
and their statistics (each strategy arm's outcomes, the run times of task types) at most
every LEARNING_SAVE_S.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from broker.clock import Clock
from broker.core.arms import ArmStats
from broker.core.lifecycle import TaskLifecycle
from broker.core.runtimes import RunStats, RuntimeKey
from broker.core.scheduler import PoolScheduler
from broker.domain import WorkerId
from broker.errors import Unavailable

log = logging.getLogger("taskbroker.engine")

# How often at most the pools' statistics are queued for the store. Saved after every
# round, they added four statements to nearly every commit: with one-slot workers, a
# commit per task. A broker that crashes forgets at most this much of what it learned.
LEARNING_SAVE_S = 1.0


class LearningLog(Protocol):
    """Where a pool's learning is kept (the store)."""

    def save_sticky(self, pool: str, key: str, worker_id: WorkerId) -> None: ...
    def save_runtime(self, key: RuntimeKey, stats: RunStats) -> None: ...
    def save_arm_stats(self, pool: str, arms: Sequence[ArmStats]) -> None: ...


class Dispatcher:
    """The pools waiting for a placement round, and the loop callback that runs it."""

    def __init__(
        self,
        core: TaskLifecycle,
        store: LearningLog,
        clock: Clock,
        apply: Callable[[], object],
    ) -> None:
        self._core = core
        self._store = store
        self._clock = clock
        self._apply = apply  # the lifecycle's effects: assignments out, tasks stored
        self._dirty: set[str] = set()
        self._handle: asyncio.Handle | None = None
        self._learning_timer: asyncio.TimerHandle | None = None  # statistics to save
        self.active = False  # new assignments allowed

    def request(self, pools: Iterable[str]) -> None:
        """Place again in these pools, soon (once for all the requests of this turn)."""
        self._dirty.update(pools)
        if self._handle is None and self.active:
            self._handle = asyncio.get_running_loop().call_soon(self._run)

    def stop(self) -> None:
        """No more assignments (a drain): the planned round is dropped, and the planned
        save of the pools' statistics (whoever stops it saves them: `save_learning`)."""
        self.active = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._learning_timer is not None:
            self._learning_timer.cancel()
            self._learning_timer = None

    def _run(self) -> None:
        self._handle = None
        if not self.active:
            return
        core = self._core
        now = self._clock.now()
        pools, self._dirty = self._dirty, set()
        for name in pools:
            core.place(name, now)
            self._persist_learning(core.pools[name])
        self._apply()

    def save_learning(self) -> None:
        """Queue for the store the statistics every pool learned since they were last
        saved: what the timer does, and the broker as it stops, pauses or hands a pool
        over (broker.cluster)."""
        if self._learning_timer is not None:
            self._learning_timer.cancel()
            self._learning_timer = None
        for pool in self._core.pools.values():
            if pool.arms_changed:
                self._store.save_arm_stats(pool.name, pool.arm_stats())
                pool.arms_changed = False
            model = pool.runtimes
            if model.dirty:
                for changed in model.dirty:
                    self._store.save_runtime(changed, model.stats[changed])
                model.dirty.clear()

    def _persist_learning(self, pool: PoolScheduler) -> None:
        """Queue the pool's sticky keys for the store, and its statistics soon."""
        if pool.sticky_moves:
            for key, worker_id in pool.sticky_moves.items():
                self._store.save_sticky(pool.name, key, worker_id)
            pool.sticky_moves.clear()
        if self._learning_timer is None and (pool.arms_changed or pool.runtimes.dirty):
            loop = asyncio.get_running_loop()
            self._learning_timer = loop.call_later(LEARNING_SAVE_S, self._learning_due)

    def _learning_due(self) -> None:
        self._learning_timer = None
        try:
            self.save_learning()
        except Unavailable:  # the store closed under a broker that did not stop first
            log.warning("the pools' statistics were not saved: the store is closed")
