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
from cli._output import OutputFormat, decode_bytes, show_task, show_tasks, task_dict
from cli.main import app
from worker_sdk import TaskErrorInfo, TaskInfo, TaskState

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
