"""The command line without a broker: help, argument validation, one-line errors."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import re
import shlex
import socket
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer.main
import uvloop
from typer.testing import Result

from broker import Broker, load_config
from broker.core.strategies import STRATEGIES
from cli import _common as cli_common
from cli import _worker as cli_worker
from cli import main as cli_main
from cli._common import EVENT_LOOP_ENV
from cli._output import (
    OutputFormat,
    decode_bytes,
    show_task,
    show_tasks,
    show_workers,
    task_dict,
    worker_dict,
)
from cli._output_pools import show_pools, show_stats, stats_dict
from cli._parse import FairnessWeight, bulkhead_text, parse_bulkhead, parse_fairness_weight
from cli.main import KNOWN_STRATEGIES, Label, StateChoice, parse_label, parse_preference
from tests.support.cli import assert_one_line_error, invoke
from tests.support.config import make_config
from tests.support.workers import start_worker
from worker_sdk import (
    AlreadyExists,
    ArmStats,
    Bulkhead,
    BulkheadStats,
    InvalidArgument,
    NotFound,
    Placement,
    PoolInfo,
    PoolStats,
    PreferredLabel,
    RetryPolicy,
    RuntimeStats,
    Stats,
    TaskContext,
    TaskErrorInfo,
    TaskInfo,
    TaskState,
    Worker,
    WorkerError,
    WorkerInfo,
)
from worker_sdk._pool_settings import POOL_SETTINGS

ROOT = Path(__file__).resolve().parent.parent.parent
READMES = [ROOT / "README.md", ROOT / "deploy" / "README.md"]

COMMANDS = [
    [],
    ["serve"],
    ["worker"],
    ["worker", "run"],
    ["submit"],
    ["tasks"],
    ["tasks", "list"],
    ["tasks", "show"],
    ["tasks", "cancel"],
    ["tasks", "retry"],
    ["tasks", "purge"],
    ["workers"],
    ["workers", "list"],
    ["workers", "drain"],
    ["workers", "cordon"],
    ["workers", "uncordon"],
    ["pools"],
    ["pools", "list"],
    ["pools", "create"],
    ["pools", "set"],
    ["pools", "recommend"],
    ["stats"],
    ["metrics"],
    ["metrics", "history"],
    ["config"],
    ["config", "reload"],
    ["config", "history"],
    ["health"],
    ["demo"],
    ["simulate"],
]


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout


def test_root_help_lists_every_command() -> None:
    result = invoke("--help")
    commands = ("serve", "worker", "submit", "tasks", "workers", "pools", "stats", "demo")
    for name in (*commands, "metrics", "config", "simulate"):
        assert name in result.stdout


def test_bad_json_payload() -> None:
    line = assert_one_line_error(invoke("submit", "echo", "--payload", "{not json"), 2)
    assert "--payload" in line
    assert "not valid JSON" in line


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "echo", "--bogus"],
        ["frobnicate"],
        ["submit"],
        ["submit", "echo", "--priority", "5000"],
        ["tasks", "list", "--output", "yaml"],
        ["tasks", "list", "--state", "sleeping"],
        ["tasks", "list", "--limit", "0"],
        ["pools", "create", "gpu", "--ab-percent", "101"],
        ["pools", "create", "gpu", "--sticky-timeout", "-1"],
        ["pools", "set", "gpu", "--ab-percent", "-1"],
        ["pools", "set", "gpu", "--sticky-timeout", "soon"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_flags_are_one_line(args: list[str]) -> None:
    line = assert_one_line_error(invoke(*args), 2)
    assert "--help" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--require", "zone"], "'--require': expected KEY=VALUE, got 'zone'"),
        (["--require", "=eu"], "'--require': expected KEY=VALUE"),
        (["--require", "zone=eu", "--require", "zone=us"], "'--require': label 'zone' given twice"),
        (["--prefer", "zone"], "'--prefer': expected KEY=VALUE[:WEIGHT], got 'zone'"),
        (["--prefer", "=eu:2"], "'--prefer': expected KEY=VALUE[:WEIGHT]"),
        (["--prefer", "zone=eu:heavy"], "weight 'heavy' in 'zone=eu:heavy' is not a whole number"),
        (["--prefer", "zone=eu:"], "weight '' in 'zone=eu:' is not a whole number"),
        (["--prefer", "zone=eu:0"], "weight must be 1..1000, got 0"),
        (["--prefer", "zone=eu:1001"], "weight must be 1..1000, got 1001"),
        (["--anti-affinity", ""], "'--anti-affinity': the group name must not be empty"),
        (["--anti-affinity"], "'--anti-affinity' requires an argument"),
        (["--soft-anti-affinity"], "'--soft-anti-affinity': needs --anti-affinity GROUP"),
        (["--sticky-key", ""], "'--sticky-key': the key must not be empty"),
        (["--routing-key", ""], "'--routing-key': the key must not be empty"),
        (["--routing-key"], "'--routing-key' requires an argument"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else "-",
)
def test_bad_placement_flags_are_one_line(args: list[str], expected: str, closed_port: int) -> None:
    # A usage error, found before the broker (here unreachable) is ever called.
    result = invoke("submit", "echo", "--broker", f"127.0.0.1:{closed_port}", *args)
    line = assert_one_line_error(result, 2)
    assert expected in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("zone=eu", PreferredLabel("zone", "eu", 1)),
        ("zone=eu:5", PreferredLabel("zone", "eu", 5)),
        ("host=a:b:1000", PreferredLabel("host", "a:b", 1000)),
        ("flag=:2", PreferredLabel("flag", "", 2)),
        ("flag=", PreferredLabel("flag", "", 1)),
        ("expr=a=b", PreferredLabel("expr", "a=b", 1)),
    ],
)
def test_parse_preference(text: str, expected: PreferredLabel) -> None:
    assert parse_preference(text) == expected


def test_parse_label() -> None:
    assert parse_label("zone=eu") == Label("zone", "eu")
    assert parse_label("expr=a=b:1") == Label("expr", "a=b:1")
    assert parse_label("flag=") == Label("flag", "")


# What `submit` passes for the delivery options when none is given.
NO_SUBMIT_OPTIONS: dict[str, object] = {
    "retry": None,
    "delay": None,
    "not_before": None,
    "start_timeout": None,
    "execution_timeout": None,
    "idempotency_key": None,
    "fairness_key": None,
}


class RecordingClient:
    """Stands in for SyncClient in `submit`: records what it was asked to submit."""

    calls: list[dict[str, object]] = []

    def __init__(self, address: str) -> None:
        self.address = address

    def __enter__(self) -> RecordingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def submit(self, task_type: str, payload: str | None, **options: object) -> str:
        self.calls.append({"task_type": task_type, "payload": payload, **options})
        return "77"


def test_submit_passes_placement_flags_to_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_common, "SyncClient", RecordingClient)
    monkeypatch.setattr(RecordingClient, "calls", [])
    result = invoke(
        "submit",
        "train",
        *("--require", "gpu=a100", "--require", "zone=eu"),
        *("--prefer", "disk=ssd", "--prefer", "rack=r1:7"),
        *("--anti-affinity", "shard-1", "--soft-anti-affinity"),
        *("--sticky-key", "cache-3", "--routing-key", "user-7"),
    )
    assert (result.exit_code, result.stdout) == (0, "77\n"), result.output
    assert RecordingClient.calls == [
        {
            "task_type": "train",
            "payload": None,
            "priority": 0,
            "pool": "default",
            "require": {"gpu": "a100", "zone": "eu"},
            "prefer": [PreferredLabel("disk", "ssd", 1), PreferredLabel("rack", "r1", 7)],
            "anti_affinity": "shard-1",
            "anti_affinity_soft": True,
            "sticky_key": "cache-3",
            "routing_key": "user-7",
            **NO_SUBMIT_OPTIONS,
        }
    ]
    assert invoke("submit", "plain").exit_code == 0
    assert RecordingClient.calls[-1]["require"] == {}
    assert RecordingClient.calls[-1]["prefer"] == ()
    assert RecordingClient.calls[-1]["anti_affinity"] is None
    assert RecordingClient.calls[-1]["anti_affinity_soft"] is False
    assert RecordingClient.calls[-1]["sticky_key"] is None
    assert RecordingClient.calls[-1]["routing_key"] is None
    assert invoke("submit", "routed", "--routing-key", "user-7").exit_code == 0
    assert RecordingClient.calls[-1]["routing_key"] == "user-7"
    assert RecordingClient.calls[-1]["sticky_key"] is None


SERVER_STRATEGIES = ("round_robin", "least_loaded", "consistent_hash", "adaptive")


class PoolsClient:
    """Stands in for SyncClient in `pools` and `stats`: pools in a class-level dict, with
    the broker's checks (strategy names, unknown and duplicate pools)."""

    pools: dict[str, PoolInfo] = {}
    calls: list[tuple[str, dict[str, object]]] = []
    statistics = Stats(broker_state="running", pools=())

    def __init__(self, address: str) -> None:
        self.address = address

    def __enter__(self) -> PoolsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    @staticmethod
    def _check(pool: PoolInfo) -> None:
        for name in (pool.strategy, pool.ab_strategy):
            if name and name not in SERVER_STRATEGIES:
                known = ", ".join(SERVER_STRATEGIES)
                raise InvalidArgument(f"unknown strategy {name!r}; known: {known}")

    def list_pools(self) -> list[PoolInfo]:
        return list(self.pools.values())

    def create_pool(self, name: str, strategy: str = "round_robin", **options: object) -> PoolInfo:
        self.calls.append(("create_pool", {"name": name, "strategy": strategy, **options}))
        if name in self.pools:
            raise AlreadyExists(f"pool {name!r} exists already")
        pool = PoolInfo(name, strategy, **options)  # type: ignore[arg-type]
        self._check(pool)
        self.pools[name] = pool
        return pool

    def update_pool(self, name: str, **options: object) -> PoolInfo:
        self.calls.append(("update_pool", {"name": name, **options}))
        if name not in self.pools:
            raise NotFound(f"pool {name!r} does not exist")
        changes = {k: v for k, v in options.items() if v is not None}
        pool = PoolInfo(**{**pool_dict_of(self.pools[name]), **changes})  # type: ignore[arg-type]
        self._check(pool)
        self.pools[name] = pool
        return pool

    def stats(self) -> Stats:
        return self.statistics


