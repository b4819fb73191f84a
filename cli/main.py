"""The taskbroker command line: run the broker and workers, submit and inspect tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli._brokers import brokers_app
from cli._common import (
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    TLS_SERVER_NAME_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    BrokerOption,
    Connection,
    LogFormat,
    LogLevel,
    set_connection,
)
from cli._errors import EXIT_ERROR, OneLineErrorGroup
from cli._logs import quiet
from cli._pools import pools_app
from cli._simulate import simulate
from cli._stats import config_app, metrics_app, stats
from cli._submit import Label, parse_label, parse_preference, submit
from cli._tasks import StateChoice, tasks_app
from cli._tokens import tokens_app
from cli._workers import worker_app, workers_app
from worker_sdk import DEFAULT_ADDRESS
from worker_sdk._pool_settings import KNOWN_STRATEGIES

__all__ = [
    "KNOWN_STRATEGIES",
    "Label",
    "StateChoice",
    "app",
    "main",
    "parse_label",
    "parse_preference",
]

app = typer.Typer(
    cls=OneLineErrorGroup,
    name="taskbroker",
    help="Taskbroker: a gRPC task-dispatch broker for worker pools, durable on SQLite.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(worker_app, name="worker")
app.add_typer(workers_app, name="workers")
app.add_typer(tasks_app, name="tasks")
app.add_typer(pools_app, name="pools")
app.add_typer(metrics_app, name="metrics")
app.add_typer(config_app, name="config")
app.add_typer(tokens_app, name="tokens")
app.add_typer(brokers_app, name="brokers")


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", metavar="FILE", help="TOML configuration file."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on; 0 picks a free one.")] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            metavar="PATH|URL",
            help="The store: a SQLite file path (or sqlite:///abs/path.db, sqlite:relative.db),"
            " or memory: to keep nothing.",
        ),
    ] = None,
    log_format: Annotated[
        LogFormat | None,
        typer.Option(
            "--log-format",
            case_sensitive=False,
            help="Log lines (stderr) for people, or one JSON object per line (default: "
            "the config's log_format, else human).",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            "--log-level",
            case_sensitive=False,
            help="Log level (stderr) (default: the config's log_level, else info).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the broker.

    It runs until SIGTERM or SIGINT, then shuts down gracefully; on SIGHUP, it re-reads
    the config file and applies what changed in its pools.

    Settings come from the config file, then TASKBROKER_* environment variables
    (e.g. TASKBROKER_PORT=6000, TASKBROKER_LOG_FORMAT=json), then these flags.
    """
    from cli._serve import serve as run_broker

    run_broker(
        config,
        host=host,
        port=port,
        db_path=db,
        log_format=None if log_format is None else log_format.value,
        log_level=None if log_level is None else log_level.value.upper(),
    )


def _print_version(value: bool) -> None:
    if value:
        from worker_sdk._version import __version__

        typer.echo(f"taskbroker {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-ca",
            envvar=TLS_CA_ENV,
            metavar="FILE",
            help="Reach the broker over TLS, trusting this CA (PEM).",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            envvar=TLS_CERT_ENV,
            metavar="FILE",
            help="Client certificate (PEM) for mutual TLS.",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            "--tls-key",
            envvar=TLS_KEY_ENV,
            metavar="FILE",
            help="Key (PEM) of the client certificate.",
        ),
    ] = None,
    tls_server_name: Annotated[
        str | None,
        typer.Option(
            "--tls-server-name",
            envvar=TLS_SERVER_NAME_ENV,
            metavar="NAME",
            help="The name the broker's certificate is checked against (default: its host).",
        ),
    ] = None,
    tls: Annotated[
        bool, typer.Option("--tls", help="Reach the broker over TLS, trusting the system's CAs.")
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar=TOKEN_ENV,
            metavar="TOKEN",
            show_envvar=True,
            help="API token. Prefer the environment variable or --token-file: a flag shows"
            " in the process list.",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            envvar=TOKEN_FILE_ENV,
            metavar="FILE",
            help="Read the API token from this file.",
        ),
    ] = None,
) -> None:
    """Taskbroker: a gRPC task-dispatch broker for worker pools, durable on SQLite."""
    set_connection(
        Connection(
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_server_name=tls_server_name,
            tls=tls,
            token=token,
            token_file=token_file,
        )
    )


# Declared in the modules of their kind; registered here, in the order --help lists them.
app.command()(submit)
app.command()(stats)


@app.command()
def health(
    broker: BrokerOption = DEFAULT_ADDRESS,
    service: Annotated[
        str, typer.Option(help="Service name to check; empty = the broker as a whole.")
    ] = "",
    timeout: Annotated[float, typer.Option(min=0.1, metavar="SECONDS")] = 3.0,
) -> None:
    """Exit 0 if the broker is serving (for container health checks).

    Serving: the broker's gRPC health service says SERVING."""
    from cli._health import check

    status = check(broker, service, timeout)
    typer.echo(status)
    if status != "SERVING":
        raise typer.Exit(EXIT_ERROR)


@app.command()
def demo(
    tasks: Annotated[int, typer.Option(min=1, max=5000, help="How many tasks to submit.")] = 300,
    dashboard_port: Annotated[
        int, typer.Option(min=0, max=65535, help="Serve the web dashboard here; 0 = off.")
    ] = 0,
    stay: Annotated[
        bool, typer.Option(help="Keep broker and workers (and the dashboard) up until Ctrl-C.")
    ] = False,
) -> None:
    """Run a broker, two workers and some tasks; show the result.

    All in a temporary directory, removed afterwards."""
    from cli.demo import run_demo

    run_demo(tasks, dashboard_port=dashboard_port, stay=stay)


# Declared beside its body; it imports the simulator only when it runs.
app.command()(simulate)


def main() -> None:
    """Console-script entry point."""
    quiet()
    app()


if __name__ == "__main__":
    main()
