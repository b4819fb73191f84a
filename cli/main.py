"""The taskbroker command line: run the broker and workers, submit and inspect tasks."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from cli import _parse
from cli._errors import EXIT_ERROR, EXIT_USAGE, CliError, OneLineErrorGroup
from cli._logs import quiet, to_stderr
from cli._output import (
    OutputFormat,
    decode_bytes,
    show_pool_created,
    show_pool_updated,
    show_pools,
    show_retried,
    show_stats,
    show_task,
    show_tasks,
    show_worker,
    show_workers,
)
from cli._parse import FairnessWeight, parse_bulkhead, parse_fairness_weight
from cli._simulate import simulate
from worker_sdk import (
    DEFAULT_ADDRESS,
    Bulkhead,
    PreferredLabel,
    RetryPolicy,
    SyncClient,
    TaskInfo,
    TaskState,
)

app = typer.Typer(
    cls=OneLineErrorGroup,
    name="taskbroker",
    help="Taskbroker: a gRPC task-dispatch broker for worker pools, durable on SQLite.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
tasks_app = typer.Typer(help="List, show, cancel and retry tasks.", no_args_is_help=True)
worker_app = typer.Typer(help="Run a worker process.", no_args_is_help=True)
workers_app = typer.Typer(
    help="List, drain and cordon the connected workers.", no_args_is_help=True
)
pools_app = typer.Typer(
    help="List, create and change pools; recommend their worker counts.", no_args_is_help=True
)
metrics_app = typer.Typer(help="The broker's metrics history.", no_args_is_help=True)
config_app = typer.Typer(
    help="Reload the broker's config file; the audit trail of pool settings.",
    no_args_is_help=True,
)
app.add_typer(worker_app, name="worker")
app.add_typer(workers_app, name="workers")
app.add_typer(tasks_app, name="tasks")
app.add_typer(pools_app, name="pools")
app.add_typer(metrics_app, name="metrics")
app.add_typer(config_app, name="config")

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
    DEAD_LETTER = "dead_letter"


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


class RateMode(enum.StrEnum):
    """What a pool does with a submit over a rate limit."""

    REJECT = "reject"
    QUEUE = "queue"


# The limits `pools create` and `pools set` share; None = not given. A negative value is a
# usage error; upper bounds are the broker's to check (INVALID_ARGUMENT names the setting),
# the command line only keeps a count within what the wire carries.
MaxInflightOption = Annotated[
    int | None,
    typer.Option(
        "--max-inflight",
        callback=_parse.count,
        metavar="N",
        help="Tasks the pool's workers may hold at once; 0 = no limit.",
    ),
]
MaxQueueOption = Annotated[
    int | None,
    typer.Option(
        "--max-queue",
        callback=_parse.count,
        metavar="N",
        help="Tasks that may wait in the pool; a submit beyond is refused. "
        "0 = the broker's default_max_queue.",
    ),
]
RateOption = Annotated[
    float | None,
    typer.Option(
        "--rate",
        metavar="PER_S",
        callback=_parse.non_negative,
        help="Submits per second to the pool from all clients (a token bucket); 0 = no limit.",
    ),
]
BurstOption = Annotated[
    int | None,
    typer.Option(
        "--burst",
        callback=_parse.count,
        metavar="N",
        help="Submits at once under --rate; 0 = the rate, at least 1.",
    ),
]
ClientRateOption = Annotated[
    float | None,
    typer.Option(
        "--client-rate",
        metavar="PER_S",
        callback=_parse.non_negative,
        help="Submits per second each client may make to the pool (a token bucket); 0 = no limit.",
    ),
]
ClientBurstOption = Annotated[
    int | None,
    typer.Option(
        "--client-burst",
        callback=_parse.count,
        metavar="N",
        help="Submits a client may make at once under --client-rate; 0 = the rate, at least 1.",
    ),
]
RateModeOption = Annotated[
    RateMode | None,
    typer.Option(
        "--rate-mode",
        case_sensitive=False,
        help="Over a rate limit: reject the submit (the client retries later), or queue "
        "the task with a delay.",
    ),
]
BreakerFailuresOption = Annotated[
    int | None,
    typer.Option(
        "--breaker-failures",
        callback=_parse.count,
        metavar="N",
        help="Consecutive failures that open a worker's circuit breaker (no new tasks "
        "until its cooldown ends); 0 = the broker's default.",
    ),
]
BreakerFailureRateOption = Annotated[
    float | None,
    typer.Option(
        "--breaker-failure-rate",
        metavar="R",
        callback=_parse.non_negative,
        help="Also open it when this share (0 to <1) of the worker's last --breaker-window "
        "results failed; 0 = off.",
    ),
]
BreakerWindowOption = Annotated[
    int | None,
    typer.Option(
        "--breaker-window",
        callback=_parse.count,
        metavar="N",
        help="How many recent results --breaker-failure-rate looks at; 0 = the default.",
    ),
]
BreakerCooldownOption = Annotated[
    float | None,
    typer.Option(
        "--breaker-cooldown",
        metavar="SECONDS",
        callback=_parse.non_negative,
        help="How long an open breaker keeps new tasks from a worker; 0 = the default.",
    ),
]
LeaseOption = Annotated[
    float | None,
    typer.Option(
        "--lease",
        metavar="SECONDS",
        callback=_parse.non_negative,
        help="A task its worker has not confirmed within this long is requeued; "
        "0 = the heartbeat timeout.",
    ),
]
BulkheadOption = Annotated[
    list[Bulkhead] | None,
    typer.Option(
        "--bulkhead",
        parser=parse_bulkhead,
        metavar="TYPE:KEY=VALUE,...",
        help="Limits for one task type, e.g. render:max_inflight=4 or "
        "render:rate=20,burst=5. Keys: max_inflight, max_queue, rate (per second), "
        "burst; 0 = none (max_queue: the pool's). Repeat for several types.",
    ),
]
FairnessWeightOption = Annotated[
    list[FairnessWeight] | None,
    typer.Option(
        "--fairness-weight",
        parser=parse_fairness_weight,
        metavar="KEY=N",
        help="Tasks with fairness key KEY get N shares (1..1000) of the pool's workers; "
        "keys not named get 1. Repeat for several keys.",
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


class LogFormat(enum.StrEnum):
    """How `serve` writes its log lines."""

    HUMAN = "human"
    JSON = "json"


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
    """Run the broker until SIGTERM or SIGINT, then shut down gracefully; on SIGHUP,
    re-read the config file and apply what changed in its pools.

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
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts",
            callback=_parse.count_from_one,
            metavar="N",
            help="Attempts in all, the first included (1 = no retry; the broker allows up "
            "to 100). A task that fails its last attempt goes to dead_letter.",
        ),
    ] = None,
    backoff: Annotated[
        float | None,
        typer.Option(
            "--backoff",
            metavar="SECONDS",
            callback=_parse.positive,
            help="With --max-attempts: the longest wait before the first retry (a random "
            "share of it), growing by --backoff-multiplier each retry (default 1).",
        ),
    ] = None,
    backoff_multiplier: Annotated[
        float | None,
        typer.Option(
            "--backoff-multiplier",
            metavar="X",
            callback=_parse.multiplier,
            help="With --max-attempts: how the backoff grows, at least 1 (default 2).",
        ),
    ] = None,
    max_backoff: Annotated[
        float | None,
        typer.Option(
            "--max-backoff",
            metavar="SECONDS",
            callback=_parse.positive,
            help="With --max-attempts: the longest backoff (default 300).",
        ),
    ] = None,
    retry_on: Annotated[
        list[str] | None,
        typer.Option(
            "--retry-on",
            metavar="ERRORTYPE",
            callback=_parse.error_types,
            help="With --max-attempts: retry only errors of this type (e.g. TimeoutError); "
            "repeatable. Without it, every error type is retried.",
        ),
    ] = None,
    no_retry_on: Annotated[
        list[str] | None,
        typer.Option(
            "--no-retry-on",
            metavar="ERRORTYPE",
            callback=_parse.error_types,
            help="With --max-attempts: never retry errors of this type; repeatable.",
        ),
    ] = None,
    delay: Annotated[
        float | None,
        typer.Option(
            "--delay",
            metavar="SECONDS",
            callback=_parse.delay,
            help="Hand the task to a worker no sooner than this long from now.",
        ),
    ] = None,
    not_before: Annotated[
        datetime | None,
        typer.Option(
            "--not-before",
            parser=_parse.parse_time,
            metavar="TIME",
            help="Hand the task to a worker no sooner than this ISO 8601 time (local time "
            "without an offset); instead of --delay.",
        ),
    ] = None,
    start_timeout: Annotated[
        float | None,
        typer.Option(
            "--start-timeout",
            metavar="SECONDS",
            callback=_parse.positive,
            help="Fail the task if no worker has taken it within this long (counted "
            "from its --delay or --not-before, if any).",
        ),
    ] = None,
    execution_timeout: Annotated[
        float | None,
        typer.Option(
            "--execution-timeout",
            metavar="SECONDS",
            callback=_parse.positive,
            help="Fail (and cancel) an attempt that runs longer than this; with --max-attempts, "
            "the task may be tried again.",
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            metavar="KEY",
            callback=_validate_key,
            help="A second submit with KEY to the pool prints the first task's id and "
            "submits nothing.",
        ),
    ] = None,
    fairness_key: Annotated[
        str | None,
        typer.Option(
            "--fairness-key",
            metavar="KEY",
            callback=_validate_key,
            help="The pool shares its workers among fairness keys by weight (see "
            "'pools set --fairness-weight').",
        ),
    ] = None,
    broker: BrokerOption = DEFAULT_ADDRESS,
) -> None:
    """Submit a task and print its id; with --wait, print its result instead.

    With --wait, a task that fails (for good, after its --max-attempts), is
    cancelled or does not finish in time exits 1 with one line on stderr.
    A result is printed as UTF-8 text, or as base64 when it is not valid
    UTF-8. A task that no worker may take (see --require and
    --anti-affinity) waits; `tasks show ID` says why.
    """
    required = _required_labels(require or ())
    if soft_anti_affinity and anti_affinity is None:
        raise typer.BadParameter("needs --anti-affinity GROUP", param_hint="'--soft-anti-affinity'")
    if delay is not None and not_before is not None:
        raise typer.BadParameter("give --delay or --not-before, not both", param_hint="'--delay'")
    retry = _retry_policy(
        max_attempts,
        backoff=backoff,
        backoff_multiplier=backoff_multiplier,
        max_backoff=max_backoff,
        retry_on=retry_on or [],
        no_retry_on=no_retry_on or [],
    )
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
            retry=retry,
            delay=delay,
            not_before=not_before,
            start_timeout=start_timeout,
            execution_timeout=execution_timeout,
            idempotency_key=idempotency_key,
            fairness_key=fairness_key,
        )
        if not wait:
            typer.echo(task_id)
            return
        task = client.wait(task_id, timeout=timeout)
    _print_outcome(task)


