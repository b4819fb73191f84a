"""Tracing: one task is one trace across client, broker and worker; a span per RPC.

Spans are collected with the SDK's in-memory exporter from a provider each test makes
for itself (the global provider is never set: it could be set only once per process).
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind, StatusCode, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from broker import Broker, ConfigError
from broker.domain import Task, TaskError, TaskId, TaskSpec, TaskState
from broker.observability.tracing import (
    TracingObserver,
    broker_tracer,
    current_trace_context,
    tracer_provider,
    with_trace_context,
)
from broker.server.interceptors import TracingInterceptor
from broker.server.parsing import TolerantRegistrar
from tests.support.config import make_config
from worker_sdk import Client, TaskContext, TaskFailed, TaskRequest, Worker
from worker_sdk import _tracing as sdk_tracing
from worker_sdk._messages import Assignment
from worker_sdk._types import DEFAULT_POOL


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def until(predicate: Callable[[], bool]) -> None:
    """Wait until `predicate` holds (the broker records its last spans asynchronously)."""
    async with asyncio.timeout(20.0):  # an upper bound for a loaded machine, not a wait
        while not predicate():
            await asyncio.sleep(0.002)


@pytest.fixture
async def traced_broker(tmp_path: Path, provider: TracerProvider) -> AsyncIterator[Broker]:
    """A real broker whose engine reports to a TracingObserver on the test's provider."""
    async with Broker(make_config(tmp_path)) as broker:
        broker.engine.observers.add(TracingObserver(broker_tracer(provider)))
        yield broker


@pytest.fixture
async def traced_worker(traced_broker: Broker, provider: TracerProvider) -> AsyncIterator[Worker]:
    worker = Worker(broker=traced_broker.address, capacity=2, tracer_provider=provider)
    user = provider.get_tracer("the handler's own")

    @worker.task("sync")
    def sync_handler(ctx: TaskContext) -> str:  # runs in a thread
        with user.start_as_current_span("user.sync"):
            return "done"

    @worker.task("async")
    async def async_handler(ctx: TaskContext) -> str:
        with user.start_as_current_span("user.async"):
            return "done"

    @worker.task("boom")
    async def boom(ctx: TaskContext) -> None:
        raise ValueError("no such thing")

    run = asyncio.create_task(worker.run())
    await until(lambda: bool(traced_broker.engine.workers()))
    yield worker
    await worker.shutdown(grace=2)
    await run


