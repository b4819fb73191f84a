"""What every command shares: the --broker and --output options, log levels, the
connection's TLS and token, the client the commands reach the broker with, and, for the
long-running ones (serve, worker run), their event loop and the freeze of what the process
imported."""

from __future__ import annotations

import asyncio
import enum
import gc
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from cli._errors import EXIT_USAGE, CliError
from cli._output import OutputFormat
from worker_sdk import TLS, SyncClient
from worker_sdk._channel import Token

ADDR_ENV = "TASKBROKER_ADDR"

BrokerOption = Annotated[
    str,
    typer.Option(
        "--broker",
        "-b",
        envvar=ADDR_ENV,
        show_envvar=True,
        metavar="HOST:PORT",
        help="Address of the broker.",
    ),
]
WideOption = Annotated[
    bool,
    typer.Option(
        "--wide",
        help="Every column; by default a table shows the columns that fit 80 columns.",
    ),
]

OutputOption = Annotated[
    OutputFormat,
    typer.Option(
        "--output", "-o", case_sensitive=False, help="table for people, json for scripts."
    ),
]


TOKEN_ENV = "TASKBROKER_TOKEN"
TOKEN_FILE_ENV = "TASKBROKER_TOKEN_FILE"
TLS_CA_ENV = "TASKBROKER_TLS_CA"
TLS_CERT_ENV = "TASKBROKER_TLS_CERT"
TLS_KEY_ENV = "TASKBROKER_TLS_KEY"
TLS_SERVER_NAME_ENV = "TASKBROKER_TLS_SERVER_NAME"


@dataclass(frozen=True)
class Connection:
    """How commands reach the broker, from the root options (`taskbroker --tls-ca ...`)."""

    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    tls: bool = False
    token: str | None = None  # never printed
    token_file: Path | None = None

    def __repr__(self) -> str:  # the token stays out of tracebacks and logs
        return f"Connection(tls={self.tls_settings()!r}, token={'***' if self.token else None})"

    def tls_settings(self) -> TLS | None:
        if not (self.tls or self.tls_ca or self.tls_cert or self.tls_key or self.tls_server_name):
            return None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise CliError("--tls-cert and --tls-key go together (mutual TLS)", EXIT_USAGE)
        return TLS(
            ca_file=str(self.tls_ca) if self.tls_ca else None,
            cert_file=str(self.tls_cert) if self.tls_cert else None,
            key_file=str(self.tls_key) if self.tls_key else None,
            server_name=self.tls_server_name,
        )

    def bearer(self) -> Token | None:
        secret = self.token
        if not secret and self.token_file is not None:
            try:
                secret = self.token_file.read_text().strip()
            except OSError as exc:
                raise CliError(
                    f"cannot read the token file {self.token_file}: {exc.strerror}"
                ) from None
        if not secret:
            return None
        try:
            return Token(secret)
        except ValueError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None


_connection = Connection()


def set_connection(connection: Connection) -> None:
    """Remember the root options for the command that runs."""
    global _connection
    _connection = connection


def connection_settings() -> tuple[TLS | None, Token | None]:
    """The TLS settings and token the command line (or its environment) gives."""
    return _connection.tls_settings(), _connection.bearer()


def connect(broker: str, *, submit_retries: int | None = None) -> SyncClient:
    """The client a command talks to the broker at `broker` with (a test puts a fake in
    this module's SyncClient); `submit_retries` overrides how often a submit refused for
    overload is sent again (None: the SDK's default). TLS and the token come from the
    root options."""
    tls, token = connection_settings()
    secure: dict[str, object] = {}
    if tls is not None:
        secure["tls"] = tls
    if token is not None:
        secure["token"] = token
    if submit_retries is None:
        return SyncClient(broker, **secure)  # type: ignore[arg-type]
    return SyncClient(broker, max_submit_retries=submit_retries, **secure)  # type: ignore[arg-type]


class LogFormat(enum.StrEnum):
    """How long-running commands write their log lines."""

    HUMAN = "human"
    JSON = "json"


class LogLevel(enum.StrEnum):
    """Logging levels for long-running commands."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


LogLevelOption = Annotated[
    LogLevel, typer.Option("--log-level", case_sensitive=False, help="Log level (stderr).")
]


def freeze_imports() -> None:
    """Move what the process holds so far (the modules, their classes and functions) out of
    the cyclic garbage collector's sight: they live as long as the process, and every full
    collection would walk them again. A full collection of a busy broker then pauses its
    event loop for a third of the time (`tests.bench`, 10 instead of 30 ms)."""
    gc.freeze()


EVENT_LOOP_ENV = "TASKBROKER_EVENT_LOOP"
_T = TypeVar("_T")


def run_async(main: Coroutine[Any, Any, _T]) -> _T:
    """`asyncio.run(main)` on the event loop TASKBROKER_EVENT_LOOP names: "auto" (the
    default: uvloop where it is installed, which is everywhere but Windows), "uvloop" or
    "asyncio" (the standard library's). uvloop spends less CPU on each message and each
    wake-up: with it `tests.bench` runs one-slot workers about 10 % faster."""
    try:
        factory = loop_factory(os.environ.get(EVENT_LOOP_ENV, ""))
    except CliError:
        main.close()  # never to run: no "never awaited" warning on the way out
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop `run_async` makes for a TASKBROKER_EVENT_LOOP value (None: the
    standard one)."""
    if choice not in ("", "auto", "uvloop", "asyncio"):
        raise CliError(
            f"{EVENT_LOOP_ENV} must be auto, uvloop or asyncio, not {choice!r}", EXIT_USAGE
        )
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise CliError(
                f"{EVENT_LOOP_ENV}=uvloop, but uvloop is not installed (pip install uvloop)",
                EXIT_USAGE,
            ) from None
        return None
    return uvloop.new_event_loop
