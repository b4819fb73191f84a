"""Every channel the SDK and the CLI open to a broker is opened here.

One function for asyncio channels and its blocking twin, so that TLS credentials and a
token are added in one place. A test checks that no other module of worker_sdk or cli
opens a channel itself.

A token travels as `authorization: Bearer <token>` metadata on every call: through
gRPC's call credentials on a TLS channel, through an interceptor on a plaintext one (a
broker on loopback, or one that allows plaintext). It is never logged, and `repr` of
what holds it does not show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio

ChannelOption = tuple[str, Any]

# Completion batches from the broker can be large (results are inlined).
CHANNEL_OPTIONS: Final[Sequence[ChannelOption]] = [("grpc.max_receive_message_length", 64 << 20)]
AUTHORIZATION_KEY: Final = "authorization"


@dataclass(frozen=True)
class TLS:
    """How to reach a broker over TLS: the CA that signed its certificate (None: the
    system's roots), and for mutual TLS this client's certificate and key (PEM files).
    `server_name` overrides the name the broker's certificate is checked against."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials; OSError if a file cannot be read."""

        def read(path: str | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return grpc.ssl_channel_credentials(
            read(self.ca_file), read(self.key_file), read(self.cert_file)
        )

    def options(self) -> list[ChannelOption]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


TLSSetting = TLS | bool | None
"""A `tls=` argument: a TLS, True (TLS, the system's roots), or None/False (plaintext)."""


def tls_of(setting: TLSSetting) -> TLS | None:
    if setting is True:
        return TLS()
    if setting is None or setting is False:
        return None
    if not isinstance(setting, TLS):
        raise TypeError(f"tls must be a TLS, True or None, not {type(setting).__name__}")
    return setting


class Token:
    """A bearer token, kept out of reprs and logs."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        secret = secret.strip()
        if not secret or not all(" " < c <= "~" for c in secret):
            raise ValueError("a token must be a non-empty string of printable ASCII")
        self._secret = secret

    @property
    def header(self) -> tuple[str, str]:
        return (AUTHORIZATION_KEY, f"Bearer {self._secret}")

    def __repr__(self) -> str:
        return "Token(***)"

    __str__ = __repr__


def token_of(token: str | Token | None) -> Token | None:
    if token is None or isinstance(token, Token):
        return token
    return Token(token)


class _BearerPlugin(grpc.AuthMetadataPlugin):
    def __init__(self, token: Token) -> None:
        self._token = token

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback((self._token.header,), None)


def _with_token(metadata: Any, token: Token) -> list[tuple[str, Any]]:
    return [*(metadata or ()), token.header]


# The interceptor classes are generic in grpc-stubs only.
if TYPE_CHECKING:
    _AioUnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _AioUnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _AioStreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _AioStreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
else:
    _AioUnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _AioUnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _AioStreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _AioStreamStream = grpc.aio.StreamStreamClientInterceptor
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor


class _AioToken:
    """Adds the token to every call of a plaintext asyncio channel (one interceptor per
    kind of call: a channel files each interceptor under the first kind it is)."""

    def __init__(self, token: Token) -> None:
        self._token = token

    def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*_with_token(details.metadata, self._token)),
            details.credentials,
            details.wait_for_ready,
        )


class _UnaryUnaryToken(_AioToken, _AioUnaryUnary):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.details(details), request)


class _UnaryStreamToken(_AioToken, _AioUnaryStream):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.details(details), request)


class _StreamUnaryToken(_AioToken, _AioStreamUnary):
    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self.details(details), request_iterator)


class _StreamStreamToken(_AioToken, _AioStreamStream):
    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self.details(details), request_iterator)


class _BlockingToken(_UnaryUnary):
    """Adds the token to the unary calls of a plaintext blocking channel."""

    def __init__(self, token: Token) -> None:
        self._token = token

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_BlockingDetails(details, self._token), request)


class _BlockingDetails(grpc.ClientCallDetails):
    def __init__(self, details: Any, token: Token) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = tuple(_with_token(details.metadata, token))
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


def _credentials(tls: TLS, token: Token | None) -> grpc.ChannelCredentials:
    credentials = tls.credentials()
    if token is None:
        return credentials
    return grpc.composite_channel_credentials(
        credentials, grpc.metadata_call_credentials(_BearerPlugin(token), name="bearer")
    )


def split_addresses(address: str) -> list[str]:
    """The brokers an address names: "host:port", or several as "a:port,b:port,..."."""
    return [part.strip() for part in address.split(",") if part.strip()] or [address]


def target(address: str) -> str:
    """The gRPC target for `address`: "host:port", a DNS name with several records (gRPC
    tries each), or several brokers sharing one database as "ip:port,ip:port,...", which
    becomes one channel that moves to the next address when one cannot be reached."""
    parts = split_addresses(address)
    if len(parts) == 1:
        return parts[0]
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
    tls: TLSSetting = None,
    token: str | Token | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to the broker at `address` ("host:port"), with `options` (the
    SDK's by default) and then `extra_options`; over TLS if `tls`, with `token` on every
    call if given. Create it on the loop that will use it. Several addresses: see
    `target`."""
    settings = tls_of(tls)
    secret = token_of(token)
    if settings is not None:
        return grpc.aio.secure_channel(
            target(address),
            _credentials(settings, secret),
            options=[*options, *extra_options, *settings.options()],
        )
    if secret is None:
        return grpc.aio.insecure_channel(target(address), options=[*options, *extra_options])
    interceptors: Any = [
        kind(secret)
        for kind in (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken, _StreamStreamToken)
    ]
    return grpc.aio.insecure_channel(
        target(address), options=[*options, *extra_options], interceptors=interceptors
    )


def open_blocking_channel(
    address: str,
    *,
    options: Sequence[ChannelOption] = CHANNEL_OPTIONS,
    extra_options: Sequence[ChannelOption] = (),
    tls: TLSSetting = None,
    token: str | Token | None = None,
) -> grpc.Channel:
    """A blocking channel to the broker at `address`, for callers without an event loop
    (`taskbroker health`); as `open_channel` otherwise (a token on unary calls only)."""
    settings = tls_of(tls)
    secret = token_of(token)
    if settings is not None:
        return grpc.secure_channel(
            target(address),
            _credentials(settings, secret),
            options=[*options, *extra_options, *settings.options()],
        )
    channel = grpc.insecure_channel(target(address), options=[*options, *extra_options])
    if secret is None:
        return channel
    return grpc.intercept_channel(channel, _BlockingToken(secret))
