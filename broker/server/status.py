"""Broker errors as gRPC statuses: the one table of codes, the google.rpc details each
status carries, and the `edge` decorator that applies them to a unary handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo, RetryInfo
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

from broker.errors import (
    Aborted,
    AlreadyExists,
    BrokerError,
    FailedPrecondition,
    InvalidArgument,
    InvalidTransition,
    NotFound,
    NotOwner,
    OverLimit,
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
    Aborted: grpc.StatusCode.ABORTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    StorageError: grpc.StatusCode.UNAVAILABLE,
}

# The trailing metadata of a RESOURCE_EXHAUSTED answer that says when to try again, in
# milliseconds: the name gRPC's own retry machinery reads as server pushback.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
# The pushback gRFC A6 defines as "do not retry" (any negative number): sent with what can
# never succeed as sent, so that not even a retry policy listing its code retries it.
DO_NOT_RETRY = "-1"
# The google.rpc.ErrorInfo domain of the broker's errors.
ERROR_DOMAIN = "taskbroker"


# The trailing metadata of an UNAVAILABLE answer from a broker that does not schedule the
# pool asked for (several brokers on one database): the address of the broker that does.
# A worker reconnects there; a client may send the call there.
OWNER_KEY = "taskbroker-owner"


def status_of(error: BrokerError) -> grpc.StatusCode:
    """The status code for an error: its own class's, else its nearest base's."""
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def retry_after_ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass(frozen=True, slots=True)
class RichStatus:
    """A status code, its message and the trailing metadata that goes with them."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def rich_status(error: BrokerError) -> RichStatus:
    """The status for an error, with its google.rpc details in the trailer
    `grpc-status-details-bin` (read with grpc_status.rpc_status.from_call): an ErrorInfo
    with the error's reason, a BadRequest naming its field if it has one, a RetryInfo if
    it says when to try again; and `grpc-retry-pushback-ms`: the delay with RESOURCE_EXHAUSTED,
    "do not retry" with an OverLimit."""
    code = status_of(error)
    message = str(error)
    status = Status(code=code.value[0], message=message)
    status.details.add().Pack(ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
    if error.field:
        violation = BadRequest.FieldViolation(field=error.field, description=message)
        status.details.add().Pack(BadRequest(field_violations=[violation]))
    pushback: tuple[tuple[str, str], ...] = ()
    if isinstance(error, ResourceExhausted) and error.retry_after_s is not None:
        delay_ms = retry_after_ms(error.retry_after_s)
        info = RetryInfo()
        info.retry_delay.FromMilliseconds(delay_ms)
        status.details.add().Pack(info)
        pushback = ((RETRY_PUSHBACK_KEY, str(delay_ms)),)
    elif isinstance(error, OverLimit):
        pushback = ((RETRY_PUSHBACK_KEY, DO_NOT_RETRY),)
    elif isinstance(error, NotOwner) and error.owner:
        pushback = ((OWNER_KEY, error.owner),)
    answer = rpc_status.to_status(status)
    return RichStatus(code, message, (*answer.trailing_metadata, *pushback))


async def abort(context: Context, error: BrokerError) -> None:
    """End the call with the error's status and details (see `rich_status`); raises."""
    status = rich_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


def edge(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Turn a BrokerError raised by a unary handler into its gRPC status (and a malformed
    request into INVALID_ARGUMENT before the handler runs)."""

    async def wrapper(self: Any, request: Request, context: Context) -> Response:
        try:
            if isinstance(request, Malformed):
                raise request.error()
            return await handler(self, request, context)
        except BrokerError as exc:
            await abort(context, exc)
            raise  # abort() raises; this is for the type checker

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper
