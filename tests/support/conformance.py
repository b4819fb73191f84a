"""The JavaScript conformance client (tests/conformance) and buf, as installed by
`make install` (`npm ci` in tests/conformance)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
CONFORMANCE_DIR = ROOT / "tests" / "conformance"
CURRENT_PROTOS = ROOT / "protos"
FROZEN_PROTOS = CONFORMANCE_DIR / "frozen_v1"
BUF = CONFORMANCE_DIR / "node_modules" / ".bin" / "buf"


def node() -> str:
    """The node executable; fails the test (never skips it) when node or the packages
    are missing."""
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not installed: `make install` installs it")
    if not (CONFORMANCE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("tests/conformance/node_modules is missing: run `make install`")
    return found


def buf() -> str:
    if not BUF.exists():
        pytest.fail("buf is missing: run `make install` (npm ci in tests/conformance)")
    return str(BUF)


def node_argv(args: list[str]) -> list[str]:
    """The command line of conformance.js with `args`."""
    return [node(), str(CONFORMANCE_DIR / "conformance.js"), *args]


def run_node(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run conformance.js; past `timeout` it is killed and the test fails with what it
    printed so far."""
    try:
        return subprocess.run(
            node_argv(args),
            cwd=CONFORMANCE_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        printed = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"conformance.js ran for over {timeout:g} s; it printed:\n{printed}")
