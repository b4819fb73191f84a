"""OpenTelemetry tracing of the broker: one trace per task, a span per RPC.

A task's trace is the W3C context stored with it (`TaskSpec.trace_context`, set by the
client's submit span, or by the broker at submit when the client sent none). The
`TracingObserver` records the broker's part of it from the engine's observer hooks,
with the broker's own clock values as span times: the wait in the queue, the placement
(strategy note and chosen worker), each attempt and its outcome. The worker SDK
joins the same trace with its span of the handler, from `Assignment.trace_context`.

The gRPC edge opens a SERVER span per RPC (broker.server.interceptors), in which a
submit's tasks join the caller's trace. Nothing here sets the global tracer provider:
the broker passes its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from broker.config import BrokerConfig
from broker.domain import Task, TaskSpec, TaskState, WorkerId
from broker.errors import ConfigError

TRACER_NAME: Final = "taskbroker.broker"
SERVICE_NAME: Final = "taskbroker"
# Where the OTLP span exporter lives: gRPC first, then HTTP (both in opentelemetry-exporter-otlp).
_OTLP_MODULES: Final = (
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)
_PROPAGATOR: Final = TraceContextTextMapPropagator()


def tracer_provider(config: BrokerConfig) -> TracerProvider | None:
    """The provider `config` asks for: None for tracing_exporter = "none".

    Spans are exported in batches from a background thread; call `shutdown()` on the
    provider when the broker stops, so the last ones are sent. Traces are sampled at
    `tracing_sample_ratio`, and a task's trace follows the decision its client made.
    """
    if config.tracing_exporter == "none":
        return None
    if config.tracing_exporter == "console":
        exporter: SpanExporter = ConsoleSpanExporter(service_name=SERVICE_NAME)
    elif config.tracing_exporter == "otlp":
        exporter = _otlp_exporter(config.otlp_endpoint)
    else:  # BrokerConfig checks the name; this is for a config built around that check
        raise ConfigError(f"tracing_exporter: unknown exporter {config.tracing_exporter!r}")
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(config.tracing_sample_ratio)),
        resource=Resource.create({"service.name": SERVICE_NAME}),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _otlp_exporter(endpoint: str) -> SpanExporter:
    for module_name in _OTLP_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        exporter: SpanExporter = module.OTLPSpanExporter(endpoint=endpoint or None)
        return exporter
    raise ConfigError(
        'tracing_exporter = "otlp" needs the opentelemetry-exporter-otlp package '
        "(pip install opentelemetry-exporter-otlp), or choose console or none"
    )


def broker_tracer(provider: TracerProvider) -> Tracer:
    """The tracer the broker's observer, interceptor and submit path share."""
    return provider.get_tracer(TRACER_NAME)


# -- the task's trace context ----------------------------------------------------------


