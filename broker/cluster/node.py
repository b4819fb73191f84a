"""One broker's part in a cluster: its row in `brokers`, its leases in `pool_leases`, and
the notifications that wake it.

The rules (deploy/cluster.md has the whole design):

- A broker renews its row and its leases every third of `cluster_lease_s`, in one
  statement each. Times are the database's (clock_timestamp()), so brokers' clocks need
  not agree.
- A lease is taken only when it is free or has expired, and taking it adds one to the
  pool's epoch. Every commit of the owner carries the epochs it holds and fails whole if
  one has moved on (the fence, broker.storage.postgres).
- The owner stops handing out work on its own clock at 80% of the lease after the last
  renewal it sent, before any other broker may take the pool; a renewal that succeeds
  resumes it. A renewal that finds a lease gone (taken over, because this broker was
  paused or cut off) makes the broker step down: it stops, drops its workers and ends
  with LeaseLost, to be started again by its supervisor with a fresh view.
- A pool goes to the live broker that rendezvous hashing names (assignment); a free
  pool that broker does not take within a lease is taken by any broker.
- Submits for a pool another broker owns are stored and NOTIFY its owner
  (taskbroker_submitted), which adopts them; tasks that end NOTIFY taskbroker_finished,
  so a broker waking a waiter for a task it does not schedule reads it then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import asyncpg

from broker.cluster.assignment import desired_owner
from broker.domain import Task, TaskId
from broker.errors import BrokerError
from broker.storage.postgres import PostgresStore

# What a call to PostgreSQL raises when the database cannot be reached or answer.
_UNREACHABLE: Final = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)

log = logging.getLogger("taskbroker.cluster")

_NOW: Final = "extract(epoch from clock_timestamp())::float8"
# The share of a lease after the renewal was sent at which the owner stops dispatching.
_SAFE_SHARE: Final = 0.8
_TERMINAL: Final = frozenset({4, 5, 6, 7})
_REMEMBERED: Final = 1_000_000  # adopted ids kept, so that none is adopted twice


class LeaseLost(BrokerError):
    """This broker lost a pool's lease (another broker holds it now) or could not reach
    the database for a whole lease: it steps down, to be started again."""


class ClusterEngine(Protocol):
    """What the node asks of the engine (broker.runtime.engine.Engine)."""

    def pause(self) -> None: ...
    def start(self) -> None: ...
    def idle_pool(self, pool: str) -> bool: ...
    def adopt(self, tasks: Iterable[Task]) -> int: ...
    def watched(self) -> set[TaskId]: ...
    def finished_elsewhere(self, tasks: Iterable[Task]) -> None: ...
    def disconnect_all(self, reason: str) -> None: ...
    def save_learning(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BrokerRow:
    """A broker as `brokers list` shows it."""

    broker_id: str
    address: str
    started_at: float
    expires_at: float
    pools: tuple[tuple[str, int, float], ...]  # (pool, epoch, acquired_at)
    now: float


def new_broker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ClusterNode:
    """This broker's membership and leases; see the module docstring."""

    def __init__(
        self,
        store: PostgresStore,
        *,
        broker_id: str,
        address: str,
        lease_s: float,
        on_pause: Callable[[str], None] = lambda why: None,
        on_resume: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self.broker_id = broker_id
        self.address = address
        self.lease_s = lease_s
        self.interval = lease_s / 3
        self.owned: dict[str, int] = {}  # pool -> epoch
        self._owners: dict[str, str] = {}  # pool -> its owner's address, as last read
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._expiry: asyncio.TimerHandle | None = None
        self._renewed_at = time.monotonic()
        self.paused = False
        self.stepped_down = False
        self._engine: ClusterEngine | None = None
        self._submitted: dict[str, set[TaskId]] = {}
        self._finished: set[TaskId] = set()
        self._wake: asyncio.Event | None = None
        self._live: dict[str, float] = {}  # live broker -> started at, as last read
        self._adopted: dict[TaskId, None] = {}  # the latest adopted ids, oldest first
        # Pools taken whose unfinished tasks are not queued here yet (the database did
        # not answer the read): read at the next round.
        self._unloaded: set[str] = set()

    # -- what the engine and the store ask ------------------------------------------------

    def owns(self, pool: str) -> bool:
        return pool in self.owned and not self.stepped_down

    def owner(self, pool: str) -> str:
        if self.owns(pool):
            return self.address
        return self._owners.get(pool, "")

    def fence(self) -> tuple[list[str], list[int]]:
        return list(self.owned), list(self.owned.values())

    # -- joining and leaving ----------------------------------------------------------------

    async def join(self, pools: Sequence[str]) -> None:
        """Register, give brokers starting at the same time a moment to register too, and
        take this broker's share of the free pools. Call before the engine recovers: it
        loads the tasks of the pools held then."""
        self._store.set_fence(self.fence, source=self.broker_id)
        sent = time.monotonic()
        await self._store.pool.execute(
            "INSERT INTO brokers (broker_id, address, started_at, expires_at)"
            f" VALUES ($1, $2, {_NOW}, {_NOW} + $3) ON CONFLICT (broker_id) DO UPDATE"
            " SET address = excluded.address, started_at = excluded.started_at,"
            " expires_at = excluded.expires_at",
            self.broker_id,
            self.address,
            self.lease_s,
        )
        self._renewed(sent)
        await asyncio.sleep(self.interval)
        await self._take(pools)
        log.info(
            "broker %s at %s joined; it schedules %s",
            self.broker_id,
            self.address,
            ", ".join(sorted(self.owned)) or "no pool yet",
        )

    async def leave(self) -> None:
        """Hand the leases back (free at once for the other brokers) and deregister;
        given up after a lease if the database does not answer."""
        self._cancel_expiry()
        with contextlib.suppress(
            OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError
        ):
            async with asyncio.timeout(self.lease_s):
                await self._hand_back()
            log.info("broker %s left; its pools are free", self.broker_id)
        self.owned.clear()

    async def _hand_back(self) -> None:
        pools, epochs = self.fence()
        await self._store.pool.execute(
            f"UPDATE pool_leases SET owner = '', expires_at = {_NOW}"
            " FROM unnest($1::text[], $2::bigint[]) AS f(pool, epoch)"
            " WHERE pool_leases.pool = f.pool AND pool_leases.epoch = f.epoch",
            pools,
            epochs,
        )
        await self._store.pool.execute("DELETE FROM brokers WHERE broker_id = $1", self.broker_id)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, engine: ClusterEngine, pools: Callable[[], Sequence[str]]) -> None:
        """Renew, take free pools, and act on notifications, until cancelled; raises
        LeaseLost when this broker has to step down."""
        self._engine = engine
        self._wake = asyncio.Event()
        listener: asyncpg.Connection | None = None
        try:
            while True:
                if listener is None or listener.is_closed():
                    listener = await self._listen(listener)
                    if listener is not None:
                        await self._catch_up()  # what was notified while nobody listened
                await self._round(pools())
                next_round = time.monotonic() + self.interval
                while (left := next_round - time.monotonic()) > 0:
                    try:
                        async with asyncio.timeout(left):
                            await self._wake.wait()
                    except TimeoutError:
                        break
                    self._wake.clear()
                    await self._deliver()  # never cut short: it holds what was notified
        finally:
            self._cancel_expiry()
            if listener is not None and not listener.is_closed():
                listener.terminate()

    async def _round(self, pools: Sequence[str]) -> None:
        sent = time.monotonic()
        try:
            kept = await self._renew()
        except _UNREACHABLE as exc:
            log.warning("cannot renew the leases: %s", exc)
            if time.monotonic() - self._renewed_at > self.lease_s:
                await self._step_down(f"PostgreSQL unreachable for a whole lease: {exc}")
            return
        lost = sorted(set(self.owned) - kept)
        if lost:
            await self._step_down(f"the leases of {', '.join(lost)} were taken over")
        self._renewed(sent)
        if self.paused:
            self.paused = False
            log.warning("leases renewed again; dispatching resumes")
            self._on_resume()
        # The database may go away at any point of the round: what is left waits for the
        # next one, whose renewal decides whether this broker carries on.
        try:
            await self._hand_over()
            self._unloaded.update(await self._take(pools))
            await self._load_taken()
        except (*_UNREACHABLE, BrokerError) as exc:
            log.warning("cannot hand over or take pools now: %s", exc)

    async def _load_taken(self) -> None:
        """Queue the unfinished tasks of the pools taken. A read that failed is done again
        at the next round; by then tasks of these pools may have ended here, so their
        queued saves are committed first, for the read not to bring them back (one that
        ends while the read runs still may: delivery is at least once)."""
        if self._engine is None:
            self._unloaded.clear()  # nothing runs yet: the start reads every task
            return
        pools = sorted(self._unloaded & set(self.owned))
        if pools:
            await self._store.flush()
            adopted = self._adopt(await self._store.load_unfinished_of(pools))
            log.info("took pools %s: %d unfinished tasks requeued", ", ".join(pools), adopted)
        self._unloaded.clear()

    async def _renew(self) -> set[str]:
        """Renew this broker's row and leases; the pools whose lease it still holds."""
        pools, epochs = self.fence()
        async with self._store.pool.acquire() as conn:
            rows = await conn.fetch(
                "WITH alive AS (UPDATE brokers SET expires_at = "
                f"{_NOW} + $3, address = $4 WHERE broker_id = $5 RETURNING 1)"
                f" UPDATE pool_leases SET expires_at = {_NOW} + $3"
                " FROM unnest($1::text[], $2::bigint[]) AS f(pool, epoch)"
                " WHERE pool_leases.pool = f.pool AND pool_leases.epoch = f.epoch"
                " AND pool_leases.owner = $5 RETURNING pool_leases.pool",
                pools,
                epochs,
                self.lease_s,
                self.address,
                self.broker_id,
            )
            me = await conn.fetchval("SELECT 1 FROM brokers WHERE broker_id = $1", self.broker_id)
            if not me:
                await conn.execute(  # deregistered while away: register again
                    "INSERT INTO brokers (broker_id, address, started_at, expires_at)"
                    f" VALUES ($1, $2, {_NOW}, {_NOW} + $3)",
                    self.broker_id,
                    self.address,
                    self.lease_s,
                )
        return {row[0] for row in rows}

    async def _hand_over(self) -> None:
        """Free the pools another live broker should have, if this one holds nothing of
        them (no task, no worker): so pools spread when a broker joins. A busy pool stays
        until it is idle, or until its owner leaves or dies."""
        engine = self._engine
        if engine is None or not self._live:
            return
        leaving = [
            pool
            for pool in sorted(self.owned)
            if desired_owner(pool, self._live) != self.broker_id and engine.idle_pool(pool)
        ]
        if not leaving:
            return
        # A task that ended here may still have its save queued (it rides along with a
        # later commit: broker.storage.groupcommit.SAVE_DELAY_S), and what the pools
        # learned is saved only now and then. Commit them while the pool is this broker's:
        # once the pool is out of the fence, a task's save would change nothing.
        engine.save_learning()
        try:
            await self._store.flush()
        except BrokerError as exc:
            log.warning("keeping pools %s for now: %s", ", ".join(leaving), exc)
            return
        for pool in leaving:
            desired = desired_owner(pool, self._live)
            if pool not in self.owned or not engine.idle_pool(pool):
                continue
            epoch = self.owned.pop(pool)  # owns() is False from here: nothing more comes
            self._owners.pop(pool, None)
            # Free from now on: the broker it should go to takes it first, any other one
            # only after a lease (so never this one straight back).
            await self._store.pool.execute(
                f"UPDATE pool_leases SET owner = '', expires_at = {_NOW}"
                " WHERE pool = $1 AND epoch = $2",
                pool,
                epoch,
            )
            log.info("broker %s hands pool %s over to %s", self.broker_id, pool, desired)

    async def _take(self, pools: Sequence[str]) -> list[str]:
        """Take the free pools this broker should have (or that nobody took for a lease);
        the pools taken. Also refreshes where the others' pools are."""
        conn_pool = self._store.pool
        now = await conn_pool.fetchval(f"SELECT {_NOW}")
        live = self._live = {
            row[0]: row[1]
            for row in await conn_pool.fetch(
                "SELECT broker_id, started_at FROM brokers WHERE expires_at > $1", now
            )
        }
        leases = {
            row[0]: row
            for row in await conn_pool.fetch(
                "SELECT l.pool, l.owner, l.expires_at, coalesce(b.address, '')"
                " FROM pool_leases l LEFT JOIN brokers b ON b.broker_id = l.owner"
            )
        }
        self._owners = {
            pool: row[3] for pool, row in leases.items() if row[1] and row[2] > now and row[3]
        }
        taken: list[str] = []
        for pool in sorted(set(pools)):
            if pool in self.owned:
                continue
            lease = leases.get(pool)
            if lease is not None and lease[1] and lease[2] > now:
                continue  # held
            desired = desired_owner(pool, live)
            if desired != self.broker_id:
                if lease is not None:
                    free_for = now - lease[2]
                else:
                    free_for = now - live.get(desired, now) - self.lease_s
                if free_for < self.lease_s:
                    continue  # its broker should take it
            epoch = await conn_pool.fetchval(
                "INSERT INTO pool_leases (pool, owner, epoch, acquired_at, expires_at)"
                f" VALUES ($1, $2, 1, {_NOW}, {_NOW} + $3) ON CONFLICT (pool) DO UPDATE"
                " SET owner = excluded.owner, epoch = pool_leases.epoch + 1,"
                " acquired_at = excluded.acquired_at, expires_at = excluded.expires_at"
                " WHERE pool_leases.owner = '' OR pool_leases.expires_at < excluded.acquired_at"
                " RETURNING epoch",
                pool,
                self.broker_id,
                self.lease_s,
            )
            if epoch is not None:
                self.owned[pool] = int(epoch)
                self._owners[pool] = self.address
                taken.append(pool)
                log.info("broker %s holds pool %s (epoch %d)", self.broker_id, pool, epoch)
        return taken

    # -- the lease on this broker's own clock ----------------------------------------------

    def _renewed(self, sent: float) -> None:
        """A renewal sent at `sent` (monotonic) succeeded: dispatch is safe until 80% of a
        lease after it."""
        self._renewed_at = sent
        self._cancel_expiry()
        if self._engine is None:
            return  # nothing is handed out before the broker runs
        loop = asyncio.get_running_loop()
        at = loop.time() + (sent + self.lease_s * _SAFE_SHARE - time.monotonic())
        self._expiry = loop.call_at(at, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        if not self.paused and not self.stepped_down:
            self.paused = True
            log.warning("no renewal for %.1f s: dispatching stops", self.lease_s * _SAFE_SHARE)
            self._on_pause("the leases could not be renewed")

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def _step_down(self, why: str) -> None:
        """Stop for good: no dispatch, no writes, no workers; LeaseLost once the database
        answers again (so that the restart finds it), or at once if it does."""
        self.stepped_down = True
        self._cancel_expiry()
        log.critical("broker %s steps down: %s", self.broker_id, why)
        self._on_pause(why)
        if self._engine is not None:
            self._engine.disconnect_all(f"this broker stepped down: {why}")
        while True:
            try:
                await self._store.pool.fetchval("SELECT 1")
                break
            except _UNREACHABLE:
                await asyncio.sleep(self.interval)
        raise LeaseLost(f"broker {self.broker_id} stepped down: {why}")

    # -- notifications ----------------------------------------------------------------------

    async def _listen(self, old: asyncpg.Connection | None) -> asyncpg.Connection | None:
        if old is not None:
            old.terminate()
        connecting = asyncio.ensure_future(asyncpg.connect(self._store.url, timeout=self.interval))
        try:
            conn = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            connecting.add_done_callback(_terminate)  # not left open once it connects
            raise
        except _UNREACHABLE as exc:
            log.warning("cannot listen for other brokers' notifications: %s", exc)
            return None
        try:
            await conn.add_listener("taskbroker_submitted", self._notified)
            await conn.add_listener("taskbroker_finished", self._notified)
        except BaseException as exc:
            conn.terminate()
            if isinstance(exc, Exception):
                log.warning("cannot listen for other brokers' notifications: %s", exc)
                return None
            raise
        return conn

    def _notified(self, _conn: Any, _pid: int, channel: str, payload: object) -> None:
        source, _, rest = str(payload).partition("|")
        if source == self.broker_id:
            return  # its own submits are queued here, its own ends told here already
        pool, _, ids = rest.rpartition(":")
        task_ids = {int(i) for i in ids.split(",") if i}
        if channel == "taskbroker_submitted":
            if self.owns(pool):
                self._submitted.setdefault(pool, set()).update(task_ids)
        else:
            self._finished.update(task_ids)
        if self._wake is not None:
            self._wake.set()

    async def _deliver(self) -> None:
        engine = self._engine
        if engine is None or self.stepped_down:
            return
        submitted, self._submitted = self._submitted, {}
        ids = [i for pool, found in submitted.items() if self.owns(pool) for i in found]
        finished, self._finished = self._finished, set()
        watched = finished & engine.watched()
        try:
            if ids:
                tasks = await self._store.get_tasks(ids)
                self._adopt([t for t in tasks if int(t.state) not in _TERMINAL])
            if watched:
                tasks = await self._store.get_tasks(sorted(watched))
                engine.finished_elsewhere(t for t in tasks if t.state.terminal)
        except BrokerError as exc:
            log.warning("could not read the tasks other brokers notified: %s", exc)

    def _adopt(self, tasks: list[Task]) -> int:
        """Queue these unfinished tasks here, each once: a read that began before the task
        ran and ended here must not bring it back."""
        assert self._engine is not None
        seen = self._adopted
        fresh = [task for task in tasks if task.id not in seen]
        for task in fresh:
            seen[task.id] = None
        while len(seen) > _REMEMBERED:
            del seen[next(iter(seen))]
        return self._engine.adopt(fresh)

    async def _catch_up(self) -> None:
        if self._engine is None or not self.owned:
            return
        try:
            self._adopt(await self._store.load_unfinished_of(sorted(self.owned)))
        except BrokerError as exc:
            log.warning("could not read the unfinished tasks: %s", exc)


def _terminate(connecting: asyncio.Future[asyncpg.Connection]) -> None:
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().terminate()


async def list_brokers(store: PostgresStore) -> list[BrokerRow]:
    """Every registered broker with the pools it holds, for `taskbroker brokers list`."""
    now = await store.pool.fetchval(f"SELECT {_NOW}")
    brokers = await store.pool.fetch(
        "SELECT broker_id, address, started_at, expires_at FROM brokers ORDER BY broker_id"
    )
    leases = await store.pool.fetch(
        "SELECT owner, pool, epoch, acquired_at FROM pool_leases"
        " WHERE owner <> '' AND expires_at > $1 ORDER BY pool",
        now,
    )
    held: dict[str, list[tuple[str, int, float]]] = {}
    for owner, pool, epoch, acquired_at in leases:
        held.setdefault(owner, []).append((pool, epoch, acquired_at))
    return [BrokerRow(b[0], b[1], b[2], b[3], tuple(held.get(b[0], ())), now) for b in brokers]
