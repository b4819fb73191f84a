"""Worker against a fake WorkerService on a real in-process gRPC server."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

import grpc
import grpc.aio
import pytest

from tests.support.fake_broker import FakeWorkerService, running, serve
from tests.support.waiting import until_logged
from worker_sdk import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TaskbrokerError,
    TaskContext,
    Worker,
)


def make_worker(**kwargs: Any) -> Worker:
    worker = Worker(
        **{"capacity": 8, "reconnect_initial_s": 0.01, "reconnect_max_s": 0.05, **kwargs}
    )

    @worker.task("echo")
    async def echo(ctx: TaskContext) -> bytes:
        return ctx.payload

    return worker


async def test_registers_and_reports_results_of_async_handlers() -> None:
    worker = Worker("gpu", capacity=8, labels={"zone": "a"})

    @worker.task("bytes")
    async def as_bytes(ctx: TaskContext) -> bytes:
        return ctx.payload.upper()

    @worker.task("text")
    async def as_text(ctx: TaskContext) -> str:
        return f"{ctx.task_type}:{ctx.attempt}:{ctx.worker_id}"

    @worker.task("nothing")
    async def nothing(ctx: TaskContext) -> None:
        return None

    @worker.task("json")
    async def as_json(ctx: TaskContext) -> dict[str, Any]:
        return {"sum": sum(ctx.json())}

    service = FakeWorkerService()
    async with serve(service) as (address, _), running(worker, address):
        session = await service.sessions.get()
        assert session.register.pool == "gpu"
        assert dict(session.register.labels) == {"zone": "a"}
        assert session.register.capacity == 8
        assert set(session.register.task_types) == {"bytes", "text", "nothing", "json"}
        assert session.register.sdk_version

        session.assign(("t1", "bytes", b"abc"), ("t2", "text", b""), ("t3", "nothing", b""))
        session.assign(("t4", "json", b"[1, 2, 3]"))
        await session.until(lambda: len(session.results) == 4)
        assert worker.worker_id == "w-1"

    results = session.results
    assert all(r.success and r.attempt == 1 for r in results.values())
    assert results["t1"].result == b"ABC"
    assert results["t2"].result == b"text:1:w-1"
    assert results["t3"].result == b""
    assert json.loads(results["t4"].result) == {"sum": 6}
    assert set(session.started) == {"t1", "t2", "t3", "t4"}
    assert all(0 < r.started_at_ms <= r.finished_at_ms for r in results.values())


async def test_handler_exception_is_reported_with_traceback() -> None:
    worker = Worker(reconnect_initial_s=0.01, reconnect_max_s=0.05)

    @worker.task("boom")
    async def explode(ctx: TaskContext) -> None:
        raise ValueError(f"bad payload {ctx.payload!r}")

    service = FakeWorkerService()
    async with serve(service) as (address, _), running(worker, address):
        session = await service.sessions.get()
        session.assign(("t1", "boom", b"x"), ("t2", "missing", b""))
        await session.until(lambda: len(session.results) == 2)

    failed = session.results["t1"]
    assert not failed.success
    assert failed.error.type == "ValueError"
    assert failed.error.message == "bad payload b'x'"
    assert "Traceback" in failed.error.traceback
    assert "in explode" in failed.error.traceback
    unknown = session.results["t2"]
    assert not unknown.success
    assert unknown.error.type == "UnknownTaskType"
    assert "missing" in unknown.error.message


async def test_sync_handler_runs_off_the_event_loop_thread() -> None:
    worker = Worker(capacity=2, reconnect_initial_s=0.01, reconnect_max_s=0.05)
    release = threading.Event()
    handler_threads: list[int] = []

    @worker.task("block")
    def block(ctx: TaskContext) -> dict[str, int]:
        handler_threads.append(threading.get_ident())
        assert release.wait(10)  # blocks its thread, not the loop
        return {"n": len(ctx.payload)}

    @worker.task("quick")
    async def quick(ctx: TaskContext) -> bytes:
        return b"ok"

    service = FakeWorkerService()
    async with serve(service) as (address, _), running(worker, address):
        session = await service.sessions.get()
        session.assign(("t1", "block", b"abcd"))
        await session.until(lambda: "t1" in session.started)
        # The loop is free while the sync handler blocks: another task completes.
        session.assign(("t2", "quick", b""))
        await session.until(lambda: "t2" in session.results)
        assert "t1" not in session.results
        release.set()
        await session.until(lambda: "t1" in session.results)

    assert handler_threads
    assert handler_threads[0] != threading.get_ident()
    assert json.loads(session.results["t1"].result) == {"n": 4}


async def test_results_are_batched_into_few_messages() -> None:
    worker = make_worker(capacity=200)
    service = FakeWorkerService()
    async with serve(service) as (address, _), running(worker, address):
        session = await service.sessions.get()
        session.assign(*((f"t{i}", "echo", str(i).encode()) for i in range(200)))
        await session.until(lambda: len(session.results) == 200)

    messages = session.result_messages
    assert len(messages) <= 10, f"{len(messages)} Results messages for 200 tasks"
    assert all(session.results[f"t{i}"].result == str(i).encode() for i in range(200))
    assert sorted(session.started) == sorted(f"t{i}" for i in range(200))


async def test_cancel_stops_async_and_flags_sync_handlers_without_results() -> None:
    worker = Worker(capacity=4, reconnect_initial_s=0.01, reconnect_max_s=0.05)
    async_cancelled = asyncio.Event()
    sync_saw_cancel = threading.Event()

    @worker.task("forever")
    async def forever(ctx: TaskContext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            async_cancelled.set()
            raise

    @worker.task("poll")
    def poll(ctx: TaskContext) -> str:
        for _ in range(10_000):
            if ctx.cancelled:
                sync_saw_cancel.set()
                return "stopped"
            threading.Event().wait(0.001)
        return "never cancelled"

    @worker.task("echo")
    async def echo(ctx: TaskContext) -> bytes:
        return ctx.payload

    service = FakeWorkerService()
    async with serve(service) as (address, _), running(worker, address):
        session = await service.sessions.get()
        session.assign(("a", "forever", b""), ("s", "poll", b""))
        await session.until(lambda: {"a", "s"} <= set(session.started))
        session.cancel("a", "s")
        await async_cancelled.wait()
        await asyncio.to_thread(sync_saw_cancel.wait, 10)
        # A later task's result still flows, and none came for the cancelled ones.
        session.assign(("e", "echo", b"after"))
        await session.until(lambda: "e" in session.results)
        assert "a" not in session.results
        assert "s" not in session.results


async def test_heartbeat_reports_in_flight_and_load() -> None:
    worker = Worker(capacity=4, reconnect_initial_s=0.01, reconnect_max_s=0.05)
    release = asyncio.Event()

    @worker.task("hold")
    async def hold(ctx: TaskContext) -> None:
        await release.wait()

    service = FakeWorkerService(heartbeat_interval_s=0.01)
    async with serve(service) as (address, _), running(worker, address):
        session = await service.sessions.get()
        session.assign(("t1", "hold", b""))

        def busy_heartbeat() -> bool:
            return any(m.heartbeat.in_flight == 1 for m in session.of_kind("heartbeat"))

        await session.until(busy_heartbeat)
        release.set()

    beat = next(m.heartbeat for m in session.of_kind("heartbeat") if m.heartbeat.in_flight == 1)
    assert beat.load == pytest.approx(0.25)


async def test_drain_finishes_in_flight_work_then_run_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Worker(reconnect_initial_s=0.01, reconnect_max_s=0.05)
    release = asyncio.Event()

    @worker.task("hold")
    async def hold(ctx: TaskContext) -> str:
        await release.wait()
        return "done"

    service = FakeWorkerService()
    async with serve(service) as (address, _):
        run = asyncio.create_task(worker.run(address))
        session = await service.sessions.get()
        session.assign(("t1", "hold", b""))
        await session.until(lambda: "t1" in session.started)
        with caplog.at_level(logging.INFO, logger="taskbroker.worker"):
            session.drain()
            await until_logged(caplog, "broker drains worker")
        assert not run.done()  # still finishing t1
        release.set()
        await asyncio.wait_for(run, 5)
        await asyncio.wait_for(session.ended.wait(), 5)

    assert session.results["t1"].result == b"done"
    assert service.connects == 1


async def test_drain_then_stream_end_does_not_reconnect() -> None:
    worker = make_worker()
    service = FakeWorkerService()
    async with serve(service) as (address, _):
        run = asyncio.create_task(worker.run(address))
        session = await service.sessions.get()
        session.drain()
        session.outbox.put_nowait(None)  # the broker ends the call right after the drain
        await asyncio.wait_for(run, 5)
    assert service.connects == 1


async def test_shutdown_stops_taking_work_and_finishes_in_flight() -> None:
    worker = Worker(reconnect_initial_s=0.01, reconnect_max_s=0.05)
    release = asyncio.Event()

    @worker.task("hold")
    async def hold(ctx: TaskContext) -> str:
        await release.wait()
        return "finished"

    service = FakeWorkerService()
    async with serve(service) as (address, _):
        run = asyncio.create_task(worker.run(address))
        session = await service.sessions.get()
        session.assign(("t1", "hold", b""))
        await session.until(lambda: "t1" in session.started)
        stopping = asyncio.create_task(worker.shutdown(grace=5))
        await session.until(lambda: bool(session.of_kind("credit")))
        assert session.of_kind("credit")[0].credit.capacity == 0
        assert not stopping.done()
        release.set()
        await asyncio.wait_for(stopping, 5)
        assert run.done()
        await run
        await worker.shutdown()  # idempotent

    assert session.results["t1"].result == b"finished"
    assert session.ended.is_set()


async def test_shutdown_cancels_what_outlives_the_grace_period() -> None:
    worker = Worker(reconnect_initial_s=0.01, reconnect_max_s=0.05)
    cancelled = asyncio.Event()

    @worker.task("stuck")
    async def stuck(ctx: TaskContext) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    service = FakeWorkerService()
    async with serve(service) as (address, _):
        run = asyncio.create_task(worker.run(address))
        session = await service.sessions.get()
        session.assign(("t1", "stuck", b""))
        await session.until(lambda: "t1" in session.started)
        await asyncio.wait_for(worker.shutdown(grace=0.05), 5)
        assert cancelled.is_set()
        await run

    assert "t1" not in session.results


async def test_shutdown_before_run_makes_run_return_at_once() -> None:
    worker = make_worker()
    await worker.shutdown()
    await asyncio.wait_for(worker.run("127.0.0.1:1"), 5)


async def test_reconnects_after_server_restart_and_drops_old_results() -> None:
    worker = Worker(reconnect_initial_s=0.01, reconnect_max_s=0.05)
    release = asyncio.Event()

    @worker.task("hold")
    async def hold(ctx: TaskContext) -> str:
        await release.wait()
        return ctx.task_id

    first_service = FakeWorkerService()
    async with serve(first_service) as (address, port):
        run = asyncio.create_task(worker.run(address))
        first = await first_service.sessions.get()
        first.assign(("old", "hold", b""))
        await first.until(lambda: "old" in first.started)
        assert worker.worker_id == "w-1"
    # The server is gone; the same port comes back with a fresh broker.
    second_service = FakeWorkerService()
    async with serve(second_service, port) as _:
        second = await asyncio.wait_for(second_service.sessions.get(), 10)
        assert second.register.worker_id == "w-1"  # re-registered under the acked id
        second.assign(("new", "hold", b""))
        await second.until(lambda: "new" in second.started)
        release.set()
        await second.until(lambda: "new" in second.results)
        assert "old" not in second.results
        await worker.shutdown(grace=1)
        await run


async def test_refused_registration_is_retried_when_transient() -> None:
    worker = make_worker()
    service = FakeWorkerService(refuse=grpc.StatusCode.UNAVAILABLE)
    async with serve(service) as (address, _):
        run = asyncio.create_task(worker.run(address))
        while service.connects < 3:
            service.connected.clear()
            await service.connected.wait()
        await worker.shutdown()
        await run


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
    ],
)
async def test_refused_registration_raises(
    code: grpc.StatusCode, error: type[TaskbrokerError]
) -> None:
    worker = make_worker()
    service = FakeWorkerService(refuse=code)
    async with serve(service) as (address, _):
        with pytest.raises(error, match="refused by the fake broker"):
            await asyncio.wait_for(worker.run(address), 10)
    assert service.connects == 1


async def test_unreachable_broker_keeps_retrying_until_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = make_worker()
    with caplog.at_level(logging.WARNING, logger="taskbroker.worker"):
        run = asyncio.create_task(worker.run("127.0.0.1:1"))
        await until_logged(caplog, "reconnecting in", times=2)
    assert not run.done()
    await asyncio.wait_for(worker.shutdown(), 5)
    await run


def test_task_decorator_registers_and_returns_the_function() -> None:
    worker = Worker()

    async def resize(ctx: TaskContext) -> bytes:
        return b""

    def total(ctx: TaskContext) -> int:
        return 0

    assert worker.task("resize")(resize) is resize
    assert worker.task("sum")(total) is total
    assert worker.task_types == ("resize", "sum")
    assert worker.worker_id is None
    with pytest.raises(ValueError, match="already has a handler"):
        worker.task("sum")(total)
    with pytest.raises(ValueError, match="capacity"):
        Worker(capacity=0)


async def test_run_without_handlers_is_an_error() -> None:
    with pytest.raises(ValueError, match="no handlers"):
        await Worker().run("127.0.0.1:1")


async def test_a_failed_heartbeat_restarts_the_session_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker never goes on silently without heartbeats (the broker would take its
    tasks back): the session ends, the failure is logged, and the worker reconnects."""
    worker = make_worker()
    beats = 0

    async def failing_sleep(seconds: float) -> None:
        nonlocal beats
        beats += 1
        if beats == 1:
            raise RuntimeError("clock broke")
        await asyncio.Event().wait()

    worker._heartbeat_sleep = failing_sleep
    service = FakeWorkerService()
    with caplog.at_level(logging.WARNING, logger="taskbroker.worker"):
        async with serve(service) as (address, _), running(worker, address):
            await service.sessions.get()
            await until_logged(caplog, "the heartbeat failed: RuntimeError: clock broke")
            await service.sessions.get()  # it registered again
    assert service.connects == 2
