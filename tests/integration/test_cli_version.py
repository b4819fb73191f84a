"""`taskbroker --version` and `-V`."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest

from tests.support.cli import invoke
from worker_sdk._version import __version__


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_package_version(flag: str) -> None:
    result = invoke(flag)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"taskbroker {__version__}\n"
    assert result.stderr == ""


def test_version_agrees_with_the_installed_package_and_runs_as_a_process() -> None:
    assert version("taskbroker") == __version__
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"taskbroker {__version__}\n", "")
