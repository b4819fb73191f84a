"""OpenTelemetry in the SDK: the client's span of each submit, the worker's span of each
attempt, and the W3C trace context that joins them to the broker's spans of the task.

The client puts its submit span's context into `TaskSpec.trace_context` (the broker
stores it with the task and hands it to the worker in `Assignment.trace_context`) and
the caller's current context into the metadata of unary calls; the worker runs the
handler inside a span that is a child of the assignment's context.

Without a tracer provider (none given, and no global one set by the application) all
of this is skipped: a submit pays a few attribute checks (about 0.3 µs).

Most traces of a busy system are sampled out, so their path is kept short: the client
formats the traceparent of its submit span itself, and keeps only recording spans to
end; a worker given the context of a trace that was not sampled makes no span of its
own (none would be recorded: it would follow its parent's decision) and runs the handler
in that remote context, so the handler's own spans are dropped as well.
"""

from __future__ import annotations

import contextvars
import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import Token
from types import TracebackType
from typing import Final, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    TracerProvider,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from worker_sdk._context import TaskContext
from worker_sdk._messages import Assignment
from worker_sdk._types import TaskRequest
from worker_sdk._version import __version__

TRACER_NAME: Final = "worker_sdk"
_PROPAGATOR: Final = TraceContextTextMapPropagator()
# A W3C traceparent of version 00, as the SDK and most tracers write it.
_TRACEPARENT_00: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_R = TypeVar("_R")

Metadata = tuple[tuple[str, str], ...]


class Tracing:
    """The tracer of one Client or Worker, or None when there is nothing to trace to.

    With `provider` None it is the application's global provider, looked up once, on
    first use (a Worker's first task, a Client's first call): a no-op unless the
    application set one by then. Looking it up on every call would cost more than
    the rest of a submit.
    """

    __slots__ = ("_provider", "_resolved", "_tracer")

    def __init__(self, provider: TracerProvider | None) -> None:
        self._provider = provider
        self._tracer: Tracer | None = None
        self._resolved = False

    def tracer(self) -> Tracer | None:
        if not self._resolved:
            provider = self._provider or trace.get_tracer_provider()
            if not isinstance(provider, ProxyTracerProvider | NoOpTracerProvider):
                self._tracer = provider.get_tracer(TRACER_NAME, __version__)
            self._resolved = True
        return self._tracer

    # -- client ------------------------------------------------------------------------

    def submit_spans(self, requests: Sequence[TaskRequest]) -> SubmitSpans:
        """The CLIENT spans of one submit call, one per task ("taskbroker.submit")."""
        tracer = self.tracer()
        if tracer is None:
            return _NOT_TRACED
        return SubmitSpans(tracer, requests)

    def call_metadata(self, metadata: Metadata) -> Metadata:
        """`metadata` plus the current span's traceparent (and tracestate), if any."""
        if self.tracer() is None or not trace.get_current_span().get_span_context().is_valid:
            return metadata
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return (*metadata, *carrier.items())

    # -- worker ------------------------------------------------------------------------

    def execute_span(self, assignment: Assignment, context: TaskContext) -> ExecuteSpan:
        """The span of one attempt on this worker ("taskbroker.execute"); for a trace that
        was not sampled, that trace's remote span, made current but not ended."""
        tracer = self.tracer()
        if tracer is None:
            return _NOT_EXECUTED
        carrier = assignment.trace_context
        if carrier and (unsampled := _unsampled_parent(carrier)) is not None:
            return ExecuteSpan(unsampled)
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        span = tracer.start_span("taskbroker.execute", parent, kind=SpanKind.CONSUMER)
        if not span.get_span_context().is_valid:
            return _NOT_EXECUTED
        if span.is_recording():
            span.set_attributes(
                {
                    "taskbroker.task_id": context.task_id,
                    "taskbroker.task_type": context.task_type,
                    "taskbroker.attempt": context.attempt,
                    "taskbroker.worker_id": context.worker_id,
                }
            )
        return ExecuteSpan(span)


