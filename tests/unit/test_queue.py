"""Queue order: fair across keys; priority, FIFO and the starvation rule within a key."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.queue import PoolQueue
from broker.domain import Task, TaskSpec


def task(task_id: int, priority: int = 0, task_type: str = "t") -> Task:
    return Task(id=task_id, seq=task_id, spec=TaskSpec(task_type=task_type, priority=priority))


def drain(queue: PoolQueue, types: tuple[str, ...] = ("t",)) -> list[int]:
    out = []
    while (t := queue.pop(types)) is not None:
        out.append(t.id)
    return out


def test_higher_priority_first_then_fifo() -> None:
    queue = PoolQueue(starvation_interval=1000)
    for t in [task(1, 0), task(2, 5), task(3, 0), task(4, 5), task(5, -3)]:
        queue.push(t)
    assert drain(queue) == [2, 4, 1, 3, 5]


def test_every_nth_pop_takes_the_oldest() -> None:
    queue = PoolQueue(starvation_interval=3)
    queue.push(task(1, priority=-100))
    for i in range(2, 12):
        queue.push(task(i, priority=10))
    order = drain(queue)
    # Pops 1 and 2 go by priority; pop 3 takes the oldest task, the low-priority one.
    assert order[:3] == [2, 3, 1]
    assert sorted(order) == list(range(1, 12))


def test_low_priority_is_served_under_a_steady_high_priority_stream() -> None:
    queue = PoolQueue(starvation_interval=10)
    queue.push(task(1, priority=-1000))
    next_id = 2
    served_at = None
    for step in range(100):
        queue.push(task(next_id, priority=1000))
        next_id += 1
        popped = queue.pop(["t"])
        assert popped is not None
        if popped.id == 1:
            served_at = step
            break
    assert served_at is not None
    assert served_at < 10


def test_pop_only_from_the_given_types() -> None:
    queue = PoolQueue()
    queue.push(task(1, priority=9, task_type="a"))
    queue.push(task(2, priority=1, task_type="b"))
    assert queue.pop(["b"]) == task(2, priority=1, task_type="b")
    assert queue.pop(["b", "c"]) is None
    assert queue.types_waiting() == ["a"]
    assert len(queue) == 1


def test_best_head_across_types() -> None:
    queue = PoolQueue(starvation_interval=1000)
    queue.push(task(1, priority=1, task_type="a"))
    queue.push(task(2, priority=7, task_type="b"))
    queue.push(task(3, priority=7, task_type="a"))
    assert drain(queue, ("a", "b")) == [2, 3, 1]


def test_remove_skips_the_task_and_reports_absence() -> None:
    queue = PoolQueue(starvation_interval=2)
    for i in range(1, 6):
        queue.push(task(i))
    assert queue.remove(3) is not None
    assert queue.remove(3) is None
    assert 3 not in queue
    assert drain(queue) == [1, 2, 4, 5]


def test_many_removals_do_not_grow_the_heaps_without_bound() -> None:
    queue = PoolQueue()
    for i in range(1, 5001):
        queue.push(task(i))
    for i in range(1, 5000):
        queue.remove(i)
    assert drain(queue) == [5000]
    assert len(queue) == 0


def test_pushing_the_same_task_twice_is_refused() -> None:
    queue = PoolQueue()
    queue.push(task(1))
    with pytest.raises(ValueError, match="queued already"):
        queue.push(task(1))


# Fairness across keys ---------------------------------------------------------


def keyed(task_id: int, key: str, priority: int = 0, task_type: str = "t") -> Task:
    spec = TaskSpec(task_type=task_type, priority=priority, fairness_key=key)
    return Task(id=task_id, seq=task_id, spec=spec)


def keys_of(queue: PoolQueue, pops: int, types: tuple[str, ...] = ("t",)) -> list[str]:
    out = []
    for _ in range(pops):
        popped = queue.pop(types)
        assert popped is not None
        out.append(popped.spec.fairness_key)
    return out


def test_a_one_task_key_is_served_within_two_pops_of_a_huge_backlog() -> None:
    queue = PoolQueue()
    big = TaskSpec(task_type="t", fairness_key="big")
    for i in range(1, 100_001):
        queue.push(Task(id=i, seq=i, spec=big))
    small = keyed(200_000, "small")
    queue.push(small)
    assert small in [queue.pop(["t"]), queue.pop(["t"])]
    assert len(queue) == 99_999


def test_a_one_task_key_that_came_first_is_served_first() -> None:
    queue = PoolQueue()
    queue.push(keyed(1, "small"))
    for i in range(2, 1002):
        queue.push(keyed(i, "big"))
    assert keys_of(queue, 3) == ["small", "big", "big"]


def test_a_key_joining_a_running_backlog_is_served_within_two_pops() -> None:
    queue = PoolQueue()
    for i in range(1, 1001):
        queue.push(keyed(i, "big"))
    assert keys_of(queue, 500) == ["big"] * 500
    queue.push(keyed(5000, "small"))
    assert keys_of(queue, 2) == ["big", "small"]


def test_keys_take_turns_and_each_keeps_its_own_order() -> None:
    queue = PoolQueue(starvation_interval=1000)
    for task_id, key, priority in [
        (1, "a", 1),
        (2, "a", 5),
        (3, "b", 2),
        (4, "a", 3),
        (5, "b", 9),
        (6, "c", 0),
    ]:
        queue.push(keyed(task_id, key, priority))
    # a came first; then b and c, each at its own best (priority, then FIFO).
    assert drain(queue) == [2, 5, 6, 4, 3, 1]


def test_the_empty_key_is_a_key_like_any_other() -> None:
    queue = PoolQueue()
    for i in range(1, 11):
        queue.push(keyed(i, ""))
    for i in range(11, 21):
        queue.push(keyed(i, "x"))
    assert keys_of(queue, 6) == ["", "x"] * 3


def test_weights_share_the_pops_three_to_one_exactly() -> None:
    queue = PoolQueue(weights={"a": 3})
    for i in range(1, 1001):
        queue.push(keyed(2 * i, "a"))
        queue.push(keyed(2 * i + 1, "b"))
    order = keys_of(queue, 400)
    for start in range(0, 400, 4):
        assert sorted(order[start : start + 4]) == ["a", "a", "a", "b"]


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.integers(1, 16), min_size=2, max_size=5), rounds=st.integers(1, 4))
def test_backlogged_keys_get_exactly_their_weighted_share(weights: list[int], rounds: int) -> None:
    queue = PoolQueue(weights={f"k{i}": w for i, w in enumerate(weights)})
    per_key = rounds * max(weights) + 1  # every key stays backlogged
    next_id = 0
    for i in range(len(weights)):
        for _ in range(per_key):
            next_id += 1
            queue.push(keyed(next_id, f"k{i}"))
    served = Counter(keys_of(queue, rounds * sum(weights)))
    assert served == {f"k{i}": rounds * w for i, w in enumerate(weights)}


def test_set_weights_applies_to_keys_already_waiting() -> None:
    queue = PoolQueue()
    for i in range(1, 201):
        queue.push(keyed(2 * i, "a"))
        queue.push(keyed(2 * i + 1, "b"))
    assert Counter(keys_of(queue, 20)) == {"a": 10, "b": 10}
    queue.set_weights({"b": 4})
    assert Counter(keys_of(queue, 50)) == {"a": 10, "b": 40}
    queue.set_weights({})
    assert Counter(keys_of(queue, 20)) == {"a": 10, "b": 10}


@pytest.mark.parametrize("weight", [0, -1])
def test_weights_below_one_are_refused(weight: int) -> None:
    with pytest.raises(ValueError, match="'a'"):
        PoolQueue(weights={"a": weight})
    queue = PoolQueue(weights={"a": 2})
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        queue.set_weights({"b": 1, "a": weight})


def test_a_key_that_was_idle_gets_no_credit_for_it() -> None:
    queue = PoolQueue()
    for i in range(1, 301):
        queue.push(keyed(i, "busy"))
    queue.push(keyed(1000, "idle"))
    assert "idle" in keys_of(queue, 2)
    # "idle" has nothing queued while "busy" is served 100 times on its own...
    assert keys_of(queue, 100) == ["busy"] * 100
    for i in range(1001, 1101):
        queue.push(keyed(i, "idle"))
    # ...and comes back level with it, not 100 pops ahead.
    assert keys_of(queue, 10) == ["busy", "idle"] * 5


def test_a_key_waiting_only_on_a_type_no_one_takes_does_not_burst_later() -> None:
    queue = PoolQueue()
    queue.push(keyed(1, "stuck", task_type="gpu"))  # no one pops gpu for a while
    for i in range(2, 502):
        queue.push(keyed(i, "busy", task_type="cpu"))
    assert keys_of(queue, 400, ("cpu",)) == ["busy"] * 400
    for i in range(1000, 1100):
        queue.push(keyed(i, "stuck", task_type="cpu"))
    order = keys_of(queue, 20, ("cpu",))
    assert order.count("stuck") <= 11
    assert order[2:] == ["stuck", "busy"] * 9


def test_pop_chooses_among_the_keys_with_a_task_of_the_types_asked_for() -> None:
    queue = PoolQueue()
    queue.push(keyed(1, "a", task_type="x"))
    queue.push(keyed(2, "b", task_type="y"))
    queue.push(keyed(3, "b", task_type="y"))
    popped = queue.pop(["y"])
    assert popped is not None
    assert popped.id == 2
    assert queue.pop(["z"]) is None
    assert drain(queue, ("x", "y")) == [1, 3]


def test_within_a_key_the_best_task_of_any_asked_type_wins() -> None:
    queue = PoolQueue(starvation_interval=1000)
    queue.push(keyed(1, "a", priority=1, task_type="x"))
    queue.push(keyed(2, "a", priority=7, task_type="y"))
    queue.push(keyed(3, "b", priority=0, task_type="x"))
    queue.push(keyed(4, "b", priority=9, task_type="z"))
    assert drain(queue, ("x", "y")) == [2, 3, 1]
    assert queue.pop(["z"]) is not None


def test_the_starvation_rule_counts_pops_per_key() -> None:
    # With a pool-wide count and two keys taking turns, every other pop (the Nth) would
    # always fall on the same key, and the other's old task would wait forever.
    queue = PoolQueue(starvation_interval=2)
    queue.push(keyed(1, "a", priority=-100))
    queue.push(keyed(2, "b", priority=-100))
    for i in range(3, 103):
        queue.push(keyed(i, "a" if i % 2 else "b", priority=10))
    first_four = [t.id for t in (queue.pop(["t"]) for _ in range(4)) if t is not None]
    assert first_four == [3, 4, 1, 2]


def test_count_is_per_type_and_follows_push_pop_and_remove() -> None:
    queue = PoolQueue()
    assert queue.count("x") == 0
    for i in range(1, 6):
        queue.push(keyed(i, f"k{i % 2}", task_type="x"))
    queue.push(keyed(6, "k0", task_type="y"))
    assert (queue.count("x"), queue.count("y"), queue.count("z")) == (5, 1, 0)
    queue.pop(["x"])
    queue.remove(6)
    queue.remove(6)
    assert (queue.count("x"), queue.count("y")) == (4, 0)
    assert queue.types_waiting() == ["x"]


def test_fairness_keys_counts_queued_tasks_and_forgets_empty_keys() -> None:
    queue = PoolQueue()
    assert queue.fairness_keys() == {}
    queue.push(keyed(1, "", task_type="x"))
    queue.push(keyed(2, "a", task_type="x"))
    queue.push(keyed(3, "a", task_type="y"))
    assert queue.fairness_keys() == {"": 1, "a": 2}
    queue.remove(1)
    assert queue.fairness_keys() == {"a": 2}
    assert queue.pop(["x"]) is not None
    assert queue.fairness_keys() == {"a": 1}
    assert queue.pop(["y"]) is not None
    assert queue.fairness_keys() == {}
    assert len(queue) == 0


def test_len_contains_and_iter_cover_every_key_and_type() -> None:
    queue = PoolQueue()
    pushed = [keyed(i, f"k{i % 3}", task_type=f"t{i % 2}") for i in range(1, 13)]
    for t in pushed:
        queue.push(t)
    queue.remove(5)
    assert len(queue) == 11
    assert 5 not in queue
    assert 6 in queue
    assert sorted(t.id for t in queue) == [i for i in range(1, 13) if i != 5]


def test_keys_coming_and_going_do_not_grow_the_key_heaps_without_bound() -> None:
    queue = PoolQueue()
    queue.push(keyed(0, "steady"))
    for i in range(1, 5001):
        queue.push(keyed(i, f"passing-{i}"))
        assert queue.remove(i) is not None
    assert drain(queue) == [0]
    # Internal, but the only place a leak would show.
    assert len(queue._types["t"].heap) <= 2 * 1 + 64


# A naive model of the fair queue: scans instead of heaps, passes in Fractions ----------


class NaiveFairQueue:
    """What PoolQueue promises, spelled out the slow way."""

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.weights: dict[str, int] = {}
        self.tasks: dict[int, Task] = {}
        self.pass_: dict[str, Fraction] = {}
        self.stamp: dict[str, int] = {}
        self.pops: dict[str, int] = {}
        self.vtime = Fraction(0)
        self.stamps = 0

    def active(self) -> set[str]:
        return {t.spec.fairness_key for t in self.tasks.values()}

    def rank(self, key: str) -> tuple[Fraction, int]:
        return self.pass_[key], self.stamp[key]

    def next_stamp(self) -> int:
        self.stamps += 1
        return self.stamps

    def push(self, task: Task) -> None:
        key, task_type = task.spec.fairness_key, task.spec.task_type
        if key not in self.active():
            same_type = {
                t.spec.fairness_key for t in self.tasks.values() if t.spec.task_type == task_type
            }
            lowest = min(same_type, key=self.rank, default=None)
            self.pass_[key] = self.pass_[lowest] if lowest is not None else self.vtime
            self.stamp[key] = self.next_stamp()
            self.pops[key] = 0
        self.tasks[task.id] = task

    def pop(self, types: list[str]) -> Task | None:
        eligible = {t.spec.fairness_key for t in self.tasks.values() if t.spec.task_type in types}
        if not eligible:
            return None
        ranked = sorted(eligible, key=self.rank)
        winner = ranked[0]
        if len(self.active()) == 1:
            self.vtime = self.pass_[winner]
        else:
            served_at = self.pass_[winner]
            if len(ranked) > 1:
                runner_up = ranked[1]
                served_at = max(served_at, self.pass_[runner_up] - self.stride(runner_up))
            self.vtime = served_at
            self.pass_[winner] = served_at + self.stride(winner)
            self.stamp[winner] = self.next_stamp()
        self.pops[winner] += 1
        mine = [
            t
            for t in self.tasks.values()
            if t.spec.fairness_key == winner and t.spec.task_type in types
        ]
        if self.pops[winner] % self.interval == 0:
            best = min(mine, key=lambda t: t.seq)
        else:
            best = min(mine, key=lambda t: (-t.spec.priority, t.seq))
        return self.remove(best.id)

    def remove(self, task_id: int) -> Task | None:
        task = self.tasks.pop(task_id, None)
        if task is not None and task.spec.fairness_key not in self.active():
            key = task.spec.fairness_key
            del self.pass_[key], self.stamp[key], self.pops[key]
        return task

    def stride(self, key: str) -> Fraction:
        return Fraction(1, self.weights.get(key, 1))


KEYS = ["", "a", "b"]
TYPES = ["x", "y"]


def decode(code: int) -> tuple[object, ...]:
    """One queue operation from a byte: hypothesis makes and shrinks bytes fast."""
    kind, arg = code % 8, code // 8  # arg: 0 to 31
    if kind <= 2:
        return ("push", KEYS[arg % 3], TYPES[arg // 3 % 2], arg // 6 % 3)
    if kind <= 5:
        return ("pop", [["x"], ["y"], ["x", "y"], ["y", "x"]][arg % 4])
    if kind == 6:
        return ("remove", arg)
    return ("weights", {key: 1 + arg // 8 for i, key in enumerate(KEYS) if arg >> i & 1})


@settings(max_examples=150, deadline=None)
@given(codes=st.binary(min_size=20, max_size=100), interval=st.integers(2, 4))
def test_pool_queue_behaves_like_the_naive_model(codes: bytes, interval: int) -> None:
    queue = PoolQueue(starvation_interval=interval)
    model = NaiveFairQueue(interval)
    next_id = 0
    for op in map(decode, codes):
        match op:
            case ("push", str(key), str(task_type), int(priority)):
                next_id += 1
                queue.push(keyed(next_id, key, priority, task_type))
                model.push(keyed(next_id, key, priority, task_type))
            case ("pop", list(asked)):
                got, want = queue.pop(asked), model.pop(asked)
                assert (got and got.id) == (want and want.id)
            case ("remove", int(task_id)):
                got, want = queue.remove(task_id), model.remove(task_id)
                assert (got and got.id) == (want and want.id)
            case ("weights", dict(weights)):
                queue.set_weights(weights)
                model.weights = dict(weights)
        assert len(queue) == len(model.tasks)
        assert queue.fairness_keys() == Counter(t.spec.fairness_key for t in model.tasks.values())
        for task_type in TYPES:
            expected = sum(t.spec.task_type == task_type for t in model.tasks.values())
            assert queue.count(task_type) == expected
    assert sorted(t.id for t in queue) == sorted(model.tasks)


def test_oldest_is_the_lowest_seq_of_any_key_and_type() -> None:
    queue = PoolQueue()
    assert queue.oldest() is None
    tasks = [
        Task(id=i, spec=TaskSpec(task_type=t, fairness_key=k, priority=p), seq=i)
        for i, (t, k, p) in enumerate(
            [("a", "x", 0), ("b", "y", 5), ("a", "y", 9), ("b", "x", 0)], start=1
        )
    ]
    for task in reversed(tasks):
        queue.push(task)
    assert queue.oldest() is tasks[0]
    assert queue.oldest("b") is tasks[1]
    queue.remove(1)
    assert queue.oldest() is tasks[1]
    assert queue.oldest("missing") is None
