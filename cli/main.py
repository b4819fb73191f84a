"""The taskbroker command line: run the broker and workers, submit and inspect tasks."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from cli._errors import EXIT_ERROR, EXIT_USAGE, CliError, OneLineErrorGroup
from cli._logs import quiet, to_stderr
from cli._output import (
    OutputFormat,
    decode_bytes,
    show_pool_created,
    show_pool_updated,
    show_pools,
    show_stats,
    show_task,
    show_tasks,
    show_worker,
    show_workers,
)
from cli._simulate import simulate
from worker_sdk import DEFAULT_ADDRESS, PreferredLabel, SyncClient, TaskState

app = typer.Typer(
    cls=OneLineErrorGroup,
    name="taskbroker",
    help="Taskbroker: a gRPC task-dispatch broker for worker pools, durable on SQLite.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
tasks_app = typer.Typer(help="List, show and cancel tasks.", no_args_is_help=True)
worker_app = typer.Typer(help="Run a worker process.", no_args_is_help=True)
workers_app = typer.Typer(help="List and drain the connected workers.", no_args_is_help=True)
pools_app = typer.Typer(help="List, create and change pools.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")
app.add_typer(workers_app, name="workers")
app.add_typer(tasks_app, name="tasks")
app.add_typer(pools_app, name="pools")

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


class StateChoice(enum.StrEnum):
    """Task states as command-line choices."""

    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# For --help only: the broker checks strategy names (INVALID_ARGUMENT, listing the ones it
# knows), so a broker with a newer strategy is usable before this list learns of it.
KNOWN_STRATEGIES = (
    "round_robin",
    "least_loaded",
    "consistent_hash",
    "weighted_response_time",
    "predictive",
    "adaptive",
)
_STRATEGY_NAMES = ", ".join(KNOWN_STRATEGIES)

StrategyOption = Annotated[
    str,
    typer.Option(
        "--strategy",
        metavar="STRATEGY",
        help=f"How tasks are placed on workers: {_STRATEGY_NAMES}.",
    ),
]
AbStrategyOption = Annotated[
    str | None,
    typer.Option(
        "--ab-strategy",
        metavar="STRATEGY",
        help="A/B split: the strategy placing --ab-percent of the tasks ('' = no split).",
    ),
]
AbPercentOption = Annotated[
    int | None,
    typer.Option(
        "--ab-percent",
        min=0,
        max=100,
        metavar="N",
        help="A/B split: the share of tasks (0..100) that --ab-strategy places.",
    ),
]


class LogLevel(enum.StrEnum):
    """Logging levels for long-running commands."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


LogLevelOption = Annotated[
    LogLevel, typer.Option("--log-level", case_sensitive=False, help="Log level (stderr).")
]


def _validate_json(value: str | None) -> str | None:
    if value is not None:
        try:
            json.loads(value)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"not valid JSON: {exc}") from None
    return value


# The broker's bound too; checked here so that a bad flag is a usage error (exit 2).
MAX_PREFERENCE_WEIGHT = 1000


@dataclass(frozen=True, slots=True)
class Label:
    """A KEY=VALUE worker label from the command line."""

    key: str
    value: str


def parse_label(text: str) -> Label:
    """KEY=VALUE, split at the first "="; the value may be empty, the key may not."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"expected KEY=VALUE, got {text!r}")
    return Label(key, value)


def parse_preference(text: str) -> PreferredLabel:
    """KEY=VALUE[:WEIGHT]; the weight is what follows the last ":" (a value holding ":"
    therefore needs an explicit weight, e.g. host=a:b:1)."""
    key, sep, rest = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"expected KEY=VALUE[:WEIGHT], got {text!r}")
    value, colon, weight_text = rest.rpartition(":")
    if not colon:
        return PreferredLabel(key, rest)
    try:
        weight = int(weight_text)
    except ValueError:
        raise typer.BadParameter(
            f"weight {weight_text!r} in {text!r} is not a whole number"
        ) from None
    if not 1 <= weight <= MAX_PREFERENCE_WEIGHT:
        raise typer.BadParameter(
            f"weight must be 1..{MAX_PREFERENCE_WEIGHT}, got {weight} in {text!r}"
        )
    return PreferredLabel(key, value, weight)


def _required_labels(labels: Sequence[Label]) -> dict[str, str]:
    required: dict[str, str] = {}
    for label in labels:
        if label.key in required:
            raise typer.BadParameter(f"label {label.key!r} given twice", param_hint="'--require'")
        required[label.key] = label.value
    return required


def _validate_group(value: str | None) -> str | None:
    if value is not None and not value:
        raise typer.BadParameter("the group name must not be empty")
    return value


def _validate_key(value: str | None) -> str | None:
    if value is not None and not value:
        raise typer.BadParameter("the key must not be empty")
    return value


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", metavar="FILE", help="TOML configuration file."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on; 0 picks a free one.")] = None,
    db: Annotated[str | None, typer.Option("--db", metavar="PATH", help="SQLite file.")] = None,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Run the broker until SIGTERM or SIGINT, then shut down gracefully.

    Settings come from the config file, then TASKBROKER_* environment variables
    (e.g. TASKBROKER_PORT=6000), then these flags.
    """
    from cli._serve import serve as run_broker

    run_broker(config, host=host, port=port, db_path=db, log_level=log_level.value)


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


