"""The command line without a broker: help, argument validation, one-line errors."""

from __future__ import annotations

import re
import shlex
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from broker import load_config
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
from cli.main import Label, app, parse_label, parse_preference
from worker_sdk import (
    Placement,
    PoolStats,
    PreferredLabel,
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
    ["stats"],
    ["health"],
    ["demo"],
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
    for name in ("serve", "worker", "submit", "tasks", "workers", "pools", "stats", "demo"):
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
        ["pools", "create", "gpu", "--strategy", "random"],
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
        }
    ]
    assert invoke("submit", "plain").exit_code == 0
    assert RecordingClient.calls[-1]["require"] == {}
    assert RecordingClient.calls[-1]["prefer"] == ()
    assert RecordingClient.calls[-1]["anti_affinity"] is None
    assert RecordingClient.calls[-1]["anti_affinity_soft"] is False


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "echo", "--payload", '{"n": 1}'],
        ["tasks", "list"],
        ["tasks", "show", "1"],
        ["pools", "list"],
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
    }
    assert (data["placement_note"], data["unschedulable"]) == (None, False)


HINTED = Placement(
    required_labels={"zone": "mars", "gpu": "a100"},
    preferred_labels=(PreferredLabel("disk", "ssd"), PreferredLabel("rack", "r1", 7)),
    anti_affinity_group="shard-[1]",
    anti_affinity_soft=True,
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
    assert re.search(rf"^placement +{re.escape(NOTE)} *$", shown, re.MULTILINE), shown
    show_tasks([task, _task(id="43")], OutputFormat.TABLE)
    listed = capsys.readouterr().out
    assert "pending (unschedulable)" in listed
    assert listed.count("unschedulable") == 1
    # A task without hints shows no placement rows.
    show_task(_task(), OutputFormat.TABLE)
    plain = capsys.readouterr().out
    for name in ("requires", "prefers", "anti-affinity", "placement", "unschedulable"):
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