def pool_dict_of(pool: PoolInfo) -> dict[str, object]:
    return {f.name: getattr(pool, f.name) for f in dataclasses.fields(pool)}


# What `pools create` passes for the limits when none is given: the SDK's defaults.
NO_LIMITS: dict[str, object] = {
    "max_inflight": 0,
    "max_queue": 0,
    "rate_per_s": 0.0,
    "rate_burst": 0,
    "client_rate_per_s": 0.0,
    "client_rate_burst": 0,
    "rate_mode": "reject",
    "breaker_failures": 0,
    "breaker_failure_rate": 0.0,
    "breaker_window": 0,
    "breaker_cooldown_s": 0.0,
    "lease_s": 0.0,
    "retention_s": 604800.0,
    "adaptive_window": 0,
    "adaptive_explore_percent": 0,
    "bulkheads": (),
    "fairness_weights": {},
}
# The same in a pool's JSON.
NO_LIMITS_JSON: dict[str, object] = {**NO_LIMITS, "bulkheads": []}
# What `pools set` passes for each setting not given.
UNCHANGED: dict[str, object] = dict.fromkeys(
    ("strategy", "ab_strategy", "ab_percent", "sticky_timeout_s", *NO_LIMITS)
)


@pytest.fixture
def pools_client(monkeypatch: pytest.MonkeyPatch) -> type[PoolsClient]:
    monkeypatch.setattr(cli_common, "SyncClient", PoolsClient)
    monkeypatch.setattr(
        PoolsClient, "pools", {"default": PoolInfo("default", "round_robin", "", 0, 5.0)}
    )
    monkeypatch.setattr(PoolsClient, "calls", [])
    return PoolsClient


def test_pools_create_passes_the_settings(pools_client: type[PoolsClient]) -> None:
    plain = invoke("pools", "create", "cpu")
    assert plain.exit_code == 0, plain.output
    assert plain.stdout == "pool cpu created (round_robin, sticky timeout 5 s)\n"
    result = invoke(
        "pools",
        "create",
        "gpu",
        *("--strategy", "least_loaded", "--ab-strategy", "adaptive", "--ab-percent", "20"),
        *("--sticky-timeout", "0.5", "-o", "json"),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "name": "gpu",
        "strategy": "least_loaded",
        "ab_strategy": "adaptive",
        "ab_percent": 20,
        "sticky_timeout_s": 0.5,
        **NO_LIMITS_JSON,
    }
    assert pools_client.calls == [
        (
            "create_pool",
            {
                "name": "cpu",
                "strategy": "round_robin",
                "ab_strategy": "",
                "ab_percent": 0,
                "sticky_timeout_s": 5.0,
                **NO_LIMITS,
            },
        ),
        (
            "create_pool",
            {
                "name": "gpu",
                "strategy": "least_loaded",
                "ab_strategy": "adaptive",
                "ab_percent": 20,
                "sticky_timeout_s": 0.5,
                **NO_LIMITS,
            },
        ),
    ]


def test_pools_create_takes_any_strategy_name_the_broker_knows(
    pools_client: type[PoolsClient],
) -> None:
    # Not a fixed choice on the command line: the broker decides.
    assert invoke("pools", "create", "ring", "--strategy", "consistent_hash").exit_code == 0
    line = assert_one_line_error(invoke("pools", "create", "odd", "--strategy", "random"))
    assert "unknown strategy 'random'; known: round_robin, least_loaded" in line
    line = assert_one_line_error(
        invoke("pools", "create", "odd", "--ab-strategy", "coin_flip", "--ab-percent", "5")
    )
    assert "unknown strategy 'coin_flip'" in line
    assert "odd" not in pools_client.pools


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--ab-strategy", "adaptive"], "'--ab-strategy'"),
        (["--ab-percent", "20"], "'--ab-percent'"),
    ],
)
def test_pools_create_ab_options_go_together(
    pools_client: type[PoolsClient], args: list[str], hint: str
) -> None:
    line = assert_one_line_error(invoke("pools", "create", "gpu", *args), 2)
    assert f"{hint}: --ab-strategy and --ab-percent go together" in line
    assert pools_client.calls == []


def test_strategy_help_lists_the_names() -> None:
    for command in (["pools", "create"], ["pools", "set"]):
        shown = " ".join(invoke(*command, "--help").stdout.split())
        for name in KNOWN_STRATEGIES:
            assert name in shown


def test_help_names_every_strategy_the_broker_has() -> None:
    assert set(STRATEGIES) <= set(KNOWN_STRATEGIES)


def test_pools_create_and_set_have_a_flag_per_pool_setting() -> None:
    pools = typer.main.get_command(cli_main.app).commands["pools"]  # type: ignore[attr-defined]
    flags = [s.flag for s in POOL_SETTINGS]
    for name in ("create", "set"):
        opts = [opt for param in pools.commands[name].params for opt in param.opts]
        assert opts[1 : 1 + len(flags)] == flags, name  # after NAME, in the table's order


def test_pools_set_changes_only_what_is_given(pools_client: type[PoolsClient]) -> None:
    result = invoke("pools", "set", "default", "--ab-strategy", "adaptive", "--ab-percent", "10")
    assert result.exit_code == 0, result.output
    assert result.stdout == "pool default updated (round_robin, 10% adaptive, sticky timeout 5 s)\n"
    result = invoke("pools", "set", "default", "--sticky-timeout", "2.5", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "name": "default",
        "strategy": "round_robin",
        "ab_strategy": "adaptive",
        "ab_percent": 10,
        "sticky_timeout_s": 2.5,
        **NO_LIMITS_JSON,
    }
    assert invoke("pools", "set", "default", "--strategy", "consistent_hash").exit_code == 0
    assert pools_client.calls == [
        (
            "update_pool",
            {"name": "default", **UNCHANGED, "ab_strategy": "adaptive", "ab_percent": 10},
        ),
        ("update_pool", {"name": "default", **UNCHANGED, "sticky_timeout_s": 2.5}),
        ("update_pool", {"name": "default", **UNCHANGED, "strategy": "consistent_hash"}),
    ]
    assert pools_client.pools["default"] == PoolInfo(
        "default", "consistent_hash", "adaptive", 10, 2.5
    )
    # An empty A/B strategy is a setting too: it ends the split.
    ended = invoke("pools", "set", "default", "--ab-strategy", "", "--ab-percent", "0")
    assert ended.stdout == "pool default updated (consistent_hash, sticky timeout 2.5 s)\n"


def test_pools_set_errors(pools_client: type[PoolsClient]) -> None:
    line = assert_one_line_error(invoke("pools", "set", "default"), 2)
    assert "nothing to change: give a setting such as --strategy or --max-queue" in line
    line = assert_one_line_error(invoke("pools", "set", "nowhere", "--strategy", "least_loaded"))
    assert "pool 'nowhere' does not exist" in line
    line = assert_one_line_error(invoke("pools", "set", "default", "--strategy", "random"))
    assert "known: round_robin, least_loaded, consistent_hash, adaptive" in line
    assert [name for name, _ in pools_client.calls] == ["update_pool", "update_pool"]


def test_pools_list_shows_the_split_and_sticky_timeout(pools_client: type[PoolsClient]) -> None:
    pools_client.pools["gpu"] = PoolInfo("gpu", "least_loaded", "adaptive", 20, 0.25)
    result = invoke("pools", "list", "--wide")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "STRATEGY" in line)
    assert header.split()[:5] == ["POOL", "STRATEGY", "A/B", "STICKY", "TIMEOUT"]
    rows = {
        line.split()[0]: line.split()[1:]
        for line in lines
        if line.split()[:1] in (["default"], ["gpu"])
    }
    no_limits = ["-", "default", "-", "-", "-", "-", "-", "-"]
    assert rows == {
        "default": ["round_robin", "-", "5", "s", *no_limits],
        "gpu": ["least_loaded", "20%", "adaptive", "0.25", "s", *no_limits],
    }
    listed = json.loads(invoke("pools", "list", "--wide", "-o", "json").stdout)
    assert listed == [
        {
            "name": "default",
            "strategy": "round_robin",
            "ab_strategy": None,
            "ab_percent": 0,
            "sticky_timeout_s": 5.0,
            **NO_LIMITS_JSON,
        },
        {
            "name": "gpu",
            "strategy": "least_loaded",
            "ab_strategy": "adaptive",
            "ab_percent": 20,
            "sticky_timeout_s": 0.25,
            **NO_LIMITS_JSON,
        },
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "echo", "--payload", '{"n": 1}'],
        ["tasks", "list"],
        ["tasks", "show", "1"],
        ["pools", "list"],
        ["pools", "set", "default", "--strategy", "least_loaded"],
        ["workers", "list"],
        ["workers", "cordon", "w-1"],
        ["tasks", "retry", "1"],
        ["stats"],
        ["stats", "--watch"],
        ["metrics", "history"],
        ["pools", "recommend"],
        ["config", "reload"],
        ["config", "history"],
        ["health"],
    ],
    ids=lambda a: " ".join(a),
)
def test_unreachable_broker_is_one_line(args: list[str], closed_port: int) -> None:
    result = invoke(*args, "--broker", f"127.0.0.1:{closed_port}")
    assert_one_line_error(result, 1)