class SubmitSpans:
    """Open while a submit call runs: ends its spans with the task ids, or the error."""

    __slots__ = ("_contexts", "_spans")

    def __init__(self, tracer: Tracer | None, requests: Sequence[TaskRequest]) -> None:
        self._spans: list[tuple[int, Span]] = []  # the recording ones, by request index
        self._contexts: list[Mapping[str, str]] | None = None
        if tracer is None:
            return
        contexts: list[Mapping[str, str]] = []
        for index, request in enumerate(requests):
            span = tracer.start_span("taskbroker.submit", kind=SpanKind.CLIENT)
            span_context = span.get_span_context()
            if not span_context.is_valid:
                span.end()
                return  # a tracer that traces nothing (e.g. a no-op provider)
            if span.is_recording():
                span.set_attributes(
                    {"taskbroker.task_type": request.task_type, "taskbroker.pool": request.pool}
                )
                self._spans.append((index, span))
            contexts.append(_carrier(span_context))
        self._contexts = contexts

    def contexts(self) -> list[Mapping[str, str]] | None:
        """Each task's trace context, in order, for its TaskSpec; None when not tracing."""
        return self._contexts

    def context(self) -> Mapping[str, str] | None:
        """The trace context of a submit of one task."""
        return self._contexts[0] if self._contexts else None

    def submitted(self, task_ids: Iterable[str]) -> None:
        if not self._spans:
            return
        ids = list(task_ids)
        for index, span in self._spans:
            if index < len(ids):
                span.set_attribute("taskbroker.task_id", ids[index])

    def __enter__(self) -> SubmitSpans:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._spans:
            return
        for _, span in self._spans:
            if exc is not None:
                _record_error(span, exc)
            span.end()
        self._spans = []


class ExecuteSpan:
    """Open while a handler runs: its span is the current one in the running task (and,
    through `in_context`, in the handler's thread); records a failure and ends."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span | None) -> None:
        self._span = span
        self._token: Token[otel_context.Context] | None = None

    def in_context(self, function: Callable[..., _R]) -> Callable[..., _R]:
        """`function` to call in another thread with this span current there."""
        if self._span is None:
            return function
        return functools.partial(contextvars.copy_context().run, function)

    def failed(self, error: BaseException) -> None:
        if self._span is not None:
            _record_error(self._span, error)

    def __enter__(self) -> ExecuteSpan:
        if self._span is not None:
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None:
            return
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None
        if exc is not None and span.is_recording():
            # Leaving with an exception: cancelled by the broker or the worker's shutdown.
            span.add_event("cancelled", {"exception.type": type(exc).__name__})
        span.end()


def _carrier(span_context: SpanContext) -> dict[str, str]:
    """The W3C trace context of a span, as the propagator's inject writes it (without
    its lookups of the current context)."""
    carrier = {
        "traceparent": f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{span_context.trace_flags:02x}"
    }
    if span_context.trace_state:
        carrier["tracestate"] = span_context.trace_state.to_header()
    return carrier


def _unsampled_parent(carrier: Mapping[str, str]) -> Span | None:
    """The remote span of a trace context whose traceparent (version 00, without a
    tracestate) says it is not sampled; None for any other, left to the propagator."""
    header = carrier.get("traceparent")
    match = _TRACEPARENT_00.fullmatch(header) if header else None
    if match is None or "tracestate" in carrier:
        return None
    flags = int(match[3], 16)
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if flags & TraceFlags.SAMPLED or not trace_id or not span_id:
        return None
    return NonRecordingSpan(SpanContext(trace_id, span_id, True, TraceFlags(flags)))


def _record_error(span: Span, error: BaseException) -> None:
    if span.is_recording():
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


_NOT_TRACED: Final = SubmitSpans(None, ())
_NOT_EXECUTED: Final = ExecuteSpan(None)
