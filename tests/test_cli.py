"""The command line without a broker: help, argument validation, one-line errors."""

from __future__ import annotations

import json
import re
import shlex
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from broker import load_config
from broker.strategies import STRATEGIES
from cli import main as cli_main
from cli._output import (
    OutputFormat,
    decode_bytes,
    show_stats,
    show_task,
    show_tasks,
    stats_dict,
    task_dict,
)
from cli.main import KNOWN_STRATEGIES, Label, app, parse_label, parse_preference
from worker_sdk import (
    AlreadyExists,
    ArmStats,
    InvalidArgument,
    NotFound,
    Placement,
    PoolInfo,
    PoolStats,
    PreferredLabel,
    RuntimeStats,
    Stats,
    TaskErrorInfo,
    TaskInfo,
    TaskState,
)

ROOT = Path(__file__).resolve().parent.parent
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
    ["workers"],
    ["workers", "list"],
    ["workers", "drain"],
    ["pools"],
    ["pools", "list"],
    ["pools", "create"],
    ["pools", "set"],
    ["stats"],
    ["health"],
    ["demo"],
    ["simulate"],
]


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    # TASKBROKER_* from the developer's shell must not leak into these tests.
    clean: dict[str, str | None] = {"TASKBROKER_ADDR": None, "TASKBROKER_PORT": None}
    return CliRunner().invoke(app, list(args), env={**clean, **(env or {})})


def assert_one_line_error(result: Result, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


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
    for name in (*commands, "simulate"):
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
    monkeypatch.setattr(cli_main, "SyncClient", RecordingClient)
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
    return {
        "name": pool.name,
        "strategy": pool.strategy,
        "ab_strategy": pool.ab_strategy,
        "ab_percent": pool.ab_percent,
        "sticky_timeout_s": pool.sticky_timeout_s,
    }


@pytest.fixture
def pools_client(monkeypatch: pytest.MonkeyPatch) -> type[PoolsClient]:
    monkeypatch.setattr(cli_main, "SyncClient", PoolsClient)
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
    }
    assert invoke("pools", "set", "default", "--strategy", "consistent_hash").exit_code == 0
    assert pools_client.calls == [
        (
            "update_pool",
            {
                "name": "default",
                "strategy": None,
                "ab_strategy": "adaptive",
                "ab_percent": 10,
                "sticky_timeout_s": None,
            },
        ),
        (
            "update_pool",
            {
                "name": "default",
                "strategy": None,
                "ab_strategy": None,
                "ab_percent": None,
                "sticky_timeout_s": 2.5,
            },
        ),
        (
            "update_pool",
            {
                "name": "default",
                "strategy": "consistent_hash",
                "ab_strategy": None,
                "ab_percent": None,
                "sticky_timeout_s": None,
            },
        ),
    ]
    assert pools_client.pools["default"] == PoolInfo(
        "default", "consistent_hash", "adaptive", 10, 2.5
    )
    # An empty A/B strategy is a setting too: it ends the split.
    ended = invoke("pools", "set", "default", "--ab-strategy", "", "--ab-percent", "0")
    assert ended.stdout == "pool default updated (consistent_hash, sticky timeout 2.5 s)\n"


def test_pools_set_errors(pools_client: type[PoolsClient]) -> None:
    line = assert_one_line_error(invoke("pools", "set", "default"), 2)
    assert "nothing to change: give --strategy, --ab-strategy, --ab-percent or" in line
    line = assert_one_line_error(invoke("pools", "set", "nowhere", "--strategy", "least_loaded"))
    assert "pool 'nowhere' does not exist" in line
    line = assert_one_line_error(invoke("pools", "set", "default", "--strategy", "random"))
    assert "known: round_robin, least_loaded, consistent_hash, adaptive" in line
    assert [name for name, _ in pools_client.calls] == ["update_pool", "update_pool"]


def test_pools_list_shows_the_split_and_sticky_timeout(pools_client: type[PoolsClient]) -> None:
    pools_client.pools["gpu"] = PoolInfo("gpu", "least_loaded", "adaptive", 20, 0.25)
    result = invoke("pools", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "STRATEGY" in line)
    assert header.split() == ["POOL", "STRATEGY", "A/B", "STICKY", "TIMEOUT"]
    rows = {
        line.split()[0]: line.split()[1:]
        for line in lines
        if line.split()[:1] in (["default"], ["gpu"])
    }
    assert rows == {
        "default": ["round_robin", "-", "5", "s"],
        "gpu": ["least_loaded", "20%", "adaptive", "0.25", "s"],
    }
    listed = json.loads(invoke("pools", "list", "-o", "json").stdout)
    assert listed == [
        {
            "name": "default",
            "strategy": "round_robin",
            "ab_strategy": None,
            "ab_percent": 0,
            "sticky_timeout_s": 5.0,
        },
        {
            "name": "gpu",
            "strategy": "least_loaded",
            "ab_strategy": "adaptive",
            "ab_percent": 20,
            "sticky_timeout_s": 0.25,
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
        ["stats"],
        ["health"],
    ],
    ids=lambda a: " ".join(a),
)
def test_unreachable_broker_is_one_line(args: list[str], closed_port: int) -> None:
    result = invoke(*args, "--broker", f"127.0.0.1:{closed_port}")
    assert_one_line_error(result, 1)


def test_broker_address_from_environment(closed_port: int) -> None:
    address = f"127.0.0.1:{closed_port}"
    line = assert_one_line_error(invoke("stats", env={"TASKBROKER_ADDR": address}))
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
    show_tasks([task, _task(id="43")], OutputFormat.TABLE)
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
    show_stats(stats, OutputFormat.TABLE)
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
    result = invoke("stats")
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
    shown = invoke("stats").stdout
    assert "gpu" in shown
    assert "strategy arms" not in shown
    assert "learned run times" not in shown


def test_stats_json_carries_everything(
    pools_client: type[PoolsClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    stats = Stats(broker_state="running", pools=(LEARNING_POOL, QUIET_POOL))
    monkeypatch.setattr(pools_client, "statistics", stats)
    data = json.loads(invoke("stats", "-o", "json").stdout)
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
    show_tasks([_task()], OutputFormat.TABLE)
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
