"""Running a workload: the broker's own task lifecycle on a virtual clock.

A discrete-event simulation: a heap of events (task arrivals and completions, workers
joining, leaving and crashing, heartbeats, timers coming due) drives one
`TaskLifecycle` (broker.core.lifecycle), the same core the broker's engine runs,
whose clock is a `FakeClock`, so hours of simulated time take seconds. Arrivals are
submitted to it, placements come out of it as effects, virtual workers start those
tasks, report their results and heartbeat the tasks they hold; the lifecycle decides
the rest as it does in the broker: retries after a backoff and dead letters, leases,
bulkheads, circuit breakers, execution timeouts, sticky waits.

Each strategy runs the same workload from scratch with the same random draws: a
task's run-time factor and its first attempt's failure draw are drawn per task up
front (common random numbers), so the differences between rows come from placement.

Each placement is checked independently of the scheduler (broker.sim.workers).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Iterable, Sequence

from broker.clock import FakeClock
from broker.config import BrokerConfig
from broker.core.breaker import BreakerState
from broker.core.lifecycle import TaskLifecycle
from broker.core.strategies import STRATEGIES, Adaptive
from broker.domain import Task, TaskId, TaskResult, TaskSpec, TaskState, WorkerId
from broker.sim.oracle import ORACLE, OracleArm
from broker.sim.results import SimResult, percentile
from broker.sim.workers import Attempt, ConnectedWorker, violation
from broker.sim.workload import (
    ANY_CLASS,
    POOL,
    SimTask,
    SimulationError,
    WorkerChange,
    Workload,
    check_workload,
)

# Timers that keep waking the simulation without a placement would otherwise loop for ever.
MAX_IDLE_WAKES = 10_000


def strategy_names() -> list[str]:
    """The strategies the scheduler knows now, and the oracle (the simulator's yardstick)."""
    return [*STRATEGIES, ORACLE]


def check_strategies(names: Iterable[str]) -> list[str]:
    """The names, checked; SimulationError names the first unknown one."""
    names = list(names)
    if not names:
        raise SimulationError("no strategies given")
    for name in names:
        if name not in STRATEGIES and name != ORACLE:
            known = ", ".join(strategy_names())
            raise SimulationError(f"unknown strategy {name!r}; choose from: {known}")
    return names


def compare(workload: Workload, strategies: Sequence[str], *, seed: int = 0) -> list[SimResult]:
    """Run the workload once per strategy, each from scratch with the same draws."""
    check_strategies(strategies)
    check_workload(workload)
    specs = [task.spec() for task in workload.tasks]  # the same for every run
    return [_Run(workload, name, seed, specs).run() for name in strategies]


def simulate(workload: Workload, strategy: str, *, seed: int = 0) -> SimResult:
    """Run the workload under one strategy."""
    return compare(workload, [strategy], seed=seed)[0]


# Events at the same moment apply in this order, then the lifecycle's due timers, then
# the pool places once.
_JOIN, _FINISH, _LEAVE, _CRASH, _ARRIVE, _BEAT, _WAKE = range(7)
_CHANGE_KIND = {WorkerChange.JOIN: _JOIN, WorkerChange.LEAVE: _LEAVE, WorkerChange.CRASH: _CRASH}

_BREAKER_OPENED = f"breaker {BreakerState.OPEN.value}"  # the lifecycle's worker event

_Event = tuple[float, int, int, int, str]  # time, kind, sequence, task index or run id, worker


def _nothing_in_transit() -> set[TaskId]:
    return set()  # a simulated worker gets every assignment at once


class _Run:
    """One strategy over one workload."""

    def __init__(
        self, workload: Workload, strategy: str, seed: int, specs: Sequence[TaskSpec]
    ) -> None:
        self.workload = workload
        self.task_specs = specs
        self.strategy = strategy
        self.seed = seed
        self.clock = FakeClock()
        self.epoch = self.clock.now()

        rng = random.Random(seed)
        sigma = workload.jitter_sigma
        count = len(workload.tasks)
        mu = -sigma * sigma / 2  # so that the factor's mean is 1
        self.factors = [rng.lognormvariate(mu, sigma) for _ in range(count)] if sigma else []
        self.fail_draws = [rng.random() for _ in range(count)]
        self.retry_rng = random.Random(rng.getrandbits(64))  # draws of later attempts
        backoff_rng = random.Random(rng.getrandbits(64))  # the lifecycle's retry jitter

        config = BrokerConfig()
        self.heartbeat_s = config.heartbeat_interval_s
        self.core = TaskLifecycle(config, self.clock, backoff_rng)
        if strategy == ORACLE:  # no registered strategy: the pool is given its arm
            self.pool = self.core.add_pool(workload.pool_config("round_robin"))
            self.pool.use_arms([OracleArm(self.pool.env, self._true_run_s, self._running_ends)])
        else:
            self.pool = self.core.add_pool(workload.pool_config(strategy))

        self.specs = {w.worker_id: w for w in workload.workers}
        self.connected: dict[WorkerId, ConnectedWorker] = {}
        self.attempts: dict[int, Attempt] = {}  # by run id
        self.queued_at: dict[int, float] = {}  # by task id: arrival, requeue or retry
        self.sequence = itertools.count()
        self.run_ids = itertools.count(1)
        self.wakes: set[float] = set()
        self.beating = False  # a heartbeat round is in the heap

        self.completed = 0
        self.failed = 0
        self.requeued = 0
        self.waits: list[float] = []
        self.responses: list[float] = []  # queue wait + run, per finished attempt
        self.placed_on: Counter[WorkerId] = Counter()
        self.run_total_s = 0.0
        self.busy_s = 0.0
        self.connected_spans: list[tuple[float, float, int]] = []  # from, to, capacity
        self.makespan_s = 0.0
        self.last_worker_of_key: dict[str, WorkerId] = {}
        self.sticky_placements = 0
        self.sticky_hits = 0
        self.violations = 0
        self.violation_examples: list[str] = []
        self.dead_lettered = 0
        self.breaker_trips = 0

    # The loop ---------------------------------------------------------------

    def run(self) -> SimResult:
        heap = self._initial_events()
        pop = heapq.heappop
        finish, arrive, settle = self._finish, self._arrive, self._settle
        idle_wakes = 0
        while heap:
            now = heap[0][0]
            self._set_clock(now)
            only_wakes = True
            woke = False
            while heap and heap[0][0] == now:
                _, kind, _, ref, worker_id = pop(heap)
                if kind != _WAKE:
                    only_wakes = False
                if kind == _FINISH:
                    finish(ref, now)
                elif kind == _ARRIVE:
                    arrive(ref)
                elif kind == _WAKE:
                    self.wakes.discard(now)
                    woke = True
                elif kind == _BEAT:
                    self._heartbeats(heap, now)
                elif kind == _JOIN:
                    self._join(worker_id, now)
                elif kind == _LEAVE:
                    self._leave(worker_id, now)
                else:
                    self._crash(worker_id, now)
            if woke:  # a timer of the lifecycle is due (each has its wake-up)
                self.core.tick(self.clock.now())
            placed = settle(heap, now)
            idle_wakes = idle_wakes + 1 if only_wakes and not placed else 0
            if idle_wakes > MAX_IDLE_WAKES:
                raise SimulationError(
                    f"the lifecycle's timers woke the simulation {idle_wakes} times "
                    f"at {now:.3f} s without a placement"
                )
        return self._result()

    def _initial_events(self) -> list[_Event]:
        seq = self.sequence
        events: list[_Event] = [
            (w.join_s, _JOIN, next(seq), 0, w.worker_id) for w in self.specs.values()
        ]
        events += [
            (e.at_s, _CHANGE_KIND[e.change], next(seq), 0, e.worker_id)
            for e in self.workload.worker_events
        ]
        events += [
            (t.arrival_s, _ARRIVE, next(seq), i, "") for i, t in enumerate(self.workload.tasks)
        ]
        heapq.heapify(events)
        return events

    def _set_clock(self, at_s: float) -> None:
        # epoch + at_s rounds the same way every time, so the clock never goes back.
        step = (self.epoch + at_s) - self.clock.now()
        if step > 0:
            self.clock.advance(step)

    def _settle(self, heap: list[_Event], now: float) -> int:
        """Take in the effects of this moment's events, place if the lifecycle asks for
        it, start what was placed, and wake up for the lifecycle's next timer."""
        effects = self.core.effects
        if (
            effects.finished
            or effects.requeued
            or effects.attempts
            or effects.cancel
            or effects.worker_events
        ):
            self._absorb(now)
        placed = 0
        if effects.dispatch:
            placed = self.core.place(POOL, self.clock.now())
            if placed:
                for task, _ in effects.placed:
                    self._start(heap, task, now)
        effects.clear()
        when = self.core.timers.next_at()
        if when is not None:
            at_s = when - self.epoch if when > self.clock.now() else now  # exact (Sterbenz)
            if at_s not in self.wakes:
                self.wakes.add(at_s)
                heapq.heappush(heap, (at_s, _WAKE, next(self.sequence), 0, ""))
        return placed

    def _absorb(self, now: float) -> None:
        """Count what the lifecycle decided: tasks that ended, attempts sent back to wait,
        attempts it cancelled on their worker."""
        effects = self.core.effects
        if effects.finished:
            for task in effects.finished:
                self.completed += 1
                self.failed += task.state is not TaskState.SUCCEEDED
                self.dead_lettered += task.state is TaskState.DEAD_LETTER
            self.makespan_s = now
            self.core.forget(effects.finished)  # as the broker does once they are durable
        for task, _ in effects.requeued:
            self.requeued += 1
            self.queued_at[task.id] = now
        for task, _, _ in effects.attempts:
            if task.state is TaskState.PENDING:  # to be retried once its backoff is over
                self.queued_at[task.id] = max(now, task.not_before - self.epoch)
        for worker_id, task_ids in effects.cancel:
            self._stop(worker_id, task_ids, now)
        for _, _, event in effects.worker_events:
            self.breaker_trips += event == _BREAKER_OPENED

    # Tasks ------------------------------------------------------------------

    def _arrive(self, index: int) -> None:
        task_id = index + 1
        now = self.clock.now()
        task = Task(id=task_id, spec=self.task_specs[index], seq=task_id, created_at=now)
        self.queued_at[task_id] = self.workload.tasks[index].arrival_s
        self.core.admission.count(task, 1)  # no back-pressure: every arrival is admitted
        self.core.submitted((task,), now)

    def _start(self, heap: list[_Event], task: Task, now: float) -> None:
        worker_id = task.worker_id
        worker = self.connected.get(worker_id)
        if worker is None:
            raise SimulationError(
                f"the scheduler placed task {task.id} on worker {worker_id!r}, "
                "which is not connected"
            )
        problem = violation(task, worker)
        if problem is not None:
            self.violations += 1
            if len(self.violation_examples) < 5:
                self.violation_examples.append(f"task {task.id} on {worker_id}: {problem}")

        wait = now - self.queued_at.pop(task.id)
        self.waits.append(wait)
        self.placed_on[worker_id] += 1
        hints = task.spec.placement
        if key := hints.sticky_key:
            last = self.last_worker_of_key.get(key)
            if last is not None:
                self.sticky_placements += 1
                self.sticky_hits += last == worker_id
            self.last_worker_of_key[key] = worker_id

        spec = worker.spec
        sim = self.workload.tasks[task.id - 1]
        if task.attempts == 1:
            factor = self.factors[task.id - 1] if self.factors else 1.0
            fail_draw = self.fail_draws[task.id - 1]
        else:
            sigma = self.workload.jitter_sigma
            factor = self.retry_rng.lognormvariate(-sigma * sigma / 2, sigma) if sigma else 1.0
            fail_draw = self.retry_rng.random()
        duration = _mean_duration(sim, spec.worker_class) * factor
        if self._warm(worker, hints.sticky_key or hints.routing_key):
            duration *= self.workload.warm_factor
        success = fail_draw >= spec.fail_rate
        if not success:
            duration *= spec.fail_time_factor

        attempt = Attempt(next(self.run_ids), task, worker_id, now, wait, success, now + duration)
        self.attempts[attempt.run_id] = attempt
        worker.running[task.id] = attempt
        heapq.heappush(heap, (now + duration, _FINISH, next(self.sequence), attempt.run_id, ""))
        # A simulated worker sends no start notice: the lifecycle takes a result without
        # one, and the worker's heartbeats confirm what it holds.
        if not self.beating:
            self.beating = True
            heapq.heappush(heap, (now + self.heartbeat_s, _BEAT, next(self.sequence), 0, ""))

    def _warm(self, worker: ConnectedWorker, key: str) -> bool:
        """Whether the worker ran this key recently; it has now."""
        size = self.workload.key_cache
        if not key or not size:
            return False
        cache = worker.warm
        if key in cache:
            cache.move_to_end(key)
            return True
        cache[key] = None
        if len(cache) > size:
            cache.popitem(last=False)
        return False

    def _finish(self, run_id: int, now: float) -> None:
        attempt = self.attempts.pop(run_id, None)
        if attempt is None:  # its worker crashed, or the attempt was cancelled
            return
        task = attempt.task
        worker = self.connected[attempt.worker_id]
        del worker.running[task.id]
        run_s = now - attempt.started_s
        self.responses.append(attempt.queue_wait_s + run_s)
        self.busy_s += run_s
        self.run_total_s += run_s
        # The worker's own measure of the run, on its clock (simulated seconds).
        result = TaskResult(
            task_id=task.id,
            attempt=task.attempts,
            success=attempt.success,
            started_at=attempt.started_s,
            finished_at=now,
        )
        self.core.reported(attempt.worker_id, (), (result,), self.clock.now())
        if worker.draining and not worker.running:
            self._disconnect(attempt.worker_id, now)

    def _stop(self, worker_id: WorkerId, task_ids: Iterable[TaskId], now: float) -> None:
        """The lifecycle told a worker to stop these tasks (a timeout, a lost lease)."""
        worker = self.connected.get(worker_id)
        if worker is None:
            return
        for task_id in task_ids:
            attempt = worker.running.pop(task_id, None)
            if attempt is not None:
                del self.attempts[attempt.run_id]
                self.busy_s += now - attempt.started_s
        if worker.draining and not worker.running:
            self._disconnect(worker_id, now)

    # What the oracle knows ---------------------------------------------------------

    def _true_run_s(self, task: Task, worker_id: WorkerId) -> float:
        """How long the task's next attempt would run on the worker (a warm key aside)."""
        spec = self.specs[worker_id]
        index = task.id - 1
        duration = _mean_duration(self.workload.tasks[index], spec.worker_class)
        if task.attempts == 0:
            duration *= self.factors[index] if self.factors else 1.0
            if self.fail_draws[index] < spec.fail_rate:
                duration *= spec.fail_time_factor
        return duration

    def _running_ends(self, worker_id: WorkerId) -> list[float]:
        """Seconds until each attempt the worker runs ends."""
        worker = self.connected.get(worker_id)
        if worker is None:
            return []
        now = self.clock.now() - self.epoch
        return [max(0.0, a.ends_s - now) for a in worker.running.values()]

    # Workers ----------------------------------------------------------------

    def _join(self, worker_id: WorkerId, now: float) -> None:
        present = self.connected.get(worker_id)
        if present is not None:  # came back before its drain finished
            present.draining = False
            self.core.members.set_draining(worker_id, False)
            return
        spec = self.specs[worker_id]
        self.connected[worker_id] = ConnectedWorker(spec, now)
        self.core.members.join(
            worker_id, POOL, spec.capacity, spec.task_types, dict(spec.labels), self.clock.now()
        )

    def _leave(self, worker_id: WorkerId, now: float) -> None:
        worker = self.connected.get(worker_id)
        if worker is None or worker.draining:
            return
        worker.draining = True
        self.core.members.set_draining(worker_id)
        if not worker.running:
            self._disconnect(worker_id, now)

    def _crash(self, worker_id: WorkerId, now: float) -> None:
        worker = self.connected.get(worker_id)
        if worker is None:
            return
        for attempt in worker.running.values():
            del self.attempts[attempt.run_id]
            self.busy_s += now - attempt.started_s
        self._disconnect(worker_id, now, "the worker crashed")

    def _disconnect(self, worker_id: WorkerId, now: float, reason: str = "drained") -> None:
        """The worker is gone; the lifecycle requeues whatever it still held."""
        worker = self.connected.pop(worker_id)
        self.core.worker_lost(worker_id, reason, self.clock.now())
        self.connected_spans.append((worker.joined_s, now, worker.spec.capacity))

    def _heartbeats(self, heap: list[_Event], now: float) -> None:
        """Every connected worker confirms what it holds (renewing the leases); the
        broker's reaper requeues what no worker confirmed in time."""
        at = self.clock.now()
        for worker_id, worker in self.connected.items():
            self.core.heartbeat(worker_id, 0.0, worker.running.keys(), _nothing_in_transit, at)
        self.core.expire_leases(at)
        self.beating = bool(self.attempts)
        if self.beating:
            heapq.heappush(heap, (now + self.heartbeat_s, _BEAT, next(self.sequence), 0, ""))

    # Results ----------------------------------------------------------------

    def _result(self) -> SimResult:
        end = self.makespan_s
        spans = self.connected_spans + [
            (w.joined_s, end, w.spec.capacity) for w in self.connected.values()
        ]
        available = sum(cap * max(0.0, min(to, end) - start) for start, to, cap in spans)
        switched_at: list[int] = []
        active = ""
        for task_type in sorted({t.task_type for t in self.workload.tasks}):
            for index in self.pool.indexes(task_type):
                if isinstance(index, Adaptive):
                    switched_at += index.switched_at
                    active = index.active
        waits = sorted(self.waits)
        responses = sorted(self.responses)
        tasks = len(self.workload.tasks)
        return SimResult(
            scenario=self.workload.name,
            strategy=self.strategy,
            seed=self.seed,
            tasks=tasks,
            completed=self.completed,
            failed=self.failed,
            requeued=self.requeued,
            unfinished=tasks - self.completed,
            throughput_per_s=self.completed / end if end > 0 else 0.0,
            makespan_s=end,
            wait_p50_s=percentile(waits, 50),
            wait_p95_s=percentile(waits, 95),
            wait_p99_s=percentile(waits, 99),
            run_mean_s=self.run_total_s / self.completed if self.completed else 0.0,
            response_mean_s=sum(responses) / len(responses) if responses else 0.0,
            response_p99_s=percentile(responses, 99),
            utilisation=min(1.0, self.busy_s / available) if available > 0 else 0.0,
            violations=self.violations,
            sticky_placements=self.sticky_placements,
            sticky_hit_rate=(
                self.sticky_hits / self.sticky_placements if self.sticky_placements else None
            ),
            violation_examples=tuple(self.violation_examples),
            retried=self.core.events[(POOL, "retried")],
            dead_lettered=self.dead_lettered,
            timed_out=self.core.events[(POOL, "timed_out")],
            breaker_trips=self.breaker_trips,
            placed_on=dict(self.placed_on),
            strategy_notes=tuple(self.pool.strategy_notes()),
            switched_at=tuple(switched_at),
            active=active,
        )


def _mean_duration(task: SimTask, worker_class: str) -> float:
    durations = task.duration_s
    mean = durations.get(worker_class)
    return durations[ANY_CLASS] if mean is None else mean
