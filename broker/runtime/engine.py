"""The broker's runtime: tasks in, placements out, results back, all durable.

The gRPC edge calls into the Engine with domain types. The Engine feeds each call to
the task lifecycle (broker.core.lifecycle), which decides in memory, and applies the
effects it leaves (broker.runtime.effects): tasks stored (the store's group commits
make them durable), assignments and cancellations sent on the workers' channels,
observers and watchers told, pools placed again (broker.runtime.dispatch), the one
ticker re-armed for the next timer (broker.runtime.ticker). It runs on the event loop
and never blocks it: the only waits are on the store's commits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from typing import Protocol

from broker.clock import Clock
from broker.config import BrokerConfig
from broker.core.lifecycle import TaskLifecycle
from broker.core.runtimes import RunStats
from broker.core.validation import validate_batch, validate_capacity, validate_worker
from broker.domain import (
    Backlog,
    ConfigChange,
    PoolConfig,
    PoolStats,
    Task,
    TaskFilter,
    TaskId,
    TaskResult,
    TaskSpec,
    TaskState,
    WorkerId,
    WorkerSpec,
    WorkerStatus,
)
from broker.errors import AlreadyExists, InvalidArgument, NotFound, NotOwner, Unavailable
from broker.observability.observe import Observers
from broker.runtime import stats
from broker.runtime.dispatch import Dispatcher
from broker.runtime.effects import Applier
from broker.runtime.finished import FinishedTasks
from broker.runtime.idempotency import Claimed, Claims
from broker.runtime.pools import PoolAdmin
from broker.runtime.registry import WorkerChannel, WorkerRegistry, WorkerSession
from broker.runtime.ticker import Ticker
from broker.runtime.watchers import TaskCallback, Watchers
from broker.storage.contract import Store

log = logging.getLogger("taskbroker.engine")


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerConnection:
    """A registered worker stream: the worker's spec, the token that resumes its session
    on a later stream, how long its tasks are kept for that, and whether this stream
    resumed an earlier one."""

    spec: WorkerSpec
    resume_token: str
    resume_window_s: float
    resumed: bool
    # On a resume: the seq of the last Results message taken from the session.
    results_seen: int = 0


class Ownership(Protocol):
    """Which pools this broker schedules, when several brokers share a database
    (broker.cluster); alone, a broker schedules every pool."""

    def owns(self, pool: str) -> bool: ...
    def owner(self, pool: str) -> str:
        """The address of the broker that schedules the pool, "" if none does now."""
        ...


class _Alone:
    def owns(self, pool: str) -> bool:
        return True

    def owner(self, pool: str) -> str:
        return ""


class Engine:
    """Tasks, pools and workers of one broker."""

    def __init__(
        self, config: BrokerConfig, store: Store, clock: Clock, rng: random.Random | None = None
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._core = core = TaskLifecycle(config, clock, rng or random.Random())
        self._workers = WorkerRegistry(store, clock)
        observers = Observers()
        self._watchers = Watchers(core, store, observers)
        self._claims = Claims(store, clock, config.idempotency_retention_s)
        self._dispatcher = Dispatcher(core, store, clock, self._apply)
        self._ticker = Ticker(core.timers, clock, self.tick)
        self._applier = Applier(
            core,
            store,
            self._workers,
            observers,
            self._watchers,
            self._dispatcher,
            self._ticker,
        )
        self._pools = PoolAdmin(core, store, clock, self._dispatcher.request)
        self.accepting = False  # submits allowed
        # The pools this broker schedules: their tasks wait in its queues and their workers
        # connect here. A task submitted for another pool is stored for its owner only.
        self.ownership: Ownership = _Alone()
        # Held by a retry from its read of the failed tasks until their new state is
        # durable, and by each purge batch, so that a purge never deletes a task that a
        # retry is bringing back.
        self._finished_tasks = FinishedTasks(
            config,
            core,
            store,
            clock,
            self._watchers,
            self._apply,
            self._dispatcher.request,
        )

    @property
    def config(self) -> BrokerConfig:
        return self._config

    @property
    def observers(self) -> Observers:
        """Tracing, metrics and the metrics history: told what happens to tasks."""
        return self._applier.observers

    @property
    def dispatching(self) -> bool:
        """Whether new assignments are allowed."""
        return self._dispatcher.active

    @property
    def stale_results(self) -> int:
        """Results for tasks the worker no longer holds."""
        return self._core.stale_results

    def lease_s(self, pool: str) -> float:
        """The lease on a task held by a worker of `pool`: the pool's lease_s, or the
        heartbeat timeout."""
        return self._core.lease_s(pool)

    def now(self) -> float:
        """The engine's clock."""
        return self._clock.now()

    def _apply(self) -> asyncio.Future[None] | None:
        return self._applier.apply()

    # Lifecycle -----------------------------------------------------------------

    async def recover(self) -> int:
        """Load pools and unfinished tasks from the store; return how many were requeued."""
        core = self._core
        # The config file's pools change only the keys the file changed since it was
        # last seen; a change made at run time stands until then.
        await self._pools.recover_from_file(await self._store.list_pools(), self._config.pools)
        runtimes = await self._store.load_runtimes()
        sticky = await self._store.load_sticky()
        arm_stats = await self._store.load_arm_stats()
        for pool in await self._store.list_pools():
            scheduler = core.add_pool(pool)
            scheduler.runtimes.load(runtimes)
            scheduler.restore_arm_stats(arm_stats.get(pool.name, []))
            scheduler.restore_sticky(sticky.get(pool.name, {}))
        counts = await self._store.count_by_pool_state()
        self._watchers.finished = Counter({key: n for key, n in counts.items() if key[1].terminal})
        core.waiting.next_id = await self._store.max_task_id() + 1
        core.waiting.next_seq = await self._store.max_seq() + 1
        unfinished = await self._store.load_unfinished()
        now = self._clock.now()
        for task in unfinished:
            core.recovered(task, now)
        self._apply()
        await self._store.flush()
        return len(unfinished)

    def start(self) -> None:
        """Take submits and dispatch work."""
        self.accepting = True
        self._dispatcher.active = True
        self._ticker.active = True
        self._dispatcher.request(self._core.pools)
        self._ticker.arm()

    async def drain(self, grace: float) -> bool:
        """Stop taking submits and handing out work; wait up to `grace` s for held tasks.

        Returns whether every held task came back in time. Tasks still held stay
        assigned in the store and are requeued when the broker starts again.
        """
        self.accepting = False
        self._dispatcher.stop()
        self._ticker.stop()
        deadline = self._clock.now() + grace
        for session in self._workers:
            if session.detached_at is None:
                session.channel.send_drain("the broker is stopping", deadline, stopping=True)
        self._applier.update_idle()
        try:
            async with asyncio.timeout(grace):
                await self._applier.idle.wait()
        except TimeoutError:
            log.warning("shutdown grace ran out with %d tasks still on workers", self._core.active)
            return False
        return True

    def pause(self) -> None:
        """Stop taking submits and handing out work at once, holding what is held (a
        broker that lost its lease on a pool: broker.cluster). What the pools learned so
        far is queued for the store."""
        self.accepting = False
        self._dispatcher.save_learning()
        self._dispatcher.stop()
        self._ticker.stop()

    def adopt(self, tasks: Iterable[Task]) -> int:
        """Unfinished tasks of pools this broker schedules that it does not hold yet (one
        submitted through another broker, or a pool taken over): they wait in its queues,
        as at recovery. Returns how many were new."""
        core, now, adopted, pools = self._core, self._clock.now(), 0, set()
        for task in tasks:
            if task.id not in core.live and task.spec.pool in core.pools:
                core.recovered(task, now)
                pools.add(task.spec.pool)
                adopted += 1
        if adopted:
            self._apply()
            self._dispatcher.request(pools)
        return adopted

    def idle_pool(self, pool: str) -> bool:
        """Whether this broker holds nothing of the pool: no unfinished task, no worker.
        Such a pool can be handed to another broker (broker.cluster) at no cost."""
        if any(session.spec.pool == pool for session in self._workers):
            return False
        return not any(task.spec.pool == pool for task in self._core.live.values())

    def watched(self) -> set[TaskId]:
        """The ids of the tasks someone here waits for."""
        return self._watchers.watched()

    def finished_elsewhere(self, tasks: Iterable[Task]) -> None:
        """Tasks another broker finished: tell whoever waits for them here."""
        self._watchers.told(tasks)

    def _check_owner(self, pool: str) -> None:
        if not self.ownership.owns(pool):
            owner = self.ownership.owner(pool)
            where = f"the broker at {owner}" if owner else "another broker (none holds it now)"
            raise NotOwner(f"pool {pool!r} is scheduled by {where}; connect there", owner)

    # Submitting and reading tasks ----------------------------------------------

    async def submit(self, specs: Sequence[TaskSpec], client: str = "") -> list[Task]:
        """Validate and durably store a batch, all or nothing, then queue it.

        A spec whose idempotency key matches an earlier task of its pool (within the
        retention window) gives that task instead of a new one; see `submit_detailed`.
        """
        return [task for task, _ in await self.submit_detailed(specs, client)]

    async def submit_detailed(
        self, specs: Sequence[TaskSpec], client: str = ""
    ) -> list[tuple[Task, bool]]:
        """As `submit`, with each task whether it existed already (an idempotency key).

        Back-pressure: ResourceExhausted (with a retry hint) when the batch would take a
        pool, a task type or the broker past its queue bound, or a rate limit that
        rejects; a rate limit in "queue" mode delays the tasks instead. `client` is the
        caller's identity, for per-client rate limits.
        """
        if not self.accepting:
            raise Unavailable("the broker is not taking tasks now (it is shutting down)")
        config = self._config
        validate_batch(
            specs,
            pools=self._core.pools,
            max_batch_size=config.max_batch_size,
            max_payload_bytes=config.max_payload_bytes,
            now=self._clock.now(),
        )
        found: dict[int, Task] = {}
        claimed: Claimed = {}
        if any(spec.idempotency_key for spec in specs):
            found, claimed = await self._claims.find_existing(specs)
        try:
            _check_same_tasks(specs, found)
            tasks = self._core.admit(specs, found, client, self._clock.now())
            fresh = [task for index, task in enumerate(tasks) if index not in found]
            if fresh:
                # Queue the tasks as soon as they are durable, even if our caller is
                # cancelled meanwhile: a stored task must never be missing from its queue.
                committed = asyncio.ensure_future(self._store.insert_tasks(fresh))
                committed.add_done_callback(lambda f: self._enqueue_committed(fresh, f))
                await asyncio.shield(committed)
        except BaseException as exc:
            self._claims.fail(claimed, exc)
            raise
        finally:
            if claimed:
                self._claims.release(claimed)
        if claimed:
            self._claims.resolve(claimed, tasks)
        if found:
            for index in found:
                self._core.events[(specs[index].pool, "deduplicated")] += 1
        return [(task, index in found) for index, task in enumerate(tasks)]

    def _enqueue_committed(self, tasks: list[Task], committed: asyncio.Future[None]) -> None:
        if committed.cancelled() or committed.exception() is not None:
            self._core.not_stored(tasks)
            return
        owns = self.ownership.owns
        elsewhere = [task for task in tasks if not owns(task.spec.pool)]
        if elsewhere:  # stored for their pools' owners, who are woken by the store
            self._core.not_stored(elsewhere)
            tasks = [task for task in tasks if owns(task.spec.pool)]
        now = self._clock.now()
        self._core.submitted(tasks, now)
        self._apply()
        if self.observers:
            self.observers.submitted(tasks, now)

    async def get(self, task_id: TaskId) -> Task:
        """The task; a pending one with why it waits in its placement_note, if no worker
        that could take it takes work (see `TaskLifecycle.why_waiting`)."""
        core = self._core
        task = core.live.get(task_id)
        if task is not None:
            note = core.why_waiting(task, self._clock.now())
            if note and note != task.placement_note:
                return dataclasses.replace(task, placement_note=note)
            return task
        task = await self._store.get_task(task_id)
        if task is None:
            raise NotFound(f"task {task_id} does not exist")
        return task

    async def list_tasks(self, flt: TaskFilter) -> list[Task]:
        if flt.pool and flt.pool not in self._core.pools:
            raise NotFound(f"pool {flt.pool!r} does not exist")
        if not 1 <= flt.limit <= 1000:
            raise InvalidArgument(f"limit must be 1..1000, got {flt.limit}")
        return await self._store.list_tasks(flt)

    async def watch(self, task_ids: Iterable[TaskId], callback: TaskCallback) -> list[TaskId]:
        """Call `callback` once with each task when it is terminal and durable.

        A task already finished is passed at once. Returns the ids that do not exist.
        """
        return await self._watchers.watch(task_ids, callback)

    def unwatch(self, task_ids: Iterable[TaskId], callback: TaskCallback) -> None:
        self._watchers.unwatch(task_ids, callback)

    async def wait(self, task_ids: Sequence[TaskId], max_wait: float) -> list[Task]:
        """The tasks once all are terminal, or as they are after `max_wait` seconds."""
        return await self._watchers.wait(
            task_ids,
            max_wait,
            self.get,
            max_batch_size=self._config.max_batch_size,
            max_wait_s=self._config.max_wait_s,
        )

    async def cancel(self, task_id: TaskId) -> Task:
        """Cancel a pending or running task; a running one is told to stop on its worker."""
        task = await self.get(task_id)
        self._check_owner(task.spec.pool)
        if not self._core.cancel(task, self._clock.now()):
            return task
        durable = self._apply()
        assert durable is not None, "a cancelled task is finished"
        await asyncio.shield(durable)
        self._dispatcher.request([task.spec.pool])
        return task

    async def retry(
        self, task_ids: Sequence[TaskId], dead_letter_pool: str = "", limit: int = 1000
    ) -> list[Task]:
        """Send failed or dead-lettered tasks round again (see FinishedTasks.retry)."""
        return await self._finished_tasks.retry(task_ids, dead_letter_pool, limit)

    async def purge(self, pool: str, finished_before: float, states: Collection[TaskState]) -> int:
        """Delete finished tasks (see FinishedTasks.purge); how many went."""
        return await self._finished_tasks.purge(pool, finished_before, states)

    async def purge_expired(self) -> int:
        """Delete every pool's finished tasks past its `retention_s`; how many went."""
        return await self._finished_tasks.purge_expired()

    async def run_retention(self) -> None:
        """Apply the pools' retention every `task_purge_interval_s`, while the broker runs."""
        await self._finished_tasks.run_retention()

    # Pools ---------------------------------------------------------------------

    def pools(self) -> list[PoolConfig]:
        return [p.config for p in self._core.pools.values()]

    async def create_pool(
        self, pool: PoolConfig, who: str = "", source: str = "create_pool"
    ) -> PoolConfig:
        await self._pools.create(pool, who, source)
        return pool

    async def update_pool(
        self, pool: PoolConfig, who: str = "", source: str = "update_pool"
    ) -> PoolConfig:
        """Change a pool's settings at run time: validated (a bad value changes nothing),
        stored, applied at once, and audited (`who` asked, through `source`)."""
        await self._pools.update(pool, who, source)
        return pool

    async def apply_file_pools(
        self, pools: Sequence[PoolConfig], who: str, source: str
    ) -> list[ConfigChange]:
        """Apply the config file's pools (validated already), creating the new ones and
        changing only the keys the file changed since it was last seen; the audited
        changes."""
        return await self._pools.apply_file(pools, who, source)

    async def config_history(self, pool: str = "", limit: int = 100) -> list[ConfigChange]:
        """Audited changes of pool settings, newest first."""
        return await self._pools.history(pool, limit)

    async def stats(self) -> list[PoolStats]:
        return stats.pool_stats(self._core, self._watchers.finished, self._config.default_max_queue)

    def learn_run_times(self, history: dict[tuple[str, str], RunStats]) -> int:
        """Start the pools' run-time models from the metrics history, for the task types
        they have not learned anything of yet. Returns how many types were seeded."""
        return stats.learn_run_times(self._core, history)

    def flow_counts(self) -> dict[tuple[str, str], int]:
        """How many tasks each pool rejected, rate-limited, deduplicated, retried, timed
        out, expired, requeued for a lease or reconciled, by (pool, event)."""
        return dict(self._core.events)

    def backlog(self) -> list[Backlog]:
        """Waiting and running work per pool (task_type "") and per task type."""
        return stats.backlog(self._core, self._clock.now())

    # Workers -------------------------------------------------------------------

    def connect_worker(self, spec: WorkerSpec, channel: WorkerChannel) -> WorkerSpec:
        """Register a worker; returns its spec with the id it was given."""
        return self.connect_worker_session(spec, channel).spec

    def connect_worker_session(
        self, spec: WorkerSpec, channel: WorkerChannel, resume_token: str = ""
    ) -> WorkerConnection:
        """Register a worker, or resume its session: with the resume token of the stream
        that last had this worker id, the new stream takes over that session and the
        tasks it holds (the old stream, if still open, is ended). A new session for an id
        whose stream broke requeues what that one held first; an id whose stream is open
        is AlreadyExists without the token."""
        if not self.accepting:
            raise Unavailable("the broker is not taking workers now (it is shutting down)")
        validate_worker(spec)
        if spec.pool not in self._core.pools:
            raise NotFound(f"pool {spec.pool!r} does not exist")
        self._check_owner(spec.pool)
        window = self.resume_window_s(spec.pool)
        if spec.worker_id:
            session = self._workers.resumable(spec.worker_id, resume_token)
            if session is not None and session.spec.pool == spec.pool:
                return self._resume(session, spec, channel, window)
            stale = self._workers.get(spec.worker_id)
            if stale is not None and stale.detached_at is not None:
                self.disconnect_worker(spec.worker_id, "its stream broke and a new session began")
        spec = self._workers.with_id(spec)
        member = self._core.members.join(
            spec.worker_id,
            spec.pool,
            spec.capacity,
            spec.task_types,
            spec.labels,
            self._clock.now(),
        )
        session = self._workers.add(spec, member.slot, channel, member)
        log.info(
            "worker %s connected to pool %s (capacity %d, types %s)",
            spec.worker_id,
            spec.pool,
            spec.capacity,
            ",".join(sorted(spec.task_types)),
        )
        self._apply()
        return WorkerConnection(spec, session.resume_token, window, resumed=False)

    def _resume(
        self, session: WorkerSession, spec: WorkerSpec, channel: WorkerChannel, window: float
    ) -> WorkerConnection:
        worker_id = session.spec.worker_id
        old = session.channel
        if session.detached_at is None:
            old.close(AlreadyExists(f"worker {worker_id!r} resumed its session on a new stream"))
        self._workers.attach(session, channel)
        self._core.members.set_capacity(worker_id, spec.capacity)
        if session.slot.draining:  # the new stream is told too
            channel.send_drain("drained by an operator", session.drain_until)
        log.info("worker %s resumed its session (%d tasks held)", worker_id, len(session.slot.held))
        self._apply()
        return WorkerConnection(
            session.spec,
            session.resume_token,
            window,
            resumed=True,
            results_seen=session.results_seen,
        )

    def resume_window_s(self, pool: str) -> float:
        """How long the tasks of a worker whose stream broke are kept for it to resume:
        its pool's lease, at most the heartbeat timeout."""
        return min(self.lease_s(pool), self._config.heartbeat_timeout_s)

    def stream_ended(self, worker_id: WorkerId, channel: WorkerChannel, *, broken: bool) -> None:
        """A worker's stream ended. If it may be resumed (`broken`: the worker did not say
        it leaves, nor did the broker end it for an error) and the worker holds tasks, they
        are kept for the resume window, for the worker to resume the session on a new
        stream, and it gets no new work meanwhile. Else the worker is gone and what it held
        is requeued. Nothing if another stream has taken the session over."""
        session = self._workers.get(worker_id)
        if session is None or session.channel is not channel:
            return
        if broken and self.accepting and not session.slot.draining:
            window = self.resume_window_s(session.spec.pool)
            if window > 0 and session.slot.held:
                now = self._clock.now()
                session.detached_at = now
                self._core.members.set_capacity(worker_id, 0)
                self._core.keep_leases(worker_id, now + window)
                self._apply()
                log.info(
                    "worker %s: stream broke; its %d tasks are kept %.1f s for a resume",
                    worker_id,
                    len(session.slot.held),
                    window,
                )
                return
        self.disconnect_worker(worker_id, "stream ended")

    def disconnect_worker(self, worker_id: WorkerId, reason: str, *, counts: bool = True) -> None:
        """Forget a worker and requeue every task it held (at-least-once delivery); unless
        `counts` is False (the broker's own doing), each such task has a failed attempt
        (WorkerLost), and one delivered `max_deliveries` times is dead-lettered."""
        if self._workers.remove(worker_id) is None:
            return
        requeued = self._core.worker_lost(worker_id, reason, self._clock.now(), counts=counts)
        log.info("worker %s disconnected (%s); %d tasks requeued", worker_id, reason, requeued)
        self._apply()

    def disconnect_all(self, reason: str) -> None:
        """End every worker stream; what they held is requeued."""
        for session in self._workers:
            session.channel.close(Unavailable(reason))
            self.disconnect_worker(session.spec.worker_id, reason, counts=False)

    def save_learning(self) -> None:
        """Queue for the store what the pools learned and have not saved yet (their
        statistics are saved at most every LEARNING_SAVE_S): as the broker stops, or
        before it hands a pool over."""
        self._dispatcher.save_learning()

    def heartbeat(
        self,
        worker_id: WorkerId,
        load: float,
        held: Iterable[TaskId] | None = None,
        assignments_seen: int = 0,
    ) -> None:
        """A worker's heartbeat: its load and, to reconcile the broker's count of its busy
        slots, the tasks it holds and the last assignments message it received.

        Each held task's lease is renewed. A task the broker sent it in a message it has
        seen, that it no longer holds and whose result never came, was lost: requeued.
        A task it holds that it should not is cancelled on it. Without `held`, every
        task it holds is taken as confirmed.
        """
        session = self._workers.registered(worker_id)
        self._workers.heard_from(session)
        channel = session.channel
        self._core.heartbeat(
            worker_id,
            load,
            held,
            lambda: channel.in_transit(assignments_seen),
            session.last_heartbeat,
        )
        self._apply()

    def set_capacity(self, worker_id: WorkerId, capacity: int) -> None:
        """A worker changes how many tasks it takes at once (0 pauses it)."""
        session = self._workers.registered(worker_id)
        validate_capacity(capacity)
        self._workers.heard_from(session)
        self._core.members.set_capacity(worker_id, capacity)
        self._apply()

    def cordon_worker(self, worker_id: WorkerId, cordon: bool = True) -> WorkerStatus:
        """Send a worker no new work (cordon) or let it have work again (uncordon); what it
        holds, it keeps."""
        session = self._workers.connected(worker_id)
        if self._core.members.cordon(worker_id, cordon, self._clock.now()):
            self._apply()
        return session.status()

    def drain_worker(self, worker_id: WorkerId) -> WorkerStatus:
        """Send no more work to this worker and ask it to finish and disconnect by the
        drain deadline (the config's drain_timeout_s from now); its stream is ended once
        it holds nothing, or at the deadline (what it still holds is requeued then)."""
        session = self._workers.connected(worker_id)
        if self._core.members.set_draining(worker_id):
            session.drain_until = self._clock.now() + self._config.drain_timeout_s
            session.channel.send_drain("drained by an operator", session.drain_until)
            log.info("worker %s draining", worker_id)
            self._end_drained(session)
        return session.status()

    def _end_drained(self, session: WorkerSession) -> None:
        """End a draining worker's stream once it holds nothing or its deadline passed."""
        if not session.slot.draining or session.detached_at is not None:
            return
        worker_id = session.spec.worker_id
        if not session.slot.held:
            session.channel.close(None)
            self.disconnect_worker(worker_id, "drained", counts=False)
        elif session.drain_until and self._clock.now() >= session.drain_until:
            session.channel.close(None)
            self.disconnect_worker(worker_id, "the drain deadline passed")

    def workers(self, pool: str = "") -> list[WorkerStatus]:
        if pool and pool not in self._core.pools:
            raise NotFound(f"pool {pool!r} does not exist")
        return [s.status() for s in self._workers if not pool or s.spec.pool == pool]

    def report(
        self,
        worker_id: WorkerId,
        started: Sequence[TaskId],
        results: Sequence[TaskResult],
        seq: int = 0,
    ) -> asyncio.Future[None] | None:
        """A worker's start notices and results (`seq`: the number of their message in the
        session, 0 = none). Stale ones (a task it no longer holds) are counted and dropped.
        With results, returns a future that resolves once they are durable (it raises if
        their commit failed): the worker stream holds the worker's new tasks back on it
        once its next results come (see broker.server.workers)."""
        session = self._workers.registered(worker_id)
        self._workers.heard_from(session)
        session.results_seen = max(session.results_seen, seq)
        dropped = self._core.reported(worker_id, started, results, session.last_heartbeat)
        if dropped:
            session.channel.send_dropped(dropped)
        durable = self._apply()  # the future of the tasks that ended, if any did
        if durable is None and results:
            durable = self._store.durable()
        if results and session.slot.draining:
            self._end_drained(session)
        return durable

    def reap(self) -> list[WorkerId]:
        """Disconnect workers whose last heartbeat is older than the timeout, and requeue
        held tasks whose lease ran out."""
        now = self._clock.now()
        for session in self._workers:  # first: their tasks' leases end with the window
            if session.slot.held:
                session.held_at = now  # a lease that runs out now leaves it busy
            detached_at = session.detached_at
            if detached_at is not None:
                if now - detached_at > self.resume_window_s(session.spec.pool):
                    self.disconnect_worker(session.spec.worker_id, "not resumed in time")
            elif session.slot.draining:
                self._end_drained(session)
        self._core.expire_leases(now)
        self._apply()
        config = self._config
        timeout, idle_timeout = config.heartbeat_timeout_s, config.idle_heartbeat_timeout_s
        dead = self._workers.silent(timeout, idle_timeout)
        for worker_id in dead:
            session = self._workers.connected(worker_id)
            silence = timeout if session.busy else idle_timeout
            session.channel.close(
                Unavailable(f"no heartbeat for {silence:g} s; the worker's tasks were requeued")
            )
            self.disconnect_worker(worker_id, "missed heartbeats")
        return dead

    async def run_reaper(self) -> None:
        """Check heartbeats every interval, for as long as the broker runs."""
        while True:
            await asyncio.sleep(self._config.heartbeat_interval_s)
            self.reap()

    def tick(self) -> None:
        """Act on everything due by now: delayed tasks becoming pending, start deadlines,
        execution timeouts, breakers' cool-downs, sticky waits. The ticker calls it when
        the next one is due; a test that moves a fake clock calls it itself."""
        self._ticker.disarm()
        self._core.tick(self._clock.now())
        self._apply()


def _check_same_tasks(specs: Sequence[TaskSpec], found: dict[int, Task]) -> None:
    """AlreadyExists if an idempotency key names an earlier task that is not the one now
    asked for (another task type or payload): a reused key, not a retried submit."""
    for index, task in found.items():
        spec = specs[index]
        if spec.task_type != task.spec.task_type or spec.payload != task.spec.payload:
            where = f"task {index}: " if len(specs) > 1 else ""
            raise AlreadyExists(
                f"{where}idempotency key {spec.idempotency_key!r} was used for task {task.id}, "
                "which has another task type or payload; use a new key for a new task",
                field="idempotency_key",
                reason="IDEMPOTENCY_KEY_REUSED",
            )
