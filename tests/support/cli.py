"""Running the CLI in process, and what every CLI error looks like."""

from __future__ import annotations

import re

from typer.testing import CliRunner, Result

from cli.main import app


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    # TASKBROKER_* from the developer's shell must not leak into these tests, nor COLUMNS
    # (which pytest-xdist's workers have) into the tables' width.
    clean: dict[str, str | None] = {
        "TASKBROKER_ADDR": None,
        "TASKBROKER_PORT": None,
        "COLUMNS": None,
    }
    return CliRunner().invoke(app, list(args), env={**clean, **(env or {})})


def assert_one_line_error(result: Result, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    # `submit --wait` names the task it waits for first; the error then names it too.
    accepted = re.fullmatch(r"task (\S+) accepted; waiting\.\.\.", lines[0]) if lines else None
    if accepted is not None:
        lines = lines[1:]
        assert lines, result.stderr
        assert f"task {accepted.group(1)}" in lines[0], result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]