def _retry_policy(
    max_attempts: int | None,
    *,
    backoff: float | None,
    backoff_multiplier: float | None,
    max_backoff: float | None,
    retry_on: list[str],
    no_retry_on: list[str],
) -> RetryPolicy | None:
    """The policy the retry flags describe; None without --max-attempts (the broker's: no retry)."""
    given = {
        "--backoff": backoff,
        "--backoff-multiplier": backoff_multiplier,
        "--max-backoff": max_backoff,
        "--retry-on": retry_on or None,
        "--no-retry-on": no_retry_on or None,
    }
    if max_attempts is None:
        for flag, value in given.items():
            if value is not None:
                raise typer.BadParameter("needs --max-attempts N", param_hint=f"'{flag}'")
        return None
    default = RetryPolicy()
    initial = default.initial_backoff_s if backoff is None else backoff
    longest = default.max_backoff_s if max_backoff is None else max_backoff
    if initial > longest:
        flag = "--backoff" if backoff is not None else "--max-backoff"
        raise typer.BadParameter(
            f"--backoff ({initial:g} s) must not be more than --max-backoff ({longest:g} s)",
            param_hint=f"'{flag}'",
        )
    return RetryPolicy(
        max_attempts=max_attempts,
        initial_backoff_s=initial,
        max_backoff_s=longest,
        backoff_multiplier=(
            default.backoff_multiplier if backoff_multiplier is None else backoff_multiplier
        ),
        retryable_errors=tuple(retry_on),
        non_retryable_errors=tuple(no_retry_on),
    )


