"""Token buckets: exact waits under a fake time, debt in "queue" mode, bounded keys."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.clock import FakeClock
from broker.core.ratelimit import KeyedBuckets, TokenBucket


def test_rate_ten_burst_one_gives_exact_waits() -> None:
    bucket = TokenBucket(10.0, 1, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == 0.1
    assert bucket.take(0.05) == 0.05
    assert bucket.take(0.1) == 0.0
    assert bucket.take(0.1) == 0.1


def test_it_starts_full_and_refills_up_to_the_burst_only() -> None:
    bucket = TokenBucket(1.0, 3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [0.0, 0.0, 0.0, 1.0]
    assert bucket.take(0.5) == 0.5
    assert bucket.take(1.0) == 0.0
    # An hour idle still fills it to 3 tokens, not 3600.
    assert [bucket.take(3600.0) for _ in range(4)] == [0.0, 0.0, 0.0, 1.0]


def test_a_refused_take_takes_nothing() -> None:
    bucket = TokenBucket(2.0, 2, now=0.0)
    assert bucket.take(0.0, 2) == 0.0
    for _ in range(5):
        assert bucket.take(0.0) == 0.5
    assert bucket.take(0.25, 2) == 0.75
    assert bucket.tokens(0.5) == 1.0
    assert bucket.take(0.5) == 0.0


def test_taking_several_waits_for_all_of_them() -> None:
    bucket = TokenBucket(4.0, 4, now=0.0)
    assert bucket.take(0.0, 3) == 0.0
    assert bucket.take(0.0, 3) == 0.5  # one there, two more at 4/s
    assert bucket.take(0.5, 3) == 0.0
    assert bucket.tokens(0.5) == 0.0


def test_more_than_the_burst_never_fits_a_take() -> None:
    bucket = TokenBucket(100.0, 5, now=0.0)
    assert bucket.take(0.0, 6) == math.inf
    assert bucket.tokens(0.0) == 5.0


@pytest.mark.parametrize("n", [0, -1])
def test_n_below_one_is_refused(n: int) -> None:
    bucket = TokenBucket(1.0, 1, now=0.0)
    with pytest.raises(ValueError, match=r"^n "):
        bucket.take(0.0, n)
    with pytest.raises(ValueError, match=r"^n "):
        bucket.reserve(0.0, n)


@pytest.mark.parametrize(
    ("rate", "burst", "field"),
    [
        (0.0, 1, "rate_per_s"),
        (-1.0, 1, "rate_per_s"),
        (float("nan"), 1, "rate_per_s"),
        (float("inf"), 1, "rate_per_s"),
        (1.0, 0, "burst"),
    ],
)
def test_bad_rate_or_burst_is_refused_by_name(rate: float, burst: int, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field} "):
        TokenBucket(rate, burst, now=0.0)
    with pytest.raises(ValueError, match=rf"^{field} "):
        KeyedBuckets(rate, burst)
    with pytest.raises(ValueError, match=rf"^{field} "):
        TokenBucket(1.0, 1, now=0.0).reconfigure(rate, burst, now=0.0)


def test_reserve_queues_instead_of_refusing() -> None:
    bucket = TokenBucket(10.0, 1, now=0.0)
    assert [bucket.reserve(0.0) for _ in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert bucket.tokens(0.0) == pytest.approx(-3.0)
    # The debt is paid back before a take can have a token again.
    assert bucket.take(0.25) == pytest.approx(0.15)
    assert bucket.take(0.4) == 0.0


def test_reserve_of_more_than_the_burst_waits_for_the_rest() -> None:
    bucket = TokenBucket(2.0, 2, now=0.0)
    assert bucket.reserve(0.0, 5) == 1.5  # 2 at once, 3 more at 2/s
    assert bucket.reserve(10.0) == 0.0  # paid back and full again


def test_reconfigure_carries_the_tokens_over_capped_at_the_new_burst() -> None:
    bucket = TokenBucket(1.0, 10, now=0.0)
    assert bucket.take(0.0, 4) == 0.0
    bucket.reconfigure(2.0, 3, now=0.0)
    assert (bucket.rate_per_s, bucket.burst) == (2.0, 3)
    assert bucket.tokens(0.0) == 3.0
    bucket.reconfigure(1.0, 100, now=0.0)
    assert bucket.tokens(0.0) == 3.0  # a bigger burst is earned, not given
    assert bucket.tokens(10.0) == 13.0


def test_reconfigure_carries_a_debt_over() -> None:
    bucket = TokenBucket(1.0, 1, now=0.0)
    bucket.reserve(0.0, 5)
    bucket.reconfigure(2.0, 1, now=0.0)
    assert bucket.tokens(0.0) == -4.0
    assert bucket.take(0.0) == 2.5  # 5 tokens short at 2/s


def test_full_tells_when_it_is_as_good_as_new() -> None:
    bucket = TokenBucket(1.0, 2, now=0.0)
    assert bucket.full(0.0)
    bucket.take(0.0)
    assert not bucket.full(0.5)
    assert bucket.full(1.0)


def test_waiting_the_returned_time_works_with_epoch_seconds() -> None:
    # Float seconds near 1.7e9 are exact only to ~0.24 us; the wait must still suffice.
    clock = FakeClock()
    bucket = TokenBucket(10.0, 1, clock.now())
    assert bucket.take(clock.now()) == 0.0
    for _ in range(1000):
        wait = bucket.take(clock.now())
        assert wait == pytest.approx(0.1, abs=1e-6)
        clock.advance(wait)
        assert bucket.take(clock.now()) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.1, 1000.0),
    burst=st.integers(1, 20),
    start=st.sampled_from([0.0, 1_700_000_000.0]),
    steps=st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(1, 5), st.booleans()), max_size=50),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, start: float, steps: list[tuple[float, int, bool]]
) -> None:
    bucket = TokenBucket(rate, burst, start)
    now, granted = start, 0
    for gap, n, wait_and_retry in steps:
        now += gap
        wait = bucket.take(now, n)
        if wait == 0.0:
            granted += n
        elif wait_and_retry and wait != math.inf:
            now += wait
            assert bucket.take(now, n) == 0.0  # exactly the wait is enough
            granted += n
        assert granted <= burst + rate * (now - start) + 1e-6 * rate + 1e-9


@settings(max_examples=50, deadline=None)
@given(
    rate=st.floats(0.1, 1000.0),
    burst=st.integers(1, 20),
    steps=st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(1, 30)), max_size=50),
)
def test_reserved_work_starts_no_faster_than_the_rate(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    now, reserved = 0.0, 0
    for gap, n in steps:
        now += gap
        wait = bucket.reserve(now, n)
        reserved += n
        assert wait >= 0.0
        # What was reserved is there by now + wait, and no sooner (the bucket just
        # reaches zero then), so work released then never outruns the rate.
        slack = 1e-6 * rate + 1e-9
        assert bucket.tokens(now + wait) >= -slack
        if wait:
            assert bucket.tokens(now + wait) <= slack
        assert reserved <= burst + rate * (now + wait) + slack


# Keyed buckets -------------------------------------------------------------------


def test_each_key_has_its_own_bucket() -> None:
    buckets = KeyedBuckets(1.0, 1)
    assert buckets.take("alice", 0.0) == 0.0
    assert buckets.take("alice", 0.0) == 1.0
    assert buckets.take("bob", 0.0) == 0.0
    assert buckets.reserve("bob", 0.0, 2) == 2.0
    assert len(buckets) == 2


def test_over_max_keys_full_buckets_go_first() -> None:
    buckets = KeyedBuckets(1.0, 1, max_keys=3)
    buckets.reserve("a", 0.0, 5)  # in debt: full again at 5.0
    buckets.take("b", 0.5)  # full again at 1.5
    buckets.take("c", 0.9)  # full again at 1.9
    buckets.take("d", 1.6)  # "a" is the least recently used, but only "b" is full
    assert len(buckets) == 3
    assert "b" not in buckets
    assert buckets.take("a", 1.6) == pytest.approx(3.4)  # its debt was not forgotten


def test_over_max_keys_the_least_recently_used_go_when_none_is_full() -> None:
    buckets = KeyedBuckets(1.0, 1, max_keys=3)
    for key in "abc":
        buckets.take(key, 0.0)
    buckets.take("a", 0.5)  # "b" is now the least recently used
    buckets.take("d", 0.5)
    assert len(buckets) == 3
    assert "b" not in buckets
    assert "a" in buckets
    assert "d" in buckets


@settings(max_examples=30, deadline=None)
@given(
    max_keys=st.integers(1, 8),
    uses=st.lists(st.tuples(st.integers(0, 20), st.floats(0.0, 1.0)), max_size=80),
)
def test_keyed_buckets_never_hold_more_than_max_keys(
    max_keys: int, uses: list[tuple[int, float]]
) -> None:
    buckets = KeyedBuckets(2.0, 2, max_keys=max_keys)
    now = 0.0
    for key, gap in uses:
        now += gap
        buckets.take(f"client-{key}", now)
        assert len(buckets) <= max_keys
        assert f"client-{key}" in buckets


def test_keyed_reconfigure_applies_to_kept_and_new_buckets() -> None:
    buckets = KeyedBuckets(1.0, 1)
    buckets.take("a", 0.0)
    buckets.reconfigure(10.0, 2, now=0.0)
    assert buckets.take("a", 0.0) == pytest.approx(0.1)  # its empty bucket, at 10/s
    assert buckets.take("b", 0.0) == 0.0
    assert buckets.take("b", 0.0) == 0.0  # a new bucket holds the new burst
    assert buckets.take("b", 0.0) == pytest.approx(0.1)


def test_max_keys_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^max_keys "):
        KeyedBuckets(1.0, 1, max_keys=0)
