"""A pool's settings, defined once: one row per setting, which the SDK and the CLI derive from.

Each row names a setting as it is called everywhere (field of `message Pool` in
admin.proto, of `PoolInfo` here and of the broker's `PoolConfig`, key of a `[pools.NAME]`
table in the broker's config file, of the store's JSON and of the audit log) and says what
the SDK and the command line need beyond the name: its type, the SDK's default, the
`pools create|set` flag with its help text, and the bounds the command line checks before
the broker does (the broker's own bounds, in `broker.config.validate_pool`, are the
authority: out of them it answers INVALID_ARGUMENT naming the setting).

Derived from this table: the SDK's converters (`PoolInfo` from `Pool` and the settings of
CreatePool/UpdatePool requests), the keyword arguments of `Client.create_pool` and
`update_pool` (their signatures for help() and inspect; `PoolSettings` for mypy), the
`SyncClient`'s twins of those, and the `pools create|set` flags.

Why a table here: the .proto knows the names and wire types, but not the help texts, flags,
bounds or the SDK's defaults, and the SDK must never import the broker; so the SDK holds
the table, importing nothing but its plain types (no gRPC, no protobuf). Why the broker
does not import it: importing any module of worker_sdk runs the package's __init__, which
loads gRPC and the generated code, and `broker.config` (which the scheduling core imports)
must stay free of both. So the broker's config loader, store codec and protobuf converter
derive from the fields of its own `PoolConfig` (`broker.domain.POOL_SCALAR_SETTINGS`), and
the test against the .proto descriptor holds those fields, these rows, `PoolInfo` and
`message Pool` equal.

Adding a setting, say `max_retries_per_s`:

1. a field in `message Pool` (protos/taskbroker/v1/admin.proto), then `make protos`;
2. a row in `POOL_SETTINGS` below (after the existing ones; the order is `PoolInfo`'s);
3. a key in `PoolSettings` below, and a field on `PoolInfo` (worker_sdk/_types.py), with
   the row's type and default;
4. a field on `PoolConfig` (broker/domain.py), with the broker's default, and its bounds in
   `validate_pool` (broker/config.py).

tests/unit/test_pool_settings.py fails until these agree with each other and with the
.proto descriptor. Bulkheads and fairness weights are nested (a list of limits per task
type, a map of weights per key); each is special-cased once per side, and a bulkhead's
limits have a table of their own, `BULKHEAD_SETTINGS`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypedDict, TypeVar

from worker_sdk._types import Bulkhead

# The largest count a uint32 field carries.
UINT32_MAX: Final = 2**32 - 1

DEFAULT_STRATEGY: Final = "round_robin"
DEFAULT_RETENTION_S: Final = 7 * 86_400.0  # the broker's default too
# For help texts only: the broker checks strategy names (INVALID_ARGUMENT, listing the ones
# it knows), so a broker with a newer strategy is usable before this list learns of it.
KNOWN_STRATEGIES: Final = (
    "round_robin",
    "least_loaded",
    "consistent_hash",
    "weighted_response_time",
    "predictive",
    "adaptive",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSetting:
    """One setting of a pool that is a single number or name."""

    name: str
    type: type[int] | type[float] | type[str]
    # The SDK's default: create_pool's and PoolInfo's. A 0 (or "") asks for the broker's
    # default, which the broker reports back (see PoolConfig for its values).
    default: int | float | str
    flag: str  # of `pools create` and `pools set`
    metavar: str = ""
    help: str
    choices: tuple[str, ...] = ()  # the values a name may take; () = any (the broker checks)
    # Bounds the command line checks (a usage error, exit 2); None = none. A count is also
    # bounded by what its uint32 field carries.
    minimum: float | None = None
    maximum: float | None = None
    range_in_help: bool = False  # --help shows the bounds, e.g. [0<=x<=100]
    # `pools create` shows the default in --help and sends it; otherwise the flag is
    # unset unless given, and the SDK's default goes.
    create_shows_default: bool = False
    # create_pool leaves it unset unless given, so that the broker's default applies (a
    # field with presence on the wire, where 0 means something else than the default).
    broker_default: bool = False


POOL_SETTINGS: Final[tuple[PoolSetting, ...]] = (
    PoolSetting(
        name="strategy",
        type=str,
        default=DEFAULT_STRATEGY,
        flag="--strategy",
        metavar="STRATEGY",
        help=f"How tasks are placed on workers: {', '.join(KNOWN_STRATEGIES)}.",
        create_shows_default=True,
    ),
    PoolSetting(
        name="ab_strategy",
        type=str,
        default="",
        flag="--ab-strategy",
        metavar="STRATEGY",
        help="A/B split: the strategy placing --ab-percent of the tasks ('' = no split).",
    ),
    PoolSetting(
        name="ab_percent",
        type=int,
        default=0,
        flag="--ab-percent",
        metavar="N",
        help="A/B split: the share of tasks (0..100) that --ab-strategy places.",
        minimum=0,
        maximum=100,
        range_in_help=True,
    ),
    PoolSetting(
        name="sticky_timeout_s",
        type=float,
        default=5.0,
        flag="--sticky-timeout",
        metavar="SECONDS",
        help="How long a task with a sticky key waits for its worker's slot.",
        minimum=0,
        range_in_help=True,
        create_shows_default=True,
    ),
    PoolSetting(
        name="max_inflight",
        type=int,
        default=0,
        flag="--max-inflight",
        metavar="N",
        help="Tasks the pool's workers may hold at once; 0 = no limit.",
        minimum=0,
    ),
    PoolSetting(
        name="max_queue",
        type=int,
        default=0,
        flag="--max-queue",
        metavar="N",
        help="Tasks that may wait in the pool; a submit beyond is refused. "
        "0 = the broker's default_max_queue.",
        minimum=0,
    ),
    PoolSetting(
        name="rate_per_s",
        type=float,
        default=0.0,
        flag="--rate",
        metavar="PER_S",
        help="Submits per second to the pool from all clients (a token bucket); 0 = no limit.",
        minimum=0,
    ),
    PoolSetting(
        name="rate_burst",
        type=int,
        default=0,
        flag="--burst",
        metavar="N",
        help="Submits at once under --rate; 0 = the rate, at least 1.",
        minimum=0,
    ),
    PoolSetting(
        name="client_rate_per_s",
        type=float,
        default=0.0,
        flag="--client-rate",
        metavar="PER_S",
        help="Submits per second each client may make to the pool (a token bucket); 0 = no limit.",
        minimum=0,
    ),
    PoolSetting(
        name="client_rate_burst",
        type=int,
        default=0,
        flag="--client-burst",
        metavar="N",
        help="Submits a client may make at once under --client-rate; 0 = the rate, at least 1.",
        minimum=0,
    ),
    PoolSetting(
        name="rate_mode",
        type=str,
        default="reject",
        flag="--rate-mode",
        help="Over a rate limit: reject the submit (the client retries later), or queue "
        "the task with a delay.",
        choices=("reject", "queue"),
    ),
    PoolSetting(
        name="breaker_failures",
        type=int,
        default=0,
        flag="--breaker-failures",
        metavar="N",
        help="Consecutive failures that open a worker's circuit breaker (no new tasks "
        "until its cooldown ends); on `pools set` 0 turns it off, on `pools create` 0 "
        "is the broker's default (5). Handler errors of one task type count only "
        "against a worker that serves that type alone.",
        minimum=0,
    ),
    PoolSetting(
        name="breaker_failure_rate",
        type=float,
        default=0.0,
        flag="--breaker-failure-rate",
        metavar="R",
        help="Also open it when this share (0 to <1) of the worker's last --breaker-window "
        "results failed; 0 = off.",
        minimum=0,
    ),
    PoolSetting(
        name="breaker_window",
        type=int,
        default=0,
        flag="--breaker-window",
        metavar="N",
        help="How many recent results --breaker-failure-rate looks at; 0 = the default.",
        minimum=0,
    ),
    PoolSetting(
        name="breaker_cooldown_s",
        type=float,
        default=0.0,
        flag="--breaker-cooldown",
        metavar="SECONDS",
        help="How long an open breaker keeps new tasks from a worker; 0 = the default.",
        minimum=0,
    ),
    PoolSetting(
        name="lease_s",
        type=float,
        default=0.0,
        flag="--lease",
        metavar="SECONDS",
        help="A task its worker has not confirmed within this long is requeued; "
        "0 = the heartbeat timeout.",
        minimum=0,
    ),
    PoolSetting(
        name="retention_s",
        type=float,
        default=DEFAULT_RETENTION_S,
        flag="--retention",
        metavar="SECONDS",
        help="Finished tasks (with their payloads and results) are deleted this long after "
        "they finished; 0 = kept forever.",
        minimum=0,
        create_shows_default=True,
        broker_default=True,
    ),
    PoolSetting(
        name="adaptive_window",
        type=int,
        default=0,
        flag="--adaptive-window",
        metavar="N",
        help="Adaptive placement: the last costs kept per strategy and task type to compare "
        "them (20..100000); 0 = the default (200).",
        minimum=0,
        maximum=100_000,
        range_in_help=True,
    ),
    PoolSetting(
        name="adaptive_explore_percent",
        type=int,
        default=0,
        flag="--adaptive-explore",
        metavar="PERCENT",
        help="Adaptive placement: the share of tasks (1..100) its challengers place; "
        "0 = the default (20).",
        minimum=0,
        maximum=100,
        range_in_help=True,
    ),
)

# The settings that hold many values: a list of Bulkhead, and a map of fairness key to
# weight (1..MAX_FAIRNESS_WEIGHT). Given, either replaces the pool's whole list or map.
NESTED_SETTINGS: Final = ("bulkheads", "fairness_weights")
MAX_FAIRNESS_WEIGHT: Final = 1000

# Fields of message Pool that describe its settings rather than being ones: the etag, and
# the enum twins of strategy and rate_mode (the broker fills them; the SDK reads the names).
POOL_DESCRIPTION_FIELDS: Final = ("etag", "strategy_kind", "rate_mode_kind")

SETTING_NAMES: Final = (*(s.name for s in POOL_SETTINGS), *NESTED_SETTINGS)
BY_NAME: Final[Mapping[str, PoolSetting]] = {s.name: s for s in POOL_SETTINGS}


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadSetting:
    """One limit of a bulkhead (the limits of one task type in a pool)."""

    name: str  # as in message Bulkhead, Bulkhead and the broker's BulkheadConfig
    type: type[int] | type[float]
    key: str  # in `--bulkhead TYPE:KEY=VALUE,...`
    help: str


BULKHEAD_SETTINGS: Final[tuple[BulkheadSetting, ...]] = (
    BulkheadSetting(name="max_inflight", type=int, key="max_inflight", help="tasks held at once"),
    BulkheadSetting(name="max_queue", type=int, key="max_queue", help="tasks waiting"),
    BulkheadSetting(name="rate_per_s", type=float, key="rate", help="submits per second"),
    BulkheadSetting(name="rate_burst", type=int, key="burst", help="submits at once"),
)


class PoolSettings(TypedDict, total=False):
    """The keyword arguments of `Client.create_pool` and `update_pool` (besides the name
    and the strategy): one key per row of POOL_SETTINGS and NESTED_SETTINGS, for mypy.

    None leaves a setting as it is (update_pool) or at the SDK's default (create_pool).
    """

    ab_strategy: str | None
    ab_percent: int | None
    sticky_timeout_s: float | None
    max_inflight: int | None
    max_queue: int | None
    rate_per_s: float | None
    rate_burst: int | None
    client_rate_per_s: float | None
    client_rate_burst: int | None
    rate_mode: str | None
    breaker_failures: int | None
    breaker_failure_rate: float | None
    breaker_window: int | None
    breaker_cooldown_s: float | None
    lease_s: float | None
    retention_s: float | None
    adaptive_window: int | None
    adaptive_explore_percent: int | None
    bulkheads: Sequence[Bulkhead] | None
    fairness_weights: Mapping[str, int] | None


def create_defaults() -> dict[str, object]:
    """What create_pool sends for each setting not given."""
    return {
        **{s.name: s.default for s in POOL_SETTINGS if not s.broker_default},
        "bulkheads": (),
        "fairness_weights": {},
    }


_Func = TypeVar("_Func", bound=Callable[..., object])
_NESTED_ANNOTATIONS: Final = {
    "bulkheads": "Sequence[Bulkhead]",
    "fairness_weights": "Mapping[str, int]",
}


def _keyword(name: str, *, changes: bool) -> inspect.Parameter:
    """A setting as a keyword argument: with None ("as it is") for `changes`, else with the
    SDK's default (but fairness_weights, whose None has always meant none). A setting with
    `broker_default` shows the table's default, which is the broker's, sent or not."""
    annotation = _NESTED_ANNOTATIONS.get(name) or BY_NAME[name].type.__name__
    if changes or name == "fairness_weights":
        default: object = None
        annotation += " | None"
    elif name in BY_NAME:
        default = BY_NAME[name].default
    else:
        default = create_defaults()[name]
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def with_settings_signature(*, changes: bool) -> Callable[[_Func], _Func]:
    """Show a method's `**settings` to help() and inspect as one keyword argument per
    setting it does not name itself; see `_keyword` for their defaults."""

    def decorate(method: _Func) -> _Func:
        signature = inspect.signature(method)
        named = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        taken = {p.name for p in named}
        settings = [_keyword(n, changes=changes) for n in SETTING_NAMES if n not in taken]
        method.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*named, *settings]
        )
        return method

    return decorate
