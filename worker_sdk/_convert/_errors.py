"""gRPC errors from the broker to the SDK's exceptions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, cast

import grpc

from worker_sdk._errors import RESOURCE_EXHAUSTED, TaskbrokerError, Unavailable, error_for_code

# The trailer gRPC defines for "wait this long before retrying" (milliseconds).
PUSHBACK_KEY: Final = "grpc-retry-pushback-ms"
# The trailer of a google.rpc.Status: the broker sends one with every error of its own.
STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"


def _trailers(error: grpc.RpcError) -> list[tuple[str, str | bytes]]:
    try:
        # Pairs at run time (grpc.aio's Metadata), whatever the stubs say.
        return list(cast(Iterable[tuple[str, str | bytes]], error.trailing_metadata() or ()))
    except AttributeError:  # an error raised without a call behind it
        return []


def _pushback_s(error: grpc.RpcError) -> float | None:
    """The broker's retry hint in seconds; None without one, or with one gRPC says means
    "do not retry" (negative) or that is not a number."""
    for key, value in _trailers(error):
        if key == PUSHBACK_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            try:
                ms = int(text)
            except ValueError:
                return None
            return ms / 1000 if ms >= 0 else None
    return None


def _broken_in_transit(error: grpc.RpcError) -> bool:
    """An INTERNAL the broker did not send: it carries no status details.

    gRPC reports one of its own when a call breaks under it, e.g. a stream the broker
    ended (it is stopping) while this side was still writing ("Internal error from
    Core"): the call was lost on the way, as with UNAVAILABLE.
    """
    return all(key != STATUS_DETAILS_KEY for key, _ in _trailers(error))


def rpc_error(error: grpc.RpcError, address: str) -> TaskbrokerError:
    """The SDK exception for a failed gRPC call to the broker at `address`."""
    code = error.code()
    details = error.details() or code.name
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return error_for_code(RESOURCE_EXHAUSTED, details, _pushback_s(error))
    if code is grpc.StatusCode.UNAVAILABLE:
        return Unavailable(f"broker at {address} is unavailable: {details}")
    if code is grpc.StatusCode.INTERNAL and _broken_in_transit(error):
        return Unavailable(f"the call to the broker at {address} broke: {details}")
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return TaskbrokerError(
            f"broker at {address} does not implement this call (older than this SDK?): {details}"
        )
    number = code.value[0]
    if not isinstance(number, int):  # pragma: no cover - grpc always uses (int, str)
        number = -1
    return error_for_code(number, details)
