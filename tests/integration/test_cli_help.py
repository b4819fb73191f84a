"""Help texts: docstrings rewrapped to the terminal, flags without a type beside them, and
one short line per command in a command list."""

from __future__ import annotations

import re

import pytest

from tests.support.cli import invoke


def help_text(*args: str, columns: str = "200") -> str:
    result = invoke(*args, "--help", env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_a_docstring_paragraph_is_rewrapped_not_broken_where_the_source_breaks() -> None:
    text = help_text("serve")
    assert "on SIGHUP, it re-reads the config file" in text
    assert "environment variables (e.g. TASKBROKER_PORT=6000" in text


@pytest.mark.parametrize(
    "args", [(), ("serve",), ("stats",), ("pools",), ("submit",), ("workers", "list")]
)
def test_flags_show_no_type(args: tuple[str, ...]) -> None:
    text = help_text(*args)
    assert "<bool>" not in text
    assert re.search(r"--help\s+Show this message", text), text


def command_rows(text: str) -> dict[str, int]:
    """Each command of a command list, with the lines its text takes."""
    rows: dict[str, int] = {}
    name = ""
    for line in text[text.index("Commands") :].splitlines()[1:]:
        if not line.startswith("│"):
            break
        if line[2] != " ":
            name = line.split()[1]
        rows[name] = rows.get(name, 0) + 1
    return rows


def test_each_command_is_one_line_in_the_command_list() -> None:
    assert set(command_rows(help_text(columns="120")).values()) == {1}
    for group in ("tasks", "pools", "workers", "metrics", "config"):
        assert set(command_rows(help_text(group, columns="120")).values()) == {1}, group
    narrow = command_rows(help_text(columns="80"))
    assert set(narrow.values()) == {1}, narrow
