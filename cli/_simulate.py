"""`taskbroker simulate`: compare placement strategies on a simulated workload.

The command is declared here, beside its body, and registered in `cli.main`; the
simulator itself is imported only when the command runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from cli._errors import CliError
from cli._output import OutputFormat, _console, _row, _table, print_json

if TYPE_CHECKING:
    from broker.sim.simulator import SimResult

MAX_TASKS = 2_000_000


def simulate(
    scenario: Annotated[
        str | None,
        typer.Argument(
            metavar="[SCENARIO]", help="A built-in scenario (see --list).", show_default=False
        ),
    ] = None,
    trace: Annotated[
        Path | None,
        typer.Option(
            "--trace",
            metavar="FILE",
            help="Replay this JSON or CSV trace instead of a scenario (format: see below).",
        ),
    ] = None,
    workers: Annotated[
        str | None,
        typer.Option(
            "--workers",
            metavar="SPEC",
            help="With --trace: the workers, COUNTxCAPACITY[:CLASS],... e.g. 4x2:fast,4x2:slow "
            "[default: the trace's own, else 4x2].",
        ),
    ] = None,
    strategies: Annotated[
        str | None,
        typer.Option(
            "--strategies",
            metavar="NAME,...",
            help="Strategies to compare, comma-separated [default: every one].",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the workload and the run times; same seed, same table.")
    ] = 1,
    tasks: Annotated[
        int | None,
        typer.Option(
            "--tasks",
            min=1,
            max=MAX_TASKS,
            metavar="N",
            help="Scenario size in tasks [default: the scenario's, see --list].",
        ),
    ] = None,
    list_scenarios: Annotated[
        bool, typer.Option("--list", help="List the built-in scenarios and exit.")
    ] = False,
    output: Annotated[
        OutputFormat,
        typer.Option(
            "--output", "-o", case_sensitive=False, help="table for people, json for scripts."
        ),
    ] = OutputFormat.TABLE,
) -> None:
    """Compare placement strategies on a workload, in simulated time.

    The workload is replayed through the real scheduler once per strategy.

    Reports per strategy: throughput, makespan, queue wait (arrival or requeue to
    placement) p50/p95/p99, mean run time, worker utilisation (busy / connected
    slot-seconds), constraint violations (checked independently; always 0 unless
    the scheduler has a bug), sticky hit rate, failures and requeues.

    A trace is JSON (a list of tasks, or {"workers": [...], "worker_events": [...],
    "tasks": [...]}) or CSV with a header. Task fields: arrival_s, task_type,
    duration_s or duration_s_<class>, priority, required_labels (k=v;k=v),
    anti_affinity_group, anti_affinity_soft, sticky_key, routing_key. Worker
    fields: id, capacity, task_types, labels, class, fail_rate, join_s.
    """
    from broker.sim.scenarios import SCENARIOS, build_scenario
    from broker.sim.simulator import (
        SimulationError,
        check_strategies,
        compare,
        load_trace,
        strategy_names,
    )

    if list_scenarios:
        if scenario is not None or trace is not None:
            raise typer.BadParameter("takes no scenario or trace", param_hint="'--list'")
        if output is OutputFormat.JSON:
            print_json(
                [
                    {"name": s.name, "default_tasks": s.default_tasks, "description": s.description}
                    for s in SCENARIOS.values()
                ]
            )
            return
        table = _table("SCENARIO", "TASKS", "DESCRIPTION", wrap=["DESCRIPTION"])
        for s in SCENARIOS.values():
            _row(table, [s.name, str(s.default_tasks), s.description])
        _console().print(table)
        return
    if scenario is not None and trace is not None:
        raise typer.BadParameter("give a SCENARIO or --trace FILE, not both")
    if scenario is None and trace is None:
        raise typer.BadParameter("give a SCENARIO or --trace FILE (see --list)")
    if workers is not None and trace is None:
        raise typer.BadParameter("only with --trace", param_hint="'--workers'")
    if tasks is not None and trace is not None:
        raise typer.BadParameter("only with a scenario", param_hint="'--tasks'")

    try:
        names = check_strategies(
            strategy_names()
            if strategies is None
            else [s.strip() for s in strategies.split(",") if s.strip()]
        )
        if trace is not None:
            workload = load_trace(trace, workers)
        else:
            assert scenario is not None
            workload = build_scenario(scenario, tasks=tasks, seed=seed)
        results = compare(workload, names, seed=seed)
    except SimulationError as exc:
        raise CliError(str(exc)) from None

    if output is OutputFormat.JSON:
        print_json([r.as_row() for r in results])
        return
    title = (
        f"{workload.name}: {len(workload.tasks)} tasks, {len(workload.workers)} workers, "
        f"seed {seed}"
    )
    show_results(results, title)


def show_results(results: Sequence[SimResult], title: str) -> None:
    """The comparison as a table, one row per strategy, and any violations below it."""
    table = _table(
        "STRATEGY",
        "DONE",
        "FAILED",
        "REQUEUED",
        "TASKS/S",
        "MAKESPAN",
        "WAIT P50",
        "WAIT P95",
        "WAIT P99",
        "RUN MEAN",
        "RESP MEAN",
        "RESP P99",
        "UTIL",
        "VIOLATIONS",
        "STICKY HITS",
    )
    table.title = title
    for r in results:
        done: Text | str = f"{r.completed}/{r.tasks}"
        if r.unfinished:
            done = Text(str(done), style="red")
        hits = "-" if r.sticky_hit_rate is None else f"{r.sticky_hit_rate:.1%}"
        cells: list[Text | str] = [
            r.strategy,
            done,
            str(r.failed),
            str(r.requeued),
            f"{r.throughput_per_s:.1f}",
            _seconds(r.makespan_s),
            _seconds(r.wait_p50_s),
            _seconds(r.wait_p95_s),
            _seconds(r.wait_p99_s),
            _seconds(r.run_mean_s),
            _seconds(r.response_mean_s),
            _seconds(r.response_p99_s),
            f"{r.utilisation:.1%}",
            Text(str(r.violations), style="red") if r.violations else "0",
            hits,
        ]
        _row(table, cells)
    console = _console()
    console.print(table)
    for r in results:
        for example in r.violation_examples:
            console.print(Text(f"violation ({r.strategy}): {example}", style="red"))


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.1f} ms"
    if value < 100:
        return f"{value:.2f} s"
    return f"{value:.1f} s"
