"""Every channel the SDK and the CLI open to a broker is opened here.

One function for asyncio channels and its blocking twin, so that TLS credentials and a
token, when the broker takes them, are added in one place. A test checks that no other
module of worker_sdk or cli opens a channel itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import grpc
import grpc.aio

ChannelOption = tuple[str, Any]

# Completion batches from the broker can be large (results are inlined).
CHANNEL_OPTIONS: Final[Sequence[ChannelOption]] = [("grpc.max_receive_message_length", 64 << 20)]


def target(address: str) -> str:
    """The gRPC target for `address`: "host:port", a DNS name with several records (gRPC
    tries each), or several brokers sharing one database as "ip:port,ip:port,...", which
    becomes one channel that moves to the next address when one cannot be reached."""
    parts = [part.strip() for part in address.split(",") if part.strip()]
    if len(parts) <= 1:
        return parts[0] if parts else address
    hosts = [part.rpartition(":")[0] for part in parts]
    if all(_is_ipv4(host) for host in hosts):
        return "ipv4:" + ",".join(parts)
    if all(host.startswith("[") for host in hosts):
        return "ipv6:" + ",".join(parts)
    raise ValueError(
        f"several addresses must be IP addresses ({address!r}); for host names, give one"
        " DNS name with a record per broker"
    )


def _is_ipv4(host: str) -> bool:
    pieces = host.split(".")
    return len(pieces) == 4 and all(p.isdigit() and int(p) < 256 for p in pieces)


def open_channel(
    address: str,
    *,
    options: Sequence[ChannelOption] = CHANNEL_OPTIONS,
    extra_options: Sequence[ChannelOption] = (),
) -> grpc.aio.Channel:
    """An asyncio channel to the broker at `address` ("host:port"), with `options` (the
    SDK's by default) and then `extra_options`. Create it on the loop that will use it.
    Several addresses: see `target`."""
    return grpc.aio.insecure_channel(target(address), options=[*options, *extra_options])


def open_blocking_channel(
    address: str,
    *,
    options: Sequence[ChannelOption] = CHANNEL_OPTIONS,
    extra_options: Sequence[ChannelOption] = (),
) -> grpc.Channel:
    """A blocking channel to the broker at `address`, for callers without an event loop
    (`taskbroker health`); as `open_channel` otherwise."""
    return grpc.insecure_channel(target(address), options=[*options, *extra_options])
