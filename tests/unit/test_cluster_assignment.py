"""Rendezvous hashing of pools over brokers (broker.cluster.assignment)."""

from __future__ import annotations

from collections import Counter

from broker.cluster.assignment import desired_owner

POOLS = [f"pool-{i}" for i in range(300)]


def test_no_broker_owns_nothing_and_one_broker_owns_everything() -> None:
    assert desired_owner("p", []) == ""
    assert {desired_owner(pool, ["only"]) for pool in POOLS} == {"only"}


def test_the_answer_depends_on_the_set_of_brokers_not_their_order() -> None:
    brokers = ["b1", "b2", "b3"]
    for pool in POOLS:
        assert desired_owner(pool, brokers) == desired_owner(pool, brokers[::-1])


def test_pools_spread_evenly_enough() -> None:
    counts = Counter(desired_owner(pool, ["b1", "b2", "b3"]) for pool in POOLS)
    assert set(counts) == {"b1", "b2", "b3"}
    assert min(counts.values()) > len(POOLS) / 3 * 0.7


def test_a_broker_joining_takes_pools_only_from_others_and_only_its_share() -> None:
    before = {pool: desired_owner(pool, ["b1", "b2"]) for pool in POOLS}
    after = {pool: desired_owner(pool, ["b1", "b2", "b3"]) for pool in POOLS}
    moved = [pool for pool in POOLS if before[pool] != after[pool]]
    assert all(after[pool] == "b3" for pool in moved)  # nothing moves between b1 and b2
    assert len(moved) < len(POOLS) / 2


def test_the_failover_tests_spread() -> None:
    """tests/e2e/test_cluster_failover.py relies on this placement of its pools."""
    brokers = ["broker-a", "broker-b", "broker-c"]
    assert {p: desired_owner(p, brokers) for p in ("default", "p1", "p2", "p3")} == {
        "default": "broker-b",
        "p1": "broker-c",
        "p2": "broker-a",
        "p3": "broker-a",
    }
