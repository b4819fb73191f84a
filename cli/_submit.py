"""`submit`: send one task from the command line, and with --wait print its outcome."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import typer

from cli import _parse
from cli._common import BrokerOption, connect
from cli._errors import CliError
from cli._output import decode_bytes
from worker_sdk import (
    DEFAULT_ADDRESS,
    DeadlineExceeded,
    PreferredLabel,
    RetryPolicy,
    SyncClient,
    TaskbrokerError,
    TaskInfo,
    TaskState,
)


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
    no_retry: Annotated[
        bool,
        typer.Option(
            "--no-retry",
            help="Fail at once when the broker refuses the submit for overload (a full "
            "queue or a rate limit), instead of sending it again after the broker's hint.",
        ),
    ] = False,
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
    """Submit a task; print its id, or with --wait its result.

    With --wait, `task ID accepted; waiting...` goes to stderr first, and
    the wait rides out a broker restart within --timeout. A task that fails
    (for good, after its --max-attempts), is cancelled or does not finish in
    time exits 1 with an error line on stderr that names it.
    A result is printed as UTF-8 text, or as base64 when it is not valid
    UTF-8. A task that no worker may take (no connected worker serves its
    type or pool, see also --require and --anti-affinity) waits; after a
    second, --wait prints `warning: task ID waits: WHY` on stderr and goes on
    waiting; `tasks show ID` says why too.
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
    with connect(broker, submit_retries=0 if no_retry else None) as client:
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
        # On stderr, so stdout keeps only the result; should the wait fail or be
        # interrupted, the user knows the task was accepted and need not submit it again.
        typer.echo(f"task {task_id} accepted; waiting...", err=True)
        try:
            task = _wait_and_warn(client, task_id, timeout)
        except TaskbrokerError as exc:
            raise CliError(_wait_failed(task_id, exc)) from None
    _print_outcome(task)


# How long `submit --wait` waits before it asks the broker whether the task can be placed.
WARN_AFTER_S = 1.0


def _wait_and_warn(client: SyncClient, task_id: str, timeout: float | None) -> TaskInfo:
    """`client.wait`, but a task still pending after WARN_AFTER_S whose placement note
    says why it waits (e.g. no connected worker takes its type: a typo is enough) gets
    one `warning: task ID waits: NOTE` line on stderr; the wait goes on until `timeout`."""
    started = time.monotonic()
    if timeout is not None and timeout <= WARN_AFTER_S:
        return client.wait(task_id, timeout=timeout)
    try:
        return client.wait(task_id, timeout=WARN_AFTER_S)
    except DeadlineExceeded:
        pass
    try:
        task = client.get(task_id)
    except TaskbrokerError:
        pass  # e.g. the broker is restarting: only the warning is lost, the wait rides it out
    else:
        if task.state is TaskState.PENDING and task.placement_note:
            typer.echo(f"warning: task {task_id} waits: {task.placement_note}", err=True)
    if timeout is None:
        return client.wait(task_id)
    remaining = timeout - (time.monotonic() - started)
    if remaining > 0:
        try:
            return client.wait(task_id, timeout=remaining)
        except DeadlineExceeded:
            pass
    # The whole timeout, not what was left of it.
    raise DeadlineExceeded(f"task {task_id} did not finish within {timeout}s")


def _wait_failed(task_id: str, error: TaskbrokerError) -> str:
    """Why waiting for an accepted task failed, naming it so the user can look it up."""
    message = str(error)
    if not message.startswith(f"task {task_id} "):
        message = f"task {task_id}: {message}"
    return f"{message}; see 'taskbroker tasks show {task_id}'"


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
