"""A worker stream holds new assignments until the worker's results are durable."""

from __future__ import annotations

import asyncio

from broker.domain import Task, TaskSpec
from broker.server.workers import StreamChannel


def task(task_id: int) -> Task:
    return Task(id=task_id, spec=TaskSpec(task_type="t"), attempts=1)


async def test_no_assignment_leaves_until_the_results_that_freed_its_slot_are_durable() -> None:
    channel = StreamChannel()
    messages = aiter(channel.messages())
    channel.send_assignments([task(1)])
    first = await asyncio.wait_for(anext(messages), 1)
    assert [a.task_id for a in first.assignments.assignments] == ["1"]
    # Task 1's result came back (its slot is free), and its commit is still running.
    durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    channel.results_pending(durable)
    channel.send_assignments([task(2)])  # the broker placed the next task on the slot
    following = asyncio.ensure_future(anext(messages))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not following.done(), "task 2 went out before task 1's result was durable"
    durable.set_result(None)
    second = await asyncio.wait_for(following, 1)
    assert [a.task_id for a in second.assignments.assignments] == ["2"]
    channel.close(None)


async def test_an_assignment_waits_only_for_the_results_before_it() -> None:
    """Under a steady flow of results, an assignment leaves once the commit of the results
    that freed its slot is done, whatever newer results are still being committed."""
    channel = StreamChannel()
    messages = aiter(channel.messages())
    loop = asyncio.get_running_loop()
    first_commit: asyncio.Future[None] = loop.create_future()
    channel.results_pending(first_commit)
    channel.send_assignments([task(1)])  # placed on the slot the first results freed
    second_commit: asyncio.Future[None] = loop.create_future()
    channel.results_pending(second_commit)  # newer results, a later commit
    channel.send_assignments([task(2)])
    assert channel.in_transit(0) == {1, 2}
    following = asyncio.ensure_future(anext(messages))
    first_commit.set_result(None)
    released = await asyncio.wait_for(following, 1)
    assert [a.task_id for a in released.assignments.assignments] == ["1"]
    after = asyncio.ensure_future(anext(messages))
    second_commit.set_result(None)
    released = await asyncio.wait_for(after, 1)
    assert [a.task_id for a in released.assignments.assignments] == ["2"]
    channel.close(None)
