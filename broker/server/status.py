"""Broker errors as gRPC statuses: the one table of codes, and the `edge` decorator that
applies it to a unary handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from broker.errors import (
    AlreadyExists,
    BrokerError,
    FailedPrecondition,
    InvalidArgument,
    InvalidTransition,
    NotFound,
    NotOwner,
    ResourceExhausted,
    StorageError,
    Unavailable,
)
from broker.server.parsing import Malformed

Context = grpc.aio.ServicerContext[Any, Any]
Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, Context], Awaitable[Response]]

STATUS_CODES: dict[type[BrokerError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidTransition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    StorageError: grpc.StatusCode.UNAVAILABLE,
}

# The trailing metadata of a RESOURCE_EXHAUSTED answer that says when to try again, in
# milliseconds: the name gRPC's own retry machinery reads as server pushback.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


# The trailing metadata of an UNAVAILABLE answer from a broker that does not schedule the
# pool asked for (several brokers on one database): the address of the broker that does.
# A worker reconnects there; a client may send the call there.
OWNER_KEY = "taskbroker-owner"


def trailing_metadata(error: BrokerError) -> tuple[tuple[str, str], ...]:
    """What an error's status carries besides its code and message."""
    if isinstance(error, ResourceExhausted) and error.retry_after_s is not None:
        return ((RETRY_PUSHBACK_KEY, str(retry_after_ms(error.retry_after_s))),)
    if isinstance(error, NotOwner) and error.owner:
        return ((OWNER_KEY, error.owner),)
    return ()


def status_of(error: BrokerError) -> grpc.StatusCode:
    """The status code for an error: its own class's, else its nearest base's."""
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def retry_after_ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def edge(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Turn a BrokerError raised by a unary handler into its gRPC status (and a malformed
    request into INVALID_ARGUMENT before the handler runs)."""

    async def wrapper(self: Any, request: Request, context: Context) -> Response:
        try:
            if isinstance(request, Malformed):
                raise request.error()
            return await handler(self, request, context)
        except BrokerError as exc:
            metadata = trailing_metadata(exc)
            if metadata:
                context.set_trailing_metadata(metadata)
            await context.abort(status_of(exc), str(exc))
            raise  # abort() raises; this is for the type checker

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper
