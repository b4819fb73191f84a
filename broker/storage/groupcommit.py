"""Group commit, for every backend: writes are queued in memory, and one writer hands
everything queued since its last commit to the backend as one `WriteBatch`, to be written
in one transaction, then wakes whoever waits for it. So thousands of submissions per
second cost a few fsyncs, not one each.

`GroupCommit` is the write half of a `Store` (see broker.storage.contract): the queued
writes, `durable()` and `flush()`, the writer loop and the store's lifecycle. A backend
store subclasses it, gives it a `Backend` (how a task is kept until the commit, and how a
batch is committed), and adds the reads, each of which awaits `_settle()` first.

What a write queues is a snapshot. Tasks are kept in the backend's own form (`TaskRowT`,
SQLite's row tuple, the memory backend's copy of the task), so that a snapshot costs no
more than the row the backend would build at commit time anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Final, Generic, Protocol, Self, TypeVar

from broker.clock import Clock
from broker.domain import (
    ACTIVE_STATES,
    ApiToken,
    ConfigChange,
    PoolConfig,
    Task,
    TaskId,
    WorkerId,
    WorkerSpec,
)
from broker.errors import StorageError, Unavailable
from broker.stats import ArmStats, RollupRow, RunStats, RuntimeKey

_log = logging.getLogger("taskbroker.store")

# How long a save may wait for a commit that someone waits for, before it gets one of its
# own. A save that is not yet committed is lost to a crash: the task is then recovered
# in the state of its last commit (pending, assigned or running: run again all the same).
SAVE_DELAY_S: Final = 0.05
# A task a worker holds is saved one commit later than other saves: most tasks end within
# that commit, and then only their end is written, one row update in place of two. A crash
# before the held save is written recovers the task as it was before it was sent: pending,
# as a restart leaves a held task anyway (its interrupted hand-out is not counted).
HELD_STATES: Final = ACTIVE_STATES
# Turns of the event loop the writer lets run before each commit, so that what has already
# arrived joins it rather than waits for the next: a message takes a turn or two from the
# socket to a queued write (a worker's results, a client's submits). With one-slot
# workers a commit then carries more results; with none waiting it costs two idle turns.
GATHER_TURNS: Final = 2

TaskRowT = TypeVar("TaskRowT")


@dataclass(frozen=True, slots=True)
class WriteBatch(Generic[TaskRowT]):
    """Everything queued for one commit. Saves, pools, sticky keys, run times and worker
    events keep only the latest per key; inserts, config changes and rollups keep all.

    The backend writes it in this order: inserts (so a save queued after an insert lands
    on its row), saves, pools, config changes (after the pool change they record), the
    config file's settings of pools, API tokens, sticky keys, run times, rollups (each added to the
    stored row of its key), connects, heartbeats, disconnects (a connect drops any
    disconnect queued before it).
    """

    inserts: list[TaskRowT] = field(default_factory=list)
    saves: dict[TaskId, TaskRowT] = field(default_factory=dict)
    pools: dict[str, tuple[PoolConfig, float]] = field(default_factory=dict)  # (pool, at)
    config_changes: list[ConfigChange] = field(default_factory=list)
    file_settings: dict[str, str] = field(default_factory=dict)  # pool -> settings (JSON)
    tokens: dict[str, ApiToken] = field(default_factory=dict)  # by name
    sticky: dict[tuple[str, str], tuple[WorkerId, float]] = field(default_factory=dict)
    runtimes: dict[RuntimeKey, RunStats] = field(default_factory=dict)  # copies
    arm_stats: dict[str, tuple[ArmStats, ...]] = field(default_factory=dict)  # pool -> copies
    rollups: list[RollupRow] = field(default_factory=list)
    connects: dict[WorkerId, tuple[WorkerSpec, float]] = field(default_factory=dict)
    heartbeats: dict[WorkerId, float] = field(default_factory=dict)
    disconnects: dict[WorkerId, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        """Whether anything is queued."""
        return bool(
            self.inserts
            or self.saves
            or self.pools
            or self.config_changes
            or self.file_settings
            or self.tokens
            or self.sticky
            or self.runtimes
            or self.arm_stats
            or self.rollups
            or self.connects
            or self.heartbeats
            or self.disconnects
        )


class Backend(Protocol[TaskRowT]):
    """What a storage backend gives the group commit."""

    def inserted_row(self, task: Task) -> TaskRowT:
        """A snapshot of a new task, in the form `commit` writes it."""
        ...

    def saved_row(self, task: Task) -> TaskRowT:
        """A snapshot of a saved task's state (everything but its spec)."""
        ...

    async def commit(self, batch: WriteBatch[TaskRowT]) -> None:
        """Write the batch in one transaction: all of it, or (raising) none of it."""

    async def close(self) -> None:
        """Release what the backend holds; called once, after the last commit."""