def test_broker_address_from_environment(closed_port: int) -> None:
    address = f"127.0.0.1:{closed_port}"
    line = assert_one_line_error(invoke("stats", "--wide", env={"TASKBROKER_ADDR": address}))
    assert address in line


def test_serve_missing_config_file(tmp_path: Path) -> None:
    line = assert_one_line_error(invoke("serve", "--config", str(tmp_path / "nope.toml")))
    assert "does not exist" in line


def test_serve_config_error_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[broker]\nport = 50051\nmax_batch_size = 0\n\n[pools.gpu]\nstrategy = "x"\n')
    line = assert_one_line_error(invoke("serve", "--config", str(config)))
    assert "max_batch_size" in line


def test_serve_bad_environment_value() -> None:
    line = assert_one_line_error(invoke("serve", env={"TASKBROKER_PORT": "lots"}))
    assert "port" in line


def test_serve_port_out_of_range() -> None:
    line = assert_one_line_error(invoke("serve", "--port", "70000"))
    assert "port" in line


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory, holding worker modules; sys.path and sys.modules restored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("cli_test_raises", "cli_test_no_worker"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("no_colon", "expected MODULE:OBJECT"),
        ("cli_test_missing_module:worker", "cannot import 'cli_test_missing_module'"),
        ("cli.demo:nothing", "has no attribute 'nothing'"),
        ("cli.demo:make_tasks", "must be a worker_sdk.Worker, not function"),
        ("cli_test_raises:worker", "RuntimeError: broken at import"),
        ("cli_test_no_worker:worker", "must be a worker_sdk.Worker, not int"),
    ],
)
def test_worker_run_import_errors(module_dir: Path, target: str, expected: str) -> None:
    (module_dir / "cli_test_raises.py").write_text("raise RuntimeError('broken at import')\n")
    (module_dir / "cli_test_no_worker.py").write_text("worker = 42\n")
    line = assert_one_line_error(invoke("worker", "run", target))
    assert expected in line


def test_worker_import_error_names_the_line(module_dir: Path) -> None:
    (module_dir / "cli_test_raises.py").write_text(
        "x = 1\nraise RuntimeError('broken at import')\n"
    )
    line = assert_one_line_error(invoke("worker", "run", "cli_test_raises:worker"))
    assert "cli_test_raises.py:2" in line


