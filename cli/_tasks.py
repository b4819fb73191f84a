"""`tasks list|show|cancel|retry|purge`: the commands about tasks already submitted."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from cli import _parse
from cli._common import BrokerOption, OutputOption, WideOption, connect
from cli._errors import EXIT_USAGE, CliError
from cli._output import OutputFormat, print_json, show_retried, show_task, show_tasks
from worker_sdk import DEFAULT_ADDRESS, TaskState

tasks_app = typer.Typer(help="List, show, cancel, retry and purge tasks.", no_args_is_help=True)


class StateChoice(enum.StrEnum):
    """Task states as command-line choices."""

    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD_LETTER = "dead_letter"


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
        typer.Option(
            metavar="ID",
            callback=_parse.task_id,
            help="Next page: only tasks older than this id.",
        ),
    ] = None,
    wide: WideOption = False,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """List tasks, newest first.

    \b
    The columns (those marked * with --wide only):
      ID, TYPE, POOL  the task
      PRI*            its priority; higher runs first
      STATE           pending, assigned, running, succeeded, failed, cancelled,
                      dead_letter; "pending (unschedulable)" when no connected worker can
                      take it, "pending (delayed)" when it waits for its time
      TRIES           attempts so far
      WORKER*         the worker that holds it or last held it
      CREATED         when it was submitted

    --output json has every field, the payload and result included."""
    states = tuple(TaskState(s.value) for s in state or ())
    with connect(broker) as client:
        # The table shows no payloads or results: ask for tasks without them.
        tasks = client.list_tasks(
            pool=pool,
            states=states,
            task_type=task_type,
            limit=limit,
            before_id=before,
            payloads=output is OutputFormat.JSON,
        )
    show_tasks(tasks, output, wide=wide)


@tasks_app.command("show")
def tasks_show(
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Show one task: its state, times, placement, payload, result or error."""
    with connect(broker) as client:
        task = client.get(task_id)
    show_task(task, output)


@tasks_app.command("cancel")
def tasks_cancel(
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Cancel a task that has not finished, and show it."""
    with connect(broker) as client:
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
    with connect(broker) as client:
        tasks = client.retry(task_ids or (), dead_letter_pool=dead_letter, limit=limit)
    show_retried(tasks, output)


class FinishedStateChoice(enum.StrEnum):
    """The states a purge may delete: the finished ones."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD_LETTER = "dead_letter"


@tasks_app.command("purge")
def tasks_purge(
    pool: Annotated[str | None, typer.Option(help="Only this pool (default: every pool).")] = None,
    older_than: Annotated[
        float | None,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            parser=_parse.parse_seconds,
            help="Only tasks that finished at least this long ago (30m, 2d, ...); "
            "default: whenever they finished.",
        ),
    ] = None,
    state: Annotated[
        list[FinishedStateChoice] | None,
        typer.Option(
            case_sensitive=False,
            help="Only tasks in this finished state; repeat for several (default: all four).",
        ),
    ] = None,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Delete finished tasks; print how many were deleted.

    A task goes with its payload, result and idempotency key. Tasks that have not
    finished are never deleted."""
    states = tuple(TaskState(s.value) for s in state or ())
    with connect(broker) as client:
        deleted = client.purge_tasks(pool=pool, older_than=older_than or 0.0, states=states)
    if output is OutputFormat.JSON:
        print_json({"deleted": deleted})
    else:
        typer.echo(f"{deleted} finished task{'' if deleted == 1 else 's'} deleted")