def current_trace_context() -> dict[str, str]:
    """The current span's W3C trace context (traceparent, tracestate); {} without one."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


def with_trace_context(specs: Sequence[TaskSpec], tracer: Tracer) -> list[TaskSpec]:
    """The specs, each with the trace context to store with its task.

    A spec that brings one (the client's submit span) keeps it. The others join the
    current span (the Submit or SubmitBatch RPC's, from the edge's interceptor), or, with
    none (SubmitStream, whose span is not current), start a trace of their own here,
    with a short "taskbroker.submit" span as its root.
    """
    current: dict[str, str] | None = None
    stamped: list[TaskSpec] = []
    for spec in specs:
        if not spec.trace_context:
            if current is None:
                current = current_trace_context()
            spec = replace(spec, trace_context=current or _root_context(spec, tracer))
        stamped.append(spec)
    return stamped


def _root_context(spec: TaskSpec, tracer: Tracer) -> dict[str, str]:
    span = tracer.start_span("taskbroker.submit", otel_context.Context(), kind=SpanKind.SERVER)
    if span.is_recording():
        span.set_attributes({"taskbroker.task_type": spec.task_type, "taskbroker.pool": spec.pool})
    span.end()
    if not span.get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return carrier


def _parent(task: Task) -> otel_context.Context | None:
    """The context the broker's spans of `task` are children of; None if it has none, or
    if its trace is not sampled (checked first: most tasks of a sampled-down broker)."""
    carrier = task.spec.trace_context
    traceparent = carrier.get("traceparent") if carrier else None
    if not traceparent or not _sampled(traceparent):
        return None
    parent = _PROPAGATOR.extract(carrier)
    if not trace.get_current_span(parent).get_span_context().is_valid:
        return None
    return parent


def _sampled(traceparent: str) -> bool:
    """The sampled flag of a W3C traceparent (version-trace_id-parent_id-flags)."""
    try:
        return bool(int(traceparent[-2:], 16) & 1)
    except ValueError:
        return False


def _ns(epoch_s: float) -> int:
    return int(epoch_s * 1e9)


# -- the observer ------------------------------------------------------------------------


class TracingObserver:
    """Records the broker's spans of each traced task (an `Observer`).

    Every span is a child of the task's stored trace context and is timed with the
    engine's clock: "taskbroker.queue" (queued to placed), "taskbroker.place" (the
    placement: strategy note, worker, attempt) and "taskbroker.attempt" (assigned to
    result, lost or timed out; its state attribute is the task's afterwards). A task
    that ends without an attempt ending it (cancelled, or never started) gets a
    "taskbroker.finish" span. Only sampled traces are recorded, as the trace's root
    decided: tasks without a trace context, or with an unsampled one, cost a dict lookup.
    """

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def submitted(self, tasks: Sequence[Task], at: float) -> None:
        """Nothing: the queue span, recorded at placement, starts when the task was queued."""

    def placed(self, task: Task, queue_wait_s: float, at: float) -> None:
        parent = _parent(task)
        if parent is None:
            return
        placed_at = _ns(at)
        attributes = _task_attributes(task)
        queue = self._tracer.start_span(
            "taskbroker.queue",
            parent,
            attributes={**attributes, "taskbroker.queue_wait_s": queue_wait_s},
            start_time=_ns(at - max(0.0, queue_wait_s)),
        )
        queue.end(placed_at)
        attributes["taskbroker.strategy_note"] = task.placement_note
        attributes["taskbroker.worker_id"] = task.worker_id
        attributes["taskbroker.attempt"] = task.attempts
        place = self._tracer.start_span(
            "taskbroker.place", parent, attributes=attributes, start_time=placed_at
        )
        place.end(placed_at)

    def attempt_ended(self, task: Task, success: bool, run_s: float, at: float) -> None:
        parent = _parent(task)
        if parent is None:
            return
        outcome: dict[str, AttributeValue] = {
            "taskbroker.success": success,
            "taskbroker.run_s": run_s,
            "taskbroker.state": task.state.name.lower(),
        }
        error = None if success else task.error
        if error is not None:
            outcome["taskbroker.error_type"] = error.type
        span = self._start_attempt(task, parent, run_s, at, outcome)
        if not success:
            description = f"{error.type}: {error.message}" if error else "the attempt failed"
            span.set_status(Status(StatusCode.ERROR, description))
        span.end(_ns(at))

    def requeued(self, task: Task, reason: str, at: float) -> None:
        """The attempt that was lost gets its span, ended by a "requeued" event."""
        parent = _parent(task)
        if parent is None:
            return
        run_s = max(0.0, at - task.assigned_at)
        span = self._start_attempt(task, parent, run_s, at, {"taskbroker.requeue_reason": reason})
        span.add_event("requeued", {"taskbroker.reason": reason}, timestamp=_ns(at))
        span.set_status(Status(StatusCode.ERROR, f"requeued: {reason}"))
        span.end(_ns(at))

    def finished(self, task: Task) -> None:
        """A span for a task no attempt span ended (its last attempt span says the rest)."""
        if task.attempts and task.state is not TaskState.CANCELLED:
            return
        parent = _parent(task)
        if parent is None:
            return
        attributes = _task_attributes(task)
        attributes["taskbroker.state"] = task.state.name.lower()
        attributes["taskbroker.attempts"] = task.attempts
        if task.error is not None:
            attributes["taskbroker.error_type"] = task.error.type
        finished_at = _ns(task.finished_at) if task.finished_at else None
        span = self._tracer.start_span(
            "taskbroker.finish", parent, attributes=attributes, start_time=finished_at
        )
        span.end(finished_at)

    def worker_changed(self, worker_id: WorkerId, pool: str, event: str, at: float) -> None:
        """Nothing: workers are not part of a task's trace."""

    def _start_attempt(
        self,
        task: Task,
        parent: otel_context.Context,
        run_s: float,
        at: float,
        outcome: dict[str, AttributeValue],
    ) -> Span:
        started = task.assigned_at if 0 < task.assigned_at <= at else at - run_s
        attributes = _task_attributes(task)
        attributes["taskbroker.worker_id"] = task.worker_id
        attributes["taskbroker.attempt"] = task.attempts
        attributes.update(outcome)
        return self._tracer.start_span(
            "taskbroker.attempt", parent, attributes=attributes, start_time=_ns(started)
        )


def _task_attributes(task: Task) -> dict[str, AttributeValue]:
    spec = task.spec
    return {
        "taskbroker.task_id": str(task.id),
        "taskbroker.pool": spec.pool,
        "taskbroker.task_type": spec.task_type,
    }
