"""What the edge reads from a call besides its fields: the request's bytes, tolerantly,
and the caller's identity.

gRPC parses a request before the handler runs and answers UNKNOWN when that
fails. Registering the services through `TolerantRegistrar` hands the handler
a `Malformed` marker instead, which the edge turns into a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from broker.errors import InvalidArgument
from broker.server.auth import current_principal

# The request metadata naming the caller: its identity when the broker authenticates no
# one (auth = "none" and no client certificate), else a label only.
CLIENT_ID_KEY = "x-taskbroker-client"
MAX_CLIENT_ID_LENGTH = 200


def client_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Who is calling, for per-client rate limits and the config audit: the identity the
    broker authenticated (a token's name, a certificate's subject); without one, the
    client id the caller sends, else its address."""
    principal = current_principal()
    if principal is not None and principal.name:
        return principal.name
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_ID_KEY and isinstance(value, str) and value:
            return value[:MAX_CLIENT_ID_LENGTH]
    return context.peer() or ""


def submitter() -> str:
    """The identity a task submitted by the running call is recorded with: the
    authenticated one, or "" when the broker authenticates no one."""
    principal = current_principal()
    if principal is None or principal.kind == "open":
        return ""
    return principal.name


class Malformed:
    """A request whose bytes could not be parsed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def error(self) -> InvalidArgument:
        return InvalidArgument(f"malformed request: {self.reason}")


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Malformed(str(exc))

    return parse_or_mark


class TolerantRegistrar:
    """Stands in for the server in the generated `add_*_to_server` functions."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: add_registered_method_handlers registers both kinds, parsed tolerantly."""

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        tolerant = {
            name: handler._replace(request_deserializer=_tolerant(handler.request_deserializer))
            for name, handler in handlers.items()
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, tolerant),)
        )
        self._server.add_registered_method_handlers(service, tolerant)  # type: ignore[attr-defined]
