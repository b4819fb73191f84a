"""Predictive's index of label sets: the tops it keeps ranked, and the notes it writes,
are what weighing every set's top afresh gives."""

from __future__ import annotations

import itertools
from operator import itemgetter

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.clock import FakeClock
from broker.core.runtimes import RuntimeModel
from broker.core.strategies import Outcome, Predictive, StrategyEnv, WorkerSlot
from broker.domain import Task, TaskSpec

LABELS: list[dict[str, str]] = [{}, {"zone": "a"}, {"zone": "b"}, {"zone": "c"}, {"zone": "a"}]


def task(task_id: int) -> Task:
    return Task(id=task_id, seq=task_id, spec=TaskSpec(task_type="t"))


def slot(worker_id: str, capacity: int, labels: dict[str, str]) -> WorkerSlot:
    return WorkerSlot(worker_id, "default", capacity, frozenset({"t"}), labels)


def make_env(prior_s: float = 1.0) -> StrategyEnv:
    return StrategyEnv(clock=FakeClock(), runtimes=RuntimeModel("default", prior_s=prior_s))


OPS = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 9), st.sampled_from([0.1, 0.5, 1.0, 2.0])),
    min_size=1,
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_a_pick_goes_where_weighing_every_label_set_would_send_it(
    ops: list[tuple[int, int, float]],
) -> None:
    env = make_env()
    clock = env.clock
    assert isinstance(clock, FakeClock)
    strategy = Predictive(env)
    workers = [slot(f"w{i}", 2, LABELS[i % len(LABELS)]) for i in range(10)]
    for worker in workers:
        strategy.add(worker)
    running: dict[int, tuple[Task, WorkerSlot]] = {}
    ids = itertools.count(1)

    def reindex(worker: WorkerSlot, was_ready: bool) -> None:
        if was_ready and not worker.ready:
            strategy.remove(worker)
        elif worker.ready and not was_ready:
            strategy.add(worker)
        elif worker.ready:
            strategy.update(worker)

    def release(task_id: int, run_s: float | None) -> None:
        done, worker = running.pop(task_id)
        was_ready = worker.ready
        worker.held.discard(task_id)
        reindex(worker, was_ready)
        if run_s is not None:
            env.runtimes.record("t", worker.labels, run_s)
            strategy.observe(Outcome(worker, done, 0.0, run_s, True))

    for op, index, run_s in ops:
        if op <= 1:
            placing = task(next(ids))
            picked = strategy.pick(placing)
            tops = list(strategy._tops.values())
            assert strategy._ranked == sorted(tops)
            if picked is None:
                continue  # held back for a busy worker
            best = min(tops)
            assert picked is best[3]
            expected = f"predictive: expected finish {best[0]:.2f} s on {picked.worker_id}"
            others = [top for top in tops if top is not best]
            if others:  # the first of the least expected run time among the rest
                second = min(others, key=itemgetter(0))
                expected += f" vs {second[0]:.2f} s on {second[3].worker_id}"
            assert strategy.note.startswith(expected)
            was_ready = picked.ready
            picked.held.add(placing.id)
            running[placing.id] = (placing, picked)
            reindex(picked, was_ready)
        elif op == 2 and running:
            release(sorted(running)[index % len(running)], None)  # cancelled
        elif op == 3 and running:
            release(sorted(running)[index % len(running)], run_s)
        elif op == 4:
            worker = workers[index]
            was_ready = worker.ready
            worker.draining = not worker.draining
            reindex(worker, was_ready)
        else:
            clock.advance(run_s)


def test_a_note_shows_minus_zero_and_zero_as_each_is() -> None:
    # -0.0 == 0.0, yet they read differently: the texts kept for notes must not mix them.
    env = make_env(prior_s=-0.0)
    strategy = Predictive(env)
    learned, fresh = slot("learned", 4, {"zone": "a"}), slot("fresh", 4, {"zone": "b"})
    strategy.add(learned)
    strategy.add(fresh)
    strategy.observe(Outcome(learned, task(1), 0.0, 0.0, True))  # its estimate: 0.0
    notes = []
    for task_id in range(2, 6):
        worker = strategy.pick(task(task_id))
        assert worker is not None
        notes.append(strategy.note)
        other = fresh if worker is learned else learned
        finish, runner_up = (f"{strategy.estimate('t', w):.2f}" for w in (worker, other))
        assert strategy.note == (
            f"predictive: expected finish {finish} s on {worker.worker_id}"
            f" vs {runner_up} s on {other.worker_id}"
        )
        worker.held.add(task_id)
        strategy.update(worker)
    assert any("-0.00 s on fresh" in note for note in notes)
    assert any("0.00 s on learned" in note for note in notes)


def test_a_worker_that_disconnects_leaves_no_task_count_behind() -> None:
    strategy = Predictive(make_env())
    worker = slot("w", 2, {})
    strategy.add(worker)
    for task_id in (1, 2):
        assert strategy.pick(task(task_id)) is worker
        worker.held.add(task_id)
        strategy.update(worker)
    worker.held.clear()
    strategy.update(worker)  # both released: nothing counted against it
    assert strategy.frees_in("t", worker) == 0.0
    strategy.disconnect(worker)
    assert worker.worker_id not in strategy._on
