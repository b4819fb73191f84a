"""What every command shares: the --broker and --output options, log levels, and the client
the commands reach the broker with."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from cli._output import OutputFormat
from worker_sdk import SyncClient

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
OutputOption = Annotated[
    OutputFormat,
    typer.Option(
        "--output", "-o", case_sensitive=False, help="table for people, json for scripts."
    ),
]


def connect(broker: str, *, submit_retries: int | None = None) -> SyncClient:
    """The client a command talks to the broker at `broker` with (a test puts a fake in
    this module's SyncClient); `submit_retries` overrides how often a submit refused for
    overload is sent again (None: the SDK's default)."""
    if submit_retries is None:
        return SyncClient(broker)
    return SyncClient(broker, max_submit_retries=submit_retries)


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
