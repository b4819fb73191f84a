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


def open_channel(
    address: str,
    *,
    options: Sequence[ChannelOption] = CHANNEL_OPTIONS,
    extra_options: Sequence[ChannelOption] = (),
) -> grpc.aio.Channel:
    """An asyncio channel to the broker at `address` ("host:port"), with `options` (the
    SDK's by default) and then `extra_options`. Create it on the loop that will use it."""
    return grpc.aio.insecure_channel(address, options=[*options, *extra_options])


def open_blocking_channel(
    address: str,
    *,
    options: Sequence[ChannelOption] = CHANNEL_OPTIONS,
    extra_options: Sequence[ChannelOption] = (),
) -> grpc.Channel:
    """A blocking channel to the broker at `address`, for callers without an event loop
    (`taskbroker health`); as `open_channel` otherwise."""
    return grpc.insecure_channel(address, options=[*options, *extra_options])
