"""Broker configuration: a TOML file, then TASKBROKER_* environment overrides, validated once.

The file looks like::

    [broker]
    host = "127.0.0.1"
    port = 50051
    db_path = "taskbroker.db"

    [pools.default]
    strategy = "round_robin"

    [pools.gpu]
    strategy = "least_loaded"
    ab_strategy = "predictive"  # A/B split: 20% of the tasks placed by another strategy
    ab_percent = 20
    sticky_timeout_s = 5.0      # how long a sticky task waits for its worker
    max_inflight = 64           # bulkhead: tasks its workers hold at once (0 = no limit)
    max_queue = 10000           # back-pressure: waiting tasks before submits are refused
    rate_per_s = 500.0          # token bucket over all the pool's submits (0 = no limit)
    client_rate_per_s = 100.0   # token bucket per client identity (0 = no limit)
    rate_mode = "reject"        # over a rate limit: "reject" or "queue"
    breaker_failures = 5        # consecutive failures that open a worker's breaker; 0 = off
    breaker_cooldown_s = 30.0
    retention_s = 604800.0      # finished tasks are deleted a week after (0 = kept forever)
    adaptive_window = 200       # adaptive: costs kept per strategy and task type to compare
    adaptive_explore_percent = 20  # adaptive: share of tasks its challengers place

    [pools.gpu.bulkheads.render]  # per task type
    max_inflight = 8
    max_queue = 500
    rate_per_s = 20.0

    [pools.gpu.fairness_weights]  # per fairness key (tenant); default 1
    tenant-a = 3

Every key of ``[broker]`` can be overridden by ``TASKBROKER_<KEY>`` (for example
``TASKBROKER_PORT=6000``). The pool ``default`` always exists.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.core.strategies import STRATEGIES
from broker.domain import (
    BULKHEAD_LIMITS,
    DEFAULT_POOL,
    MAX_RETENTION_S,
    POOL_SCALAR_SETTINGS,
    RATE_MODES,
    BulkheadConfig,
    PoolConfig,
)
from broker.errors import ConfigError
from broker.store_url import SYNCHRONOUS_MODES, parse_store_url

STRATEGY_NAMES = tuple(STRATEGIES)

TRACING_EXPORTERS = ("none", "console", "otlp")
LOG_FORMATS = ("human", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
AUTH_MODES = ("none", "token")
_POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_PREFIX = "TASKBROKER_"
MAX_QUEUE = 10_000_000
MAX_INFLIGHT = 1_000_000
MAX_RATE = 1_000_000.0
MAX_FAIRNESS_WEIGHT = 1000
# A lease (a pool's lease_s, or heartbeat_timeout_s) must last at least this many heartbeat
# intervals: a worker renews its leases with each heartbeat, so one heartbeat may come late
# by a whole interval (a busy worker, a slow network) before a task is taken back from it.
LEASE_HEARTBEATS = 2


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """Everything the broker needs to start; durations are seconds."""

    host: str = "127.0.0.1"
    port: int = 50051  # 0 = pick a free port
    db_path: str = "taskbroker.db"  # a path, sqlite:///abs.db, sqlite:rel.db or memory:
    sqlite_synchronous: str = "FULL"  # FULL: a commit survives power loss; NORMAL: a crash
    max_payload_bytes: int = 1024 * 1024
    max_result_bytes: int = 1024 * 1024
    # No answer to a read (Get, List, Wait, completion notices) is bigger than this:
    # List pages stop short of it, Wait and completions leave payloads and results out
    # beyond it. The default is gRPC's default receive limit, so any client can read.
    max_response_bytes: int = 4 * 1024 * 1024
    max_traceback_chars: int = 16_000
    max_batch_size: int = 1000
    max_wait_s: float = 300.0
    heartbeat_interval_s: float = 5.0
    heartbeat_timeout_s: float = 15.0
    # A worker holding no task heartbeats this seldom (so a large idle fleet costs little),
    # and is dropped after as many of these intervals as heartbeat_timeout_s is of
    # heartbeat_interval_s (`idle_heartbeat_timeout_s`). 0, or less than
    # heartbeat_interval_s: heartbeat_interval_s.
    idle_heartbeat_interval_s: float = 30.0
    starvation_interval: int = 10  # every Nth dispatch of a pool takes its oldest task
    # A task without a retry policy (that retries WorkerLost) whose worker is lost while
    # holding it (stream lost, missed heartbeats, lease expired) is delivered again at most
    # until it has been delivered this many times; then it is dead-lettered.
    max_deliveries: int = 5
    shutdown_grace_s: float = 10.0
    # A worker an operator drains has this long to finish what it holds; then its stream is
    # ended and what it still holds is requeued.
    drain_timeout_s: float = 600.0
    default_max_queue: int = 100_000  # waiting tasks per pool, unless the pool says otherwise
    max_pending_bytes: int = 256 * 1024 * 1024  # payload bytes of all waiting tasks
    idempotency_retention_s: float = 86_400.0  # how long an idempotency key is remembered
    tracing_exporter: str = "none"  # none, console or otlp (needs the OTLP exporter package)
    tracing_sample_ratio: float = 1.0  # share of traces recorded, 0..1
    otlp_endpoint: str = ""  # for tracing_exporter = "otlp"; "" = the exporter's default
    prometheus_port: int = 0  # serve /metrics for Prometheus on this port; 0 = off
    dashboard_port: int = 0  # serve the web dashboard on this port; 0 = off
    dashboard_tokens: str = ""  # file of its sign-in tokens: "SHA256-HEX ROLE NAME" a line
    metrics_retention_s: float = 7 * 86_400.0  # how long the metrics history is kept
    metrics_compact_after_s: float = 86_400.0  # per-minute rows older than this become hourly
    metrics_flush_s: float = 10.0  # how often the metrics history is written
    task_purge_interval_s: float = 60.0  # how often finished tasks past retention are deleted
    task_purge_batch: int = 1000  # tasks deleted per transaction
    log_format: str = "human"  # human or json: one line per event
    log_level: str = "INFO"
    # Security (README "Security"). TLS when both files are set; with a client CA, mutual
    # TLS: every client must show a certificate that CA signed.
    tls_cert_file: str = ""  # PEM certificate chain of the broker
    tls_key_file: str = ""  # its PEM private key
    tls_client_ca_file: str = ""  # PEM CA(s) of client certificates: mutual TLS
    allow_insecure: bool = False  # plaintext on an address other than loopback
    auth: str = "none"  # none, or token: every call needs a token or a known certificate
    tokens_file: str = ""  # static tokens and certificate identities (TOML)
    reflection: bool = True  # server reflection (for admins only when auth is on)
    # Limits per authenticated identity (a token or certificate); 0 = no limit.
    max_streams_per_identity: int = 1000  # concurrent calls
    max_connections_per_identity: int = 1000  # connections with calls in flight
    max_workers_per_identity: int = 1000  # connected workers
    keepalive_min_ping_s: float = 10.0  # pings more often than this are refused (GOAWAY)
    max_connection_age_s: float = 0.0  # connections are closed after this long; 0 = never
    max_connection_age_grace_s: float = 30.0  # calls still running then get this long
    # Several brokers on one PostgreSQL database (broker.cluster): how long a broker's lease
    # on its pools lasts without renewal (it renews three times per lease), the address
    # the others send workers to ("" = host:port as bound), and its id ("" = a new one).
    cluster_lease_s: float = 5.0
    advertise_address: str = ""
    broker_id: str = ""
    pools: tuple[PoolConfig, ...] = (PoolConfig(name=DEFAULT_POOL),)

    @property
    def max_message_bytes(self) -> int:
        """The largest message the server receives or sends: big enough for a full batch."""
        return max(64 * 1024 * 1024, 2 * self.max_payload_bytes + 1024 * 1024)

    @property
    def idle_heartbeat_s(self) -> float:
        """How often a worker holding no task heartbeats: idle_heartbeat_interval_s, but
        never more often than heartbeat_interval_s."""
        return max(self.idle_heartbeat_interval_s, self.heartbeat_interval_s)

    @property
    def idle_heartbeat_timeout_s(self) -> float:
        """How long a worker holding no task may stay silent: heartbeat_timeout_s scaled
        from heartbeat_interval_s to `idle_heartbeat_s`."""
        return self.heartbeat_timeout_s * self.idle_heartbeat_s / self.heartbeat_interval_s

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "port", "must be 0..65535")
        _check(bool(self.host), "host", "must not be empty")
        _check(bool(self.db_path), "db_path", "must not be empty")
        try:
            parse_store_url(self.db_path)
        except ConfigError as exc:
            raise ConfigError(f"db_path: {exc}") from None
        _check(
            self.sqlite_synchronous in SYNCHRONOUS_MODES,
            "sqlite_synchronous",
            f"must be one of {', '.join(SYNCHRONOUS_MODES)}",
        )
        for key in ("max_payload_bytes", "max_result_bytes", "max_traceback_chars"):
            _check(getattr(self, key) > 0, key, "must be positive")
        _check(self.max_response_bytes >= 64 * 1024, "max_response_bytes", "must be at least 65536")
        _check(1 <= self.max_batch_size <= 100_000, "max_batch_size", "must be 1..100000")
        _check(self.max_wait_s > 0, "max_wait_s", "must be positive")
        _check(self.cluster_lease_s >= 0.5, "cluster_lease_s", "must be at least 0.5")
        _check(self.heartbeat_interval_s > 0, "heartbeat_interval_s", "must be positive")
        _check(
            self.heartbeat_timeout_s >= LEASE_HEARTBEATS * self.heartbeat_interval_s,
            "heartbeat_timeout_s",
            f"must be greater than heartbeat_interval_s: at least {LEASE_HEARTBEATS} heartbeat"
            f" intervals ({LEASE_HEARTBEATS * self.heartbeat_interval_s:g} s),"
            f" got {self.heartbeat_timeout_s:g}",
        )
        _check(
            0 <= self.idle_heartbeat_interval_s <= 3600,
            "idle_heartbeat_interval_s",
            "must be 0..3600",
        )
        _check(self.starvation_interval >= 2, "starvation_interval", "must be at least 2")
        _check(1 <= self.max_deliveries <= 1000, "max_deliveries", "must be 1..1000")
        _check(self.shutdown_grace_s >= 0, "shutdown_grace_s", "must not be negative")
        _check(self.drain_timeout_s > 0, "drain_timeout_s", "must be positive")
        _check(
            1 <= self.default_max_queue <= MAX_QUEUE, "default_max_queue", f"must be 1..{MAX_QUEUE}"
        )
        _check(self.max_pending_bytes > 0, "max_pending_bytes", "must be positive")
        _check(self.idempotency_retention_s > 0, "idempotency_retention_s", "must be positive")
        _check(
            self.tracing_exporter in TRACING_EXPORTERS,
            "tracing_exporter",
            f"must be one of {', '.join(TRACING_EXPORTERS)}",
        )
        _check(0 <= self.tracing_sample_ratio <= 1, "tracing_sample_ratio", "must be 0..1")
        _check(0 <= self.prometheus_port <= 65535, "prometheus_port", "must be 0..65535")
        _check(0 <= self.dashboard_port <= 65535, "dashboard_port", "must be 0..65535")
        _check(
            not self.dashboard_port or bool(self.dashboard_tokens) or self.auth == "token",
            "dashboard_tokens",
            'the dashboard needs a token file to sign in with (or auth = "token")',
        )
        _check(self.metrics_retention_s >= 3600, "metrics_retention_s", "must be at least 3600")
        _check(
            0 < self.metrics_compact_after_s <= self.metrics_retention_s,
            "metrics_compact_after_s",
            "must be positive and at most metrics_retention_s",
        )
        _check(0 < self.metrics_flush_s <= 3600, "metrics_flush_s", "must be 0..3600 seconds")
        _check(
            0 < self.task_purge_interval_s <= 86_400,
            "task_purge_interval_s",
            "must be more than 0 and at most 86400 seconds",
        )
        _check(1 <= self.task_purge_batch <= 100_000, "task_purge_batch", "must be 1..100000")
        _check(
            self.log_format in LOG_FORMATS, "log_format", f"must be one of {', '.join(LOG_FORMATS)}"
        )
        _check(
            self.log_level.upper() in LOG_LEVELS,
            "log_level",
            f"must be one of {', '.join(LOG_LEVELS)}",
        )
        _check(
            bool(self.tls_cert_file) == bool(self.tls_key_file),
            "tls_cert_file",
            "tls_cert_file and tls_key_file go together",
        )
        _check(
            not self.tls_client_ca_file or bool(self.tls_cert_file),
            "tls_client_ca_file",
            "mutual TLS needs tls_cert_file and tls_key_file",
        )
        _check(self.auth in AUTH_MODES, "auth", f"must be one of {', '.join(AUTH_MODES)}")
        for key in (
            "max_streams_per_identity",
            "max_connections_per_identity",
            "max_workers_per_identity",
        ):
            _check(getattr(self, key) >= 0, key, "must be 0 (no limit) or more")
        _check(self.keepalive_min_ping_s >= 0, "keepalive_min_ping_s", "must not be negative")
        _check(self.max_connection_age_s >= 0, "max_connection_age_s", "must not be negative")
        _check(
            self.max_connection_age_grace_s >= 0,
            "max_connection_age_grace_s",
            "must not be negative",
        )
        names = [p.name for p in self.pools]
        _check(DEFAULT_POOL in names, "pools", f"must include {DEFAULT_POOL!r}")
        _check(len(set(names)) == len(names), "pools", "names must be unique")
        for pool in self.pools:
            validate_pool(pool, self.heartbeat_interval_s)


MIN_ADAPTIVE_WINDOW = 20  # adaptive compares no arm on fewer costs than this (MIN_SAMPLES)
MAX_ADAPTIVE_WINDOW = 100_000


def validate_pool(pool: PoolConfig, heartbeat_interval_s: float | None = None) -> None:
    """Raise ConfigError unless the pool's settings are valid; with the broker's
    `heartbeat_interval_s`, its lease too (see check_lease)."""
    _check(
        bool(_POOL_NAME.match(pool.name)),
        f"pools.{pool.name}",
        "a pool name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
    )
    _check(
        pool.strategy in STRATEGY_NAMES,
        f"pools.{pool.name}.strategy",
        f"unknown strategy {pool.strategy!r}; known: {', '.join(STRATEGY_NAMES)}",
    )
    _check(
        not pool.ab_strategy or pool.ab_strategy in STRATEGY_NAMES,
        f"pools.{pool.name}.ab_strategy",
        f"unknown strategy {pool.ab_strategy!r}; known: {', '.join(STRATEGY_NAMES)}",
    )
    _check(0 <= pool.ab_percent <= 100, f"pools.{pool.name}.ab_percent", "must be 0..100")
    _check(
        not pool.ab_percent or bool(pool.ab_strategy),
        f"pools.{pool.name}.ab_percent",
        "needs an ab_strategy",
    )
    _check(
        0 <= pool.sticky_timeout_s <= 86_400,
        f"pools.{pool.name}.sticky_timeout_s",
        "must be 0..86400 seconds",
    )
    key = f"pools.{pool.name}"
    _check_limits(key, pool.max_inflight, pool.max_queue)
    _check_rate(key, "rate", pool.rate_per_s, pool.rate_burst)
    _check_rate(key, "client_rate", pool.client_rate_per_s, pool.client_rate_burst)
    _check(
        pool.rate_mode in RATE_MODES, f"{key}.rate_mode", f"must be one of {', '.join(RATE_MODES)}"
    )
    _check(0 <= pool.breaker_failures <= 1000, f"{key}.breaker_failures", "must be 0 (off) to 1000")
    _check(
        0 <= pool.breaker_failure_rate < 1, f"{key}.breaker_failure_rate", "must be 0 (off) to <1"
    )
    _check(2 <= pool.breaker_window <= 10_000, f"{key}.breaker_window", "must be 2..10000")
    _check(
        0 < pool.breaker_cooldown_s <= 86_400,
        f"{key}.breaker_cooldown_s",
        "must be more than 0 and at most 86400 seconds",
    )
    _check(0 <= pool.lease_s <= 86_400, f"{key}.lease_s", "must be 0..86400 seconds")
    _check(
        0 <= pool.retention_s <= MAX_RETENTION_S,
        f"{key}.retention_s",
        f"must be 0 (keep forever)..{MAX_RETENTION_S:.0f} seconds",
    )
    _check(
        MIN_ADAPTIVE_WINDOW <= pool.adaptive_window <= MAX_ADAPTIVE_WINDOW,
        f"{key}.adaptive_window",
        f"must be {MIN_ADAPTIVE_WINDOW}..{MAX_ADAPTIVE_WINDOW}",
    )
    _check(
        1 <= pool.adaptive_explore_percent <= 100,
        f"{key}.adaptive_explore_percent",
        "must be 1..100",
    )
    if heartbeat_interval_s is not None:
        check_lease(pool, heartbeat_interval_s)
    types = [b.task_type for b in pool.bulkheads]
    _check(len(set(types)) == len(types), f"{key}.bulkheads", "one bulkhead per task type")
    for bulkhead in pool.bulkheads:
        where = f"{key}.bulkheads.{bulkhead.task_type}"
        _check(bool(bulkhead.task_type.strip()), where, "needs a task type")
        _check_limits(where, bulkhead.max_inflight, bulkhead.max_queue)
        _check_rate(where, "rate", bulkhead.rate_per_s, bulkhead.rate_burst)
    for fairness_key, weight in pool.fairness_weights.items():
        _check(
            isinstance(weight, int) and 1 <= weight <= MAX_FAIRNESS_WEIGHT,
            f"{key}.fairness_weights.{fairness_key}",
            f"must be 1..{MAX_FAIRNESS_WEIGHT}, got {weight!r}",
        )


def check_lease(pool: PoolConfig, heartbeat_interval_s: float) -> None:
    """ConfigError unless the pool's lease_s is 0 (the heartbeat timeout) or lasts at least
    LEASE_HEARTBEATS heartbeat intervals: a shorter lease expires between two heartbeats,
    and a task that runs longer than it is taken back again and again."""
    least = LEASE_HEARTBEATS * heartbeat_interval_s
    _check(
        pool.lease_s == 0 or pool.lease_s >= least,
        f"pools.{pool.name}.lease_s",
        f"must be 0 (the heartbeat timeout) or at least {LEASE_HEARTBEATS} heartbeat"
        f" intervals ({least:g} s), got {pool.lease_s:g}",
    )


def _check_limits(key: str, max_inflight: int, max_queue: int) -> None:
    _check(
        0 <= max_inflight <= MAX_INFLIGHT,
        f"{key}.max_inflight",
        f"must be 0 (no limit)..{MAX_INFLIGHT}, got {max_inflight}",
    )
    _check(
        0 <= max_queue <= MAX_QUEUE,
        f"{key}.max_queue",
        f"must be 0 (the default)..{MAX_QUEUE}, got {max_queue}",
    )


def _check_rate(key: str, name: str, rate: float, burst: int) -> None:
    _check(
        0 <= rate <= MAX_RATE,
        f"{key}.{name}_per_s",
        f"must be 0 (no limit)..{MAX_RATE:g}, got {rate}",
    )
    _check(0 <= burst <= 1_000_000, f"{key}.{name}_burst", f"must be 0..1000000, got {burst}")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


_BROKER_KEYS = {f.name: f for f in dataclasses.fields(BrokerConfig) if f.name != "pools"}


def load_config(
    path: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> BrokerConfig:
    """Read the TOML file (if any), apply TASKBROKER_* from env, then explicit overrides.

    Explicit overrides (from command-line flags) win; a value of None is ignored.
    """
    broker_values: dict[str, Any] = {}
    pools: dict[str, PoolConfig] = {DEFAULT_POOL: PoolConfig(name=DEFAULT_POOL)}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        unknown_sections = set(data) - {"broker", "pools"}
        _check(not unknown_sections, ", ".join(sorted(unknown_sections)), "unknown section")
        section = data.get("broker", {})
        _check(isinstance(section, dict), "broker", "must be a table")
        for key, value in section.items():
            broker_values[key] = _coerce(key, value)
        pool_section = data.get("pools", {})
        _check(isinstance(pool_section, dict), "pools", "must be a table of tables")
        for name, table in pool_section.items():
            _check(isinstance(table, dict), f"pools.{name}", "must be a table")
            extra = set(table) - _POOL_KEYS
            _check(not extra, f"pools.{name}.{next(iter(extra), '')}", "unknown key")
            pools[name] = _pool_from_table(name, table)
    for env_key, raw in (env or {}).items():
        if env_key.startswith(ENV_PREFIX):
            key = env_key[len(ENV_PREFIX) :].lower()
            if key in _BROKER_KEYS:
                broker_values[key] = _coerce(key, raw)
    for key, value in overrides.items():
        if value is not None:
            broker_values[key] = _coerce(key, value)
    return BrokerConfig(**broker_values, pools=tuple(pools.values()))


# The keys of a [pools.NAME] table and of its bulkheads: PoolConfig's and BulkheadConfig's
# settings, each of the type of its default.
_POOL_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(PoolConfig) if f.name in POOL_SCALAR_SETTINGS
}
_BULKHEAD_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(BulkheadConfig) if f.name in BULKHEAD_LIMITS
}
_POOL_KEYS = {*_POOL_DEFAULTS, "bulkheads", "fairness_weights"}


def _typed(table: dict[str, Any], where: str, key: str, default: Any) -> Any:
    """table[key] (or the default), of the default's type; ints pass for floats."""
    kind = type(default)
    value = table.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    _check(
        isinstance(value, kind) and not isinstance(value, bool),
        f"{where}.{key}",
        f"expected {kind.__name__}, got {value!r}",
    )
    return value