def _print_outcome(task: TaskInfo) -> None:
    """What `submit --wait` prints: the result, or exit 1 with why there is none."""
    if task.state is TaskState.SUCCEEDED:
        text, _ = decode_bytes(task.result)
        typer.echo(text)
        return
    error = task.error
    detail = f"{error.type}: {error.message}" if error is not None else "no error reported"
    if task.state is TaskState.FAILED:
        raise CliError(f"task {task.id} failed: {detail}")
    if task.state is TaskState.DEAD_LETTER:
        plural = "" if task.attempts == 1 else "s"
        raise CliError(
            f"task {task.id} failed after {task.attempts} attempt{plural} (dead letter): {detail}"
        )
    if task.state is TaskState.CANCELLED:
        reason = f": {error.message}" if error is not None else ""
        raise CliError(f"task {task.id} was cancelled{reason}")
    # wait() raises DeadlineExceeded rather than return an unfinished task
    raise CliError(f"task {task.id} is still {task.state.value}")


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


@tasks_app.command("retry")
def tasks_retry(
    task_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="ID", help="Failed or dead-lettered tasks to retry."),
    ] = None,
    dead_letter: Annotated[
        str | None,
        typer.Option(
            "--dead-letter",
            metavar="POOL",
            help="Also retry the dead-lettered tasks of POOL (up to --limit).",
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            callback=_parse.count_from_one,
            metavar="N",
            help="With --dead-letter: at most this many of its tasks (the broker's default: "
            "1000, its most: 10000).",
        ),
    ] = None,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Send failed or dead-lettered tasks back to their queue with a fresh set of attempts,
    and list them."""
    if not task_ids and dead_letter is None:
        raise CliError(
            "nothing to retry: give task ids or --dead-letter POOL "
            "(see 'taskbroker tasks retry --help')",
            EXIT_USAGE,
        )
    if limit is not None and dead_letter is None:
        raise typer.BadParameter("needs --dead-letter POOL", param_hint="'--limit'")
    if dead_letter is not None and not dead_letter:
        raise typer.BadParameter("the pool name must not be empty", param_hint="'--dead-letter'")
    with SyncClient(broker) as client:
        tasks = client.retry(task_ids or (), dead_letter_pool=dead_letter, limit=limit)
    show_retried(tasks, output)


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


@workers_app.command("cordon")
def workers_cordon(
    worker_id: Annotated[str, typer.Argument(metavar="ID")],
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Send a worker no new tasks until uncordoned; it keeps what it holds and stays
    connected."""
    with SyncClient(broker) as client:
        worker = client.cordon_worker(worker_id)
    show_worker(worker, output)


