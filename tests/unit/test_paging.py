"""Page tokens, answers within a size, and pool etags: pure helpers of the edge."""

from __future__ import annotations

import dataclasses

import pytest

from broker.domain import PoolConfig
from broker.errors import InvalidArgument
from broker.server import paging
from broker.service import pool_etag
from worker_sdk._pb import tasks_pb2 as _tasks


def test_a_token_leads_on_from_where_its_page_ended() -> None:
    filters = paging.fingerprint("default", [], "")
    token = paging.make_token("tasks", filters, 41)
    assert paging.read_token(token, "tasks", filters) == 41
    assert paging.read_token("", "tasks", filters) is None


@pytest.mark.parametrize(
    ("token", "listing", "filters", "says"),
    [
        (paging.make_token("pools", "", "a"), "tasks", "", "not a page token of this listing"),
        (paging.make_token("tasks", "x", 1), "tasks", "y", "other filters"),
        ("%%%", "tasks", "", "not a page token"),
        ("e30", "tasks", "", "not a page token"),  # {}
        ("x" * 600, "tasks", "", "not a page token"),
    ],
)
def test_a_foreign_or_broken_token_is_refused(
    token: str, listing: str, filters: str, says: str
) -> None:
    with pytest.raises(InvalidArgument, match=says) as refused:
        paging.read_token(token, listing, filters)
    assert refused.value.field == "page_token"


def test_page_sizes_default_and_are_bounded() -> None:
    assert paging.page_size(0, 100) == 100
    assert paging.page_size(7, 100) == 7
    with pytest.raises(InvalidArgument, match="at most 1000"):
        paging.page_size(1001, 100)


def test_fitting_keeps_what_fits_and_always_one() -> None:
    sizes = [400, 400, 400]
    budget = paging.RESPONSE_OVERHEAD_BYTES + 2 * paging.entry_size(400)
    assert paging.fitting(sizes, lambda s: s, budget) == 2
    assert paging.fitting([10**9], lambda s: s, budget) == 1
    assert paging.fitting([], lambda s: s, budget) == 0


def test_views_unspecified_is_full_and_unknown_is_refused() -> None:
    assert paging.view_from_pb(0) == _tasks.TASK_VIEW_FULL
    assert paging.view_from_pb(_tasks.TASK_VIEW_BASIC) == _tasks.TASK_VIEW_BASIC
    with pytest.raises(InvalidArgument, match="unknown task view 9"):
        paging.view_from_pb(9)


def test_a_pool_etag_changes_exactly_when_its_settings_do() -> None:
    pool = PoolConfig(name="gpu", max_queue=10, fairness_weights={"a": 2})
    same = PoolConfig(name="gpu", max_queue=10, fairness_weights={"a": 2})
    assert pool_etag(pool) == pool_etag(same)
    assert pool_etag(pool) != pool_etag(dataclasses.replace(pool, max_queue=11))
    assert pool_etag(pool) != pool_etag(dataclasses.replace(pool, fairness_weights={"a": 3}))
