"""gRPC server interceptors: the chain every call goes through before its servicer.

`TracingInterceptor` opens a SERVER span per RPC, named after its method, child of the
caller's `traceparent` metadata (the task traces themselves are broker.observability.
tracing's). Authentication will be an interceptor here too.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from broker.config import BrokerConfig

_TRACE_HEADERS: Final = frozenset({"traceparent", "tracestate"})
# Codes that make a server span an error (OpenTelemetry's gRPC conventions); the others
# are the caller's mistake, recorded in rpc.grpc.status_code only.
_SERVER_ERRORS: Final = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_PROPAGATOR: Final = TraceContextTextMapPropagator()


def server_interceptors(
    config: BrokerConfig, tracer: Tracer | None
) -> list[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
    """The interceptors of the broker's server, outermost first: a span per RPC when
    tracing. (None at all otherwise: every interceptor costs each call.)"""
    interceptors: list[grpc.aio.ServerInterceptor] = []  # type: ignore[type-arg]
    if tracer is not None:
        interceptors.append(TracingInterceptor(tracer))
    return interceptors


_Behavior = Callable[..., Any]


class TracingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """A SERVER span per RPC, named after its method, child of the caller's traceparent.

    A unary RPC's span is current while its handler runs (so `with_trace_context` joins
    it); a streaming RPC gets one span for the whole stream, not made current, since a
    stream outlives the many unrelated tasks and calls that go through it.
    """

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],  # type: ignore[type-arg]
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:  # type: ignore[type-arg]
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        call = _Call(self._tracer, handler_call_details)
        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        )
        for attribute, make in kinds:
            behavior: _Behavior | None = getattr(handler, attribute)
            if behavior is None:
                continue
            if inspect.isasyncgenfunction(behavior):
                traced: _Behavior = call.wrap_generator(behavior)
            elif inspect.iscoroutinefunction(behavior):
                traced = call.wrap_coroutine(behavior, current=attribute == "unary_unary")
            else:  # a sync handler of a server with a thread pool: left as it is
                return handler
            return make(
                traced,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class _Call:
    """What the span of one RPC needs: its name, attributes and the caller's context."""

    __slots__ = ("_attributes", "_name", "_parent", "_tracer")

    def __init__(self, tracer: Tracer, details: grpc.HandlerCallDetails) -> None:
        self._tracer = tracer
        name = details.method.lstrip("/")
        service, _, method = name.rpartition("/")
        self._name = name
        self._attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        carrier = {
            key: value
            for key, value in details.invocation_metadata or ()
            if key in _TRACE_HEADERS and isinstance(value, str)
        }
        self._parent = _PROPAGATOR.extract(carrier) if carrier else otel_context.Context()

    def _start(self) -> Span:
        return self._tracer.start_span(
            self._name, self._parent, kind=SpanKind.SERVER, attributes=self._attributes
        )

    def wrap_coroutine(self, behavior: _Behavior, *, current: bool) -> _Behavior:
        async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            span = self._start()
            token = otel_context.attach(trace.set_span_in_context(span)) if current else None
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                _end(span, context, exc)
                raise
            finally:
                if token is not None:
                    otel_context.detach(token)
            _end(span, context, None)
            return response

        return traced

    def wrap_generator(self, behavior: _Behavior) -> _Behavior:
        async def traced(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            span = self._start()
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                _end(span, context, exc)
                raise
            else:
                _end(span, context, None)

        return traced


def _end(
    span: Span, context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
) -> None:
    """Set the RPC's status code on its span and end it."""
    if span.is_recording():
        code = _status_code(context, error)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERRORS:
            if error is not None and not isinstance(error, grpc.aio.AbortError):
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {_details(context, error)}"))
    span.end()


def _status_code(
    context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
) -> grpc.StatusCode:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    code = _context_code(context)
    if code is not None and (error is None or isinstance(error, grpc.aio.AbortError)):
        return code
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


def _context_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode | None:
    """The code the handler set (set_code or abort), if any."""
    try:
        code: object = context.code()
    except Exception:  # an older gRPC without ServicerContext.code()
        return None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return _CODES_BY_NUMBER.get(code)
    return None


def _details(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    try:
        details: object = context.details()
    except Exception:
        details = None
    if details:
        return details.decode() if isinstance(details, bytes) else str(details)
    return f"{type(error).__name__}: {error}" if error is not None else ""


_CODES_BY_NUMBER: Final[Mapping[int, grpc.StatusCode]] = {
    code.value[0]: code for code in grpc.StatusCode
}