@app.command()
def submit(
    task_type: Annotated[str, typer.Argument(metavar="TYPE", help="The task type to run.")],
    payload: Annotated[
        str | None,
        typer.Option(
            metavar="JSON", callback=_validate_json, help="Payload, as JSON text (sent verbatim)."
        ),
    ] = None,
    priority: Annotated[
        int, typer.Option(min=-1000, max=1000, help="Higher runs first; -1000..1000.")
    ] = 0,
    pool: Annotated[str, typer.Option(help="Pool to run in; it must exist.")] = "default",
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the task and print its result.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(min=0, metavar="SECONDS", help="With --wait: give up after this long."),
    ] = None,
    require: Annotated[
        list[Label] | None,
        typer.Option(
            "--require",
            parser=parse_label,
            metavar="KEY=VALUE",
            help="Run only on workers with this label; repeat for several (all must match).",
        ),
    ] = None,
    prefer: Annotated[
        list[PreferredLabel] | None,
        typer.Option(
            "--prefer",
            parser=parse_preference,
            metavar="KEY=VALUE[:WEIGHT]",
            help="Favour workers with this label by WEIGHT (1..1000, default 1); repeatable.",
        ),
    ] = None,
    anti_affinity: Annotated[
        str | None,
        typer.Option(
            "--anti-affinity",
            metavar="GROUP",
            callback=_validate_group,
            help="Never run at the same time on one worker as another task of GROUP.",
        ),
    ] = None,
    soft_anti_affinity: Annotated[
        bool,
        typer.Option(
            "--soft-anti-affinity",
            help="With --anti-affinity: spread the group's tasks as well as possible instead.",
        ),
    ] = False,
    sticky_key: Annotated[
        str | None,
        typer.Option(
            "--sticky-key",
            metavar="KEY",
            callback=_validate_key,
            help="Run on the worker that last ran KEY if it frees a slot within the pool's "
            "sticky timeout; elsewhere after that.",
        ),
    ] = None,
    routing_key: Annotated[
        str | None,
        typer.Option(
            "--routing-key",
            metavar="KEY",
            callback=_validate_key,
            help="In a consistent_hash pool: tasks with one KEY go to one worker.",
        ),
    ] = None,
    broker: BrokerOption = DEFAULT_ADDRESS,
) -> None:
    """Submit a task and print its id; with --wait, print its result instead.

    With --wait, a task that fails, is cancelled or does not finish in time
    exits 1 with one line on stderr. A result is printed as UTF-8 text, or as
    base64 when it is not valid UTF-8. A task that no worker may take (see
    --require and --anti-affinity) waits; `tasks show ID` says why.
    """
    required = _required_labels(require or ())
    if soft_anti_affinity and anti_affinity is None:
        raise typer.BadParameter("needs --anti-affinity GROUP", param_hint="'--soft-anti-affinity'")
    with SyncClient(broker) as client:
        task_id = client.submit(
            task_type,
            payload,
            priority=priority,
            pool=pool,
            require=required,
            prefer=prefer or (),
            anti_affinity=anti_affinity,
            anti_affinity_soft=soft_anti_affinity,
            sticky_key=sticky_key,
            routing_key=routing_key,
        )
        if not wait:
            typer.echo(task_id)
            return
        task = client.wait(task_id, timeout=timeout)
    if task.state is TaskState.SUCCEEDED:
        text, _ = decode_bytes(task.result)
        typer.echo(text)
    elif task.state is TaskState.FAILED:
        error = task.error
        detail = f"{error.type}: {error.message}" if error is not None else "no error reported"
        raise CliError(f"task {task_id} failed: {detail}")
    elif task.state is TaskState.CANCELLED:
        reason = f": {task.error.message}" if task.error is not None else ""
        raise CliError(f"task {task_id} was cancelled{reason}")
    else:  # wait() raises DeadlineExceeded rather than return an unfinished task
        raise CliError(f"task {task_id} is still {task.state.value}")


