"""The broker's exceptions. The gRPC edge maps each to one status code."""

from __future__ import annotations


class BrokerError(Exception):
    """Root of every error the broker raises on purpose."""


class InvalidArgument(BrokerError):
    """The request is malformed or a value is out of range."""


class NotFound(BrokerError):
    """A named pool, task or worker does not exist."""


class AlreadyExists(BrokerError):
    """Something with that name exists already."""


class FailedPrecondition(BrokerError):
    """The request is valid but not in the current state (e.g. no Register first)."""


class ResourceExhausted(BrokerError):
    """A size or capacity limit was hit; `retry_after_s` hints when trying again may work."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(BrokerError):
    """The broker is not taking this request now (starting or shutting down)."""


class NotOwner(Unavailable):
    """Another broker schedules this pool (several brokers share one database): `owner`
    is its address, where the caller should go instead ("" while no broker holds it)."""

    def __init__(self, message: str, owner: str = "") -> None:
        super().__init__(message)
        self.owner = owner


class StorageError(BrokerError):
    """The task store could not read or write (disk full, I/O error, ...)."""


class InvalidTransition(BrokerError):
    """A state machine was asked for a move it does not allow."""


class ConfigError(BrokerError):
    """The configuration is invalid; the message names the key."""