async def test_one_task_is_one_connected_trace(
    traced_broker: Broker,
    traced_worker: Worker,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    async with Client(traced_broker.address, tracer_provider=provider) as client:
        sync_id = await client.submit("sync", b"x")
        (async_id,) = await client.submit_many([TaskRequest("async")])
        assert await client.result(sync_id, timeout=10) == b"done"
        assert await client.result(async_id, timeout=10) == b"done"
        sync_info = await client.get(sync_id)

    expected = {
        "taskbroker.submit",
        "taskbroker.queue",
        "taskbroker.place",
        "taskbroker.attempt",
        "taskbroker.execute",
    }

    def trace_of(task_id: str) -> list[ReadableSpan]:
        spans = exporter.get_finished_spans()
        roots = [
            s
            for s in named(spans, "taskbroker.submit")
            if s.attributes and s.attributes.get("taskbroker.task_id") == task_id
        ]
        if not roots:
            return []
        return [s for s in spans if trace_id(s) == trace_id(roots[0])]

    for task_id, user_span in ((sync_id, "user.sync"), (async_id, "user.async")):
        await until(lambda: {s.name for s in trace_of(task_id)} >= expected | {user_span})  # noqa: B023
        spans = trace_of(task_id)
        by_name = {s.name: s for s in spans}
        assert len(spans) == len(by_name) == len(expected) + 1, [s.name for s in spans]

        # One root, the client's submit span, and every other span's parent is in the trace.
        root = by_name["taskbroker.submit"]
        assert root.kind is SpanKind.CLIENT
        assert root.parent is None
        ids = {span_id(s) for s in spans}
        for span in spans:
            assert span is root or parent_id(span) in ids, span.name

        # The broker's spans and the worker's are children of the task's stored context;
        # the handler's own span nests in the worker's.
        execute = by_name["taskbroker.execute"]
        for name in ("taskbroker.queue", "taskbroker.place", "taskbroker.attempt"):
            assert parent_id(by_name[name]) == span_id(root), name
        assert parent_id(execute) == span_id(root)
        assert parent_id(by_name[user_span]) == span_id(execute)

        place = by_name["taskbroker.place"].attributes or {}
        assert place["taskbroker.task_id"] == task_id
        assert place["taskbroker.worker_id"] == traced_worker.worker_id
        assert place["taskbroker.strategy_note"]
        assert place["taskbroker.attempt"] == 1
        assert (execute.attributes or {})["taskbroker.task_id"] == task_id
        attempt = by_name["taskbroker.attempt"]
        assert (attempt.attributes or {})["taskbroker.success"] is True
        assert (attempt.attributes or {})["taskbroker.state"] == "succeeded"
        # Broker spans are timed with the broker's clock: queued, then placed, then done.
        queue = by_name["taskbroker.queue"]
        times = [queue.start_time, queue.end_time, attempt.start_time, attempt.end_time]
        assert None not in times
        assert times == sorted(times, key=lambda t: t or 0)

    assert sync_info.placement_note == (
        named(trace_of(sync_id), "taskbroker.place")[0].attributes or {}
    ).get("taskbroker.strategy_note")
    assert {trace_id(s) for s in trace_of(sync_id)} != {trace_id(s) for s in trace_of(async_id)}


async def test_a_failed_handler_marks_its_spans(
    traced_broker: Broker,
    traced_worker: Worker,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    async with Client(traced_broker.address, tracer_provider=provider) as client:
        task_id = await client.submit("boom")
        with pytest.raises(TaskFailed):
            await client.result(task_id, timeout=10)

    def spans(name: str) -> list[ReadableSpan]:
        return [
            s
            for s in named(exporter.get_finished_spans(), name)
            if s.attributes and s.attributes.get("taskbroker.task_id") == task_id
        ]

    await until(lambda: bool(spans("taskbroker.attempt")))
    (execute,) = spans("taskbroker.execute")
    assert execute.status.status_code is StatusCode.ERROR
    assert "ValueError" in (execute.status.description or "")
    assert [e.name for e in execute.events] == ["exception"]
    (attempt,) = spans("taskbroker.attempt")
    assert attempt.status.status_code is StatusCode.ERROR
    assert (attempt.attributes or {})["taskbroker.success"] is False
    assert (attempt.attributes or {})["taskbroker.error_type"] == "ValueError"
    assert (attempt.attributes or {})["taskbroker.state"] == "failed"
    assert not spans("taskbroker.finish")  # the attempt's span says how it ended


async def test_a_task_cancelled_before_it_ran_gets_a_finish_span(
    traced_broker: Broker, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with Client(traced_broker.address, tracer_provider=provider) as client:
        task_id = await client.submit("no-worker-has-this")
        await client.cancel(task_id)
    await until(lambda: bool(named(exporter.get_finished_spans(), "taskbroker.finish")))
    spans = exporter.get_finished_spans()
    (finish,) = named(spans, "taskbroker.finish")
    (submit,) = named(spans, "taskbroker.submit")
    assert parent_id(finish) == span_id(submit)
    assert (finish.attributes or {})["taskbroker.state"] == "cancelled"
    assert (finish.attributes or {})["taskbroker.attempts"] == 0


async def test_sampling_ratio_zero_records_nothing(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    config = make_config(tmp_path, tracing_exporter="console", tracing_sample_ratio=0.0)
    provider = tracer_provider(config)
    assert provider is not None
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        async with Broker(config) as broker:
            broker.engine.observers.add(TracingObserver(broker_tracer(provider)))
            worker = Worker(broker=broker.address, tracer_provider=provider)

            @worker.task("echo")
            async def echo(ctx: TaskContext) -> bytes:
                return ctx.payload

            run = asyncio.create_task(worker.run())
            async with Client(broker.address, tracer_provider=provider) as client:
                task_id = await client.submit("echo", b"hi")
                assert await client.result(task_id, timeout=10) == b"hi"
            await worker.shutdown(grace=2)
            await run
        # An untraced submit (no client context) starts a root the broker samples out, too.
        (spec,) = with_trace_context([TaskSpec(task_type="t")], broker_tracer(provider))
        flags = int(spec.trace_context["traceparent"].rsplit("-", 1)[1], 16)
        assert not flags & 1  # propagated, and not sampled
    finally:
        provider.shutdown()
    assert exporter.get_finished_spans() == ()


def test_exporter_choice(tmp_path: Path) -> None:
    assert tracer_provider(make_config(tmp_path)) is None  # "none" is the default
    console = tracer_provider(make_config(tmp_path, tracing_exporter="console"))
    assert isinstance(console, TracerProvider)
    console.shutdown()
    with pytest.raises(ConfigError, match="tracing_exporter"):
        make_config(tmp_path, tracing_exporter="jaeger")


@pytest.mark.skipif(
    importlib.util.find_spec("opentelemetry.exporter.otlp") is not None,
    reason="the OTLP exporter is installed here",
)
def test_otlp_without_its_package_is_a_clear_config_error(tmp_path: Path) -> None:
    config = make_config(tmp_path, tracing_exporter="otlp", otlp_endpoint="localhost:4317")
    with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp"):
        tracer_provider(config)


# -- the observer on its own ---------------------------------------------------------------


def traced_task(task_id: int, provider: TracerProvider) -> tuple[Task, int]:
    """A task whose stored context is a client span's; returns it and that span's id."""
    with provider.get_tracer("client").start_as_current_span("client") as span:
        context = current_trace_context()
    spec = TaskSpec(task_type="t", trace_context=context)
    return Task(id=TaskId(task_id), spec=spec), span.get_span_context().span_id


def test_observer_times_spans_with_the_broker_clock(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    observer = TracingObserver(broker_tracer(provider))
    task, client_span = traced_task(7, provider)
    task.state = TaskState.ASSIGNED
    task.worker_id = "w1"
    task.attempts = 1
    task.assigned_at = 1000.0
    task.placement_note = "round_robin: next in turn"
    observer.placed(task, queue_wait_s=2.5, at=1000.0)
    observer.requeued(task, "worker w1 was lost", at=1004.0)
    task.attempts = 2
    task.worker_id = "w2"
    task.assigned_at = 1010.0
    task.state = TaskState.FAILED
    task.error = TaskError(type="Timeout", message="too slow")
    task.finished_at = 1012.0
    observer.attempt_ended(task, success=False, run_s=2.0, at=1012.0)
    observer.finished(task)  # no span: the attempt's says it failed
    cancelled, _ = traced_task(9, provider)
    cancelled.state = TaskState.CANCELLED
    cancelled.finished_at = 1013.0
    observer.finished(cancelled)
    untraced = Task(id=TaskId(8), spec=TaskSpec(task_type="t"))
    observer.placed(untraced, 0.0, 1.0)
    observer.attempt_ended(untraced, True, 0.0, 1.0)
    not_sampled = {"traceparent": f"00-{'1' * 32}-{'2' * 16}-00"}
    unsampled = TaskSpec(task_type="t", trace_context=not_sampled)
    observer.placed(Task(id=TaskId(10), spec=unsampled), 0.0, 1.0)

    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("taskbroker.")]
    assert [s.name for s in spans] == [
        "taskbroker.queue",
        "taskbroker.place",
        "taskbroker.attempt",
        "taskbroker.attempt",
        "taskbroker.finish",
    ]
    assert all(parent_id(s) == client_span for s in spans[:-1])
    second = 1_000_000_000
    queue, place, lost, failed, finish = spans
    assert (queue.start_time, queue.end_time) == (997_500 * second // 1000, 1000 * second)
    assert (place.attributes or {})["taskbroker.strategy_note"] == "round_robin: next in turn"
    assert (lost.start_time, lost.end_time) == (1000 * second, 1004 * second)
    assert [e.name for e in lost.events] == ["requeued"]
    assert (lost.attributes or {})["taskbroker.requeue_reason"] == "worker w1 was lost"
    assert (failed.start_time, failed.end_time) == (1010 * second, 1012 * second)
    assert (failed.attributes or {})["taskbroker.worker_id"] == "w2"
    assert failed.status.description == "Timeout: too slow"
    assert finish.start_time == finish.end_time == 1013 * second
    assert (finish.attributes or {})["taskbroker.state"] == "cancelled"


# -- RPC spans -------------------------------------------------------------------------------


def _bytes(data: bytes) -> bytes:
    return data


class EchoService:
    """A tiny service: each method answers with the trace context a task submitted
    there would be stored with."""

    def __init__(self, provider: TracerProvider) -> None:
        self._tracer = broker_tracer(provider)

    def _task_context(self) -> bytes:
        (spec,) = with_trace_context([TaskSpec(task_type="t")], self._tracer)
        return spec.trace_context["traceparent"].encode()

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return self._task_context()

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise RuntimeError("a bug")

    async def reject(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
        raise AssertionError("abort raises")

    async def stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield self._task_context()


@pytest.fixture
async def echo_channel(provider: TracerProvider) -> AsyncIterator[grpc.aio.Channel]:
    """A server with the interceptor, registered the way the broker registers its services."""
    server = grpc.aio.server(interceptors=[TracingInterceptor(broker_tracer(provider))])
    service = EchoService(provider)
    unary = {
        name: grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=_bytes, response_serializer=_bytes
        )
        for name, method in (
            ("Unary", service.unary),
            ("Fail", service.fail),
            ("Reject", service.reject),
        )
    }
    stream = grpc.stream_stream_rpc_method_handler(
        service.stream, request_deserializer=_bytes, response_serializer=_bytes
    )
    TolerantRegistrar(server).add_registered_method_handlers(
        "test.Echo", {**unary, "Stream": stream}
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


def parent_of_traceparent(traceparent: bytes) -> tuple[int, int]:
    """(trace id, parent span id) of a W3C traceparent."""
    _, trace, parent, _ = traceparent.decode().split("-")
    return int(trace, 16), int(parent, 16)


async def test_interceptor_opens_a_server_span_per_rpc(
    echo_channel: grpc.aio.Channel, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    def unary(method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        return echo_channel.unary_unary(
            f"/test.Echo/{method}", request_serializer=_bytes, response_deserializer=_bytes
        )

    sdk = sdk_tracing.Tracing(provider)
    with provider.get_tracer("caller").start_as_current_span("caller") as caller:
        metadata = sdk.call_metadata((("x-taskbroker-client", "test"),))
        task_context = await unary("Unary")(b"", metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await unary("Fail")(b"")
    assert failed.value.code() is grpc.StatusCode.UNKNOWN
    with pytest.raises(grpc.aio.AioRpcError) as rejected:
        await unary("Reject")(b"")
    assert rejected.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    call = echo_channel.stream_stream(
        "/test.Echo/Stream", request_serializer=_bytes, response_deserializer=_bytes
    )(iter([b"a"]))
    streamed = [response async for response in call]

    await until(lambda: bool(named(exporter.get_finished_spans(), "test.Echo/Stream")))
    spans = exporter.get_finished_spans()
    (served,) = named(spans, "test.Echo/Unary")
    assert served.kind is SpanKind.SERVER
    assert served.attributes == {
        "rpc.system": "grpc",
        "rpc.service": "test.Echo",
        "rpc.method": "Unary",
        "rpc.grpc.status_code": 0,
    }
    # The caller's context came in the metadata; a task submitted there joins the RPC span.
    assert parent_id(served) == caller.get_span_context().span_id
    assert trace_id(served) == caller.get_span_context().trace_id
    assert parent_of_traceparent(task_context) == (trace_id(served), span_id(served))

    (fail,) = named(spans, "test.Echo/Fail")
    assert (fail.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.UNKNOWN.value[0]
    assert fail.status.status_code is StatusCode.ERROR
    assert fail.parent is None  # no traceparent sent
    (reject,) = named(spans, "test.Echo/Reject")
    assert (reject.attributes or {})["rpc.grpc.status_code"] == 3
    assert reject.status.status_code is StatusCode.UNSET  # the caller's mistake, not ours

    # A stream gets one span, not made current: a task submitted on it starts its own trace.
    (stream,) = named(spans, "test.Echo/Stream")
    assert (stream.attributes or {})["rpc.grpc.status_code"] == 0
    (task_trace, task_parent) = parent_of_traceparent(streamed[0])
    (root,) = [s for s in named(spans, "taskbroker.submit") if span_id(s) == task_parent]
    assert root.parent is None
    assert root.kind is SpanKind.SERVER
    assert task_trace == trace_id(root) != trace_id(stream)


# -- the SDK without a provider ----------------------------------------------------------------


def test_sdk_without_a_provider_does_no_tracing_work() -> None:
    tracing = sdk_tracing.Tracing(None)  # no global provider is set in the tests
    assert tracing.tracer() is None
    with tracing.submit_spans([TaskRequest("t")]) as spans:
        assert spans.context() is None
        assert spans.contexts() is None
    assert tracing.call_metadata((("k", "v"),)) == (("k", "v"),)
    context = TaskContext(
        task_id="1", task_type="t", attempt=1, priority=0, payload=b"", worker_id="w"
    )
    execute = tracing.execute_span(Assignment("1", 1, "t", b"", 0), context)

    def handler(ctx: TaskContext) -> None:
        return None

    assert execute.in_context(handler) is handler


def test_spec_carries_the_submit_span_context(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracing = sdk_tracing.Tracing(provider)
    requests = [TaskRequest("a"), TaskRequest("b", pool=DEFAULT_POOL)]
    with tracing.submit_spans(requests) as spans:
        contexts = spans.contexts()
        spans.submitted(["1", "2"])
    assert contexts is not None
    submitted = exporter.get_finished_spans()
    assert [s.name for s in submitted] == ["taskbroker.submit"] * 2
    for span, carrier in zip(submitted, contexts, strict=True):
        parent = TraceContextTextMapPropagator().extract(carrier)
        assert parent  # a traceparent naming the span
        assert carrier["traceparent"].split("-")[2] == f"{span_id(span):016x}"
    assert [(s.attributes or {})["taskbroker.task_id"] for s in submitted] == ["1", "2"]


class EveryOther(Sampler):
    """Samples the first root span, drops the second, and so on; each with a tracestate."""

    def __init__(self) -> None:
        self.decisions = 0

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        self.decisions += 1
        decision = Decision.RECORD_AND_SAMPLE if self.decisions % 2 else Decision.DROP
        state = TraceState([("vendor", f"n{self.decisions}")])
        return SamplingResult(decision, attributes, state)

    def get_description(self) -> str:
        return "EveryOther"


def test_a_batch_partly_sampled_keeps_each_span_with_its_task(
    exporter: InMemorySpanExporter,
) -> None:
    provider = TracerProvider(sampler=EveryOther())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = sdk_tracing.Tracing(provider)
    with tracing.submit_spans([TaskRequest(f"t{i}") for i in range(4)]) as spans:
        contexts = spans.contexts()
        spans.submitted(["10", "11", "12", "13"])
    assert contexts is not None
    recorded = exporter.get_finished_spans()
    assert [
        ((s.attributes or {})["taskbroker.task_type"], (s.attributes or {})["taskbroker.task_id"])
        for s in recorded
    ] == [("t0", "10"), ("t2", "12")]
    # Each carrier is what the W3C propagator writes for its span, sampled or not.
    assert [int(c["traceparent"][-2:], 16) & 1 for c in contexts] == [1, 0, 1, 0]
    assert [c["tracestate"] for c in contexts] == [f"vendor=n{n}" for n in range(1, 5)]
    for span, carrier in zip(recorded, contexts[::2], strict=True):
        expected: dict[str, str] = {}
        assert span.context is not None
        as_current = trace.set_span_in_context(trace.NonRecordingSpan(span.context))
        TraceContextTextMapPropagator().inject(expected, as_current)
        assert carrier == expected


UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


@pytest.mark.parametrize("threaded", [False, True])
def test_an_unsampled_trace_runs_its_handler_in_that_trace_without_a_span(
    exporter: InMemorySpanExporter, threaded: bool
) -> None:
    # Even a worker whose own sampler records every root follows the trace's decision.
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = sdk_tracing.Tracing(provider)
    context = TaskContext(
        task_id="1", task_type="t", attempt=1, priority=0, payload=b"", worker_id="w"
    )
    assignment = Assignment("1", 1, "t", b"", 0, trace_context={"traceparent": UNSAMPLED})
    seen: list[trace.SpanContext] = []

    def handler(ctx: TaskContext) -> None:
        seen.append(trace.get_current_span().get_span_context())
        with provider.get_tracer("handler").start_as_current_span("the handler's own"):
            pass

    with tracing.execute_span(assignment, context) as execute:
        if threaded:
            thread = threading.Thread(target=execute.in_context(handler), args=(context,))
            thread.start()
            thread.join()
        else:
            handler(context)
    (current,) = seen
    assert (current.trace_id, current.span_id) == (
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
    )
    assert current.is_remote
    assert not current.trace_flags.sampled
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize(
    "carrier",
    [
        {"traceparent": UNSAMPLED[:-2] + "01"},  # sampled
        {"traceparent": UNSAMPLED, "tracestate": "vendor=x"},  # kept through the propagator
    ],
)
def test_other_trace_contexts_get_an_execute_span(
    exporter: InMemorySpanExporter, carrier: dict[str, str]
) -> None:
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = sdk_tracing.Tracing(provider)
    context = TaskContext(
        task_id="1", task_type="t", attempt=1, priority=0, payload=b"", worker_id="w"
    )
    assignment = Assignment("1", 1, "t", b"", 0, trace_context=carrier)
    with tracing.execute_span(assignment, context):
        current = trace.get_current_span().get_span_context()
    (span,) = exporter.get_finished_spans()
    assert span.name == "taskbroker.execute"
    assert trace_id(span) == current.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert parent_id(span) == 0xB7AD6B7169203331
    assert str(current.trace_state.to_header()) == carrier.get("tracestate", "")


# -- wired into the Broker ---------------------------------------------------------------------

_WIRED = "tracer_provider" in inspect.signature(Broker).parameters


@pytest.mark.skipif(not _WIRED, reason="Broker(tracer_provider=...) is not wired yet")
async def test_the_broker_traces_rpcs_and_tasks(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with Broker(make_config(tmp_path), tracer_provider=provider) as broker:  # type: ignore[call-arg, unused-ignore]
        worker = Worker(broker=broker.address, tracer_provider=provider)

        @worker.task("echo")
        async def echo(ctx: TaskContext) -> bytes:
            return ctx.payload

        run = asyncio.create_task(worker.run())
        app = provider.get_tracer("app")
        async with Client(broker.address, tracer_provider=provider) as client:
            with app.start_as_current_span("request") as request:
                (batch_id,) = await client.submit_many([TaskRequest("echo", b"1")])
            untraced = Client(broker.address)  # no provider, none global: sends no context
            async with untraced:
                plain_id = await untraced.submit("echo", b"2")
                assert await untraced.result(plain_id, timeout=10) == b"2"
            assert await client.result(batch_id, timeout=10) == b"1"
        await worker.shutdown(grace=2)
        await run

    spans = exporter.get_finished_spans()
    # A span per RPC: the batch submit is a child of the caller's span (traceparent metadata).
    (batch_rpc,) = named(spans, "taskbroker.v1.TaskService/SubmitBatch")
    assert batch_rpc.kind is SpanKind.SERVER
    assert parent_id(batch_rpc) == request.get_span_context().span_id
    assert named(spans, "taskbroker.v1.WorkerService/Connect")
    assert named(spans, "taskbroker.v1.TaskService/SubmitStream")
    # A task submitted on the stream without a context gets a trace of its own, rooted at
    # the broker's submit span, which its broker and worker spans join.
    (place,) = [
        s
        for s in named(spans, "taskbroker.place")
        if (s.attributes or {}).get("taskbroker.task_id") == plain_id
    ]
    roots = [s for s in spans if s.parent is None and trace_id(s) == trace_id(place)]
    assert [(s.name, s.kind) for s in roots] == [("taskbroker.submit", SpanKind.SERVER)]
    names = {s.name for s in spans if trace_id(s) == trace_id(place)}
    assert names >= {"taskbroker.queue", "taskbroker.attempt", "taskbroker.execute"}
