"""`worker run` and `workers list|drain|cordon|uncordon`: running a worker, and the
connected workers."""

from __future__ import annotations

from typing import Annotated

import typer

from cli._common import (
    ADDR_ENV,
    BrokerOption,
    LogFormat,
    LogLevel,
    LogLevelOption,
    OutputOption,
    WideOption,
    connect,
)
from cli._logs import to_stderr
from cli._output import OutputFormat, show_worker, show_workers
from cli._submit import Label, parse_label
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
            help="Address of the broker (default: the Worker's own broker=, "
            f"normally {DEFAULT_ADDRESS}).",
        ),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Pool to serve (default: the Worker's own pool=, normally default).",
            show_default=False,
        ),
    ] = None,
    capacity: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Tasks run at once (default: the Worker's own capacity=).",
            show_default=False,
        ),
    ] = None,
    labels: Annotated[
        list[Label] | None,
        typer.Option(
            "--labels",
            "--label",
            parser=parse_label,
            metavar="KEY=VALUE",
            help="A label to register with, added to (or replacing the value of) the "
            "Worker's own labels=; repeatable.",
            show_default=False,
        ),
    ] = None,
    worker_id: Annotated[
        str | None,
        typer.Option(
            "--worker-id",
            metavar="ID",
            help="Id to register as (default: the Worker's own worker_id=, else one the "
            "broker assigns).",
            show_default=False,
        ),
    ] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            case_sensitive=False,
            help="Log lines (stderr) for people, or one JSON object per line.",
        ),
    ] = LogFormat.HUMAN,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Run a worker until SIGTERM/SIGINT (it finishes its in-flight tasks) or a drain.

    --pool, --capacity, --labels and --worker-id override what the Worker was built with.
    """
    from cli._worker import configure_worker, load_worker, run_worker

    extra_labels = _labels(labels or ())
    worker = load_worker(target)
    configure_worker(worker, pool=pool, capacity=capacity, labels=extra_labels, worker_id=worker_id)
    to_stderr(log_level.value, log_format.value)
    run_worker(worker, broker)


def _labels(labels: list[Label] | tuple[Label, ...]) -> dict[str, str] | None:
    if not labels:
        return None
    found: dict[str, str] = {}
    for label in labels:
        if label.key in found:
            raise typer.BadParameter(f"label {label.key!r} given twice", param_hint="'--labels'")
        found[label.key] = label.value
    return found


@workers_app.command("list")
def workers_list(
    pool: Annotated[str | None, typer.Option(help="Only this pool.")] = None,
    wide: WideOption = False,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """List the connected workers.

    \b
    The columns (those marked * with --wide only):
      WORKER, POOL  the worker's id and pool
      IN FLIGHT     the broker's count: tasks it has sent the worker and not yet had back,
                    of the worker's capacity (3/4)
      LOAD          the worker's own figure, as its last heartbeat reported it (the
                    Python SDK's: tasks running / capacity, 0 to 1); it lags IN FLIGHT
                    and leaves out tasks sent but not yet started, so the two disagree
      STATE         active, draining (finishing what it holds, then leaving), cordoned
      BREAKER       its circuit breaker: closed, open or half_open
      TYPES*        the task types it serves
      LABELS*       its labels, for placement
      CONNECTED*    when it connected

    --output json has every field."""
    with connect(broker) as client:
        workers = client.list_workers(pool=pool)
    show_workers(workers, output, wide=wide)


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
