"""`worker run` and `workers list|drain|cordon|uncordon`: running a worker, and the
connected workers."""

from __future__ import annotations

from typing import Annotated

import typer

from cli._common import ADDR_ENV, BrokerOption, LogLevel, LogLevelOption, OutputOption, connect
from cli._logs import to_stderr
from cli._output import OutputFormat, show_worker, show_workers
from worker_sdk import DEFAULT_ADDRESS

worker_app = typer.Typer(help="Run a worker process.", no_args_is_help=True)
workers_app = typer.Typer(
    help="List, drain and cordon the connected workers.", no_args_is_help=True
)


@worker_app.command("run")
def worker_run(
    target: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:OBJECT",
            help="Where the worker_sdk.Worker is, e.g. myworker:worker (looked up from the "
            "current directory too).",
        ),
    ],
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            "-b",
            envvar=ADDR_ENV,
            show_envvar=True,
            metavar="HOST:PORT",
            help="Address of the broker [default: the Worker's own broker=, "
            f"normally {DEFAULT_ADDRESS}]",
        ),
    ] = None,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Run a worker until SIGTERM/SIGINT (it finishes its in-flight tasks) or a drain."""
    from cli._worker import load_worker, run_worker

    worker = load_worker(target)
    to_stderr(log_level.value)
    run_worker(worker, broker)


@workers_app.command("list")
def workers_list(
    pool: Annotated[str | None, typer.Option(help="Only this pool.")] = None,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """List the connected workers."""
    with connect(broker) as client:
        workers = client.list_workers(pool=pool)
    show_workers(workers, output)


@workers_app.command("drain")
def workers_drain(
    worker_id: Annotated[str, typer.Argument(metavar="ID")],
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Send a worker no more tasks; it finishes what it holds, then disconnects."""
    with connect(broker) as client:
        worker = client.drain_worker(worker_id)
    show_worker(worker, output)


@workers_app.command("cordon")
def workers_cordon(
    worker_id: Annotated[str, typer.Argument(metavar="ID")],
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Send a worker no new tasks until uncordoned; it keeps what it holds and stays
    connected."""
    with connect(broker) as client:
        worker = client.cordon_worker(worker_id)
    show_worker(worker, output)


@workers_app.command("uncordon")
def workers_uncordon(
    worker_id: Annotated[str, typer.Argument(metavar="ID")],
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Let a cordoned worker take new tasks again."""
    with connect(broker) as client:
        worker = client.uncordon_worker(worker_id)
    show_worker(worker, output)
