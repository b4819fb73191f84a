"""Hypothesis strategies for the domain's values, shared by the property tests."""

from __future__ import annotations

from hypothesis import strategies as st

from broker.domain import RetryPolicy


def retry_policies(
    names: st.SearchStrategy[str], min_attempts: int = 1
) -> st.SearchStrategy[RetryPolicy]:
    """Any retry policy, its error types drawn from `names`."""
    return st.builds(
        RetryPolicy,
        max_attempts=st.integers(min_attempts, 100),
        initial_backoff_s=st.floats(0.001, 1e4),
        max_backoff_s=st.floats(0.001, 1e6),
        backoff_multiplier=st.floats(1, 100),
        retryable_errors=st.frozensets(names, max_size=3),
        non_retryable_errors=st.frozensets(names, max_size=3),
    )