class GroupCommit(Generic[TaskRowT]):
    """The queued writes, durability and lifecycle of a store; see the module docstring.

    The writer starts with the first write that needs a commit, as a task of the store's
    own, or under `run()`; `close()` commits what is left and stops it.
    """

    def __init__(self, backend: Backend[TaskRowT], clock: Clock) -> None:
        self._backend = backend
        self._clock = clock
        self._inserted_row = backend.inserted_row
        self._saved_row = backend.saved_row
        self._queued: WriteBatch[TaskRowT] = WriteBatch()
        self._waiters: list[asyncio.Future[None]] = []  # resolved by the next commit
        self._in_flight: list[asyncio.Future[None]] | None = None  # by the running one
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._commits = 0
        self._save_timer: asyncio.TimerHandle | None = None  # commits saves left waiting
        # Saves of held tasks (HELD_STATES) queued since the last commit started, and those
        # queued before it, which the next commit writes. A task is in at most one of these
        # and the queued batch's saves.
        self._held_new: dict[TaskId, TaskRowT] = {}
        self._held_due: dict[TaskId, TaskRowT] = {}

    @property
    def commits(self) -> int:
        """How many transactions the writer has committed; lets tests see the grouping."""
        return self._commits

    # -- writes ---------------------------------------------------------------------------

    async def insert_tasks(self, tasks: Sequence[Task]) -> None:
        """Add new tasks, returning once they are committed.

        Concurrent callers share a transaction, so a failing batch (say, a duplicate id)
        fails every caller in it. Cancelling the wait does not withdraw the tasks.
        """
        self._check_writable()
        if tasks:
            inserted_row = self._inserted_row
            self._queued.inserts.extend(inserted_row(task) for task in tasks)
            await self.durable()

    def save(self, task: Task) -> None:
        """Queue a snapshot of the task's state (everything but its spec) for the next commit.

        Only the last save of a task before a commit is written. The task must have been
        inserted already; await `durable()` when the caller needs the write committed. The
        save of a held task (assigned or running) waits for the commit after next, and
        `durable()` does not wait for it (see HELD_STATES); `flush()` and reads do.
        """
        if self._closing:
            raise Unavailable("the task store is closed")
        row = self._saved_row(task)
        task_id = task.id
        saves = self._queued.saves
        if task.state not in HELD_STATES or task_id in saves:
            saves[task_id] = row
            if self._held_new:
                self._held_new.pop(task_id, None)
            if self._held_due:
                self._held_due.pop(task_id, None)
        elif task_id in self._held_due:
            self._held_due[task_id] = row  # as due as the save it replaces
        else:
            self._held_new[task_id] = row
        # Nobody waits for a save by itself: it rides along with the next commit someone
        # waits for (a result, a submit; a held task's, with the one after), or is
        # committed SAVE_DELAY_S later. So a task's assignment and its result cost one
        # commit, not two, of which the second would wait for the first.
        if self._writer is None:
            self.start()
        if self._save_timer is None:
            self._save_timer = asyncio.get_running_loop().call_later(SAVE_DELAY_S, self._saves_due)

    async def upsert_pool(self, pool: PoolConfig) -> None:
        """Create the pool or change its settings, returning once committed."""
        self._check_writable()
        self._queued.pools[pool.name] = (pool, self._clock.now())
        await self.durable()

    async def record_config_change(self, change: ConfigChange) -> None:
        """Append an audited configuration change, returning once it is committed."""
        self._check_writable()
        self._queued.config_changes.append(change)
        await self.durable()

    async def save_token(self, token: ApiToken) -> None:
        """Store an API token, replacing the one of its name; returns once committed."""
        self._check_writable()
        self._queued.tokens[token.name] = token
        await self.durable()

    async def record_file_settings(self, pool: str, settings: Mapping[str, Any]) -> None:
        """Remember the settings the config file last gave the pool, returning once
        committed."""
        self._check_writable()
        self._queued.file_settings[pool] = json.dumps(settings, sort_keys=True)
        await self.durable()

    def save_sticky(self, pool: str, key: str, worker_id: WorkerId) -> None:
        """Queue where a sticky key now lives, for the next commit."""
        self._check_writable()
        self._queued.sticky[(pool, key)] = (worker_id, self._clock.now())

    def save_runtime(self, key: RuntimeKey, stats: RunStats) -> None:
        """Queue a snapshot of learned run-time statistics, for the next commit."""
        self._check_writable()
        self._queued.runtimes[key] = RunStats(
            stats.count, stats.mean_s, stats.m2, stats.abs_error_s, stats.predicted
        )

    def save_arm_stats(self, pool: str, arms: Sequence[ArmStats]) -> None:
        """Queue a snapshot of the pool's arm statistics, for the next commit."""
        self._check_writable()
        self._queued.arm_stats[pool] = tuple(replace(arm) for arm in arms)

    def save_rollups(self, rows: Sequence[RollupRow]) -> None:
        """Queue metrics-history rows for the next commit; each is added to the stored row
        of its key (pool, task type, worker, bucket_s, start), or stored if there is none."""
        self._check_writable()
        self._queued.rollups.extend(rows)

    def worker_connected(self, spec: WorkerSpec, at: float) -> None:
        """Queue a worker's registration; a worker that reconnects is connected again."""
        self._check_writable()
        self._queued.connects[spec.worker_id] = (spec, at)
        # Connects are written before disconnects, so an earlier disconnect must not follow.
        self._queued.disconnects.pop(spec.worker_id, None)
        self._wake()

    def worker_heartbeat(self, worker_id: WorkerId, at: float) -> None:
        """Note a worker's latest heartbeat; one never connected is ignored.

        It rides along with the next commit rather than causing one: a heartbeat is worth a
        row update, not an fsync.
        """
        self._check_writable()
        self._queued.heartbeats[worker_id] = at

    def worker_disconnected(self, worker_id: WorkerId, at: float) -> None:
        """Queue the end of a worker's connection; one never connected is ignored."""
        self._check_writable()
        self._queued.disconnects[worker_id] = at
        self._wake()

    def durable(self) -> asyncio.Future[None]:
        """A future that resolves once every write queued before this call is committed.

        It raises the commit's error if that failed. Each call gets its own future, so
        cancelling one waiter affects no other.
        """
        future = asyncio.get_running_loop().create_future()
        if self._queued:
            if self._writer is not None and self._writer.done() and not self._closing:
                future.set_exception(Unavailable("the task store's writer stopped"))
            else:
                self._waiters.append(future)
                self._wake()
        elif self._in_flight is not None:
            self._in_flight.append(future)
        else:
            future.set_result(None)
        return future

    async def flush(self) -> None:
        """Wait until every write queued so far is committed, held tasks' saves too."""
        self._queue_held()
        await self.durable()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Start the writer as a task of the store's own, unless it has started already."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="taskbroker-store-writer")
        return self._writer

    async def run(self) -> None:
        """The writer loop, for a TaskGroup: `task_group.create_task(store.run())`.

        Returns once `close()` has committed the last batch; raises what stopped the writer
        if it died; cancelling it cancels the writer (what is queued then is committed by
        `close()`). Call it once.
        """
        if self._writer is None and self._closing:
            return
        await self.start()

    async def close(self) -> None:
        """Commit everything still queued, stop the writer and release the backend.

        Idempotent. Raises the commit's error if the last writes could not be committed.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._queue_held()
        final = self.durable()
        try:
            writer = self._writer
            if writer is not None and not writer.done():
                self._wakeup.set()
                try:
                    await asyncio.wait([writer])
                except asyncio.CancelledError:
                    writer.cancel()  # whoever cancels the close stops the writer too
                    raise
            if writer is not None and not writer.cancelled():
                writer.exception()  # logged by the writer, raised by run(): not news here
            if self._queued or self._waiters:
                # The writer is gone (cancelled, crashed) or never started: commit here.
                await self._commit_queued()
            await final
        finally:
            try:
                await self._backend.close()
            finally:
                self._closed.set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- for the backends' reads -----------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closing:
            raise Unavailable("the task store is closed")

    async def _settle(self, of_tasks: Collection[TaskId] | None = None) -> None:
        """Before a read: refuse it once closed, else wait for the writes queued before it,
        held tasks' saves included: all of them, or for a read of given tasks (`of_tasks`),
        theirs only, so that reads by id do not undo the wait of the others.

        A failed commit is news for its own waiters; a read only needs it settled.
        """
        if self._closed.is_set():
            raise Unavailable("the task store is closed")
        if of_tasks is None:
            self._queue_held()
        elif self._held_due or self._held_new:
            saves = self._queued.saves
            for held in (self._held_due, self._held_new):
                for task_id in of_tasks:
                    row = held.pop(task_id, None)
                    if row is not None:
                        saves[task_id] = row
        with contextlib.suppress(Exception):
            await self.durable()

    # -- the writer -----------------------------------------------------------------------

    def _queue_held(self) -> None:
        """Queue the held tasks' saves for the next commit, with the other writes."""
        if self._held_due or self._held_new:
            self._queued.saves.update(self._held_due)
            self._queued.saves.update(self._held_new)
            self._held_due, self._held_new = {}, {}

    def _saves_due(self) -> None:
        self._save_timer = None
        self._wakeup.set()

    def _wake(self) -> None:
        if self._writer is None and not self._closing:
            self.start()
        self._wakeup.set()

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                for _ in range(GATHER_TURNS):
                    await asyncio.sleep(0)
                self._wakeup.clear()
                await self._commit_queued()
                if self._closing and not self._queued:
                    return
        except Exception:
            _log.exception("the task store's writer stopped")
            raise
        finally:
            # Reached with waiters only if cancelled or broken: nobody may wait forever.
            stopped = Unavailable("the task store's writer stopped")
            for future in [*self._waiters, *(self._in_flight or ())]:
                if not future.done():
                    future.set_exception(stopped)
            self._waiters, self._in_flight = [], None

    async def _commit_queued(self) -> None:
        """Commit everything queued so far in one transaction, then settle its waiters."""
        batch = self._queued
        self._queued = WriteBatch()
        if self._held_due:
            batch.saves.update(self._held_due)
        self._held_due, self._held_new = self._held_new, {}
        if self._save_timer is not None:  # the saves are in this batch
            self._save_timer.cancel()
            self._save_timer = None
        waiters, self._waiters = self._waiters, []
        self._in_flight = waiters  # durable() joins this batch while it is committed
        error: Exception | None = None
        if batch:
            try:
                await self._backend.commit(batch)
                self._commits += 1
            except Exception as exc:
                _log.exception(
                    "commit failed; lost %d inserted and %d saved tasks, %d waiters told",
                    len(batch.inserts),
                    len(batch.saves),
                    len(waiters),
                )
                error = StorageError(f"the task store could not commit: {exc}")
                error.__cause__ = exc
        for future in waiters:
            if future.done():  # its caller stopped waiting
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        self._in_flight = None
        if self._held_due and self._save_timer is None and not self._closing:
            # Nobody may wait for the next commit: the held saves get one of their own.
            self._save_timer = asyncio.get_running_loop().call_later(SAVE_DELAY_S, self._saves_due)
