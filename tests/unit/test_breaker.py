"""The per-worker circuit breaker: when it opens, how it tries again, and how it closes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.breaker import BreakerSettings, BreakerState, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def breaker(**overrides: float) -> CircuitBreaker:
    values: dict[str, float] = {"failures": 3, "cooldown_s": 10.0}
    values.update(overrides)
    return CircuitBreaker(BreakerSettings(**values))  # type: ignore[arg-type]


def opened(at: float = 100.0, **overrides: float) -> CircuitBreaker:
    """A breaker (3 failures, 10 s cool-down) that opened at `at`."""
    subject = breaker(**overrides)
    for _ in range(subject.settings.failures):
        subject.record(False, at)
    assert subject.state is OPEN
    return subject


def test_the_defaults_are_the_domains() -> None:
    defaults = BreakerSettings()
    assert (defaults.failures, defaults.failure_rate, defaults.window) == (5, 0.0, 20)
    assert defaults.cooldown_s == 30.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failures", -1),
        ("failure_rate", -0.1),
        ("failure_rate", 1.0),
        ("failure_rate", float("nan")),
        ("window", 0),
        ("cooldown_s", -1.0),
        ("cooldown_s", float("inf")),
    ],
)
def test_settings_out_of_range_are_refused_by_name(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"^{field} "):
        BreakerSettings(**{field: value})  # type: ignore[arg-type]


def test_a_new_breaker_is_closed_and_allows() -> None:
    subject = breaker()
    assert subject.state is CLOSED
    assert subject.allows(0.0)
    assert subject.consecutive_failures == 0
    assert subject.opened_at is None
    assert subject.reopen_at() is None


def test_consecutive_failures_open_it_and_only_the_change_is_reported() -> None:
    subject = breaker()
    assert subject.record(False, 1.0) is None
    assert subject.record(False, 2.0) is None
    assert subject.consecutive_failures == 2
    assert subject.record(False, 3.0) is OPEN
    assert subject.state is OPEN
    assert subject.opened_at == 3.0
    assert subject.consecutive_failures == 3
    assert not subject.allows(3.0)


def test_a_success_resets_the_run_of_failures() -> None:
    subject = breaker()
    for _ in range(10):
        assert subject.record(False, 1.0) is None
        assert subject.record(False, 1.0) is None
        assert subject.record(True, 1.0) is None
        assert subject.consecutive_failures == 0
    assert subject.state is CLOSED


def test_the_failure_rate_opens_it_once_the_window_is_full_and_exceeded() -> None:
    subject = breaker(failures=100, failure_rate=0.5, window=10)
    # Alternating failures and successes: never a run, and exactly half never exceeds.
    for i in range(30):
        assert subject.record(i % 2 == 1, float(i)) is None
    assert subject.record(False, 30.0) is None  # S F S F S F S F S F: 5 of 10
    assert subject.record(False, 31.0) is OPEN  # F S F S F S F S F F: 6 of 10


def test_the_failure_rate_waits_for_a_full_window() -> None:
    subject = breaker(failures=100, failure_rate=0.1, window=10)
    for i in range(9):
        assert subject.record(False, float(i)) is None  # 100 % failures, 9 results
    assert subject.record(False, 9.0) is OPEN


def test_the_failure_rate_forgets_results_older_than_the_window() -> None:
    subject = breaker(failures=100, failure_rate=0.25, window=8)
    for _ in range(2):
        subject.record(False, 0.0)
    for _ in range(6):
        subject.record(True, 0.0)
    for _ in range(4):  # pushes the two failures out; 2 failures of 8 is not above 25 %
        assert subject.record(True, 0.0) is None
    assert subject.record(False, 1.0) is None
    assert subject.record(False, 1.0) is None
    assert subject.record(False, 1.0) is OPEN


def test_open_allows_nothing_until_the_cooldown_then_one_trial() -> None:
    subject = opened(at=100.0)
    assert subject.reopen_at() == 110.0
    assert not subject.allows(109.999)
    assert subject.state is OPEN
    assert subject.allows(110.0)
    assert subject.state is HALF_OPEN
    assert subject.reopen_at() is None
    assert subject.allows(110.0)  # nothing is out yet
    subject.on_assign()
    assert not subject.allows(111.0)
    assert not subject.allows(500.0)


def test_a_trial_given_back_without_a_result_frees_the_slot() -> None:
    subject = opened()
    assert subject.allows(200.0)
    subject.on_assign()
    assert not subject.allows(200.0)
    subject.trial_returned()
    assert subject.state is HALF_OPEN
    assert subject.allows(200.0)


def test_a_successful_trial_closes_it_and_resets_the_counts() -> None:
    subject = opened(failure_rate=0.5, window=4)
    assert subject.allows(200.0)
    subject.on_assign()
    assert subject.record(True, 201.0) is CLOSED
    assert subject.state is CLOSED
    assert subject.consecutive_failures == 0
    assert subject.opened_at is None
    # The window was cleared too: three results, two failed, is not a full window.
    assert subject.record(False, 202.0) is None
    assert subject.record(True, 202.0) is None
    assert subject.record(False, 202.0) is None
    assert subject.allows(202.0)


def test_a_failed_trial_reopens_it_for_a_fresh_cooldown() -> None:
    subject = opened(at=100.0)
    assert subject.allows(150.0)
    subject.on_assign()
    assert subject.record(False, 155.0) is OPEN
    assert subject.opened_at == 155.0
    assert subject.reopen_at() == 165.0
    assert not subject.allows(164.0)
    assert subject.allows(165.0)
    assert subject.state is HALF_OPEN


def test_results_that_come_in_while_open_are_ignored() -> None:
    subject = opened(at=100.0)
    assert subject.record(True, 101.0) is None
    assert subject.record(False, 102.0) is None
    assert subject.state is OPEN
    assert subject.reopen_at() == 110.0


def test_on_assign_and_trial_returned_are_no_ops_when_closed() -> None:
    subject = breaker()
    subject.on_assign()
    subject.trial_returned()
    assert subject.allows(0.0)
    assert subject.state is CLOSED


def test_reconfigure_keeps_the_state_and_applies_from_the_next_result() -> None:
    subject = opened(at=100.0)
    subject.reconfigure(BreakerSettings(failures=1, cooldown_s=50.0))
    assert subject.state is OPEN
    assert subject.reopen_at() == 150.0
    assert subject.allows(150.0)
    subject.on_assign()
    assert subject.record(True, 151.0) is CLOSED
    assert subject.record(False, 152.0) is OPEN  # one failure is enough now


def test_reconfigure_keeps_the_latest_results_of_a_smaller_window() -> None:
    subject = breaker(failures=100, failure_rate=0.5, window=6)
    for success in [False, False, False, True, True, True]:
        assert subject.record(success, 0.0) is None
    subject.reconfigure(BreakerSettings(failures=100, failure_rate=0.5, window=3))
    # The last three were successes; two failures of three is above half.
    assert subject.record(False, 1.0) is None
    assert subject.record(False, 1.0) is OPEN


events_st = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0.0, 20.0)),
        st.tuples(st.just("record"), st.booleans()),
        st.just(("allows",)),
        st.just(("assign",)),
        st.just(("returned",)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(events=events_st, failures=st.integers(1, 4), cooldown=st.floats(0.0, 15.0))
def test_invariants_over_any_sequence_of_events(
    events: list[tuple[object, ...]], failures: int, cooldown: float
) -> None:
    subject = CircuitBreaker(BreakerSettings(failures=failures, cooldown_s=cooldown))
    now = 0.0
    trial_out = False  # a task given while half-open and not yet back
    for event in events:
        before, reopen_at = subject.state, subject.reopen_at()
        match event:
            case ("advance", float(seconds)):
                now += seconds
            case ("record", bool(success)):
                change = subject.record(success, now)
                assert change is None or change is subject.state
                assert (change is None) == (subject.state is before)
                if before is HALF_OPEN:
                    assert subject.state is (CLOSED if success else OPEN)
                trial_out = False
            case ("allows",):
                allowed = subject.allows(now)
                if before is OPEN:
                    assert reopen_at is not None
                    assert allowed == (now >= reopen_at)
                    assert subject.state is (HALF_OPEN if allowed else OPEN)
                elif before is HALF_OPEN:
                    assert allowed == (not trial_out)
                else:
                    assert allowed
            case ("assign",):
                if subject.allows(now):
                    subject.on_assign()
                    trial_out = subject.state is HALF_OPEN
            case ("returned",):
                subject.trial_returned()
                trial_out = False
        if subject.state is CLOSED:
            assert subject.consecutive_failures < failures
            assert subject.opened_at is None
        else:
            assert subject.opened_at is not None
        assert (subject.reopen_at() is not None) == (subject.state is OPEN)


# Whose fault: the task's or the worker's ------------------------------------------------


def test_a_run_of_one_type_s_handler_errors_does_not_open_a_multi_type_worker_s_breaker() -> None:
    subject = CircuitBreaker(BreakerSettings(failures=3), types_served=2)
    for at in range(10):
        assert subject.record(False, float(at), "a") is None
    assert subject.state is BreakerState.CLOSED
    assert subject.consecutive_failures == 10


def test_failures_over_two_types_open_it() -> None:
    subject = CircuitBreaker(BreakerSettings(failures=3), types_served=2)
    subject.record(False, 0.0, "a")
    subject.record(False, 1.0, "a")
    assert subject.record(False, 2.0, "b") is BreakerState.OPEN


def test_the_worker_s_own_failures_open_it_whatever_the_type() -> None:
    subject = CircuitBreaker(BreakerSettings(failures=2), types_served=3)
    subject.record(False, 0.0, "a", infra=True)
    assert subject.record(False, 1.0, "a") is BreakerState.OPEN


def test_the_rate_counts_only_failures_over_two_types_or_the_worker_s_own() -> None:
    settings = BreakerSettings(failures=1000, failure_rate=0.5, window=4)
    one_type = CircuitBreaker(settings, types_served=2)
    for at in range(8):
        one_type.record(at % 4 == 0, float(at), "a")
    assert one_type.state is BreakerState.CLOSED
    two_types = CircuitBreaker(settings, types_served=2)
    two_types.record(True, 0.0, "a")
    two_types.record(False, 1.0, "a")
    two_types.record(False, 2.0, "b")
    assert two_types.record(False, 3.0, "a") is BreakerState.OPEN


def test_failures_zero_turns_it_off() -> None:
    subject = CircuitBreaker(BreakerSettings(failures=0, failure_rate=0.1, window=2))
    for at in range(20):
        assert subject.record(False, float(at), "a", infra=True) is None
    assert subject.state is BreakerState.CLOSED
    assert subject.allows(20.0)
