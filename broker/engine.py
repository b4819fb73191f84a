"""The broker's domain core: tasks in, placements out, results back, all durable.

The gRPC edge calls into the Engine with domain types; the Engine keeps the
pools' schedulers, the connected workers and the tasks in flight, and records
every change in the store, whose group commits make it durable. It runs on the
event loop and never blocks it: the only waits are on the store's commits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from broker.clock import Clock
from broker.config import BrokerConfig, validate_pool
from broker.domain import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    ArmSummary,
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
from broker.registry import WorkerChannel, WorkerRegistry
from broker.runtimes import RunStats, RuntimeKey, RuntimeModel
from broker.scheduler import PoolScheduler
from broker.states import check_move
from broker.strategies import StrategyEnv, WorkerSlot

log = logging.getLogger("taskbroker.engine")

MAX_CAPACITY = 10_000
MAX_NAME_LENGTH = 200
MAX_LABELS = 64
MAX_PREFERENCE_WEIGHT = 1000

TaskCallback = Callable[[Task], None]


class Store(Protocol):
    """What the engine needs from a durable store (see broker.store.SQLiteStore)."""

    async def insert_tasks(self, tasks: Sequence[Task]) -> None: ...
    def save(self, task: Task) -> None: ...
    def durable(self) -> asyncio.Future[None]: ...
    async def flush(self) -> None: ...
    async def get_task(self, task_id: int) -> Task | None: ...
    async def list_tasks(self, flt: TaskFilter) -> list[Task]: ...
    async def load_unfinished(self) -> list[Task]: ...
    async def max_task_id(self) -> int: ...
    async def max_seq(self) -> int: ...
    async def count_by_pool_state(self) -> dict[tuple[str, TaskState], int]: ...
    async def list_pools(self) -> list[PoolConfig]: ...
    async def upsert_pool(self, pool: PoolConfig) -> None: ...
    def worker_connected(self, spec: WorkerSpec, at: float) -> None: ...
    def worker_disconnected(self, worker_id: str, at: float) -> None: ...
    def save_sticky(self, pool: str, key: str, worker_id: WorkerId) -> None: ...
    def save_runtime(self, key: RuntimeKey, stats: RunStats) -> None: ...
    async def load_sticky(self) -> dict[str, dict[str, WorkerId]]: ...
    async def load_runtimes(self) -> list[tuple[RuntimeKey, RunStats]]: ...


class Engine:
    """Tasks, pools and workers of one broker."""

    def __init__(self, config: BrokerConfig, store: Store, clock: Clock) -> None:
        self._config = config
        self._store = store
        self._clock = clock
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

    # Lifecycle -----------------------------------------------------------------

    async def recover(self) -> int:
        """Load pools and unfinished tasks from the store; return how many were requeued."""
        for pool in self._config.pools:
            await self._store.upsert_pool(pool)
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
            self._pools[task.spec.pool].enqueue(task)
        await self._store.flush()
        return len(unfinished)

    def start(self) -> None:
        """Take submits and dispatch work."""
        self.accepting = True
        self.dispatching = True
        self._request_dispatch(self._pools)

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
        self._update_idle()
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            log.warning("shutdown grace ran out with %d tasks still on workers", self._active)
            return False
        return True

    # Submitting and reading tasks ----------------------------------------------

    async def submit(self, specs: Sequence[TaskSpec]) -> list[Task]:
        """Validate and durably store a batch, all or nothing, then queue it."""
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
        now = self._clock.now()
        tasks = []
        for spec in specs:
            tasks.append(Task(id=self._next_id, spec=spec, seq=self._next_seq, created_at=now))
            self._next_id += 1
            self._next_seq += 1
        # Queue the tasks as soon as they are durable, even if our caller is cancelled
        # meanwhile: a stored task must never be missing from its queue.
        committed = asyncio.ensure_future(self._store.insert_tasks(tasks))
        committed.add_done_callback(lambda f: self._enqueue_committed(tasks, f))
        await asyncio.shield(committed)
        return tasks

    def _enqueue_committed(self, tasks: list[Task], committed: asyncio.Future[None]) -> None:
        if committed.cancelled() or committed.exception() is not None:
            return
        for task in tasks:
            self._live[task.id] = task
            self._pools[task.spec.pool].enqueue(task)
        self._request_dispatch({task.spec.pool for task in tasks})

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
        pool = self._pools[task.spec.pool]
        if task.state is TaskState.PENDING:
            pool.dequeue(task_id)
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

    # Pools ---------------------------------------------------------------------

    def pools(self) -> list[PoolConfig]:
        return [p.config for p in self._pools.values()]

    async def create_pool(self, pool: PoolConfig) -> PoolConfig:
        try:
            validate_pool(pool)
        except ConfigError as exc:
            raise InvalidArgument(str(exc)) from None
        if pool.name in self._pools:
            raise AlreadyExists(f"pool {pool.name!r} exists already")
        await self._store.upsert_pool(pool)
        self._pools[pool.name] = self._new_scheduler(pool)
        log.info("pool %s created with strategy %s", pool.name, pool.strategy)
        return pool

    async def update_pool(self, pool: PoolConfig) -> PoolConfig:
        """Change a pool's strategy, A/B split or sticky timeout, at run time."""
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
        log.info("pool %s reconfigured: %s -> %s", pool.name, old, pool)
        self._request_dispatch([pool.name])
        return pool

    async def stats(self) -> list[PoolStats]:
        counts = self._finished
        result = []
        for name, pool in self._pools.items():
            workers = pool.workers.values()
            result.append(
                PoolStats(
                    pool=name,
                    strategy=pool.strategy_name,
                    pending=pool.pending,
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
        self._workers.add(spec, slot, channel)
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
        requeued = 0
        for task_id in sorted(slot.held):
            task = self._live.get(task_id)
            self._active -= 1
            if task is None or not task.state.active or task.worker_id != worker_id:
                continue
            _move(task, TaskState.PENDING)
            self._store.save(task)
            pool.enqueue(task)
            requeued += 1
        log.info("worker %s disconnected (%s); %d tasks requeued", worker_id, reason, requeued)
        self._update_idle()
        self._request_dispatch([session.spec.pool])

    def heartbeat(self, worker_id: WorkerId, load: float) -> None:
        session = self._workers.registered(worker_id)
        self._workers.heard_from(session)
        session.slot.load = load

    def set_capacity(self, worker_id: WorkerId, capacity: int) -> None:
        """A worker changes how many tasks it takes at once (0 pauses it)."""
        session = self._workers.registered(worker_id)
        if not 0 <= capacity <= MAX_CAPACITY:
            raise InvalidArgument(f"capacity must be 0..{MAX_CAPACITY}, got {capacity}")
        self._workers.heard_from(session)
        self._pools[session.spec.pool].set_capacity(worker_id, capacity)
        self._request_dispatch([session.spec.pool])

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
            self._learn(task, result, now)
            self._finish_attempt(task, result, now)
            self._store.save(task)
            finished.append(task)
        if finished:
            self._finish(finished, self._store.durable())
            self._request_dispatch([session.spec.pool])

    def reap(self) -> list[WorkerId]:
        """Disconnect workers whose last heartbeat is older than the timeout."""
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
        if len(spec.payload) > self._config.max_payload_bytes:
            raise ResourceExhausted(
                f"{where}payload is {len(spec.payload)} bytes, over the limit of "
                f"{self._config.max_payload_bytes} (max_payload_bytes)"
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
        return _move(task, TaskState.FAILED, started_at=started_at, finished_at=now, error=error)

    def _learn(self, task: Task, result: TaskResult, now: float) -> None:
        """Free the slot of a task that came back, and let the pool learn from the attempt."""
        pool = self._pools[task.spec.pool]
        worker = pool.workers.get(task.worker_id)
        if worker is None or task.id not in worker.held:
            return
        if 0 < result.started_at <= result.finished_at:
            run_s = result.finished_at - result.started_at  # the worker's own measure
        else:
            run_s = max(0.0, now - task.assigned_at)
        pool.finish(
            task,
            task.worker_id,
            queue_wait_s=max(0.0, task.assigned_at - task.created_at),
            run_s=run_s,
            success=result.success,
        )
        self._active -= 1
        self._update_idle()

    def _release(self, task: Task) -> None:
        """The worker holding this task no longer does: its credit comes back."""
        pool = self._pools[task.spec.pool]
        worker = pool.workers.get(task.worker_id)
        if worker is not None and task.id in worker.held:
            pool.release(task.worker_id, task.id)
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
                )
                self._store.save(task)
                by_worker[task.worker_id].append(task)
                self._active += 1
            for worker_id, tasks in by_worker.items():
                self._workers.connected(worker_id).channel.send_assignments(tasks)
            self._persist_learning(self._pools[name])
            self._wake_at_deadline(self._pools[name])

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

    def _update_idle(self) -> None:
        if self._active == 0:
            self._idle.set()
        else:
            self._idle.clear()


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
