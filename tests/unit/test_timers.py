"""The engine's timer heap: due order, replacement, cancellation, compaction."""

from __future__ import annotations

from broker.core.timers import Timers


def test_keys_come_due_in_time_order_and_once() -> None:
    timers = Timers()
    timers.set("b", 2.0)
    timers.set("a", 1.0)
    timers.set("c", 3.0)
    assert timers.next_at() == 1.0
    assert timers.pop_due(0.5) == []
    assert timers.pop_due(2.0) == ["a", "b"]
    assert timers.pop_due(2.0) == []
    assert timers.next_at() == 3.0
    assert len(timers) == 1


def test_setting_a_key_again_replaces_its_time() -> None:
    timers = Timers()
    timers.set(("task", 1), 1.0)
    timers.set(("task", 1), 5.0)
    assert timers.pop_due(1.0) == []
    assert timers.next_at() == 5.0
    assert timers.pop_due(5.0) == [("task", 1)]


def test_a_cancelled_key_never_comes_due() -> None:
    timers = Timers()
    timers.set("x", 1.0)
    timers.cancel("x")
    timers.cancel("never set")
    assert timers.next_at() is None
    assert timers.pop_due(10.0) == []


def test_replaced_entries_do_not_pile_up() -> None:
    timers = Timers()
    for i in range(10_000):
        timers.set("same", float(i))
    assert len(timers._heap) < 200
    assert timers.pop_due(1e9) == ["same"]
