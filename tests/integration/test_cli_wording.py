"""The command line's errors in one voice: "must be ...", naming the flag, exit 2 for a bad
argument, whether the parser or the project checks the value."""

from __future__ import annotations

import pytest

from tests.support.cli import assert_one_line_error, invoke

# No broker runs here: each of these fails before connecting.
BAD_ARGUMENTS = [
    (["tasks", "list", "--limit", "5000"], "'--limit': must be at most 1000"),
    (["tasks", "list", "--limit", "0"], "'--limit': must be 1 or more"),
    (["tasks", "list", "--limit", "many"], "'--limit': must be a whole number"),
    (["submit", "echo", "--priority", "2000"], "'--priority': must be at most 1000"),
    (["submit", "echo", "--wait", "--timeout", "-1"], "'--timeout': must be 0 or more"),
    (["pools", "set", "default", "--rate", "fast"], "'--rate': must be a number"),
    (
        ["pools", "set", "default", "--rate", "inf"],
        "'--rate': must be a finite number >= 0; infinity is not allowed",
    ),
    (
        ["metrics", "history", "--bucket", "7s"],
        "'--bucket': must be a whole number of minutes (1m, 5m, 1h), got '7s'",
    ),
    (
        ["tasks", "list", "--before", "abc"],
        "'--before': must be a task id (digits, e.g. 42), got 'abc'",
    ),
    (["tasks", "list", "--before", "012"], "'--before': must be a task id"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGUMENTS)
def test_a_bad_argument_is_a_usage_error_in_the_projects_words(
    args: list[str], message: str
) -> None:
    line = assert_one_line_error(invoke(*args, "--broker", "127.0.0.1:1"), exit_code=2)
    assert message in line
    assert "Input should" not in line
    assert "bucket_s" not in line
