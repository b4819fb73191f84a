"""The broker's exceptions. The gRPC edge maps each to one status code."""

from __future__ import annotations

from typing import ClassVar


class BrokerError(Exception):
    """Root of every error the broker raises on purpose.

    `reason` is a short UPPER_SNAKE_CASE name of the cause (the edge sends it as a
    google.rpc.ErrorInfo reason; each class has a default) and `field` the request
    field at fault, when one is known (sent as a google.rpc.BadRequest violation).
    """

    default_reason: ClassVar[str] = "BROKER_ERROR"

    def __init__(self, message: str = "", *, field: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason or self.default_reason


class InvalidArgument(BrokerError):
    """The request is malformed or a value is out of range."""

    default_reason = "INVALID_ARGUMENT"


class NotFound(BrokerError):
    """A named pool, task or worker does not exist."""

    default_reason = "NOT_FOUND"


class AlreadyExists(BrokerError):
    """Something with that name exists already."""

    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(BrokerError):
    """The request is valid but not in the current state (e.g. no Register first)."""

    default_reason = "FAILED_PRECONDITION"


class OverLimit(InvalidArgument):
    """The request is over a fixed limit (a size, a batch a queue can never hold): it can
    never succeed as it is, so it is not a RESOURCE_EXHAUSTED that a retry may cure."""

    default_reason = "OVER_LIMIT"


class ResourceExhausted(BrokerError):
    """Transient overload (a full queue, a rate limit); `retry_after_s` says when trying
    again may work."""

    default_reason = "OVERLOADED"

    def __init__(
        self,
        message: str,
        retry_after_s: float | None = None,
        *,
        field: str = "",
        reason: str = "",
    ) -> None:
        super().__init__(message, field=field, reason=reason)
        self.retry_after_s = retry_after_s


class Aborted(BrokerError):
    """A concurrent change won (an update with a stale etag): read again and retry."""

    default_reason = "ABORTED"


class Unavailable(BrokerError):
    """The broker is not taking this request now (starting or shutting down)."""

    default_reason = "UNAVAILABLE"


class NotOwner(Unavailable):
    """Another broker schedules this pool (several brokers share one database): `owner`
    is its address, where the caller should go instead ("" while no broker holds it)."""

    def __init__(self, message: str, owner: str = "") -> None:
        super().__init__(message)
        self.owner = owner


class StorageError(BrokerError):
    """The task store could not read or write (disk full, I/O error, ...)."""

    default_reason = "STORAGE_ERROR"


class InvalidTransition(BrokerError):
    """A state machine was asked for a move it does not allow."""

    default_reason = "INVALID_TRANSITION"


class ConfigError(BrokerError):
    """The configuration is invalid; the message names the key."""

    default_reason = "CONFIG_ERROR"