@workers_app.command("uncordon")
def workers_uncordon(
    worker_id: Annotated[str, typer.Argument(metavar="ID")],
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Let a cordoned worker take new tasks again."""
    with SyncClient(broker) as client:
        worker = client.uncordon_worker(worker_id)
    show_worker(worker, output)


@pools_app.command("list")
def pools_list(
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """List the pools: strategy, A/B split, sticky timeout and limits."""
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
    max_inflight: MaxInflightOption = None,
    max_queue: MaxQueueOption = None,
    rate: RateOption = None,
    burst: BurstOption = None,
    client_rate: ClientRateOption = None,
    client_burst: ClientBurstOption = None,
    rate_mode: RateModeOption = None,
    breaker_failures: BreakerFailuresOption = None,
    breaker_failure_rate: BreakerFailureRateOption = None,
    breaker_window: BreakerWindowOption = None,
    breaker_cooldown: BreakerCooldownOption = None,
    lease: LeaseOption = None,
    bulkhead: BulkheadOption = None,
    fairness_weight: FairnessWeightOption = None,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Create a pool. Pools are never created by a submit.

    With --ab-strategy S --ab-percent N, N% of the pool's tasks are placed
    by S and the rest by --strategy; `stats` compares the two. Limits not
    given are the broker's defaults (see `pools list`).
    """
    if (ab_strategy is None) != (ab_percent is None):
        given = "--ab-strategy" if ab_percent is None else "--ab-percent"
        raise typer.BadParameter(
            "--ab-strategy and --ab-percent go together", param_hint=f"'{given}'"
        )
    bulkheads = _parse.bulkheads(bulkhead or [])
    weights = _parse.fairness_weights(fairness_weight or [])
    with SyncClient(broker) as client:
        pool = client.create_pool(
            name,
            strategy=strategy,
            ab_strategy=ab_strategy or "",
            ab_percent=ab_percent or 0,
            sticky_timeout_s=sticky_timeout,
            max_inflight=max_inflight or 0,
            max_queue=max_queue or 0,
            rate_per_s=rate or 0.0,
            rate_burst=burst or 0,
            client_rate_per_s=client_rate or 0.0,
            client_rate_burst=client_burst or 0,
            rate_mode=(rate_mode or RateMode.REJECT).value,
            breaker_failures=breaker_failures or 0,
            breaker_failure_rate=breaker_failure_rate or 0.0,
            breaker_window=breaker_window or 0,
            breaker_cooldown_s=breaker_cooldown or 0.0,
            lease_s=lease or 0.0,
            bulkheads=bulkheads,
            fairness_weights=weights,
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
    max_inflight: MaxInflightOption = None,
    max_queue: MaxQueueOption = None,
    rate: RateOption = None,
    burst: BurstOption = None,
    client_rate: ClientRateOption = None,
    client_burst: ClientBurstOption = None,
    rate_mode: RateModeOption = None,
    breaker_failures: BreakerFailuresOption = None,
    breaker_failure_rate: BreakerFailureRateOption = None,
    breaker_window: BreakerWindowOption = None,
    breaker_cooldown: BreakerCooldownOption = None,
    lease: LeaseOption = None,
    bulkhead: BulkheadOption = None,
    clear_bulkheads: Annotated[
        bool,
        typer.Option("--clear-bulkheads", help="Remove every bulkhead of the pool."),
    ] = False,
    fairness_weight: FairnessWeightOption = None,
    clear_fairness: Annotated[
        bool,
        typer.Option("--clear-fairness", help="Remove every fairness weight (all keys get 1)."),
    ] = False,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Change a pool's settings; those not given stay as they are.

    --ab-percent 0 (or --ab-strategy '') ends an A/B split. --bulkhead and
    --fairness-weight replace all of the pool's bulkheads or weights.
    """
    bulkheads = _replacement(
        _parse.bulkheads(bulkhead or []), clear_bulkheads, "--bulkhead", "--clear-bulkheads"
    )
    weights = _replacement(
        _parse.fairness_weights(fairness_weight or []),
        clear_fairness,
        "--fairness-weight",
        "--clear-fairness",
    )
    settings = (
        strategy,
        ab_strategy,
        ab_percent,
        sticky_timeout,
        max_inflight,
        max_queue,
        rate,
        burst,
        client_rate,
        client_burst,
        rate_mode,
        breaker_failures,
        breaker_failure_rate,
        breaker_window,
        breaker_cooldown,
        lease,
        bulkheads,
        weights,
    )
    if all(setting is None for setting in settings):
        raise CliError(
            "nothing to change: give a setting such as --strategy or --max-queue "
            "(see 'taskbroker pools set --help')",
            EXIT_USAGE,
        )
    with SyncClient(broker) as client:
        pool = client.update_pool(
            name,
            strategy=strategy,
            ab_strategy=ab_strategy,
            ab_percent=ab_percent,
            sticky_timeout_s=sticky_timeout,
            max_inflight=max_inflight,
            max_queue=max_queue,
            rate_per_s=rate,
            rate_burst=burst,
            client_rate_per_s=client_rate,
            client_rate_burst=client_burst,
            rate_mode=None if rate_mode is None else rate_mode.value,
            breaker_failures=breaker_failures,
            breaker_failure_rate=breaker_failure_rate,
            breaker_window=breaker_window,
            breaker_cooldown_s=breaker_cooldown,
            lease_s=lease,
            bulkheads=bulkheads,
            fairness_weights=weights,
        )
    show_pool_updated(pool, output)


_Collection = TypeVar("_Collection", tuple[Bulkhead, ...], dict[str, int])


def _replacement(given: _Collection, clear: bool, flag: str, clear_flag: str) -> _Collection | None:
    """What replaces a pool's list or map: the items given, empty with the clear flag, or
    None (unchanged) with neither."""
    if clear and given:
        raise typer.BadParameter(f"give {flag} or {clear_flag}, not both", param_hint=f"'{flag}'")
    if clear or given:
        return given
    return None


@pools_app.command("recommend")
def pools_recommend(
    pool: Annotated[str | None, typer.Option(help="Only this pool.")] = None,
    target_wait: Annotated[
        float,
        typer.Option(
            "--target-wait",
            metavar="SECONDS",
            parser=_parse.parse_seconds,
            help="The mean queue wait to aim for, e.g. 0.5 or 2s.",
        ),
    ] = 1.0,
    horizon: Annotated[
        float,
        typer.Option(
            "--horizon",
            metavar="SECONDS",
            parser=_parse.parse_seconds,
            help="Forecast the arrival rate this far ahead, e.g. 900 or 15m.",
        ),
    ] = 900.0,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Recommend a worker count per pool for a target queue wait: the broker forecasts
    each pool's arrival rate from its history and sizes it as an M/M/c queue (Erlang C).
    Prints a row per pool, then the reasoning behind each."""
    from cli._observe import show_recommendations

    with SyncClient(broker) as client:
        recs = client.recommend(pool=pool, target_wait_s=target_wait, horizon_s=horizon)
    show_recommendations(recs, output)


# How often `stats --watch` refreshes unless told, and how often at most.
DEFAULT_WATCH_INTERVAL_S = 2.0
MIN_WATCH_INTERVAL_S = 0.1


@app.command()
def stats(
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Refresh until Ctrl-C; with --output json, print one JSON document (one "
            "line, with its time in 'at') per refresh.",
        ),
    ] = False,
    interval: Annotated[
        float | None,
        typer.Option(
            "--interval",
            metavar="SECONDS",
            parser=_parse.parse_seconds,
            help=f"With --watch: time between refreshes, e.g. 5 or 500ms (default "
            f"{DEFAULT_WATCH_INTERVAL_S:g}).",
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(
            "--count",
            metavar="N",
            callback=_parse.count_from_one,
            help="With --watch: stop after N refreshes.",
        ),
    ] = None,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Show the broker's state and per pool: task counts (unschedulable and delayed
    included), capacity, live figures over the last minute (throughput, queue wait and run
    time p50/p99, oldest pending task) and sticky hit rate; then the pools' limits and
    flow-control counters, their bulkheads, each strategy's placements and the learned run
    times."""
    for flag, value in (("--interval", interval), ("--count", count)):
        if value is not None and not watch:
            raise typer.BadParameter("needs --watch", param_hint=f"'{flag}'")
    if interval is not None and interval < MIN_WATCH_INTERVAL_S:
        raise typer.BadParameter(
            f"must be at least {MIN_WATCH_INTERVAL_S:g} seconds", param_hint="'--interval'"
        )
    with SyncClient(broker) as client:
        if watch:
            from cli._watch import watch_stats

            watch_stats(
                client.stats,
                output,
                interval=DEFAULT_WATCH_INTERVAL_S if interval is None else interval,
                count=count,
            )
            return
        result = client.stats()
    show_stats(result, output)


@metrics_app.command("history")
def metrics_history(
    pool: Annotated[str | None, typer.Option(help="Only this pool.")] = None,
    task_type: Annotated[
        str | None,
        typer.Option(
            "--type", metavar="TYPE", help="Only this task type (else summed over the types)."
        ),
    ] = None,
    worker: Annotated[
        str | None,
        typer.Option(
            "--worker", metavar="ID", help="Only this worker (else summed over the workers)."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="WHEN",
            help="From this long ago (30m, 1h, 2d) or this ISO 8601 time (default 1h).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            metavar="WHEN",
            help="Up to this long ago (10m) or this ISO 8601 time (default now).",
        ),
    ] = None,
    bucket: Annotated[
        int | None,
        typer.Option(
            "--bucket",
            metavar="DURATION",
            parser=_parse.parse_whole_seconds,
            help="Merge the rows into buckets this wide, e.g. 5m or 1h (default: as stored, "
            "1m, or 1h once compacted).",
        ),
    ] = None,
    chart: Annotated[
        bool,
        typer.Option(
            "--chart/--no-chart",
            help="Below the table, chart the completed tasks and the run time p99 per bucket.",
        ),
    ] = True,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Show the metrics history, oldest first: per bucket, the tasks submitted, completed
    and failed, and the queue wait and run time (mean, p50, p99) of those completed."""
    from cli._observe import show_metrics_history

    start = None if since is None else _parse.time_or_duration(since, "--since")
    end = None if until is None else _parse.time_or_duration(until, "--until")
    now = datetime.now(UTC)
    end_time = now - end if isinstance(end, timedelta) else end
    if start is not None and end_time is not None:
        start_time = now - start if isinstance(start, timedelta) else start
        if start_time >= end_time:
            raise typer.BadParameter("must be before --until", param_hint="'--since'")
    with SyncClient(broker) as client:
        points = client.metrics_history(
            pool=pool,
            task_type=task_type,
            worker_id=worker,
            since=start,
            until=end_time,
            bucket_s=bucket or 0,
        )
    show_metrics_history(points, output, chart=chart)


@config_app.command("reload")
def config_reload(
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Make the broker re-read its config file and apply what changed in its pools (as
    SIGHUP does); print the changes, or "no changes"."""
    from cli._observe import show_config_reload

    with SyncClient(broker) as client:
        changes = client.reload_config()
    show_config_reload(changes, output)


@config_app.command("history")
def config_history(
    pool: Annotated[str | None, typer.Option(help="Only this pool.")] = None,
    limit: Annotated[
        int,
        typer.Option(callback=_parse.count_from_one, metavar="N", help="At most this many."),
    ] = 100,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """The audited changes of pool settings, newest first: when, who asked, through what
    (create_pool, update_pool, reload), and what changed; JSON has the settings before and
    after."""
    from cli._observe import show_config_changes

    with SyncClient(broker) as client:
        changes = client.config_history(pool=pool, limit=limit)
    show_config_changes(changes, output)


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