@tasks_app.command("list")
def tasks_list(
    pool: Annotated[str | None, typer.Option(help="Only this pool.")] = None,
    state: Annotated[
        list[StateChoice] | None,
        typer.Option(case_sensitive=False, help="Only tasks in this state; repeat for several."),
    ] = None,
    task_type: Annotated[
        str | None, typer.Option("--type", metavar="TYPE", help="Only this task type.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    before: Annotated[
        str | None,
        typer.Option(metavar="ID", help="Next page: only tasks older than this id."),
    ] = None,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """List tasks, newest first."""
    states = tuple(TaskState(s.value) for s in state or ())
    with SyncClient(broker) as client:
        tasks = client.list_tasks(
            pool=pool, states=states, task_type=task_type, limit=limit, before_id=before
        )
    show_tasks(tasks, output)


@tasks_app.command("show")
def tasks_show(
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Show one task: its state, times, placement, payload, result or error."""
    with SyncClient(broker) as client:
        task = client.get(task_id)
    show_task(task, output)


@tasks_app.command("cancel")
def tasks_cancel(
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Cancel a task that has not finished, and show it."""
    with SyncClient(broker) as client:
        task = client.cancel(task_id)
    show_task(task, output)


@workers_app.command("list")
def workers_list(
    pool: Annotated[str | None, typer.Option(help="Only this pool.")] = None,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """List the connected workers."""
    with SyncClient(broker) as client:
        workers = client.list_workers(pool=pool)
    show_workers(workers, output)


@workers_app.command("drain")
def workers_drain(
    worker_id: Annotated[str, typer.Argument(metavar="ID")],
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Send a worker no more tasks; it finishes what it holds, then disconnects."""
    with SyncClient(broker) as client:
        worker = client.drain_worker(worker_id)
    show_worker(worker, output)


@pools_app.command("list")
def pools_list(
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """List the pools: strategy, A/B split and sticky timeout."""
    with SyncClient(broker) as client:
        pools = client.list_pools()
    show_pools(pools, output)


@pools_app.command("create")
def pools_create(
    name: Annotated[str, typer.Argument(metavar="NAME")],
    strategy: StrategyOption = "round_robin",
    ab_strategy: AbStrategyOption = None,
    ab_percent: AbPercentOption = None,
    sticky_timeout: Annotated[
        float,
        typer.Option(
            "--sticky-timeout",
            min=0,
            metavar="SECONDS",
            help="How long a task with a sticky key waits for its worker's slot.",
        ),
    ] = 5.0,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Create a pool. Pools are never created by a submit.

    With --ab-strategy S --ab-percent N, N% of the pool's tasks are placed by S and the
    rest by --strategy; `stats` compares the two.
    """
    if (ab_strategy is None) != (ab_percent is None):
        given = "--ab-strategy" if ab_percent is None else "--ab-percent"
        raise typer.BadParameter(
            "--ab-strategy and --ab-percent go together", param_hint=f"'{given}'"
        )
    with SyncClient(broker) as client:
        pool = client.create_pool(
            name,
            strategy=strategy,
            ab_strategy=ab_strategy or "",
            ab_percent=ab_percent or 0,
            sticky_timeout_s=sticky_timeout,
        )
    show_pool_created(pool, output)


@pools_app.command("set")
def pools_set(
    name: Annotated[str, typer.Argument(metavar="NAME")],
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            metavar="STRATEGY",
            help=f"How tasks are placed on workers: {_STRATEGY_NAMES}.",
        ),
    ] = None,
    ab_strategy: AbStrategyOption = None,
    ab_percent: AbPercentOption = None,
    sticky_timeout: Annotated[
        float | None,
        typer.Option(
            "--sticky-timeout",
            min=0,
            metavar="SECONDS",
            help="How long a task with a sticky key waits for its worker's slot.",
        ),
    ] = None,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Change a pool's settings; those not given stay as they are.

    --ab-percent 0 (or --ab-strategy '') ends an A/B split.
    """
    if strategy is None and ab_strategy is None and ab_percent is None and sticky_timeout is None:
        raise CliError(
            "nothing to change: give --strategy, --ab-strategy, --ab-percent or "
            "--sticky-timeout (see 'taskbroker pools set --help')",
            EXIT_USAGE,
        )
    with SyncClient(broker) as client:
        pool = client.update_pool(
            name,
            strategy=strategy,
            ab_strategy=ab_strategy,
            ab_percent=ab_percent,
            sticky_timeout_s=sticky_timeout,
        )
    show_pool_updated(pool, output)


@app.command()
def stats(
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Show the broker's state and per pool: task counts (unschedulable included), capacity
    and sticky hit rate; then each strategy's placements and the learned run times."""
    with SyncClient(broker) as client:
        result = client.stats()
    show_stats(result, output)


@app.command()
def health(
    broker: BrokerOption = DEFAULT_ADDRESS,
    service: Annotated[
        str, typer.Option(help="Service name to check; empty = the broker as a whole.")
    ] = "",
    timeout: Annotated[float, typer.Option(min=0.1, metavar="SECONDS")] = 3.0,
) -> None:
    """Exit 0 if the broker's gRPC health service says SERVING (for container health checks)."""
    from cli._health import check

    status = check(broker, service, timeout)
    typer.echo(status)
    if status != "SERVING":
        raise typer.Exit(EXIT_ERROR)


@app.command()
def demo(
    tasks: Annotated[int, typer.Option(min=1, max=5000, help="How many tasks to submit.")] = 300,
) -> None:
    """Start a broker and two workers in a temporary directory, run tasks, show the result."""
    from cli.demo import run_demo

    run_demo(tasks)


# Declared beside its body; it imports the simulator only when it runs.
app.command()(simulate)


def main() -> None:
    """Console-script entry point."""
    quiet()
    app()


if __name__ == "__main__":
    main()
