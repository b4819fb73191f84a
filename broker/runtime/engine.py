"""The broker's domain core: tasks in, placements out, results back, all durable.

The gRPC edge calls into the Engine with domain types; the Engine keeps the
pools' schedulers, the connected workers and the tasks in flight, and records
every change in the store, whose group commits make it durable. It runs on the
event loop and never blocks it: the only waits are on the store's commits.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, cast

from broker.clock import Clock
from broker.config import BrokerConfig, validate_pool
from broker.core.admission import Admission
from broker.core.breaker import BreakerSettings, BreakerState, CircuitBreaker
from broker.core.runtimes import RunStats, RuntimeKey, RuntimeModel
from broker.core.scheduler import PoolScheduler
from broker.core.states import check_move
from broker.core.strategies import StrategyEnv, WorkerSlot
from broker.core.strategies._base import UNLIMITED
from broker.core.timers import Timers
from broker.domain import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    ArmSummary,
    Backlog,
    BulkheadStats,
    ConfigChange,
    Placement,
    PoolConfig,
    PoolStats,
    RuntimeSummary,
    Task,
    TaskError,
    TaskFilter,
    TaskId,
    TaskResult,
    TaskSpec,
    TaskState,
    WorkerId,
    WorkerSpec,
    WorkerStatus,
)
from broker.errors import (
    AlreadyExists,
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from broker.observability.logs import task_fields
from broker.observability.observe import Observers
from broker.runtime.registry import WorkerChannel, WorkerRegistry, WorkerSession
from broker.storage.codec import pool_settings, settings_json
from broker.storage.contract import Store

log = logging.getLogger("taskbroker.engine")

MAX_CAPACITY = 10_000
MAX_NAME_LENGTH = 200
MAX_LABELS = 64
MAX_PREFERENCE_WEIGHT = 1000
MAX_ATTEMPTS = 100
MAX_TIMEOUT_S = 30 * 86_400.0
MAX_KEY_LENGTH = 200
MAX_TRACE_KEYS = 8  # traceparent, tracestate and a little room
MAX_TRACE_VALUE = 1024

TaskCallback = Callable[[Task], None]
# A placeholder in `found` for a spec whose idempotency key an earlier spec of the same
# batch has: it gets that spec's task once it is made.
_SAME_AS_FIRST = Task(id=0, spec=TaskSpec(task_type="-"))
_UNSET = object()


class Engine:
    """Tasks, pools and workers of one broker."""

    def __init__(
        self, config: BrokerConfig, store: Store, clock: Clock, rng: random.Random | None = None
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._random = rng or random.Random()
        self._pools: dict[str, PoolScheduler] = {}
        self._workers = WorkerRegistry(store, clock)
        self._live: dict[TaskId, Task] = {}  # not yet terminal, or terminal and not yet durable
        self._waiters: dict[TaskId, list[TaskCallback]] = defaultdict(list)
        self._next_id = 1
        self._next_seq = 1
        self._active = 0  # tasks held by workers
        self._idle = asyncio.Event()
        self._dirty_pools: set[str] = set()
        self._dispatch_handle: asyncio.Handle | None = None
        self._deadline_handles: dict[str, asyncio.TimerHandle] = {}
        self.accepting = False  # submits allowed
        self.dispatching = False  # new assignments allowed
        self.stale_results = 0  # results for tasks the worker no longer holds
        self._finished: Counter[tuple[str, TaskState]] = Counter()  # durable terminal tasks
        # Pending tasks waiting for a time (delay, retry backoff, rate limit): not queued yet.
        self._delayed: dict[TaskId, Task] = {}
        self._delayed_by_pool: Counter[str] = Counter()
        self._timers = Timers()
        self._timer_handle: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._leases: dict[TaskId, float] = {}  # held task -> when its lease runs out
        self._events: Counter[tuple[str, str]] = Counter()  # (pool, event) for stats
        self._claims: dict[tuple[str, str], asyncio.Future[Task]] = {}  # idempotency keys
        self._admission = Admission(config, lambda name: self._pools[name].config, self._events)
        self._queued_at: dict[TaskId, float] = {}  # when each waiting task joined its queue
        self.observers = Observers()  # tracing, metrics and the metrics history

    @property
    def config(self) -> BrokerConfig:
        return self._config

    def now(self) -> float:
        """The engine's clock."""
        return self._clock.now()

    # Lifecycle -----------------------------------------------------------------

    async def recover(self) -> int:
        """Load pools and unfinished tasks from the store; return how many were requeued."""
        stored = {pool.name: pool for pool in await self._store.list_pools()}
        for pool in self._config.pools:
            if stored.get(pool.name) != pool:
                await self._store.upsert_pool(pool)
                await self._audit(stored.get(pool.name), pool, "config file", "startup")
        runtimes = await self._store.load_runtimes()
        sticky = await self._store.load_sticky()
        for pool in await self._store.list_pools():
            scheduler = self._pools[pool.name] = self._new_scheduler(pool)
            scheduler.runtimes.load(runtimes)
            scheduler.sticky.update(sticky.get(pool.name, {}))
        self._finished = Counter(
            {
                key: n
                for key, n in (await self._store.count_by_pool_state()).items()
                if key[1].terminal
            }
        )
        self._next_id = await self._store.max_task_id() + 1
        self._next_seq = await self._store.max_seq() + 1
        unfinished = await self._store.load_unfinished()
        for task in unfinished:
            if task.state is not TaskState.PENDING:
                _move(task, TaskState.PENDING)
                self._store.save(task)
            self._live[task.id] = task
            self._admission.count(task, 1)
            self._wait(task)
        await self._store.flush()
        return len(unfinished)

    def start(self) -> None:
        """Take submits and dispatch work."""
        self.accepting = True
        self.dispatching = True
        self._request_dispatch(self._pools)
        self._arm_timer()

    async def drain(self, grace: float) -> bool:
        """Stop taking submits and handing out work; wait up to `grace` s for held tasks.

        Returns whether every held task came back in time. Tasks still held stay
        assigned in the store and are requeued when the broker starts again.
        """
        self.accepting = False
        self.dispatching = False
        if self._dispatch_handle is not None:
            self._dispatch_handle.cancel()
            self._dispatch_handle = None
        for handle in self._deadline_handles.values():
            handle.cancel()
        self._deadline_handles.clear()
        if self._timer_handle is not None:
            self._timer_handle.cancel()
            self._timer_handle = None
        self._update_idle()
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            log.warning("shutdown grace ran out with %d tasks still on workers", self._active)
            return False
        return True

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
        if not specs:
            raise InvalidArgument("a batch needs at least one task")
        if len(specs) > self._config.max_batch_size:
            raise InvalidArgument(
                f"a batch holds at most {self._config.max_batch_size} tasks, got {len(specs)}"
            )
        for index, spec in enumerate(specs):
            self._validate_spec(spec, index if len(specs) > 1 else None)
        found: dict[int, Task] = {}
        claimed: dict[tuple[str, str], asyncio.Future[Task]] = {}
        if any(spec.idempotency_key for spec in specs):
            found, claimed = await self._find_existing(specs)
        try:
            tasks = self._admit(specs, found, client)
            fresh = [task for index, task in enumerate(tasks) if index not in found]
            if fresh:
                # Queue the tasks as soon as they are durable, even if our caller is
                # cancelled meanwhile: a stored task must never be missing from its queue.
                committed = asyncio.ensure_future(self._store.insert_tasks(fresh))
                committed.add_done_callback(lambda f: self._enqueue_committed(fresh, f))
                await asyncio.shield(committed)
        except BaseException as exc:
            for claim in claimed.values():
                if not claim.done():
                    claim.set_exception(
                        Unavailable(f"a submit with the same idempotency key failed: {exc}")
                    )
                    claim.exception()  # retrieved: nobody else may wait for it
            raise
        finally:
            for key in claimed:
                self._claims.pop(key, None)
        for task in tasks:
            made = claimed.get((task.spec.pool, task.spec.idempotency_key))
            if made is not None and not made.done():
                made.set_result(task)
        if found:
            for index in found:
                self._events[(specs[index].pool, "deduplicated")] += 1
        return [(task, index in found) for index, task in enumerate(tasks)]

    async def _find_existing(
        self, specs: Sequence[TaskSpec]
    ) -> tuple[dict[int, Task], dict[tuple[str, str], asyncio.Future[Task]]]:
        """The earlier task of each spec whose idempotency key was seen, by index; and the
        keys this submit claimed (it resolves them with the tasks it creates)."""
        found: dict[int, Task] = {}
        claimed: dict[tuple[str, str], asyncio.Future[Task]] = {}
        others: dict[int, asyncio.Future[Task]] = {}
        lookups: dict[str, list[str]] = defaultdict(list)
        loop = asyncio.get_running_loop()
        for index, spec in enumerate(specs):
            if not spec.idempotency_key:
                continue
            key = (spec.pool, spec.idempotency_key)
            if key in claimed:
                continue  # the same key twice in one batch: the first one's task
            pending_claim = self._claims.get(key)
            if pending_claim is not None:
                others[index] = pending_claim
                continue
            claimed[key] = self._claims[key] = loop.create_future()
            lookups[spec.pool].append(spec.idempotency_key)
        try:
            since = self._clock.now() - self._config.idempotency_retention_s
            stored: dict[tuple[str, str], Task] = {}
            for pool, keys in lookups.items():
                matches = await self._store.find_idempotent(pool, keys, since)
                for idempotency_key, task in matches.items():
                    stored[(pool, idempotency_key)] = task
            for index, pending_claim in others.items():
                found[index] = await asyncio.shield(pending_claim)
        except BaseException as exc:
            for key, claim in claimed.items():
                self._claims.pop(key, None)
                claim.set_exception(Unavailable(f"idempotency lookup failed: {exc}"))
                claim.exception()
            raise
        for key, task in stored.items():
            claimed[key].set_result(task)
        for index, spec in enumerate(specs):
            key = (spec.pool, spec.idempotency_key)
            if spec.idempotency_key and index not in found and key in stored:
                found[index] = stored[key]
        return found, claimed

    def _admit(self, specs: Sequence[TaskSpec], found: dict[int, Task], client: str) -> list[Task]:
        """Check the bounds and rate limits for the new specs (not those in `found`) and
        make their tasks, counted as waiting; ResourceExhausted if a bound is hit.

        Everything here is synchronous, so no other submit slips past a bound meanwhile.
        """
        now = self._clock.now()
        first_of: dict[tuple[str, str], int] = {}  # a key's first spec in this batch
        for index, spec in enumerate(specs):
            if spec.idempotency_key and index not in found:
                first = first_of.setdefault((spec.pool, spec.idempotency_key), index)
                if first != index:
                    found[index] = found.get(first, _SAME_AS_FIRST)
        new = [spec for index, spec in enumerate(specs) if index not in found]
        delays = iter(self._admission.check(new, client, now))
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
                id=self._next_id,
                spec=spec,
                seq=self._next_seq,
                created_at=now,
                not_before=not_before if not_before > now else 0.0,
            )
            self._next_id += 1
            self._next_seq += 1
            self._admission.count(task, 1)
            tasks.append(task)
        return tasks

    def _enqueue_committed(self, tasks: list[Task], committed: asyncio.Future[None]) -> None:
        if committed.cancelled() or committed.exception() is not None:
            for task in tasks:
                self._admission.count(task, -1)
            return
        for task in tasks:
            self._live[task.id] = task
            self._wait(task)
        self._request_dispatch({task.spec.pool for task in tasks})
        if self.observers:
            self.observers.submitted(tasks, self._clock.now())

    def disconnect_all(self, reason: str) -> None:
        """End every worker stream; what they held is requeued."""
        for session in self._workers:
            session.channel.close(Unavailable(reason))
            self.disconnect_worker(session.spec.worker_id, reason)

    async def get(self, task_id: TaskId) -> Task:
        task = self._live.get(task_id)
        if task is None:
            task = await self._store.get_task(task_id)
        if task is None:
            raise NotFound(f"task {task_id} does not exist")
        return task

    async def list_tasks(self, flt: TaskFilter) -> list[Task]:
        if flt.pool and flt.pool not in self._pools:
            raise NotFound(f"pool {flt.pool!r} does not exist")
        if not 1 <= flt.limit <= 1000:
            raise InvalidArgument(f"limit must be 1..1000, got {flt.limit}")
        return await self._store.list_tasks(flt)

    async def watch(self, task_ids: Iterable[TaskId], callback: TaskCallback) -> list[TaskId]:
        """Call `callback` once with each task when it is terminal and durable.

        A task already finished is passed at once. Returns the ids that do not exist.
        """
        stored: list[TaskId] = []
        for task_id in task_ids:
            if task_id in self._live:
                self._waiters[task_id].append(callback)
            else:
                stored.append(task_id)
        not_found = []
        for task_id in stored:
            task = await self._store.get_task(task_id)
            if task is None:
                not_found.append(task_id)
            else:
                callback(task)
        return not_found

    def unwatch(self, task_ids: Iterable[TaskId], callback: TaskCallback) -> None:
        for task_id in task_ids:
            callbacks = self._waiters.get(task_id)
            if callbacks is not None:
                if callback in callbacks:
                    callbacks.remove(callback)
                if not callbacks:
                    del self._waiters[task_id]

    async def wait(self, task_ids: Sequence[TaskId], max_wait: float) -> list[Task]:
        """The tasks once all are terminal, or as they are after `max_wait` seconds."""
        if not task_ids:
            raise InvalidArgument("name at least one task id")
        if len(task_ids) > self._config.max_batch_size:
            raise InvalidArgument(f"wait for at most {self._config.max_batch_size} tasks")
        done: dict[TaskId, Task] = {}
        wanted = set(task_ids)
        all_done = asyncio.Event()

        def finished(task: Task) -> None:
            done[task.id] = task
            if len(done) == len(wanted):
                all_done.set()

        not_found = await self.watch(wanted, finished)
        try:
            if not_found:
                raise NotFound(f"task {not_found[0]} does not exist")
            if len(done) < len(wanted):
                try:
                    async with asyncio.timeout(min(max_wait, self._config.max_wait_s)):
                        await all_done.wait()
                except TimeoutError:
                    pass
        finally:
            self.unwatch(wanted, finished)
        return [done[i] if i in done else await self.get(i) for i in task_ids]

    async def cancel(self, task_id: TaskId) -> Task:
        """Cancel a pending or running task; a running one is told to stop on its worker."""
        task = await self.get(task_id)
        if task.state is TaskState.CANCELLED:
            return task
        if task.state.terminal:
            raise FailedPrecondition(
                f"task {task_id} has {task.state.name.lower()} already; it cannot be cancelled"
            )
        if task.state is TaskState.PENDING:
            self._unwait(task)
        else:
            self._release(task)
            session = self._workers.get(task.worker_id)
            if session is not None:
                session.channel.send_cancel([task_id])
        task = _move(
            task,
            TaskState.CANCELLED,
            finished_at=self._clock.now(),
            error=TaskError(type="Cancelled", message="cancelled by a client request"),
        )
        self._store.save(task)
        durable = self._store.durable()
        self._finish([task], durable)
        await asyncio.shield(durable)
        self._request_dispatch([task.spec.pool])
        return task

    async def retry(
        self, task_ids: Sequence[TaskId], dead_letter_pool: str = "", limit: int = 1000
    ) -> list[Task]:
        """Send failed or dead-lettered tasks round again, with a fresh set of attempts:
        these ids, and with `dead_letter_pool`, up to `limit` of its dead-lettered tasks."""
        if not task_ids and not dead_letter_pool:
            raise InvalidArgument("name task ids or a pool whose dead letters to retry")
        if not 1 <= limit <= 10_000:
            raise InvalidArgument(f"limit must be 1..10000, got {limit}")
        if len(task_ids) > self._config.max_batch_size:
            raise InvalidArgument(f"retry at most {self._config.max_batch_size} tasks at once")
        tasks: dict[TaskId, Task] = {}
        for task_id in task_ids:
            task = await self.get(task_id)
            if task.state not in (TaskState.FAILED, TaskState.DEAD_LETTER):
                raise FailedPrecondition(
                    f"task {task_id} is {task.state.name.lower()}; only failed or "
                    "dead-lettered tasks can be retried"
                )
            tasks[task_id] = task
        if dead_letter_pool:
            if dead_letter_pool not in self._pools:
                raise NotFound(f"pool {dead_letter_pool!r} does not exist")
            flt = TaskFilter(
                pool=dead_letter_pool, states=frozenset({TaskState.DEAD_LETTER}), limit=limit
            )
            for task in await self._store.list_tasks(flt):
                tasks.setdefault(task.id, task)
        retried = []
        for task in tasks.values():
            if task.id in self._live or not task.state.terminal:
                continue  # not durable yet, or retried by a concurrent call
            self._finished[(task.spec.pool, task.state)] -= 1
            _move(
                task,
                TaskState.PENDING,
                attempts=0,
                worker_id="",
                assigned_at=0.0,
                started_at=0.0,
                finished_at=0.0,
                result=b"",
                error=None,
                not_before=0.0,
                placement_note="retried by an operator",
            )
            self._store.save(task)
            self._live[task.id] = task
            self._admission.count(task, 1)
            self._wait(task, deadline_from=self._clock.now())
            retried.append(task)
        await self._store.flush()
        self._request_dispatch({task.spec.pool for task in retried})
        log.info("%d tasks retried by an operator", len(retried))
        return retried

    # Pools ---------------------------------------------------------------------

    def pools(self) -> list[PoolConfig]:
        return [p.config for p in self._pools.values()]

    async def create_pool(
        self, pool: PoolConfig, who: str = "", source: str = "create_pool"
    ) -> PoolConfig:
        await self._create_pool(pool, who, source)
        return pool

    async def update_pool(
        self, pool: PoolConfig, who: str = "", source: str = "update_pool"
    ) -> PoolConfig:
        """Change a pool's settings at run time: validated (a bad value changes nothing),
        stored, applied at once, and audited (`who` asked, through `source`)."""
        await self._update_pool(pool, who, source)
        return pool

    async def apply_pool(self, pool: PoolConfig, who: str, source: str) -> ConfigChange | None:
        """Create the pool, or change its settings to these; the audited change, if any."""
        if pool.name in self._pools:
            return await self._update_pool(pool, who, source)
        return await self._create_pool(pool, who, source)

    async def _create_pool(self, pool: PoolConfig, who: str, source: str) -> ConfigChange | None:
        try:
            validate_pool(pool)
        except ConfigError as exc:
            raise InvalidArgument(str(exc)) from None
        if pool.name in self._pools:
            raise AlreadyExists(f"pool {pool.name!r} exists already")
        await self._store.upsert_pool(pool)
        self._pools[pool.name] = self._new_scheduler(pool)
        log.info("pool %s created with strategy %s", pool.name, pool.strategy)
        return await self._audit(None, pool, who, source)

    async def _update_pool(self, pool: PoolConfig, who: str, source: str) -> ConfigChange | None:
        try:
            validate_pool(pool)
        except ConfigError as exc:
            raise InvalidArgument(str(exc)) from None
        scheduler = self._pools.get(pool.name)
        if scheduler is None:
            raise NotFound(f"pool {pool.name!r} does not exist")
        old = scheduler.config
        await self._store.upsert_pool(pool)
        scheduler.reconfigure(pool)
        self._reconfigure_limits(pool)
        change = await self._audit(old, pool, who, source)
        log.info(
            "pool %s reconfigured by %s (%s): %s",
            pool.name,
            who or "unknown",
            source,
            ", ".join(change.fields) if change else "no change",
        )
        self._request_dispatch([pool.name])
        return change

    async def config_history(self, pool: str = "", limit: int = 100) -> list[ConfigChange]:
        """Audited changes of pool settings, newest first."""
        if pool and pool not in self._pools:
            raise NotFound(f"pool {pool!r} does not exist")
        if not 1 <= limit <= 10_000:
            raise InvalidArgument(f"limit must be 1..10000, got {limit}")
        return await self._store.config_history(pool, limit)

    async def _audit(
        self, old: PoolConfig | None, new: PoolConfig, who: str, source: str
    ) -> ConfigChange | None:
        """Record a change of a pool's settings (none if nothing changed)."""
        after = pool_settings(new)
        before = pool_settings(old) if old is not None else {}
        fields = tuple(sorted(k for k in after if before.get(k, _UNSET) != after[k]))
        if not fields:
            return None
        change = ConfigChange(
            at=self._clock.now(),
            who=who or "unknown",
            source=source,
            pool=new.name,
            before=settings_json(before) if old is not None else "",
            after=settings_json(after),
            fields=fields,
        )
        await self._store.record_config_change(change)
        return change

    async def stats(self) -> list[PoolStats]:
        counts = self._finished
        events = self._events
        result = []
        for name, pool in self._pools.items():
            workers = pool.workers.values()
            result.append(
                PoolStats(
                    pool=name,
                    strategy=pool.strategy_name,
                    pending=pool.pending + self._delayed_by_pool[name],
                    active=sum(len(w.held) for w in workers),
                    succeeded=counts.get((name, TaskState.SUCCEEDED), 0),
                    failed=counts.get((name, TaskState.FAILED), 0),
                    cancelled=counts.get((name, TaskState.CANCELLED), 0),
                    workers=len(pool.workers),
                    capacity=sum(w.capacity for w in workers),
                    unschedulable=sum(t.unschedulable for t in pool.parked()),
                    arms=tuple(
                        ArmSummary(
                            strategy=a.strategy,
                            placed=a.placed,
                            finished=a.finished,
                            failed=a.failed,
                            mean_wait_s=a.mean_wait_s,
                            mean_run_s=a.mean_run_s,
                        )
                        for a in pool.arm_stats()
                    ),
                    runtimes=tuple(_runtime_summaries(pool.runtimes)),
                    sticky_hits=pool.sticky_hits,
                    sticky_misses=pool.sticky_misses,
                    strategy_notes=tuple(pool.strategy_notes()),
                    delayed=self._delayed_by_pool[name],
                    dead_letter=counts.get((name, TaskState.DEAD_LETTER), 0),
                    rejected=events[(name, "rejected")],
                    rate_limited=events[(name, "rate_limited")],
                    retried=events[(name, "retried")],
                    timed_out=events[(name, "timed_out")],
                    expired=events[(name, "expired")],
                    lease_expired=events[(name, "lease_expired")],
                    reconciled=events[(name, "reconciled")],
                    deduplicated=events[(name, "deduplicated")],
                    max_queue=pool.config.max_queue or self._config.default_max_queue,
                    max_inflight=pool.config.max_inflight,
                    bulkheads=tuple(
                        BulkheadStats(
                            task_type=task_type,
                            pending=self._admission.backlog_by_type[(name, task_type)],
                            in_flight=pool.inflight_by_type[task_type],
                            max_queue=bulkhead.max_queue if bulkhead else 0,
                            max_inflight=bulkhead.max_inflight if bulkhead else 0,
                        )
                        for task_type in sorted(
                            {b.task_type for b in pool.config.bulkheads}
                            | {
                                t
                                for (p, t), n in self._admission.backlog_by_type.items()
                                if p == name and n
                            }
                            | {t for t, n in pool.inflight_by_type.items() if n}
                        )
                        for bulkhead in [pool.config.bulkhead(task_type)]
                    ),
                )
            )
        return result

    def learn_run_times(self, history: dict[tuple[str, str], RunStats]) -> int:
        """Start the pools' run-time models from the metrics history, for the task types
        they have not learned anything of yet. Returns how many types were seeded."""
        seeded = 0
        for (pool_name, task_type), stats in history.items():
            pool = self._pools.get(pool_name)
            if pool is None or not stats.count:
                continue
            key = RuntimeKey(pool_name, task_type, "*")
            if key not in pool.runtimes.stats:
                pool.runtimes.stats[key] = stats
                seeded += 1
        return seeded

    def flow_counts(self) -> dict[tuple[str, str], int]:
        """How many tasks each pool rejected, rate-limited, deduplicated, retried, timed
        out, expired, requeued for a lease or reconciled, by (pool, event)."""
        return dict(self._events)

    def backlog(self) -> list[Backlog]:
        """Waiting and running work per pool (task_type "") and per task type."""
        now = self._clock.now()
        delayed_by_type: Counter[tuple[str, str]] = Counter(
            (t.spec.pool, t.spec.task_type) for t in self._delayed.values()
        )
        result = []
        for name, pool in self._pools.items():
            since_by_type: dict[str, list[float]] = defaultdict(list)  # parked: a scan
            for task in pool.parked():
                since_by_type[task.spec.task_type].append(
                    self._queued_at.get(task.id, task.created_at)
                )
            oldest_by_type: dict[str, float] = {}
            for task_type in {*pool.queue.types_waiting(), *since_by_type}:
                since = since_by_type.get(task_type, [])
                oldest = pool.queue.oldest(task_type)
                if oldest is not None:
                    since.append(self._queued_at.get(oldest.id, oldest.created_at))
                oldest_by_type[task_type] = max(0.0, now - min(since)) if since else 0.0
            types = sorted(
                {t for (p, t) in self._admission.backlog_by_type if p == name}
                | {t for t, n in pool.inflight_by_type.items() if n}
            )
            for task_type in types:
                result.append(
                    Backlog(
                        pool=name,
                        task_type=task_type,
                        pending=self._admission.backlog_by_type.get((name, task_type), 0),
                        delayed=delayed_by_type[(name, task_type)],
                        in_flight=pool.inflight_by_type[task_type],
                        oldest_age_s=oldest_by_type.get(task_type, 0.0),
                    )
                )
            result.append(
                Backlog(
                    pool=name,
                    task_type="",
                    pending=self._admission.backlog[name],
                    delayed=self._delayed_by_pool[name],
                    in_flight=pool.inflight,
                    oldest_age_s=max(oldest_by_type.values(), default=0.0),
                )
            )
        return result

    # Workers -------------------------------------------------------------------

    def connect_worker(self, spec: WorkerSpec, channel: WorkerChannel) -> WorkerSpec:
        """Register a worker; returns its spec with the id it was given."""
        if not self.accepting:
            raise Unavailable("the broker is not taking workers now (it is shutting down)")
        pool = self._pools.get(spec.pool)
        if pool is None:
            raise NotFound(f"pool {spec.pool!r} does not exist")
        self._validate_worker(spec)
        spec = self._workers.with_id(spec)
        slot = WorkerSlot(spec.worker_id, spec.pool, spec.capacity, spec.task_types, spec.labels)
        pool.add_worker(slot)
        session = self._workers.add(spec, slot, channel)
        session.breaker = CircuitBreaker(_breaker_settings(pool.config))
        if self.observers:
            self.observers.worker_changed(spec.worker_id, spec.pool, "connected", self._clock.now())
        log.info(
            "worker %s connected to pool %s (capacity %d, types %s)",
            spec.worker_id,
            spec.pool,
            spec.capacity,
            ",".join(sorted(spec.task_types)),
        )
        self._request_dispatch([spec.pool])
        return spec

    def disconnect_worker(self, worker_id: WorkerId, reason: str) -> None:
        """Forget a worker and requeue every task it held (at-least-once delivery)."""
        session = self._workers.remove(worker_id)
        if session is None:
            return
        pool = self._pools[session.spec.pool]
        slot = pool.remove_worker(worker_id)
        self._timers.cancel(("breaker", worker_id))
        requeued = 0
        for task_id in sorted(slot.held):
            task = self._live.get(task_id)
            self._active -= 1
            self._leases.pop(task_id, None)
            if task is None or not task.state.active or task.worker_id != worker_id:
                continue
            self._requeue(task, reason)
            requeued += 1
        log.info("worker %s disconnected (%s); %d tasks requeued", worker_id, reason, requeued)
        if self.observers:
            now = self._clock.now()
            self.observers.worker_changed(worker_id, session.spec.pool, "disconnected", now)
        self._update_idle()
        self._request_dispatch([session.spec.pool])

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
        slot = session.slot
        slot.load = load
        until = session.last_heartbeat + self._lease_s(session.spec.pool)
        if held is None:
            for task_id in slot.held:
                self._leases[task_id] = until
            return
        claimed = set(held)
        for task_id in claimed & slot.held:
            self._leases[task_id] = until
        lost = slot.held - claimed
        if lost:
            lost -= session.channel.in_transit(assignments_seen)
        for task_id in sorted(lost):
            task = self._live.get(task_id)
            if task is None or not task.state.active or task.worker_id != worker_id:
                continue
            log.warning(
                "worker %s no longer holds task %d, though it saw its assignment: "
                "requeued (slot count reconciled)",
                worker_id,
                task_id,
                extra=task_fields(task),
            )
            self._events[(session.spec.pool, "reconciled")] += 1
            self._take_back(task, session, "the worker no longer held it")
        unknown = claimed - slot.held
        if unknown:
            # Cancelled or requeued by the broker meanwhile: the worker should stop them.
            session.channel.send_cancel(sorted(unknown))
        if lost:
            self._request_dispatch([session.spec.pool])

    def set_capacity(self, worker_id: WorkerId, capacity: int) -> None:
        """A worker changes how many tasks it takes at once (0 pauses it)."""
        session = self._workers.registered(worker_id)
        if not 0 <= capacity <= MAX_CAPACITY:
            raise InvalidArgument(f"capacity must be 0..{MAX_CAPACITY}, got {capacity}")
        self._workers.heard_from(session)
        self._pools[session.spec.pool].set_capacity(worker_id, capacity)
        self._request_dispatch([session.spec.pool])

    def cordon_worker(self, worker_id: WorkerId, cordon: bool = True) -> WorkerStatus:
        """Send a worker no new work (cordon) or let it have work again (uncordon); what it
        holds, it keeps."""
        session = self._workers.connected(worker_id)
        if session.cordoned != cordon:
            session.cordoned = cordon
            self._apply_breaker(session)
            event = "cordoned" if cordon else "uncordoned"
            log.info("worker %s %s", worker_id, event)
            if self.observers:
                self.observers.worker_changed(
                    worker_id, session.spec.pool, event, self._clock.now()
                )
            self._request_dispatch([session.spec.pool])
        return session.status()

    def drain_worker(self, worker_id: WorkerId) -> WorkerStatus:
        """Send no more work to this worker and ask it to finish and disconnect."""
        session = self._workers.connected(worker_id)
        if not session.slot.draining:
            self._pools[session.spec.pool].set_draining(worker_id)
            session.channel.send_drain("drained by an operator")
            log.info("worker %s draining", worker_id)
        return session.status()

    def workers(self, pool: str = "") -> list[WorkerStatus]:
        if pool and pool not in self._pools:
            raise NotFound(f"pool {pool!r} does not exist")
        return [s.status() for s in self._workers if not pool or s.spec.pool == pool]

    def report(
        self, worker_id: WorkerId, started: Sequence[TaskId], results: Sequence[TaskResult]
    ) -> None:
        """A worker's start notices and results. Stale ones (a task it no longer holds) are
        counted and dropped."""
        session = self._workers.registered(worker_id)
        self._workers.heard_from(session)
        now = session.last_heartbeat
        if started and results:  # a start and a result in one message: the result will do
            finishing = {r.task_id for r in results}
            started = [task_id for task_id in started if task_id not in finishing]
        for task_id in started:
            task = self._live.get(task_id)
            if (
                task is not None
                and task.state is TaskState.ASSIGNED
                and task.worker_id == worker_id
            ):
                _move(task, TaskState.RUNNING, started_at=now)
                self._store.save(task)
                self._leases[task_id] = now + self._lease_s(session.spec.pool)
        finished = []
        for result in results:
            task = self._live.get(result.task_id)
            if (
                task is None
                or not task.state.active
                or task.worker_id != worker_id
                or task.attempts != result.attempt
            ):
                self.stale_results += 1
                continue
            run_s = self._learn(task, result, now)
            self._record_outcome(session, result.success)
            self._finish_attempt(task, result, now)
            self._store.save(task)
            if self.observers:
                self.observers.attempt_ended(task, result.success, run_s, now)
            if task.state is TaskState.PENDING:  # to be tried again, after a backoff
                self._admission.count(task, 1)
                self._wait(task)
            else:
                finished.append(task)
        if finished:
            self._finish(finished, self._store.durable())
        if results:
            self._request_dispatch([session.spec.pool])

    def reap(self) -> list[WorkerId]:
        """Disconnect workers whose last heartbeat is older than the timeout, and requeue
        held tasks whose lease ran out."""
        self._expire_leases()
        dead = self._workers.silent(self._config.heartbeat_timeout_s)
        for worker_id in dead:
            self._workers.connected(worker_id).channel.close(
                Unavailable(
                    f"no heartbeat for {self._config.heartbeat_timeout_s:g} s; "
                    "the worker's tasks were requeued"
                )
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
        execution timeouts, breakers' cool-downs. The loop calls it when the next one is
        due; a test that moves a fake clock calls it itself."""
        if self._timer_handle is not None:
            self._timer_handle.cancel()
            self._timer_handle = None
        now = self._clock.now()
        pools: set[str] = set()
        for key in self._timers.pop_due(now):
            kind, ident = cast(tuple[str, Any], key)
            if kind == "ready":
                task = self._delayed.pop(ident, None)
                if task is not None:
                    self._delayed_by_pool[task.spec.pool] -= 1
                    self._pools[task.spec.pool].enqueue(task)
                    pools.add(task.spec.pool)
            elif kind == "start":
                self._start_deadline_passed(ident, now)
            elif kind == "timeout":
                task_id, attempt = ident
                self._execution_timed_out(task_id, attempt, now)
            elif kind == "breaker":
                session = self._workers.get(ident)
                if session is not None:
                    self._apply_breaker(session)
                    pools.add(session.spec.pool)
        if pools:
            self._request_dispatch(pools)
        self._arm_timer()

    # Internals -----------------------------------------------------------------

    def _new_scheduler(self, pool: PoolConfig) -> PoolScheduler:
        env = StrategyEnv(clock=self._clock, runtimes=RuntimeModel(pool.name))
        return PoolScheduler(
            pool.name, pool.strategy, self._config.starvation_interval, env=env, config=pool
        )

    def _validate_spec(self, spec: TaskSpec, index: int | None) -> None:
        where = "" if index is None else f"task {index}: "
        if not spec.task_type or not spec.task_type.strip():
            raise InvalidArgument(f"{where}task_type must not be empty")
        if len(spec.task_type) > MAX_NAME_LENGTH:
            raise InvalidArgument(f"{where}task_type is longer than {MAX_NAME_LENGTH} characters")
        if not MIN_PRIORITY <= spec.priority <= MAX_PRIORITY:
            raise InvalidArgument(
                f"{where}priority must be {MIN_PRIORITY}..{MAX_PRIORITY}, got {spec.priority}"
            )
        if spec.pool not in self._pools:
            raise NotFound(
                f"{where}pool {spec.pool!r} does not exist "
                "(declare it in the config or create it with `taskbroker pools create`)"
            )
        if not spec.placement.free:
            self._validate_placement(spec.placement, where)
        self._validate_options(spec, where)
        if len(spec.payload) > self._config.max_payload_bytes:
            raise ResourceExhausted(
                f"{where}payload is {len(spec.payload)} bytes, over the limit of "
                f"{self._config.max_payload_bytes} (max_payload_bytes)"
            )

    def _validate_options(self, spec: TaskSpec, where: str) -> None:
        if not spec.has_options:
            return
        retry = spec.retry
        if not 1 <= retry.max_attempts <= MAX_ATTEMPTS:
            raise InvalidArgument(
                f"{where}retry max_attempts must be 1..{MAX_ATTEMPTS}, got {retry.max_attempts}"
            )
        if not 0 < retry.initial_backoff_s <= retry.max_backoff_s <= MAX_TIMEOUT_S:
            raise InvalidArgument(
                f"{where}retry backoff must have 0 < initial_backoff_s <= max_backoff_s <= "
                f"{MAX_TIMEOUT_S:g}, got {retry.initial_backoff_s:g} and {retry.max_backoff_s:g}"
            )
        if not 1 <= retry.backoff_multiplier <= 100:
            raise InvalidArgument(
                f"{where}retry backoff_multiplier must be 1..100, got {retry.backoff_multiplier:g}"
            )
        for name in ("start_timeout_s", "execution_timeout_s"):
            value = getattr(spec, name)
            if not 0 <= value <= MAX_TIMEOUT_S:
                raise InvalidArgument(
                    f"{where}{name} must be 0 (none)..{MAX_TIMEOUT_S:g} seconds, got {value:g}"
                )
        if spec.not_before < 0 or spec.not_before > self._clock.now() + 366 * 86_400:
            raise InvalidArgument(f"{where}not_before must be within a year from now")
        for name in ("idempotency_key", "fairness_key"):
            if len(getattr(spec, name)) > MAX_KEY_LENGTH:
                raise InvalidArgument(f"{where}{name} is longer than {MAX_KEY_LENGTH} characters")
        trace = spec.trace_context
        if len(trace) > MAX_TRACE_KEYS or any(
            len(k) > MAX_KEY_LENGTH or len(v) > MAX_TRACE_VALUE for k, v in trace.items()
        ):
            raise InvalidArgument(
                f"{where}trace_context holds at most {MAX_TRACE_KEYS} keys of at most "
                f"{MAX_KEY_LENGTH} characters, with values of at most {MAX_TRACE_VALUE}"
            )

    def _validate_placement(self, placement: Placement, where: str) -> None:
        labels = [*placement.required_labels.items()]
        labels += [(p.key, p.value) for p in placement.preferred_labels]
        if len(labels) > MAX_LABELS:
            raise InvalidArgument(f"{where}a task names at most {MAX_LABELS} labels")
        for key, value in labels:
            if not key or len(key) > MAX_NAME_LENGTH or len(value) > MAX_NAME_LENGTH:
                raise InvalidArgument(
                    f"{where}invalid label {key!r}={value!r}: a key is 1-{MAX_NAME_LENGTH} "
                    f"characters, a value at most {MAX_NAME_LENGTH}"
                )
        for preferred in placement.preferred_labels:
            if not 1 <= preferred.weight <= MAX_PREFERENCE_WEIGHT:
                raise InvalidArgument(
                    f"{where}preferred label {preferred.key}={preferred.value}: weight must be "
                    f"1..{MAX_PREFERENCE_WEIGHT}, got {preferred.weight}"
                )
        if len(placement.anti_affinity_group) > MAX_NAME_LENGTH:
            raise InvalidArgument(
                f"{where}anti_affinity_group is longer than {MAX_NAME_LENGTH} characters"
            )

    def _validate_worker(self, spec: WorkerSpec) -> None:
        if not 1 <= spec.capacity <= MAX_CAPACITY:
            raise InvalidArgument(f"capacity must be 1..{MAX_CAPACITY}, got {spec.capacity}")
        if not spec.task_types:
            raise InvalidArgument("a worker must register at least one task type")
        for task_type in spec.task_types:
            if not task_type.strip() or len(task_type) > MAX_NAME_LENGTH:
                raise InvalidArgument(f"invalid task type {task_type!r}")
        if len(spec.worker_id) > MAX_NAME_LENGTH:
            raise InvalidArgument(f"worker_id is longer than {MAX_NAME_LENGTH} characters")
        if len(spec.labels) > MAX_LABELS:
            raise InvalidArgument(f"a worker has at most {MAX_LABELS} labels")

    def _finish_attempt(self, task: Task, result: TaskResult, now: float) -> Task:
        """Move the task to its terminal state from the worker's report."""
        started_at = task.started_at or result.started_at
        if result.success:
            if len(result.result) > self._config.max_result_bytes:
                return _move(
                    task,
                    TaskState.FAILED,
                    started_at=started_at,
                    finished_at=now,
                    error=TaskError(
                        type="ResultTooLarge",
                        message=f"the result is {len(result.result)} bytes, over the limit of "
                        f"{self._config.max_result_bytes} (max_result_bytes)",
                    ),
                )
            return _move(
                task,
                TaskState.SUCCEEDED,
                started_at=started_at,
                finished_at=now,
                result=result.result,
            )
        error = result.error or TaskError(type="Error", message="the worker reported a failure")
        limit = self._config.max_traceback_chars
        if len(error.traceback) > limit or len(error.message) > limit:
            error = replace(
                error,
                message=_truncate(error.message, limit),
                traceback=_truncate(error.traceback, limit),
            )
        return self._fail_attempt(task, error, now, started_at)

    def _fail_attempt(self, task: Task, error: TaskError, now: float, started_at: float) -> Task:
        """A failed attempt: back to pending after a backoff if the retry policy allows
        another; else FAILED, or DEAD_LETTER if retries were allowed and ran out."""
        policy = task.spec.retry
        if policy.max_attempts > 1 and policy.retryable(error.type):
            if task.attempts < policy.max_attempts:
                backoff = self._random.uniform(0.0, policy.backoff_cap(task.attempts))
                self._events[(task.spec.pool, "retried")] += 1
                log.info(
                    "task %d: attempt %d failed (%s); retrying in %.2f s",
                    task.id,
                    task.attempts,
                    error.type,
                    backoff,
                    extra=task_fields(task),
                )
                return _move(
                    task,
                    TaskState.PENDING,
                    error=error,
                    not_before=now + backoff,
                    placement_note=f"attempt {task.attempts} of {policy.max_attempts} failed "
                    f"({error.type}); retrying in {backoff:.2f} s",
                )
            log.warning(
                "task %d: dead-lettered after %d attempts (%s)",
                task.id,
                task.attempts,
                error.type,
                extra=task_fields(task),
            )
            return _move(
                task, TaskState.DEAD_LETTER, started_at=started_at, finished_at=now, error=error
            )
        return _move(task, TaskState.FAILED, started_at=started_at, finished_at=now, error=error)

    def _learn(self, task: Task, result: TaskResult, now: float) -> float:
        """Free the slot of a task that came back, and let the pool learn from the attempt.
        Returns the attempt's run time."""
        if 0 < result.started_at <= result.finished_at:
            run_s = result.finished_at - result.started_at  # the worker's own measure
        else:
            run_s = max(0.0, now - task.assigned_at)
        pool = self._pools[task.spec.pool]
        worker = pool.workers.get(task.worker_id)
        if worker is None or task.id not in worker.held:
            return run_s
        pool.finish(
            task,
            task.worker_id,
            queue_wait_s=max(0.0, task.assigned_at - task.created_at),
            run_s=run_s,
            success=result.success,
        )
        self._leases.pop(task.id, None)
        if task.spec.execution_timeout_s:
            self._timers.cancel(("timeout", (task.id, task.attempts)))
        self._active -= 1
        self._update_idle()
        return run_s

    def _release(self, task: Task) -> None:
        """The worker holding this task no longer does: its credit comes back."""
        pool = self._pools[task.spec.pool]
        worker = pool.workers.get(task.worker_id)
        if worker is not None and task.id in worker.held:
            pool.release(task.worker_id, task.id)
            self._leases.pop(task.id, None)
            if task.spec.execution_timeout_s:
                self._timers.cancel(("timeout", (task.id, task.attempts)))
            self._active -= 1
            self._update_idle()

    def _finish(self, tasks: list[Task], durable: asyncio.Future[None]) -> None:
        """Once these terminal tasks are durable, tell their watchers and forget them."""

        def notify(future: asyncio.Future[None]) -> None:
            if future.cancelled() or future.exception() is not None:
                log.error("could not store %d finished tasks; retrying", len(tasks))
                for task in tasks:
                    self._store.save(task)
                self._finish(tasks, self._store.durable())
                return
            for task in tasks:
                self._live.pop(task.id, None)
                self._finished[(task.spec.pool, task.state)] += 1
                if self.observers:
                    self.observers.finished(task)
                for callback in self._waiters.pop(task.id, ()):
                    try:
                        callback(task)
                    except Exception:
                        log.exception("a task watcher failed")

        durable.add_done_callback(notify)

    def _request_dispatch(self, pools: Iterable[str]) -> None:
        self._dirty_pools.update(pools)
        if self._dispatch_handle is None and self.dispatching:
            self._dispatch_handle = asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Place what can be placed in every pool that changed, one message per worker."""
        self._dispatch_handle = None
        if not self.dispatching:
            return
        now = self._clock.now()
        pools, self._dirty_pools = self._dirty_pools, set()
        for name in pools:
            by_worker: dict[WorkerId, list[Task]] = defaultdict(list)
            lease_s = self._lease_s(name)
            recent = self._admission.placements(name)
            for decision in self._pools[name].place():
                task = decision.task
                if decision.worker is None:  # still waiting, for a new reason
                    task.placement_note = decision.note
                    task.unschedulable = decision.unschedulable
                    self._store.save(task)
                    continue
                _move(
                    task,
                    TaskState.ASSIGNED,
                    attempts=task.attempts + 1,
                    worker_id=decision.worker.worker_id,
                    assigned_at=now,
                    placement_note=decision.note,
                    unschedulable=False,
                    not_before=0.0,
                )
                self._store.save(task)
                by_worker[task.worker_id].append(task)
                self._active += 1
                self._admission.count(task, -1)
                queue_wait = now - self._queued_at.pop(task.id, task.created_at)
                if self.observers:
                    self.observers.placed(task, queue_wait, now)
                self._leases[task.id] = now + lease_s
                recent.append(now)
                if task.spec.start_timeout_s:
                    self._timers.cancel(("start", task.id))
                if timeout := task.spec.execution_timeout_s:
                    self._timers.set(("timeout", (task.id, task.attempts)), now + timeout)
            for worker_id, tasks in by_worker.items():
                session = self._workers.connected(worker_id)
                if session.breaker is not None and session.breaker.state is BreakerState.HALF_OPEN:
                    session.breaker.on_assign()
                session.channel.send_assignments(tasks)
            self._persist_learning(self._pools[name])
            self._wake_at_deadline(self._pools[name])
        self._arm_timer()

    def _persist_learning(self, pool: PoolScheduler) -> None:
        """Queue what the pool learned since last time (sticky keys, run times) for the store."""
        if pool.sticky_moves:
            for key, worker_id in pool.sticky_moves.items():
                self._store.save_sticky(pool.name, key, worker_id)
            pool.sticky_moves.clear()
        model = pool.runtimes
        if model.dirty:
            for changed in model.dirty:
                self._store.save_runtime(changed, model.stats[changed])
            model.dirty.clear()

    def _wake_at_deadline(self, pool: PoolScheduler) -> None:
        """Place again when a sticky task's wait runs out, even if nothing else happens."""
        deadline = pool.next_deadline()
        handle = self._deadline_handles.pop(pool.name, None)
        if handle is not None:
            handle.cancel()
        if deadline is not None:
            delay = max(0.0, deadline - self._clock.now()) + 0.001
            self._deadline_handles[pool.name] = asyncio.get_running_loop().call_later(
                delay, self._request_dispatch, [pool.name]
            )

    # Waiting, time and limits -------------------------------------------------

    def _wait(self, task: Task, deadline_from: float | None = None) -> None:
        """A pending task joins its pool's queue, or waits for its not-before time first.

        A task that has never run gets its start deadline here, if it has one: counted
        from `deadline_from`, by default from when it was submitted to become pending.
        """
        now = self._clock.now()
        if task.not_before > now:
            self._delayed[task.id] = task
            self._delayed_by_pool[task.spec.pool] += 1
            self._timers.set(("ready", task.id), task.not_before)
            self._queued_at[task.id] = task.not_before
        else:
            self._pools[task.spec.pool].enqueue(task)
            self._queued_at[task.id] = now
        if task.spec.start_timeout_s and not task.attempts:
            start = deadline_from or max(task.created_at, task.spec.not_before)
            self._timers.set(("start", task.id), start + task.spec.start_timeout_s)
        self._arm_timer()

    def _unwait(self, task: Task) -> None:
        """Take a pending task out of its queue (or its wait) for good."""
        if self._pools[task.spec.pool].dequeue(task.id) is None and (
            self._delayed.pop(task.id, None) is not None
        ):
            self._delayed_by_pool[task.spec.pool] -= 1
            self._timers.cancel(("ready", task.id))
        self._timers.cancel(("start", task.id))
        self._queued_at.pop(task.id, None)
        self._admission.count(task, -1)

    def _requeue(self, task: Task, reason: str) -> None:
        """A task a worker held goes back to pending (at-least-once delivery)."""
        if self.observers:
            self.observers.requeued(task, reason, self._clock.now())
        log.debug("task %d requeued: %s", task.id, reason, extra=task_fields(task))
        _move(task, TaskState.PENDING)
        self._store.save(task)
        self._leases.pop(task.id, None)
        if task.spec.execution_timeout_s:
            self._timers.cancel(("timeout", (task.id, task.attempts)))
        self._admission.count(task, 1)
        self._wait(task)

    def _take_back(self, task: Task, session: WorkerSession, reason: str) -> None:
        """Free the worker's slot of a task it should no longer run, tell it to stop,
        and requeue the task."""
        self._release(task)
        session.channel.send_cancel([task.id])
        self._requeue(task, reason)

    def _lease_s(self, pool: str) -> float:
        return self._pools[pool].config.lease_s or self._config.heartbeat_timeout_s

    def _expire_leases(self) -> None:
        now = self._clock.now()
        expired = [task_id for task_id, until in self._leases.items() if until < now]
        pools = set()
        for task_id in expired:
            del self._leases[task_id]
            task = self._live.get(task_id)
            if task is None or not task.state.active:
                continue
            log.warning(
                "task %d: worker %s did not confirm it for %.1f s; lease expired, requeued",
                task_id,
                task.worker_id,
                self._lease_s(task.spec.pool),
                extra=task_fields(task),
            )
            self._events[(task.spec.pool, "lease_expired")] += 1
            session = self._workers.get(task.worker_id)
            if session is not None:
                self._take_back(task, session, "lease expired")
            else:
                self._requeue(task, "lease expired")
            pools.add(task.spec.pool)
        if pools:
            self._request_dispatch(pools)

    def _start_deadline_passed(self, task_id: TaskId, now: float) -> None:
        task = self._live.get(task_id)
        if task is None or task.state is not TaskState.PENDING or task.attempts:
            return
        self._unwait(task)
        self._events[(task.spec.pool, "expired")] += 1
        _move(
            task,
            TaskState.FAILED,
            finished_at=now,
            not_before=0.0,
            error=TaskError(
                type="DeadlineExceeded",
                message=f"no worker started it within {task.spec.start_timeout_s:g} s "
                "(start_timeout_s)",
            ),
        )
        self._store.save(task)
        self._finish([task], self._store.durable())

    def _execution_timed_out(self, task_id: TaskId, attempt: int, now: float) -> None:
        task = self._live.get(task_id)
        if task is None or not task.state.active or task.attempts != attempt:
            return
        session = self._workers.get(task.worker_id)
        self._events[(task.spec.pool, "timed_out")] += 1
        log.info(
            "task %d: attempt %d timed out on worker %s",
            task_id,
            attempt,
            task.worker_id,
            extra=task_fields(task),
        )
        run_s = self._learn(task, TaskResult(task_id=task_id, attempt=attempt, success=False), now)
        if session is not None:
            session.channel.send_cancel([task_id])
            self._record_outcome(session, success=False)
        error = TaskError(
            type="Timeout",
            message=f"attempt {attempt} ran longer than its execution timeout of "
            f"{task.spec.execution_timeout_s:g} s on worker {task.worker_id}; cancelled there",
        )
        self._fail_attempt(task, error, now, task.started_at)
        self._store.save(task)
        if self.observers:
            self.observers.attempt_ended(task, False, run_s, now)
        if task.state is TaskState.PENDING:
            self._admission.count(task, 1)
            self._wait(task)
        else:
            self._finish([task], self._store.durable())
        self._request_dispatch([task.spec.pool])

    def _record_outcome(self, session: WorkerSession, success: bool) -> None:
        """Feed a result to the worker's circuit breaker; pause or free it on a change."""
        breaker = session.breaker
        if breaker is None:
            return
        changed = breaker.record(success, self._clock.now())
        if changed is not None:
            log.warning(
                "worker %s: circuit breaker %s (%d consecutive failures)",
                session.spec.worker_id,
                changed.value,
                breaker.consecutive_failures,
            )
            self._apply_breaker(session)
            if self.observers:
                self.observers.worker_changed(
                    session.spec.worker_id,
                    session.spec.pool,
                    f"breaker {changed.value}",
                    self._clock.now(),
                )

    def _apply_breaker(self, session: WorkerSession) -> None:
        """Pause the worker while cordoned or its breaker is open; one trial task at a
        time while half-open."""
        breaker = session.breaker
        state = BreakerState.CLOSED
        if breaker is not None:
            breaker.allows(self._clock.now())  # an open breaker past its cool-down: half-open
            state = breaker.state
        slot = session.slot
        limit = len(slot.held) + 1 if state is BreakerState.HALF_OPEN else UNLIMITED
        paused = session.cordoned or state is BreakerState.OPEN
        self._pools[session.spec.pool].set_paused(session.spec.worker_id, paused, limit)
        reopen_at = breaker.reopen_at() if breaker is not None else None
        if reopen_at is not None:
            self._timers.set(("breaker", session.spec.worker_id), reopen_at)
            self._arm_timer()

    def _reconfigure_limits(self, pool: PoolConfig) -> None:
        """Apply a pool's new rate limits and breaker settings to what exists."""
        self._admission.reconfigure(pool, self._clock.now())
        settings = _breaker_settings(pool)
        for session in self._workers:
            if session.spec.pool == pool.name and session.breaker is not None:
                session.breaker.reconfigure(settings)

    def _arm_timer(self) -> None:
        """Have the loop call `tick` when the next timer is due."""
        if not self.dispatching:
            return
        when = self._timers.next_at()
        if when is None:
            return
        if self._timer_handle is not None:
            if self._timer_at <= when:
                return
            self._timer_handle.cancel()
        self._timer_at = when
        delay = max(0.0, when - self._clock.now())
        self._timer_handle = asyncio.get_running_loop().call_later(delay, self.tick)

    def _update_idle(self) -> None:
        if self._active == 0:
            self._idle.set()
        else:
            self._idle.clear()


def _breaker_settings(pool: PoolConfig) -> BreakerSettings:
    return BreakerSettings(
        failures=pool.breaker_failures,
        failure_rate=pool.breaker_failure_rate,
        window=pool.breaker_window,
        cooldown_s=pool.breaker_cooldown_s,
    )


def _runtime_summaries(model: RuntimeModel) -> list[RuntimeSummary]:
    summaries = []
    for task_type, stats in sorted(model.by_type().items()):
        predictions, error = model.prediction_error(task_type)
        summaries.append(
            RuntimeSummary(
                task_type=task_type,
                samples=stats.count,
                mean_run_s=stats.mean_s,
                stddev_run_s=stats.variance**0.5,
                predictions=predictions,
                mean_abs_error_s=error,
            )
        )
    return summaries


def _move(task: Task, state: TaskState, **changes: Any) -> Task:
    """Move the task to a new state, in place; InvalidTransition if the state machine
    forbids it. Returns the task."""
    check_move(task.state, state)
    task.state = state
    for name, value in changes.items():
        setattr(task, name, value)
    return task


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f"\n... ({len(text) - limit} characters cut)"
    return text[: max(0, limit - len(marker))] + marker