def _pool_from_table(name: str, table: dict[str, Any]) -> PoolConfig:
    where = f"pools.{name}"
    values = {key: _typed(table, where, key, default) for key, default in _POOL_DEFAULTS.items()}
    bulkheads = []
    section = table.get("bulkheads", {})
    _check(isinstance(section, dict), f"{where}.bulkheads", "must be a table of tables")
    for task_type, limits in section.items():
        at = f"{where}.bulkheads.{task_type}"
        _check(isinstance(limits, dict), at, "must be a table")
        extra = set(limits) - set(_BULKHEAD_DEFAULTS)
        _check(not extra, f"{at}.{next(iter(extra), '')}", "unknown key")
        bulkheads.append(
            BulkheadConfig(
                task_type=task_type,
                **{key: _typed(limits, at, key, d) for key, d in _BULKHEAD_DEFAULTS.items()},
            )
        )
    weights = table.get("fairness_weights", {})
    _check(isinstance(weights, dict), f"{where}.fairness_weights", "must be a table")
    for fairness_key, weight in weights.items():
        _check(
            isinstance(weight, int) and not isinstance(weight, bool),
            f"{where}.fairness_weights.{fairness_key}",
            f"expected int, got {weight!r}",
        )
    return PoolConfig(
        name=name, bulkheads=tuple(bulkheads), fairness_weights=dict(weights), **values
    )


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _coerce(key: str, value: Any) -> Any:
    """Turn a TOML or environment value into the field's type, naming the key on failure."""
    field = _BROKER_KEYS.get(key)
    _check(field is not None, key, "unknown setting")
    assert field is not None
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _BOOLS:
                return _BOOLS[value.lower()]
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind == "str":
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {kind}, got {value!r}") from None
    raise ConfigError(f"{key}: unsupported type {kind}")
