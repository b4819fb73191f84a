"""The one table from broker errors to gRPC status codes."""

from __future__ import annotations

import grpc

from broker.errors import (
    AlreadyExists,
    BrokerError,
    FailedPrecondition,
    InvalidArgument,
    InvalidTransition,
    NotFound,
    ResourceExhausted,
    StorageError,
    Unavailable,
)

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


def status_of(error: BrokerError) -> grpc.StatusCode:
    """The status code for an error: its own class's, else its nearest base's."""
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL
