"""Queue order: priority first, FIFO within a priority, and the starvation rule."""

from __future__ import annotations

import pytest

from broker.domain import Task, TaskSpec
from broker.queue import PoolQueue


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
