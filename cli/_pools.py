"""`pools list|create|set|recommend`. The flags of a pool's settings are derived from the
SDK's table of them (worker_sdk/_pool_settings.py): one flag per row, with its help, metavar
and bounds, in the same order for `create` and `set`."""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, cast

import typer

from cli import _parse
from cli._common import BrokerOption, OutputOption, WideOption, connect
from cli._errors import EXIT_USAGE, CliError
from cli._output import OutputFormat
from cli._output_pools import show_pool_created, show_pool_updated, show_pools
from cli._parse import FairnessWeight, parse_bulkhead, parse_fairness_weight
from worker_sdk import DEFAULT_ADDRESS, Bulkhead
from worker_sdk._pool_settings import POOL_SETTINGS, PoolSetting

pools_app = typer.Typer(
    help="List, create and change pools; recommend their worker counts.", no_args_is_help=True
)

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


def _choice(setting: PoolSetting) -> type[enum.StrEnum]:
    """A setting's choices as typer takes them: an enum of the values."""
    name = setting.name.title().replace("_", "")
    return cast(type[enum.StrEnum], enum.StrEnum(name, {c.upper(): c for c in setting.choices}))


def _callback(setting: PoolSetting) -> Callable[[Any], Any]:
    """The check of a setting's bounds that --help does not show; a usage error (exit 2)."""
    if setting.type is int and setting.minimum == 0 and setting.maximum is None:
        return _parse.count
    if setting.type is float and setting.minimum == 0 and setting.maximum is None:
        return _parse.non_negative
    raise NotImplementedError(f"no check for the bounds of {setting.name}")


def _flag(setting: PoolSetting, *, create: bool) -> inspect.Parameter:
    """A setting's flag in `pools create` (`create`) or `pools set`: None when not given, but
    for the settings whose default `pools create` shows and sends."""
    kind: Any = _choice(setting) if setting.choices else setting.type
    options: dict[str, Any] = {"help": setting.help}
    if setting.metavar:
        options["metavar"] = setting.metavar
    if setting.choices:
        options["case_sensitive"] = False
    if setting.range_in_help:
        options.update(min=setting.minimum, max=setting.maximum)
    elif setting.minimum is not None or setting.maximum is not None:
        options["callback"] = _callback(setting)
    default = setting.default if create and setting.create_shows_default else None
    return inspect.Parameter(
        setting.name,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=default,
        annotation=Annotated[
            kind if default is not None else kind | None, typer.Option(setting.flag, **options)
        ],
    )


_Command = TypeVar("_Command", bound=Callable[..., None])


def _with_setting_flags(*, create: bool) -> Callable[[_Command], _Command]:
    """Give a command taking `**settings` one flag per pool setting, after its first
    parameter (the pool's name), for typer to read from its signature."""

    def decorate(command: _Command) -> _Command:
        signature = inspect.signature(command, eval_str=True)
        first, *rest = (p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD)
        flags = [_flag(setting, create=create) for setting in POOL_SETTINGS]
        command.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[first, *flags, *rest]
        )
        return command

    return decorate


def _value(given: Any) -> Any:
    """A flag's value as the SDK takes it: a choice as its plain str."""
    return given.value if isinstance(given, enum.Enum) else given


@pools_app.command("list")
def pools_list(
    wide: WideOption = False,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """List the pools: strategy, A/B split, sticky timeout and limits.

    \b
    The columns (those marked * with --wide only):
      POOL, STRATEGY       the pool and the strategy placing its tasks
      A/B                  the share of tasks a second strategy places, and which
      STICKY TIMEOUT*      how long a sticky key keeps its worker
      MAX IN FLIGHT        tasks its workers may hold at once ("-": no limit)
      MAX QUEUE            tasks that may wait ("default": the broker's limit)
      RATE, CLIENT RATE*   submits per second to the pool, and per client
      BREAKER*             the circuit breaker: failures, failure rate, window, cooldown
      LEASE*               how long a worker may hold a task without a heartbeat
      BULKHEADS*           limits per task type
      FAIRNESS*            weights of fairness keys

    --output json has every setting."""
    with connect(broker) as client:
        pools = client.list_pools()
    show_pools(pools, output, wide=wide)


@pools_app.command("create")
@_with_setting_flags(create=True)
def pools_create(
    name: Annotated[str, typer.Argument(metavar="NAME")],
    bulkhead: BulkheadOption = None,
    fairness_weight: FairnessWeightOption = None,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
    **settings: Any,
) -> None:
    """Create a pool. Pools are never created by a submit.

    With --ab-strategy S --ab-percent N, N% of the pool's tasks are placed
    by S and the rest by --strategy; `stats` compares the two. Limits not
    given are the broker's defaults (see `pools list`).
    """
    if (settings["ab_strategy"] is None) != (settings["ab_percent"] is None):
        given = "--ab-strategy" if settings["ab_percent"] is None else "--ab-percent"
        raise typer.BadParameter(
            "--ab-strategy and --ab-percent go together", param_hint=f"'{given}'"
        )
    bulkheads = _parse.bulkheads(bulkhead or [])
    weights = _parse.fairness_weights(fairness_weight or [])
    values: dict[str, Any] = {
        s.name: s.default if settings[s.name] is None else _value(settings[s.name])
        for s in POOL_SETTINGS
    }
    with connect(broker) as client:
        pool = client.create_pool(name, **values, bulkheads=bulkheads, fairness_weights=weights)
    show_pool_created(pool, output)


@pools_app.command("set")
@_with_setting_flags(create=False)
def pools_set(
    name: Annotated[str, typer.Argument(metavar="NAME")],
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
    **settings: Any,
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
    changes = {s.name: _value(settings[s.name]) for s in POOL_SETTINGS}
    if all(value is None for value in (*changes.values(), bulkheads, weights)):
        raise CliError(
            "nothing to change: give a setting such as --strategy or --max-queue "
            "(see 'taskbroker pools set --help')",
            EXIT_USAGE,
        )
    with connect(broker) as client:
        pool = client.update_pool(name, **changes, bulkheads=bulkheads, fairness_weights=weights)
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
    """Recommend a worker count per pool for a target queue wait.

    The broker forecasts each pool's arrival rate from its history and sizes it as an
    M/M/c queue (Erlang C). Prints a row per pool, then the reasoning behind each."""
    from cli._observe import show_recommendations

    with connect(broker) as client:
        recs = client.recommend(pool=pool, target_wait_s=target_wait, horizon_s=horizon)
    show_recommendations(recs, output)