def test_worker_run_runs_on_uvloop_with_its_imports_frozen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the worker's module imported is out of the cyclic collector's sight."""
    frozen: list[int] = []
    loops: list[type] = []

    async def run(worker: object, broker: str | None) -> None:
        frozen.append(gc.get_freeze_count())
        loops.append(type(asyncio.get_running_loop()))

    monkeypatch.setattr(cli_worker, "_run", run)
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    gc.unfreeze()
    try:
        cli_worker.run_worker(Worker(), None)
    finally:
        gc.unfreeze()  # this test process runs on as it was
    assert frozen
    assert frozen[0] > 10_000  # the modules' objects: the SDK, gRPC, protobuf
    assert loops == [uvloop.Loop]


def _task(**changes: object) -> TaskInfo:
    values: dict[str, object] = {
        "id": "42",
        "task_type": "[bold]echo",
        "pool": "default",
        "priority": 5,
        "payload": b'{"n": 1}',
        "state": TaskState.FAILED,
        "attempts": 1,
        "worker_id": "w-1",
        "created_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "assigned_at": None,
        "started_at": None,
        "finished_at": None,
        "result": b"",
        "error": TaskErrorInfo("ValueError", "bad [input]", "Traceback ..."),
        "placement": Placement(),
        "placement_note": "",
        "unschedulable": False,
    }
    values.update(changes)
    return TaskInfo(**values)  # type: ignore[arg-type]


def test_decode_bytes_rule() -> None:
    assert decode_bytes("héllo".encode()) == ("héllo", "utf-8")
    assert decode_bytes(b"\xff\x00") == ("/wA=", "base64")
    assert decode_bytes(b"") == ("", "utf-8")


def test_task_dict_is_json_ready() -> None:
    data = task_dict(_task(result=b"\xff"))
    assert data["created_at"] == "2025-01-02T03:04:05+00:00"
    assert data["assigned_at"] is None
    assert data["state"] == "failed"
    assert (data["payload"], data["payload_encoding"]) == ('{"n": 1}', "utf-8")
    assert (data["result"], data["result_encoding"]) == ("/w==", "base64")
    assert data["error"] == {
        "type": "ValueError",
        "message": "bad [input]",
        "traceback": "Traceback ...",
    }
    assert data["placement"] == {
        "required_labels": {},
        "preferred_labels": [],
        "anti_affinity_group": None,
        "anti_affinity_soft": False,
        "sticky_key": None,
        "routing_key": None,
    }
    assert (data["placement_note"], data["unschedulable"]) == (None, False)


HINTED = Placement(
    required_labels={"zone": "mars", "gpu": "a100"},
    preferred_labels=(PreferredLabel("disk", "ssd"), PreferredLabel("rack", "r1", 7)),
    anti_affinity_group="shard-[1]",
    anti_affinity_soft=True,
    sticky_key="cache-[3]",
    routing_key="user-7",
)
NOTE = "unschedulable: no connected worker takes type 'train' and labels gpu=a100,zone=mars"


def test_task_dict_placement() -> None:
    data = task_dict(
        _task(state=TaskState.PENDING, placement=HINTED, placement_note=NOTE, unschedulable=True)
    )
    assert data["placement"] == {
        "required_labels": {"zone": "mars", "gpu": "a100"},
        "preferred_labels": [
            {"key": "disk", "value": "ssd", "weight": 1},
            {"key": "rack", "value": "r1", "weight": 7},
        ],
        "anti_affinity_group": "shard-[1]",
        "anti_affinity_soft": True,
        "sticky_key": "cache-[3]",
        "routing_key": "user-7",
    }
    assert data["placement_note"] == NOTE
    assert data["unschedulable"] is True


def test_tables_show_placement(capsys: pytest.CaptureFixture[str]) -> None:
    task = _task(
        state=TaskState.PENDING,
        error=None,
        placement=HINTED,
        placement_note=NOTE,
        unschedulable=True,
    )
    show_task(task, OutputFormat.TABLE)
    shown = capsys.readouterr().out
    assert re.search(r"^state +pending \(unschedulable\) *$", shown, re.MULTILINE), shown
    assert re.search(r"^requires +gpu=a100,zone=mars *$", shown, re.MULTILINE), shown
    assert re.search(r"^prefers +disk=ssd:1,rack=r1:7 *$", shown, re.MULTILINE), shown
    assert re.search(r"^anti-affinity +shard-\[1\] \(soft\) *$", shown, re.MULTILINE), shown
    assert re.search(r"^sticky key +cache-\[3\] *$", shown, re.MULTILINE), shown
    assert re.search(r"^routing key +user-7 *$", shown, re.MULTILINE), shown
    assert re.search(rf"^placement +{re.escape(NOTE)} *$", shown, re.MULTILINE), shown
    show_tasks([task, _task(id="43")], OutputFormat.TABLE, wide=True)
    listed = capsys.readouterr().out
    assert "pending (unschedulable)" in listed
    assert listed.count("unschedulable") == 1
    # A task without hints shows no placement rows.
    show_task(_task(), OutputFormat.TABLE)
    plain = capsys.readouterr().out
    for name in ("requires", "prefers", "anti-affinity", "sticky", "routing", "placement"):
        assert name not in plain


def test_stats_show_unschedulable(capsys: pytest.CaptureFixture[str]) -> None:
    pool = PoolStats(
        pool="default",
        strategy="round_robin",
        pending=5,
        active=1,
        succeeded=2,
        failed=0,
        cancelled=0,
        workers=1,
        capacity=4,
        unschedulable=3,
    )
    stats = Stats(broker_state="running", pools=(pool,))
    assert stats_dict(stats)["pools"][0]["unschedulable"] == 3
    show_stats(stats, OutputFormat.TABLE, wide=True)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "UNSCHEDULABLE" in line)
    row = next(line for line in lines if line.split()[:1] == ["default"])
    assert header.split()[2:4] == ["PENDING", "UNSCHEDULABLE"]
    assert row.split()[2:4] == ["5", "3"]


LEARNING_POOL = PoolStats(
    pool="default",
    strategy="round_robin",
    pending=0,
    active=0,
    succeeded=9,
    failed=1,
    cancelled=0,
    workers=2,
    capacity=8,
    unschedulable=0,
    arms=(
        ArmStats("round_robin", placed=8, finished=7, failed=1, mean_wait_s=0.5, mean_run_s=12.5),
        ArmStats("adaptive", placed=2, finished=0, failed=0, mean_wait_s=0.0, mean_run_s=0.0),
    ),
    runtimes=(
        RuntimeStats(
            "[resize]",
            samples=9,
            mean_run_s=0.2,
            stddev_run_s=0.05,
            predictions=6,
            mean_abs_error_s=0.01,
        ),
        RuntimeStats(
            "fresh",
            samples=0,
            mean_run_s=0.0,
            stddev_run_s=0.0,
            predictions=0,
            mean_abs_error_s=0.0,
        ),
    ),
    sticky_hits=3,
    sticky_misses=1,
)
QUIET_POOL = PoolStats("gpu", "least_loaded", 0, 0, 0, 0, 0, 0, 0, 0)


def _rows(shown: str, title: str) -> list[list[str]]:
    """The data rows of the table below `title` in a `stats` table output."""
    lines = shown.splitlines()
    start = lines.index(next(line for line in lines if line.strip() == title))
    rows = []
    for line in lines[start + 4 :]:  # title, blank, header, rule
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def test_stats_show_sticky_hits_arms_and_run_times(
    pools_client: type[PoolsClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    stats = Stats(broker_state="running", pools=(LEARNING_POOL, QUIET_POOL))
    monkeypatch.setattr(pools_client, "statistics", stats)
    result = invoke("stats", "--wide")
    assert result.exit_code == 0, result.output
    shown = result.stdout
    header = next(line for line in shown.splitlines() if "UNSCHEDULABLE" in line)
    assert header.split()[-2:] == ["STICKY", "HITS"]
    rows = {line.split()[0]: line.split() for line in shown.splitlines()[:8] if line.split()}
    assert rows["default"][-2:] == ["75%", "(3/4)"]
    assert rows["gpu"][-1] == "-"
    assert _rows(shown, "strategy arms") == [
        ["default", "round_robin", "8", "7", "1", "500", "ms", "12.5", "s"],
        ["default", "adaptive", "2", "0", "0", "-", "-"],
    ]
    assert _rows(shown, "learned run times") == [
        ["default", "[resize]", "9", "200", "ms", "50", "ms", "6", "10", "ms"],
        ["default", "fresh", "0", "-", "-", "0", "-"],
    ]


def test_stats_without_arms_or_run_times_shows_no_extra_tables(
    pools_client: type[PoolsClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pools_client, "statistics", Stats("running", (QUIET_POOL,)))
    shown = invoke("stats", "--wide").stdout
    assert "gpu" in shown
    assert "strategy arms" not in shown
    assert "learned run times" not in shown


def test_stats_json_carries_everything(
    pools_client: type[PoolsClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    stats = Stats(broker_state="running", pools=(LEARNING_POOL, QUIET_POOL))
    monkeypatch.setattr(pools_client, "statistics", stats)
    data = json.loads(invoke("stats", "--wide", "-o", "json").stdout)
    assert data == stats_dict(stats)
    default, gpu = data["pools"]
    assert (default["sticky_hits"], default["sticky_misses"]) == (3, 1)
    assert default["sticky_hit_rate"] == 0.75
    assert default["arms"][0] == {
        "strategy": "round_robin",
        "placed": 8,
        "finished": 7,
        "failed": 1,
        "mean_wait_s": 0.5,
        "mean_run_s": 12.5,
    }
    assert default["runtimes"][0] == {
        "task_type": "[resize]",
        "samples": 9,
        "mean_run_s": 0.2,
        "stddev_run_s": 0.05,
        "predictions": 6,
        "mean_abs_error_s": 0.01,
    }
    assert (gpu["arms"], gpu["runtimes"], gpu["sticky_hit_rate"]) == ([], [], None)


def test_tables_print_text_verbatim(capsys: pytest.CaptureFixture[str]) -> None:
    show_tasks([_task()], OutputFormat.TABLE, wide=True)
    show_task(_task(), OutputFormat.TABLE)
    out = capsys.readouterr().out
    assert "[bold]echo" in out  # not read as rich markup
    assert "bad [input]" in out


def test_readme_config_example_loads(tmp_path: Path) -> None:
    example = re.search(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert example
    config = tmp_path / "taskbroker.toml"
    config.write_text(example.group(1))
    assert [p.name for p in load_config(config, {}).pools] == ["default", "gpu"]


def _readme_commands() -> list[list[str]]:
    commands = []
    for readme in READMES:
        for block in re.findall(r"```sh\n(.*?)```", readme.read_text(), re.DOTALL):
            for line in block.splitlines():
                _, found, rest = line.partition("taskbroker ")
                if found:
                    commands.append(shlex.split(rest, comments=True))
    return commands


@pytest.mark.parametrize("args", _readme_commands(), ids=shlex.join)
def test_readme_commands_exist(args: list[str]) -> None:
    result = invoke(*args, "--help")
    assert result.exit_code == 0, result.output


# -- resilience: retries, delays, timeouts, keys, dead letters, cordons, pool limits ------


def test_state_choices_are_the_sdk_states() -> None:
    assert [c.value for c in StateChoice] == [s.value for s in TaskState]


def test_submit_passes_resilience_flags_to_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_common, "SyncClient", RecordingClient)
    monkeypatch.setattr(RecordingClient, "calls", [])
    result = invoke(
        "submit",
        "fetch",
        *("--max-attempts", "4", "--backoff", "0.5", "--max-backoff", "20"),
        *("--backoff-multiplier", "3", "--retry-on", "TimeoutError", "--retry-on", "OSError"),
        *("--no-retry-on", "ValueError", "--delay", "30", "--start-timeout", "60"),
        *("--execution-timeout", "5.5", "--idempotency-key", "order-7"),
        *("--fairness-key", "tenant-a"),
    )
    assert (result.exit_code, result.stdout) == (0, "77\n"), result.output
    options = RecordingClient.calls[-1]
    assert options["retry"] == RetryPolicy(
        max_attempts=4,
        initial_backoff_s=0.5,
        max_backoff_s=20.0,
        backoff_multiplier=3.0,
        retryable_errors=("TimeoutError", "OSError"),
        non_retryable_errors=("ValueError",),
    )
    assert {k: options[k] for k in NO_SUBMIT_OPTIONS if k != "retry"} == {
        "delay": 30.0,
        "not_before": None,
        "start_timeout": 60.0,
        "execution_timeout": 5.5,
        "idempotency_key": "order-7",
        "fairness_key": "tenant-a",
    }
    # --max-attempts alone: the SDK's defaults for the rest.
    assert invoke("submit", "fetch", "--max-attempts", "3").exit_code == 0
    assert RecordingClient.calls[-1]["retry"] == RetryPolicy(max_attempts=3)
    # --not-before: with an offset as given, without one in local time.
    assert invoke("submit", "fetch", "--not-before", "2030-01-02T03:04:05+02:00").exit_code == 0
    assert RecordingClient.calls[-1]["not_before"] == datetime(2030, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert invoke("submit", "fetch", "--not-before", "2030-01-02 03:04").exit_code == 0
    local = RecordingClient.calls[-1]["not_before"]
    assert isinstance(local, datetime)
    assert local == datetime(2030, 1, 2, 3, 4).astimezone()
    assert local.tzinfo is not None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--max-attempts", "0"], "'--max-attempts': must be 1 or more, got 0"),
        (["--max-attempts", "-2"], "'--max-attempts': must be 1 or more, got -2"),
        (["--max-attempts", "4294967296"], "'--max-attempts': must be at most 4294967295"),
        (["--max-attempts", "many"], "'--max-attempts'"),
        (["--backoff", "1"], "'--backoff': needs --max-attempts N"),
        (["--max-backoff", "9"], "'--max-backoff': needs --max-attempts N"),
        (["--backoff-multiplier", "3"], "'--backoff-multiplier': needs --max-attempts N"),
        (["--retry-on", "OSError"], "'--retry-on': needs --max-attempts N"),
        (["--no-retry-on", "ValueError"], "'--no-retry-on': needs --max-attempts N"),
        (["--max-attempts", "3", "--backoff", "0"], "'--backoff': must be a number > 0, got 0"),
        (["--max-attempts", "3", "--backoff", "-1"], "'--backoff': must be a number > 0, got -1"),
        (["--max-attempts", "3", "--max-backoff", "inf"], "'--max-backoff': must be a number > 0"),
        (
            ["--max-attempts", "3", "--backoff", "600"],
            "'--backoff': --backoff (600 s) must not be more than --max-backoff (300 s)",
        ),
        (
            ["--max-attempts", "3", "--max-backoff", "0.5"],
            "'--max-backoff': --backoff (1 s) must not be more than --max-backoff (0.5 s)",
        ),
        (["--max-attempts", "3", "--backoff-multiplier", "0.5"], "must be a number >= 1, got 0.5"),
        (
            ["--max-attempts", "3", "--retry-on", " "],
            "'--retry-on': the error type must not be empty",
        ),
        (["--delay", "-1"], "'--delay': must be a number >= 0, got -1"),
        (["--delay", "nan"], "'--delay': must be a number >= 0, got nan"),
        (["--delay", "1e12"], "'--delay': must be at most 31622400 seconds (a year)"),
        (
            ["--delay", "5", "--not-before", "2030-01-01T00:00:00+00:00"],
            "'--delay': give --delay or --not-before, not both",
        ),
        (["--not-before", "tomorrow"], "'--not-before': expected an ISO 8601 time"),
        (["--start-timeout", "0"], "'--start-timeout': must be a number > 0, got 0"),
        (["--execution-timeout", "-5"], "'--execution-timeout': must be a number > 0, got -5"),
        (["--idempotency-key", ""], "'--idempotency-key': the key must not be empty"),
        (["--fairness-key", ""], "'--fairness-key': the key must not be empty"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else "-",
)
def test_bad_resilience_flags_are_one_line(
    args: list[str], expected: str, closed_port: int
) -> None:
    # A usage error, found before the broker (here unreachable) is ever called.
    result = invoke("submit", "echo", "--broker", f"127.0.0.1:{closed_port}", *args)
    line = assert_one_line_error(result, 2)
    assert expected in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("render:max_inflight=4", Bulkhead("render", max_inflight=4)),
        (
            "render:max_inflight=4,max_queue=100,rate=20,burst=5",
            Bulkhead("render", 4, 100, 20.0, 5),
        ),
        ("thumb: rate = 2.5 , max_queue=0", Bulkhead("thumb", rate_per_s=2.5)),
        ("ns:render:burst=3", Bulkhead("ns:render", rate_burst=3)),
    ],
)
def test_parse_bulkhead(text: str, expected: Bulkhead) -> None:
    assert parse_bulkhead(text) == expected


def test_bulkhead_text_is_what_the_flag_takes() -> None:
    for bulkhead in (
        Bulkhead("render", 4, 100, 20.0, 5),
        Bulkhead("thumb", rate_per_s=2.5),
        Bulkhead("big", max_queue=1_000_000, rate_per_s=1e6),
    ):
        assert parse_bulkhead(bulkhead_text(bulkhead)) == bulkhead
    assert bulkhead_text(Bulkhead("render", 4, 0, 20.0)) == "render:max_inflight=4,rate=20"
    assert bulkhead_text(Bulkhead("big", max_queue=1_000_000)) == "big:max_queue=1000000"


def test_parse_fairness_weight() -> None:
    assert parse_fairness_weight("tenant-a=3") == FairnessWeight("tenant-a", 3)
    assert parse_fairness_weight("a=b=1000") == FairnessWeight("a=b", 1000)


BAD_POOL_FLAGS = [
    (["--max-inflight", "-1"], "'--max-inflight': must be 0 or more, got -1"),
    (["--max-queue", "-1"], "'--max-queue': must be 0 or more, got -1"),
    (["--max-queue", "5000000000"], "'--max-queue': must be at most 4294967295"),
    (["--client-rate", "-1"], "'--client-rate': must be a number >= 0, got -1"),
    (["--client-burst", "-1"], "'--client-burst': must be 0 or more, got -1"),
    (["--rate-mode", "drop"], "'--rate-mode'"),
    (["--breaker-failures", "-3"], "'--breaker-failures': must be 0 or more, got -3"),
    (["--breaker-failure-rate", "-0.5"], "'--breaker-failure-rate': must be a number >= 0"),
    (["--breaker-window", "-1"], "'--breaker-window': must be 0 or more, got -1"),
    (["--breaker-cooldown", "-1"], "'--breaker-cooldown': must be a number >= 0, got -1"),
    (["--lease", "-1"], "'--lease': must be a number >= 0, got -1"),
    (["--lease", "soon"], "'--lease'"),
    (["--bulkhead", "render"], "'--bulkhead': expected TYPE:KEY=VALUE[,KEY=VALUE...]"),
    (["--bulkhead", "render:"], "'--bulkhead': expected TYPE:KEY=VALUE[,KEY=VALUE...]"),
    (["--bulkhead", ":max_queue=1"], "'--bulkhead': expected TYPE:KEY=VALUE[,KEY=VALUE...]"),
    (["--bulkhead", "render:max_queue"], "expected KEY=VALUE, got 'max_queue'"),
    (
        ["--bulkhead", "render:speed=3"],
        "unknown key 'speed' in 'render:speed=3'; keys: max_inflight, max_queue, rate, burst",
    ),
    (["--bulkhead", "render:max_inflight=-1"], "max_inflight must be 0..4294967295, got -1"),
    (["--bulkhead", "render:burst=2.5"], "burst '2.5' in 'render:burst=2.5' is not a whole"),
    (["--bulkhead", "render:rate=fast"], "rate 'fast' in 'render:rate=fast' is not a number"),
    (["--bulkhead", "render:rate=-2"], "rate must be a number >= 0, got -2"),
    (["--bulkhead", "render:rate=1,rate=2"], "rate given twice in 'render:rate=1,rate=2'"),
    (
        ["--bulkhead", "render:rate=1", "--bulkhead", "render:max_queue=5"],
        "'--bulkhead': task type 'render' given twice",
    ),
    (["--fairness-weight", "tenant-a"], "'--fairness-weight': expected KEY=N, got 'tenant-a'"),
    (["--fairness-weight", "=3"], "'--fairness-weight': expected KEY=N, got '=3'"),
    (["--fairness-weight", "a=x"], "weight 'x' in 'a=x' is not a whole number"),
    (["--fairness-weight", "a=0"], "weight must be 1..1000, got 0 in 'a=0'"),
    (["--fairness-weight", "a=-1"], "weight must be 1..1000, got -1 in 'a=-1'"),
    (
        ["--fairness-weight", "a=1", "--fairness-weight", "a=2"],
        "'--fairness-weight': key 'a' given twice",
    ),
]


@pytest.mark.parametrize("command", ["create", "set"])
@pytest.mark.parametrize(
    ("args", "expected"), BAD_POOL_FLAGS, ids=lambda a: " ".join(a) if isinstance(a, list) else "-"
)
def test_bad_pool_limits_are_one_line(
    command: str, args: list[str], expected: str, pools_client: type[PoolsClient]
) -> None:
    line = assert_one_line_error(invoke("pools", command, "gpu", *args), 2)
    assert expected in line
    assert pools_client.calls == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--bulkhead", "render:rate=1", "--clear-bulkheads"],
            "'--bulkhead': give --bulkhead or --clear-bulkheads, not both",
        ),
        (
            ["--fairness-weight", "a=2", "--clear-fairness"],
            "'--fairness-weight': give --fairness-weight or --clear-fairness, not both",
        ),
    ],
)
def test_pools_set_replace_or_clear(
    args: list[str], expected: str, pools_client: type[PoolsClient]
) -> None:
    line = assert_one_line_error(invoke("pools", "set", "default", *args), 2)
    assert expected in line
    assert pools_client.calls == []


LIMITS_ARGS = (
    *("--max-inflight", "40", "--max-queue", "1000", "--rate", "500", "--burst", "50"),
    *(
        "--client-rate",
        "50",
    ),
    *("--client-burst", "100", "--rate-mode", "queue", "--breaker-failures", "3"),
    *("--breaker-failure-rate", "0.5", "--breaker-window", "10", "--breaker-cooldown", "15"),
    *("--lease", "20", "--bulkhead", "render:max_inflight=4,max_queue=100,rate=2.5,burst=5"),
    *("--bulkhead", "thumb:max_queue=10"),
    *("--fairness-weight", "tenant-a=3", "--fairness-weight", "tenant-b=1"),
    *("--adaptive-window", "300", "--adaptive-explore", "10"),
)
LIMITS: dict[str, object] = {
    "max_inflight": 40,
    "max_queue": 1000,
    "rate_per_s": 500.0,
    "rate_burst": 50,
    "client_rate_per_s": 50.0,
    "client_rate_burst": 100,
    "rate_mode": "queue",
    "breaker_failures": 3,
    "breaker_failure_rate": 0.5,
    "breaker_window": 10,
    "breaker_cooldown_s": 15.0,
    "lease_s": 20.0,
    "retention_s": 604800.0,
    "adaptive_window": 300,
    "adaptive_explore_percent": 10,
    "bulkheads": (Bulkhead("render", 4, 100, 2.5, 5), Bulkhead("thumb", max_queue=10)),
    "fairness_weights": {"tenant-a": 3, "tenant-b": 1},
}
LIMITS_JSON: dict[str, object] = {
    **LIMITS,
    "bulkheads": [
        {
            "task_type": "render",
            "max_inflight": 4,
            "max_queue": 100,
            "rate_per_s": 2.5,
            "rate_burst": 5,
        },
        {
            "task_type": "thumb",
            "max_inflight": 0,
            "max_queue": 10,
            "rate_per_s": 0.0,
            "rate_burst": 0,
        },
    ],
}


def test_pools_create_and_set_pass_the_limits(pools_client: type[PoolsClient]) -> None:
    created = invoke("pools", "create", "gpu", *LIMITS_ARGS)
    assert created.exit_code == 0, created.output
    assert created.stdout == (
        "pool gpu created (round_robin, sticky timeout 5 s, max in flight 40, max queue 1000, "
        "rate 500/s burst 50 (queue), "
        "client rate 50/s burst 100 (queue), breaker 3 in a row or 50% of 10, 15 s cooldown, "
        "lease 20 s, bulkheads render:max_inflight=4,max_queue=100,rate=2.5,burst=5 "
        "thumb:max_queue=10, fairness tenant-a=3,tenant-b=1)\n"
    )
    assert pools_client.calls[-1] == (
        "create_pool",
        {
            "name": "gpu",
            "strategy": "round_robin",
            "ab_strategy": "",
            "ab_percent": 0,
            "sticky_timeout_s": 5.0,
            **LIMITS,
        },
    )
    # Each flag alone changes its setting alone.
    changes: list[tuple[list[str], dict[str, object]]] = [
        (["--max-inflight", "0"], {"max_inflight": 0}),
        (["--max-queue", "50"], {"max_queue": 50}),
        (["--rate", "70"], {"rate_per_s": 70.0}),
        (["--burst", "80"], {"rate_burst": 80}),
        (["--client-rate", "7.5"], {"client_rate_per_s": 7.5}),
        (["--client-burst", "9"], {"client_rate_burst": 9}),
        (["--rate-mode", "REJECT"], {"rate_mode": "reject"}),
        (["--breaker-failures", "8"], {"breaker_failures": 8}),
        (["--breaker-failure-rate", "0"], {"breaker_failure_rate": 0.0}),
        (["--breaker-window", "30"], {"breaker_window": 30}),
        (["--breaker-cooldown", "2"], {"breaker_cooldown_s": 2.0}),
        (["--lease", "0"], {"lease_s": 0.0}),
        (["--bulkhead", "video:max_inflight=1"], {"bulkheads": (Bulkhead("video", 1),)}),
        (["--clear-bulkheads"], {"bulkheads": ()}),
        (["--fairness-weight", "tenant-c=7"], {"fairness_weights": {"tenant-c": 7}}),
        (["--clear-fairness"], {"fairness_weights": {}}),
        (["--adaptive-window", "0"], {"adaptive_window": 0}),
        (["--adaptive-explore", "5"], {"adaptive_explore_percent": 5}),
    ]
    for args, change in changes:
        result = invoke("pools", "set", "gpu", *args)
        assert result.exit_code == 0, result.output
        assert pools_client.calls[-1] == ("update_pool", {"name": "gpu", **UNCHANGED, **change})
    assert pools_client.pools["gpu"] == PoolInfo(
        "gpu",
        "round_robin",
        max_inflight=0,
        max_queue=50,
        rate_per_s=70.0,
        rate_burst=80,
        client_rate_per_s=7.5,
        client_rate_burst=9,
        rate_mode="reject",
        breaker_failures=8,
        breaker_failure_rate=0.0,
        breaker_window=30,
        breaker_cooldown_s=2.0,
        lease_s=0.0,
        adaptive_window=0,
        adaptive_explore_percent=5,
        bulkheads=(),
        fairness_weights={},
    )


def test_pools_list_shows_the_limits(pools_client: type[PoolsClient]) -> None:
    pools_client.pools["gpu"] = PoolInfo("gpu", "least_loaded", **LIMITS)  # type: ignore[arg-type]
    result = invoke("pools", "list", "--wide")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "STRATEGY" in line)
    assert re.split(r"\s{2,}", header.strip()) == [
        "POOL",
        "STRATEGY",
        "A/B",
        "STICKY TIMEOUT",
        "MAX IN FLIGHT",
        "MAX QUEUE",
        "RATE",
        "CLIENT RATE",
        "BREAKER",
        "LEASE",
        "BULKHEADS",
        "FAIRNESS",
    ]
    gpu = next(line for line in lines if line.split()[:1] == ["gpu"])
    assert re.split(r"\s{2,}", gpu.strip()) == [
        "gpu",
        "least_loaded",
        "-",
        "5 s",
        "40",
        "1000",
        "500/s burst 50 (queue)",
        "50/s burst 100 (queue)",
        "3 in a row or 50% of 10, 15 s cooldown",
        "20 s",
        "render:max_inflight=4,max_queue=100,rate=2.5,burst=5 thumb:max_queue=10",
        "tenant-a=3,tenant-b=1",
    ]
    listed = json.loads(invoke("pools", "list", "--wide", "-o", "json").stdout)
    assert listed[1] == {
        "name": "gpu",
        "strategy": "least_loaded",
        "ab_strategy": None,
        "ab_percent": 0,
        "sticky_timeout_s": 5.0,
        **LIMITS_JSON,
    }


def test_tasks_retry_usage_errors(closed_port: int) -> None:
    broker = ("--broker", f"127.0.0.1:{closed_port}")
    line = assert_one_line_error(invoke("tasks", "retry", *broker), 2)
    assert "nothing to retry: give task ids or --dead-letter POOL" in line
    line = assert_one_line_error(invoke("tasks", "retry", "7", "--limit", "5", *broker), 2)
    assert "'--limit': needs --dead-letter POOL" in line
    line = assert_one_line_error(invoke("tasks", "retry", "--dead-letter", "d", "--limit", "0"), 2)
    assert "'--limit': must be 1 or more, got 0" in line
    line = assert_one_line_error(invoke("tasks", "retry", "--dead-letter", "", *broker), 2)
    assert "'--dead-letter': the pool name must not be empty" in line


def _worker(**changes: object) -> WorkerInfo:
    values: dict[str, object] = {
        "worker_id": "w-1",
        "pool": "default",
        "labels": {},
        "capacity": 4,
        "task_types": ("echo",),
        "in_flight": 1,
        "load": 0.25,
        "connected_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "last_heartbeat": None,
        "draining": False,
    }
    values.update(changes)
    return WorkerInfo(**values)  # type: ignore[arg-type]


def test_workers_show_cordon_and_breaker(capsys: pytest.CaptureFixture[str]) -> None:
    workers = [
        _worker(),
        _worker(worker_id="w-2", cordoned=True, breaker="open", consecutive_failures=5),
        _worker(worker_id="w-3", draining=True, cordoned=True, breaker="half_open"),
    ]
    show_workers(workers, OutputFormat.TABLE, wide=True)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "WORKER" in line)
    assert header.split()[-2:] == ["STATE", "BREAKER"]
    cells = {
        line.split()[0]: re.split(r"\s{2,}", line.strip())[-2:]
        for line in lines
        if line.split()[:1] in (["w-1"], ["w-2"], ["w-3"])
    }
    assert cells == {
        "w-1": ["active", "closed"],
        "w-2": ["cordoned", "open (5 failed in a row)"],
        "w-3": ["draining, cordoned", "half_open"],
    }
    keys = ("draining", "cordoned", "breaker", "consecutive_failures")
    assert [[worker_dict(w)[k] for k in keys] for w in workers] == [
        [False, False, "closed", 0],
        [False, True, "open", 5],
        [True, True, "half_open", 0],
    ]


RESILIENT = {
    "retry": RetryPolicy(3, 0.5, 60.0, 3.0, ("TimeoutError", "OSError"), ("ValueError",)),
    "not_before": datetime(2999, 1, 2, 3, 4, 5, tzinfo=UTC),
    "start_timeout": 60.0,
    "execution_timeout": 0.25,
    "idempotency_key": "order-[7]",
    "fairness_key": "tenant-a",
}


def test_task_dict_resilience_fields() -> None:
    data = task_dict(_task(state=TaskState.PENDING, **RESILIENT))
    assert data["retry"] == {
        "max_attempts": 3,
        "initial_backoff_s": 0.5,
        "max_backoff_s": 60.0,
        "backoff_multiplier": 3.0,
        "retryable_errors": ["TimeoutError", "OSError"],
        "non_retryable_errors": ["ValueError"],
    }
    assert data["not_before"] == "2999-01-02T03:04:05+00:00"
    assert (data["start_timeout_s"], data["execution_timeout_s"]) == (60.0, 0.25)
    assert (data["idempotency_key"], data["fairness_key"]) == ("order-[7]", "tenant-a")
    plain = task_dict(_task())
    for key in ("retry", "not_before", "start_timeout_s", "execution_timeout_s"):
        assert plain[key] is None
    assert (plain["idempotency_key"], plain["fairness_key"]) == (None, None)


def test_tables_show_resilience_options(capsys: pytest.CaptureFixture[str]) -> None:
    task = _task(state=TaskState.PENDING, error=None, **RESILIENT)
    show_task(task, OutputFormat.TABLE)
    shown = capsys.readouterr().out
    rows = {
        "state": "pending (delayed)",
        "retry": "3 attempts, backoff 0.5 s x3 up to 60 s, on TimeoutError,OSError, "
        "not on ValueError",
        "delayed until": _when_local(RESILIENT["not_before"]),
        "start timeout": "60 s",
        "execution timeout": "0.25 s",
        "idempotency key": "order-[7]",
        "fairness key": "tenant-a",
    }
    for name, value in rows.items():
        assert re.search(rf"^{name} +{re.escape(value)} *$", shown, re.MULTILINE), (name, shown)
    show_tasks([task, _task(id="43", state=TaskState.DEAD_LETTER)], OutputFormat.TABLE, wide=True)
    listed = capsys.readouterr().out
    assert "pending (delayed)" in listed
    assert " dead_letter " in listed
    # A delay that has passed is no longer shown as one; an unset option has no row.
    past = _task(state=TaskState.PENDING, error=None, not_before=datetime(2000, 1, 1, tzinfo=UTC))
    show_task(past, OutputFormat.TABLE)
    shown = capsys.readouterr().out
    assert re.search(r"^state +pending *$", shown, re.MULTILINE), shown
    for name in ("retry", "start timeout", "execution timeout", "idempotency", "fairness"):
        assert name not in shown


def _when_local(moment: object) -> str:
    assert isinstance(moment, datetime)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


FLOW_POOL = dataclasses.replace(
    QUIET_POOL,
    pending=7,
    delayed=4,
    dead_letter=2,
    rejected=11,
    rate_limited=12,
    deduplicated=13,
    retried=14,
    timed_out=15,
    expired=16,
    lease_expired=17,
    reconciled=18,
    max_queue=1000,
    max_inflight=40,
    bulkheads=(
        BulkheadStats("[render]", pending=3, in_flight=2, max_queue=100, max_inflight=4),
        BulkheadStats("thumb", pending=1, in_flight=0, max_queue=0, max_inflight=0),
    ),
)


def test_stats_show_flow_control_and_bulkheads(
    pools_client: type[PoolsClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    stats = Stats("running", (FLOW_POOL, LEARNING_POOL))
    monkeypatch.setattr(pools_client, "statistics", stats)
    result = invoke("stats", "--wide")
    assert result.exit_code == 0, result.output
    shown = result.stdout
    lines = shown.splitlines()
    header = next(line for line in lines if "UNSCHEDULABLE" in line)
    assert re.split(r"\s{2,}", header.strip())[2:10] == [
        "PENDING",
        "UNSCHEDULABLE",
        "DELAYED",
        "ACTIVE",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "DEAD LETTER",
    ]
    gpu = next(line for line in lines if line.split()[:1] == ["gpu"])
    assert gpu.split()[2:10] == ["7", "0", "4", "0", "0", "0", "0", "2"]
    flow_header = lines[
        lines.index(next(x for x in lines if x.strip() == "limits and flow control")) + 2
    ]
    assert re.split(r"\s{2,}", flow_header.strip()) == [
        "POOL",
        "MAX QUEUE",
        "MAX IN FLIGHT",
        "REJECTED",
        "RATE LIMITED",
        "DEDUPLICATED",
        "RETRIED",
        "TIMED OUT",
        "EXPIRED",
        "LEASE EXPIRED",
        "RECONCILED",
    ]
    assert _rows(shown, "limits and flow control") == [
        ["gpu", "1000", "40", "11", "12", "13", "14", "15", "16", "17", "18"],
        ["default", "-", "-", "0", "0", "0", "0", "0", "0", "0", "0"],
    ]
    assert _rows(shown, "bulkheads") == [
        ["gpu", "[render]", "3", "2", "100", "4"],
        ["gpu", "thumb", "1", "0", "pool's", "-"],
    ]
    data = json.loads(invoke("stats", "--wide", "-o", "json").stdout)
    assert data == stats_dict(stats)
    flow = data["pools"][0]
    assert {k: flow[k] for k in ("pending", "delayed", "dead_letter")} == {
        "pending": 7,
        "delayed": 4,
        "dead_letter": 2,
    }
    assert [flow[k] for k in ("rejected", "rate_limited", "deduplicated", "retried")] == [
        11,
        12,
        13,
        14,
    ]
    assert [flow[k] for k in ("timed_out", "expired", "lease_expired", "reconciled")] == [
        15,
        16,
        17,
        18,
    ]
    assert (flow["max_queue"], flow["max_inflight"]) == (1000, 40)
    assert flow["bulkheads"][0] == {
        "task_type": "[render]",
        "pending": 3,
        "in_flight": 2,
        "max_queue": 100,
        "max_inflight": 4,
    }
    assert data["pools"][1]["bulkheads"] == []


def test_stats_without_bulkheads_shows_no_bulkhead_table(
    pools_client: type[PoolsClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pools_client, "statistics", Stats("running", (QUIET_POOL,)))
    shown = invoke("stats", "--wide").stdout
    assert "limits and flow control" in shown
    assert "bulkheads" not in shown


# -- the same against a real broker, in process -------------------------------------------


class Live:
    """The command line against the in-process broker, run off its event loop."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def run(self, *args: str) -> Result:
        return await asyncio.to_thread(invoke, *args, "--broker", self.address)

    async def json(self, *args: str) -> Any:
        result = await self.run(*args, "-o", "json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    async def error(self, *args: str, exit_code: int = 1) -> str:
        return assert_one_line_error(await self.run(*args), exit_code)


WORKER_ID = "cli-worker-1"


@pytest.fixture
def live(broker: Broker) -> Live:
    return Live(broker.address)


@pytest.fixture
async def live_worker(broker: Broker) -> AsyncIterator[str]:
    """A worker with `echo`, `boom` (raises ValueError) and `broken` (raises WorkerError,
    the worker's own fault) in the default pool; its id."""
    worker = Worker(capacity=2, worker_id=WORKER_ID)

    @worker.task("echo")
    async def echo(ctx: TaskContext) -> bytes:
        return ctx.payload

    @worker.task("boom")
    async def boom(ctx: TaskContext) -> None:
        raise ValueError("kaboom")

    @worker.task("broken")
    async def broken(ctx: TaskContext) -> None:
        raise WorkerError("no disk")

    run = await start_worker(worker, broker.address)
    yield WORKER_ID
    await worker.shutdown(grace=2)
    await run


async def test_live_submit_options_are_kept_and_shown(live: Live) -> None:
    # No worker: the task stays pending, delayed.
    args = (
        *("submit", "echo", "--max-attempts", "3", "--backoff", "0.5", "--retry-on", "OSError"),
        *("--delay", "60", "--start-timeout", "600", "--execution-timeout", "5"),
        *("--idempotency-key", "order-7", "--fairness-key", "tenant-a"),
    )
    first = await live.run(*args)
    assert first.exit_code == 0, first.output
    task_id = first.stdout.strip()
    again = await live.run(*args)
    assert (again.exit_code, again.stdout) == (0, f"{task_id}\n")  # deduplicated
    task = await live.json("tasks", "show", task_id)
    assert task["retry"] == {
        "max_attempts": 3,
        "initial_backoff_s": 0.5,
        "max_backoff_s": 300.0,
        "backoff_multiplier": 2.0,
        "retryable_errors": ["OSError"],
        "non_retryable_errors": [],
    }
    not_before = datetime.fromisoformat(task["not_before"])
    assert 50 < (not_before - datetime.now(UTC)).total_seconds() <= 60
    assert (task["start_timeout_s"], task["execution_timeout_s"]) == (600.0, 5.0)
    assert (task["idempotency_key"], task["fairness_key"]) == ("order-7", "tenant-a")
    shown = (await live.run("tasks", "show", task_id)).stdout
    assert re.search(r"^state +pending \(delayed\) *$", shown, re.MULTILINE), shown
    assert re.search(
        r"^retry +3 attempts, backoff 0.5 s x2 up to 300 s, on OSError *$", shown, re.M
    )
    for name in ("delayed until", "start timeout", "execution timeout", "idempotency key"):
        assert re.search(rf"^{name} +\S", shown, re.MULTILINE), (name, shown)
    assert "pending (delayed)" in (await live.run("tasks", "list", "--wide")).stdout
    stats = await live.json("stats")
    default = next(p for p in stats["pools"] if p["pool"] == "default")
    assert (default["pending"], default["delayed"], default["deduplicated"]) == (1, 1, 1)
    assert default["max_queue"] > 0
    assert [b["task_type"] for b in default["bulkheads"]] == ["echo"]
    table = (await live.run("stats", "--wide")).stdout
    assert "limits and flow control" in table
    assert ["default", "echo", "1", "0", "pool's", "-"] in _rows(table, "bulkheads")


async def test_live_submit_refuses_what_the_broker_refuses(live: Live) -> None:
    line = await live.error("submit", "echo", "--max-attempts", "101")
    assert "retry max_attempts must be 1..100, got 101" in line
    line = await live.error("submit", "echo", "--start-timeout", "99999999")
    assert "start_timeout_s must be" in line
    assert await live.json("tasks", "list") == []


async def test_live_dead_letter_and_retry(live: Live, live_worker: str) -> None:
    failed = await live.run(
        *("submit", "boom", "--max-attempts", "2", "--backoff", "0.01", "--max-backoff", "0.01"),
        *("--wait", "--timeout", "20"),
    )
    line = assert_one_line_error(failed)
    dead = re.fullmatch(
        r"error: task (\S+) failed after 2 attempts \(dead letter\): ValueError: kaboom", line
    )
    assert dead, line
    dead_id = dead.group(1)
    once = await live.error("submit", "boom", "--wait", "--timeout", "20")
    failed_id = re.fullmatch(r"error: task (\S+) failed: ValueError: kaboom", once)
    assert failed_id, once
    listed = await live.json("tasks", "list", "--state", "dead_letter")
    assert [(t["id"], t["state"], t["attempts"]) for t in listed] == [(dead_id, "dead_letter", 2)]
    table = (await live.run("tasks", "list", "--wide", "--state", "DEAD_LETTER")).stdout
    assert re.search(rf"^ *{dead_id} +boom +default +0 +dead_letter +2 ", table, re.M), table
    stats = await live.json("stats")
    default = next(p for p in stats["pools"] if p["pool"] == "default")
    assert (default["dead_letter"], default["failed"], default["retried"]) == (1, 1, 1)

    # Cordoned, the worker takes no retried task: they stay pending for us to see.
    cordoned = await live.json("workers", "cordon", live_worker)
    assert cordoned["cordoned"] is True
    assert await live.json("tasks", "retry", "--dead-letter", "other") == []
    assert (await live.run("tasks", "retry", "--dead-letter", "other")).stdout == (
        "no tasks retried\n"
    )
    retried = await live.json("tasks", "retry", "--dead-letter", "default", "--limit", "5")
    assert [(t["id"], t["state"], t["attempts"]) for t in retried] == [(dead_id, "pending", 0)]
    result = await live.run("tasks", "retry", failed_id.group(1))
    assert result.exit_code == 0, result.output
    assert re.search(rf"^ *{failed_id.group(1)} +boom +default +0 +pending ", result.stdout, re.M)
    assert await live.json("tasks", "list", "--state", "dead_letter") == []

    line = await live.error("tasks", "retry", dead_id)
    assert f"task {dead_id} is pending; only failed or dead-lettered tasks can be retried" in line
    line = await live.error("tasks", "retry", "nope")
    assert "'nope' is not a task id" in line
    line = await live.error("tasks", "retry", "--dead-letter", "nowhere")
    assert "pool 'nowhere' does not exist" in line


async def test_live_cordon_and_breaker(live: Live, live_worker: str) -> None:
    (worker,) = await live.json("workers", "list")
    assert (worker["cordoned"], worker["breaker"], worker["consecutive_failures"]) == (
        False,
        "closed",
        0,
    )
    updated = await live.json("pools", "set", "default", "--breaker-failures", "1")
    assert updated["breaker_failures"] == 1
    # (A ValueError of one of its two types would be the task's fault, not the worker's.)
    await live.error("submit", "broken", "--wait", "--timeout", "20")
    (worker,) = await live.json("workers", "list")
    assert (worker["breaker"], worker["consecutive_failures"]) == ("open", 1)
    table = (await live.run("workers", "list", "--wide")).stdout
    assert re.search(rf"{live_worker} .* active +open \(1 failed in a row\) *$", table, re.M), table

    cordoned = await live.run("workers", "cordon", live_worker)
    assert cordoned.exit_code == 0, cordoned.output
    assert re.search(rf"{live_worker} .* cordoned +open", cordoned.stdout), cordoned.stdout
    (worker,) = await live.json("workers", "list")
    assert worker["cordoned"] is True
    uncordoned = await live.json("workers", "uncordon", live_worker)
    assert (uncordoned["worker_id"], uncordoned["cordoned"]) == (live_worker, False)
    assert " active " in (await live.run("workers", "list", "--wide")).stdout

    for command in ("cordon", "uncordon"):
        line = await live.error("workers", command, "no-such-worker")
        assert "worker 'no-such-worker' is not connected" in line


async def test_live_pool_limits(live: Live) -> None:
    created = await live.json("pools", "create", "gpu", *LIMITS_ARGS)
    assert created == {
        "name": "gpu",
        "strategy": "round_robin",
        "ab_strategy": None,
        "ab_percent": 0,
        "sticky_timeout_s": 5.0,
        **LIMITS_JSON,
    }
    (listed,) = [p for p in await live.json("pools", "list") if p["name"] == "gpu"]
    assert listed == created
    changed = await live.json("pools", "set", "gpu", "--max-queue", "50", "--clear-bulkheads")
    assert changed == {**created, "max_queue": 50, "bulkheads": []}
    changed = await live.json(
        "pools", "set", "gpu", "--bulkhead", "video:rate=3", "--fairness-weight", "t=2"
    )
    assert (changed["bulkheads"], changed["fairness_weights"]) == (
        [
            {
                "task_type": "video",
                "max_inflight": 0,
                "max_queue": 0,
                "rate_per_s": 3.0,
                "rate_burst": 0,
            }
        ],
        {"t": 2},
    )
    assert (await live.json("pools", "set", "gpu", "--clear-fairness"))["fairness_weights"] == {}
    table = (await live.run("pools", "list", "--wide")).stdout
    gpu = next(line for line in table.splitlines() if line.split()[:1] == ["gpu"])
    assert "video:rate=3" in gpu
    assert "3 in a row or 50% of 10, 15 s cooldown" in gpu

    # Refused by the broker (exit 1) or the command line (exit 2): nothing changes.
    before = await live.json("pools", "list")
    line = await live.error("pools", "set", "gpu", "--breaker-failure-rate", "1.5")
    assert "breaker_failure_rate: must be 0 (off) to <1" in line
    line = await live.error("pools", "set", "gpu", "--max-queue", "20000000")
    assert "max_queue: must be 0 (the default)..10000000, got 20000000" in line
    line = await live.error("pools", "set", "gpu", "--max-inflight", "-1", exit_code=2)
    assert "'--max-inflight': must be 0 or more, got -1" in line
    line = await live.error("pools", "set", "gpu", "--bulkhead", "render:lots", exit_code=2)
    assert "'--bulkhead'" in line
    line = await live.error("pools", "set", "nowhere", "--lease", "3")
    assert "pool 'nowhere' does not exist" in line
    line = await live.error("pools", "create", "cpu", "--max-queue", "-5", exit_code=2)
    assert "'--max-queue': must be 0 or more, got -5" in line
    line = await live.error("pools", "create", "cpu", "--fairness-weight", "a=5000", exit_code=2)
    assert "weight must be 1..1000" in line
    assert await live.json("pools", "list") == before


async def test_live_purge_deletes_finished_tasks_only(live: Live, live_worker: str) -> None:
    done = (await live.run("submit", "echo", "--payload", '"hi"', "--wait")).stdout
    assert done.strip() == '"hi"'
    await live.error("submit", "boom", "--wait", "--timeout", "20")
    pending = (await live.run("submit", "nobody-runs-this")).stdout.strip()

    assert await live.json("tasks", "purge", "--older-than", "1h") == {"deleted": 0}
    result = await live.run("tasks", "purge", "--state", "failed", "--pool", "default")
    assert (result.exit_code, result.stdout) == (0, "1 finished task deleted\n"), result.output
    assert await live.json("tasks", "purge") == {"deleted": 1}
    assert [t["id"] for t in await live.json("tasks", "list")] == [pending]
    stats = await live.json("stats")
    default = next(p for p in stats["pools"] if p["pool"] == "default")
    assert (default["succeeded"], default["failed"], default["pending"]) == (0, 0, 1)

    line = await live.error("tasks", "purge", "--pool", "nowhere")
    assert "pool 'nowhere' does not exist" in line
    line = await live.error("tasks", "purge", "--state", "pending", exit_code=2)
    assert "'pending' is not one of" in line
    line = await live.error("tasks", "purge", "--older-than", "soon", exit_code=2)
    assert "'--older-than'" in line
    assert [t["id"] for t in await live.json("tasks", "list")] == [pending]


async def test_live_pool_retention(live: Live) -> None:
    created = await live.run("pools", "create", "keep", "--retention", "0")
    assert created.stdout.endswith(", finished tasks kept forever)\n"), created.output
    (keep,) = [p for p in await live.json("pools", "list") if p["name"] == "keep"]
    assert keep["retention_s"] == 0.0
    updated = await live.json("pools", "set", "keep", "--retention", "3600")
    assert updated["retention_s"] == 3600.0
    default = await live.json("pools", "set", "default", "--max-queue", "10")
    assert default["retention_s"] == 604800.0  # the default, kept by an update
    line = await live.error("pools", "set", "keep", "--retention", "-1", exit_code=2)
    assert "--retention" in line


async def test_live_submit_wait_names_the_accepted_task_on_stderr(
    live: Live, live_worker: str
) -> None:
    done = await live.run("submit", "echo", "--payload", '"hi"', "--wait")
    assert (done.exit_code, done.stdout) == (0, '"hi"\n'), done.output
    accepted = re.fullmatch(r"task (\S+) accepted; waiting\.\.\.\n", done.stderr)
    assert accepted, done.stderr
    shown = await live.json("tasks", "show", accepted.group(1))
    assert (shown["state"], shown["result"]) == ("succeeded", '"hi"')
    # A wait that fails names the task, which was accepted and goes on waiting for a worker.
    late = await live.run("submit", "nobody-runs-this", "--wait", "--timeout", "0.2")
    assert (late.exit_code, late.stdout) == (1, ""), late.output
    failed = re.fullmatch(
        r"task (\S+) accepted; waiting\.\.\.\n"
        r"error: task \1 did not finish within 0\.2s; see 'taskbroker tasks show \1'\n",
        late.stderr,
    )
    assert failed, late.stderr
    assert (await live.json("tasks", "show", failed.group(1)))["state"] == "pending"


async def test_live_submit_wait_rides_out_a_broker_restart(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    config = dataclasses.replace(make_config(tmp_path), port=port)
    started = asyncio.Event()
    release = asyncio.Event()
    worker = Worker(capacity=1, reconnect_initial_s=0.01, reconnect_max_s=0.1)

    @worker.task("gate")
    async def gate(ctx: TaskContext) -> str:
        started.set()
        await release.wait()
        return "through"

    broker = Broker(config)
    await broker.start()
    run = asyncio.create_task(worker.run(broker.address))
    try:
        submitting = asyncio.create_task(
            Live(broker.address).run("submit", "gate", "--wait", "--timeout", "60")
        )
        async with asyncio.timeout(10):
            await started.wait()
        await broker.shutdown(grace=0)
        broker = Broker(config)  # the same port and file
        await broker.start()
        release.set()
        done = await submitting
        assert (done.exit_code, done.stdout) == (0, "through\n"), done.output
        assert re.fullmatch(r"task \S+ accepted; waiting\.\.\.\n", done.stderr), done.stderr
    finally:
        await worker.shutdown(grace=1)
        await run
        await broker.shutdown(grace=0)


def test_pools_set_takes_the_adaptive_settings(pools_client: type[PoolsClient]) -> None:
    result = invoke(
        "pools", "set", "default", "--strategy", "adaptive", "--adaptive-window", "300",
        "--adaptive-explore", "10",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "pool default updated (adaptive, sticky timeout 5 s, adaptive window 300, 10% exploring)\n"
    )
    assert pools_client.calls[-1] == (
        "update_pool",
        {
            "name": "default",
            **UNCHANGED,
            "strategy": "adaptive",
            "adaptive_window": 300,
            "adaptive_explore_percent": 10,
        },
    )
    assert invoke("pools", "set", "default", "--adaptive-explore", "101").exit_code == 2


# Table widths ------------------------------------------------------------------------


def _busy_stats() -> Stats:
    pool = PoolStats(
        pool="default",
        strategy="weighted_response_time",
        pending=12345,
        active=64,
        succeeded=1234567,
        failed=1234,
        cancelled=12,
        workers=16,
        capacity=64,
        unschedulable=3,
        delayed=7,
        dead_letter=5,
        throughput_per_s=912.5,
        wait_p50_s=0.012,
        wait_p99_s=1.5,
        run_p50_s=0.25,
        run_p99_s=12.0,
        oldest_pending_age_s=754.0,
    )
    return Stats(broker_state="running", pools=(pool,))


def _print_tables() -> None:
    show_stats(_busy_stats(), OutputFormat.TABLE)
    show_pools(
        [PoolInfo("default", "weighted_response_time", **LIMITS)],  # type: ignore[arg-type]
        OutputFormat.TABLE,
    )
    show_workers(
        [_worker(worker_id="render-host-12-4711", breaker="half_open")], OutputFormat.TABLE
    )
    show_tasks(
        [
            _task(
                id="1234567",
                task_type="render-thumbnail",
                state=TaskState.PENDING,
                unschedulable=True,
            )
        ],
        OutputFormat.TABLE,
    )


def test_tables_fit_an_80_column_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    _print_tables()
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    text = "\n".join(lines)
    for whole in (  # nothing cut short
        "SUCCEEDED",
        "THROUGHPUT",
        "WAIT P99",
        "1500 ms",
        "weighted_response_time",
        "MAX QUEUE",
        "render-host-12-4711",
        "half_open",
        "render-thumbnail",
        "pending (unschedulable)",
        "01-02 03:04:05",
    ):
        assert whole in text, text


def test_tables_by_default_show_fewer_columns_and_wide_shows_all(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _print_tables()
    narrow = capsys.readouterr().out
    for wide_only in ("UNSCHEDULABLE", "CLIENT RATE", "LABELS", "PRI"):
        assert wide_only not in narrow
    assert "(--wide: every column" in narrow
    show_stats(_busy_stats(), OutputFormat.TABLE, wide=True)
    wide = capsys.readouterr().out
    assert "UNSCHEDULABLE" in wide
    assert "STICKY HITS" in wide
    assert "--wide" not in wide


@pytest.mark.parametrize(
    "args", [("stats",), ("pools", "list"), ("workers", "list"), ("tasks", "list")]
)
def test_table_commands_take_wide_and_explain_their_columns(args: tuple[str, ...]) -> None:
    result = invoke(*args, "--help", env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "--wide" in result.stdout
    assert "The columns" in result.stdout


def test_workers_list_help_explains_load_and_in_flight() -> None:
    text = invoke("workers", "list", "--help", env={"COLUMNS": "120"}).stdout
    assert "IN FLIGHT     the broker's count" in text
    assert "LOAD          the worker's own figure" in text
