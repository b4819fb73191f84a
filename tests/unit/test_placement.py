"""Placement hints in the scheduler: filters, preferences, anti-affinity, waiting reasons."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.clock import FakeClock
from broker.core.runtimes import RuntimeModel
from broker.core.scheduler import Decision, PoolScheduler
from broker.core.strategies import StrategyEnv, WorkerSlot
from broker.domain import Placement, PoolConfig, PreferredLabel, Task, TaskSpec


def task(
    task_id: int,
    *,
    require: dict[str, str] | None = None,
    prefer: tuple[PreferredLabel, ...] = (),
    group: str = "",
    soft: bool = False,
    task_type: str = "t",
) -> Task:
    placement = Placement(
        required_labels=require or {},
        preferred_labels=prefer,
        anti_affinity_group=group,
        anti_affinity_soft=soft,
    )
    return Task(id=task_id, seq=task_id, spec=TaskSpec(task_type=task_type, placement=placement))


def slot(worker_id: str, capacity: int = 4, **labels: str) -> WorkerSlot:
    return WorkerSlot(worker_id, "default", capacity, frozenset({"t"}), labels)


def pool_of(*workers: WorkerSlot, strategy: str = "round_robin") -> PoolScheduler:
    pool = PoolScheduler("default", strategy, starvation_interval=1000)
    for worker in workers:
        pool.add_worker(worker)
    return pool


def placed(decisions: list[Decision]) -> dict[int, str]:
    return {d.task.id: d.worker.worker_id for d in decisions if d.worker is not None}


def waiting(decisions: list[Decision]) -> dict[int, Decision]:
    return {d.task.id: d for d in decisions if d.worker is None}


def test_required_labels_filter_workers() -> None:
    pool = pool_of(slot("cpu", zone="eu"), slot("gpu", zone="eu", gpu="a100"))
    for i in range(1, 4):
        pool.enqueue(task(i, require={"gpu": "a100", "zone": "eu"}))
    assert placed(pool.place()) == {1: "gpu", 2: "gpu", 3: "gpu"}


def test_the_placement_note_explains_the_filters() -> None:
    pool = pool_of(slot("cpu"), slot("gpu", gpu="a100"))
    pool.enqueue(task(1, require={"gpu": "a100"}))
    (decision,) = pool.place()
    assert decision.worker is not None
    assert "1 of 2 ready workers allowed after required labels gpu=a100" in decision.note


def test_preferred_labels_win_but_others_are_a_fallback() -> None:
    pool = pool_of(slot("us", capacity=1, zone="us"), slot("eu", capacity=1, zone="eu"))
    prefer = (PreferredLabel("zone", "eu", 5),)
    pool.enqueue(task(1, prefer=prefer))
    pool.enqueue(task(2, prefer=prefer))
    assert placed(pool.place()) == {1: "eu", 2: "us"}


def test_higher_weights_score_higher() -> None:
    pool = pool_of(slot("a", ssd="yes"), slot("b", zone="eu"))
    pool.enqueue(task(1, prefer=(PreferredLabel("ssd", "yes", 2), PreferredLabel("zone", "eu", 7))))
    assert placed(pool.place()) == {1: "b"}


def test_hard_anti_affinity_never_shares_a_worker() -> None:
    pool = pool_of(slot("a"), slot("b"))
    for i in range(1, 4):
        pool.enqueue(task(i, group="db-migrations"))
    decisions = pool.place()
    assert sorted(placed(decisions).values()) == ["a", "b"]
    (parked,) = waiting(decisions).values()
    assert "anti-affinity group 'db-migrations'" in parked.note
    assert not parked.unschedulable
    # When one of the group finishes, the third runs there.
    first_on_a = next(t for t, w in placed(decisions).items() if w == "a")
    pool.release("a", first_on_a)
    assert placed(pool.place()) == {parked.task.id: "a"}


def test_soft_tasks_do_not_join_a_hard_task_of_their_group() -> None:
    pool = pool_of(slot("a"))
    pool.enqueue(task(1, group="g"))
    pool.enqueue(task(2, group="g", soft=True))
    decisions = pool.place()
    assert placed(decisions) == {1: "a"}
    assert 2 in waiting(decisions)
    pool.release("a", 1)
    assert placed(pool.place()) == {2: "a"}


def test_soft_anti_affinity_spreads_then_shares() -> None:
    pool = pool_of(slot("a"), slot("b"))
    for i in range(1, 5):
        pool.enqueue(task(i, group="g", soft=True))
    workers = sorted(placed(pool.place()).values())
    assert workers == ["a", "a", "b", "b"]


def test_no_matching_worker_is_unschedulable_until_one_connects() -> None:
    pool = pool_of(slot("a", zone="us"))
    pool.enqueue(task(1, require={"zone": "mars"}))
    (decision,) = pool.place()
    assert decision.worker is None
    assert decision.unschedulable
    assert "no connected worker takes type 't' and labels zone=mars" in decision.note
    assert pool.pending == 1
    decision.task.unschedulable = True  # the engine records what it was told
    decision.task.placement_note = decision.note
    assert pool.place() == []  # nothing new to say
    pool.add_worker(slot("rover", zone="mars"))
    assert placed(pool.place()) == {1: "rover"}
    assert pool.pending == 0


def test_matching_workers_busy_is_waiting_not_unschedulable() -> None:
    pool = pool_of(slot("gpu", capacity=1, gpu="yes"), slot("cpu", capacity=5))
    pool.enqueue(task(1, require={"gpu": "yes"}))
    pool.enqueue(task(2, require={"gpu": "yes"}))
    decisions = pool.place()
    assert placed(decisions) == {1: "gpu"}
    assert (
        waiting(decisions)[2].note
        == "waiting: all 1 workers for type 't' and labels gpu=yes are busy"
    )
    assert not waiting(decisions)[2].unschedulable
    pool.release("gpu", 1)
    assert placed(pool.place()) == {2: "gpu"}


def test_a_parked_task_can_be_cancelled() -> None:
    pool = pool_of(slot("a"))
    pool.enqueue(task(1, require={"x": "y"}))
    pool.place()
    cancelled = pool.dequeue(1)
    assert cancelled is not None
    assert pool.pending == 0


def test_losing_the_only_matching_worker_makes_waiting_tasks_unschedulable() -> None:
    pool = pool_of(slot("gpu", capacity=1, gpu="yes"), slot("cpu"))
    pool.enqueue(task(1, require={"gpu": "yes"}))
    pool.enqueue(task(2, require={"gpu": "yes"}))
    for d in pool.place():
        d.task.placement_note, d.task.unschedulable = d.note, d.unschedulable
    pool.remove_worker("gpu")
    pool.enqueue(task(3))  # the cpu worker is still ready, so waiting tasks are looked at
    decisions = pool.place()
    assert waiting(decisions)[2].unschedulable
    assert placed(decisions) == {3: "cpu"}


workers_st = st.lists(
    st.tuples(
        st.integers(1, 3),
        st.dictionaries(st.sampled_from(["zone", "gpu"]), st.sampled_from(["a", "b"])),
    ),
    min_size=1,
    max_size=6,
)
tasks_st = st.tuples(
    st.dictionaries(st.sampled_from(["zone", "gpu"]), st.sampled_from(["a", "b"]), max_size=2),
    st.sampled_from(["", "g1", "g2"]),
    st.booleans(),
)
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), tasks_st),
        st.tuples(st.just("finish"), st.integers(0, 100)),
        st.tuples(st.just("leave"), st.integers(0, 100)),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(workers=workers_st, ops=ops_st, strategy=st.sampled_from(["round_robin", "least_loaded"]))
def test_hard_constraints_are_never_broken_and_schedulable_tasks_are_placed(
    workers: list[tuple[int, dict[str, str]]], ops: list[tuple[str, object]], strategy: str
) -> None:
    pool = PoolScheduler("default", strategy, starvation_interval=3)
    slots = [slot(f"w{i}", cap, **labels) for i, (cap, labels) in enumerate(workers)]
    for s in slots:
        pool.add_worker(s)
    live = list(slots)
    where: dict[int, WorkerSlot] = {}
    placed_tasks: dict[int, Task] = {}
    next_id = 1
    for op, arg in ops:
        if op == "submit":
            assert isinstance(arg, tuple)
            require, group, soft = arg
            pool.enqueue(task(next_id, require=require, group=group, soft=soft))
            next_id += 1
        elif op == "finish" and where:
            assert isinstance(arg, int)
            task_id = sorted(where)[arg % len(where)]
            pool.release(where.pop(task_id).worker_id, task_id)
            del placed_tasks[task_id]
        elif op == "leave" and len(live) > 1:
            assert isinstance(arg, int)
            gone = live.pop(arg % len(live))
            pool.remove_worker(gone.worker_id)
            for task_id in sorted(gone.held):  # the engine requeues what it held
                del where[task_id]
                pool.enqueue(placed_tasks.pop(task_id))
        for decision in pool.place():
            decision.task.placement_note = decision.note
            decision.task.unschedulable = decision.unschedulable
            if decision.worker is None:
                continue
            worker, hints = decision.worker, decision.task.spec.placement
            assert all(worker.labels.get(k) == v for k, v in hints.required_labels.items())
            where[decision.task.id] = worker
            placed_tasks[decision.task.id] = decision.task
        running = {t.id: t for t in placed_tasks.values()}
        for s in live:
            assert len(s.held) <= s.capacity
            on_worker = [running[i] for i, w in where.items() if w is s]
            for group in {t.spec.placement.anti_affinity_group for t in on_worker} - {""}:
                of_group = [t for t in on_worker if t.spec.placement.anti_affinity_group == group]
                if any(not t.spec.placement.anti_affinity_soft for t in of_group):
                    assert len(of_group) == 1, f"group {group} twice on {s.worker_id}"
        # Nothing placeable is left waiting.
        for waiting_task in [*pool.queue, *pool.parked()]:
            hints = waiting_task.spec.placement
            fits = [
                s
                for s in live
                if s.ready
                and all(s.labels.get(k) == v for k, v in hints.required_labels.items())
                and not (
                    hints.anti_affinity_group
                    and (s.hard_groups if hints.anti_affinity_soft else s.groups).get(
                        hints.anti_affinity_group
                    )
                )
            ]
            assert not fits, f"task {waiting_task.id} could run on {fits[0].worker_id}"


def sticky_pool(timeout: float = 5.0) -> tuple[PoolScheduler, FakeClock]:
    clock = FakeClock()
    env = StrategyEnv(clock=clock, runtimes=RuntimeModel("default"))
    config = PoolConfig(name="default", strategy="round_robin", sticky_timeout_s=timeout)
    pool = PoolScheduler("default", "round_robin", 1000, env=env, config=config)
    pool.add_worker(slot("a", capacity=1))
    pool.add_worker(slot("b", capacity=1))
    return pool, clock


def sticky(task_id: int, key: str) -> Task:
    return Task(
        id=task_id,
        seq=task_id,
        spec=TaskSpec(task_type="t", placement=Placement(sticky_key=key)),
    )


def test_a_sticky_key_returns_to_its_worker() -> None:
    pool, _ = sticky_pool()
    pool.enqueue(sticky(1, "user-7"))
    (first,) = placed(pool.place()).values()
    pool.release(first, 1)
    pool.enqueue(task(2))  # takes the other worker's turn first
    pool.enqueue(sticky(3, "user-7"))
    assert placed(pool.place())[3] == first
    assert (pool.sticky_hits, pool.sticky_misses) == (1, 1)


def test_a_sticky_task_waits_for_its_busy_worker_then_falls_back() -> None:
    pool, clock = sticky_pool(timeout=5.0)
    pool.enqueue(sticky(1, "k"))
    owner = placed(pool.place())[1]
    pool.enqueue(sticky(2, "k"))
    decisions = pool.place()
    assert "sticky key 'k' waits for worker" in waiting(decisions)[2].note
    deadline = pool.next_deadline()
    assert deadline == clock.now() + 5.0
    clock.advance(4.9)
    assert placed(pool.place()) == {}
    clock.advance(0.2)
    moved = placed(pool.place())
    assert moved[2] != owner
    assert pool.sticky["k"] == moved[2]
    assert pool.next_deadline() is None


def test_a_sticky_task_goes_at_once_when_its_worker_frees_up() -> None:
    pool, clock = sticky_pool()
    pool.enqueue(sticky(1, "k"))
    owner = placed(pool.place())[1]
    pool.enqueue(sticky(2, "k"))
    pool.place()
    clock.advance(1.0)
    pool.release(owner, 1)
    assert placed(pool.place()) == {2: owner}


def test_sticky_respects_hard_filters() -> None:
    pool, _ = sticky_pool()
    pool.enqueue(sticky(1, "k"))
    owner = placed(pool.place())[1]
    pool.release(owner, 1)
    other = "b" if owner == "a" else "a"
    pinned = Task(
        id=2,
        seq=2,
        spec=TaskSpec(
            task_type="t", placement=Placement(sticky_key="k", required_labels={"name": other})
        ),
    )
    pool.remove_worker(other)
    pool.add_worker(slot(other, capacity=1, name=other))
    pool.enqueue(pinned)
    assert placed(pool.place()) == {2: other}


def test_ab_split_sends_a_share_to_the_second_strategy() -> None:
    config = PoolConfig(
        name="default", strategy="round_robin", ab_strategy="least_loaded", ab_percent=30
    )
    pool = PoolScheduler("default", "round_robin", 1000, config=config)
    for name in "abcd":
        pool.add_worker(slot(name, capacity=1000))
    for i in range(1, 1001):
        pool.enqueue(task(i))
    decisions = [d for d in pool.place() if d.worker is not None]
    arms = {s.strategy: s.placed for s in pool.arm_stats()}
    assert arms["round_robin"] + arms["least_loaded"] == 1000
    assert 250 <= arms["least_loaded"] <= 350
    for d in decisions[:10]:
        pool.finish(
            d.task,
            d.worker.worker_id if d.worker else "",
            queue_wait_s=0.5,
            run_s=2.0,
            success=True,
        )
    finished = sum(s.finished for s in pool.arm_stats())
    assert finished == 10


def test_a_run_out_sticky_wait_with_no_ready_worker_needs_no_wake_up() -> None:
    pool, clock = sticky_pool(timeout=1.0)
    pool.enqueue(sticky(1, "k"))
    owner = placed(pool.place())[1]
    other = "b" if owner == "a" else "a"
    pool.enqueue(sticky(2, "k"))
    assert placed(pool.place()) == {}  # waits for its busy owner
    assert pool.next_deadline() == clock.now() + 1.0
    pool.set_draining(other)  # now no worker of the type is ready at all
    clock.advance(2.0)
    assert placed(pool.place()) == {}
    assert pool.next_deadline() is None  # nothing to wake up for: no busy loop
    pool.set_draining(other, False)
    assert placed(pool.place()) == {2: other}


def test_the_sticky_map_forgets_its_least_recently_used_keys() -> None:
    pool, _ = sticky_pool()
    pool.max_sticky_keys = 2
    for task_id, key in [(1, "k1"), (2, "k2")]:
        pool.enqueue(sticky(task_id, key))
        (worker,) = placed(pool.place()).values()
        pool.release(worker, task_id)
    pool.sticky_moves.clear()  # as the dispatcher does once it queued them for the store
    pool.enqueue(sticky(3, "k1"))  # k1 used again: k2 is now the least recently used
    (worker,) = placed(pool.place()).values()
    pool.release(worker, 3)
    pool.enqueue(sticky(4, "k3"))
    placed(pool.place())
    assert list(pool.sticky) == ["k1", "k3"]
    assert pool.sticky_moves["k2"] == ""  # the store deletes it
    assert "k3" in pool.sticky_moves
    assert "k1" not in pool.sticky_moves


def test_restored_sticky_keys_keep_within_the_bound() -> None:
    pool, _ = sticky_pool()
    pool.max_sticky_keys = 3
    pool.restore_sticky({f"k{i}": "a" for i in range(5)})  # oldest first
    assert list(pool.sticky) == ["k2", "k3", "k4"]
    assert pool.sticky_moves == {"k0": "", "k1": ""}
