"""A client and workers written in JavaScript from the .proto files alone
(tests/conformance/conformance.js) against a real broker process: registration, credit,
batches and streams, results, failures and retries, cancellation, drain, a worker process
killed while it holds a task, and the limits.

It runs twice: built from the current protos/taskbroker/v1 files, and from the frozen
copy of the first v1 (tests/conformance/frozen_v1), so a client generated from the old
contract is shown to keep working. A check of a newer part of the contract names the
fields it needs and is skipped when built from files without them; built from the
current files, none is skipped.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.conformance import CURRENT_PROTOS, FROZEN_PROTOS, run_node
from tests.support.processes import Deadline, child_env, spawn, stop_all

# Real processes for seconds: make test runs it, make test-fast skips it.
pytestmark = pytest.mark.slow

LISTENING = re.compile(r"taskbroker listening on (\S+)")
SUMMARY = re.compile(r"^conformance: (\d+) passed, (\d+) failed, (\d+) skipped$", re.MULTILINE)
BROKER_ENV = {
    # Short enough for the lease check to hold a task past its lease within a second or two.
    "TASKBROKER_HEARTBEAT_INTERVAL_S": "0.2",
    "TASKBROKER_HEARTBEAT_TIMEOUT_S": "1.5",
    "TASKBROKER_SHUTDOWN_GRACE_S": "1",
}
RUN_TIMEOUT_S = 50.0


@pytest.fixture(scope="module")
def broker_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`taskbroker serve` on a SQLite file and an ephemeral loopback port, shared by both
    runs (each run tags its task types and worker ids)."""
    workdir = tmp_path_factory.mktemp("conformance")
    argv = [sys.executable, "-m", "cli.main", "serve", "--port", "0", "--db", "broker.db"]
    broker = spawn("broker", argv, workdir, child_env(BROKER_ENV))
    try:
        deadline = Deadline(20)
        while not (match := LISTENING.search(broker.log.read_text(errors="replace"))):
            assert broker.popen.poll() is None, broker.output()
            deadline.left("the broker listens")
            time.sleep(0.02)
        yield match.group(1)
    finally:
        stop_all([broker])


def fates(stdout: str) -> dict[str, str]:
    """Each check's name and what became of it: PASS, FAIL, SKIP (or RUN, in a plan)."""
    lines = (line.split(" ", 2) for line in stdout.splitlines())
    return {
        parts[1].rstrip(":"): parts[0]
        for parts in lines
        if len(parts) > 1 and parts[0] in {"PASS", "FAIL", "SKIP", "RUN"}
    }


def plan(protos: Path) -> dict[str, str]:
    done = run_node(["--plan", str(protos)], timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return fates(done.stdout)


@pytest.mark.parametrize("protos", [CURRENT_PROTOS, FROZEN_PROTOS], ids=["current", "frozen_v1"])
def test_a_client_and_workers_built_from_the_protos_alone_conform(
    broker_address: str, protos: Path
) -> None:
    expected = {name: "PASS" if fate == "RUN" else "SKIP" for name, fate in plan(protos).items()}
    if protos == CURRENT_PROTOS:
        assert "SKIP" not in expected.values(), f"checks the current protos cannot run: {expected}"
    done = run_node([str(protos), broker_address], timeout=RUN_TIMEOUT_S)
    report = f"{done.stdout}\n{done.stderr}"
    summary = SUMMARY.search(done.stdout)
    assert summary is not None, report
    assert fates(done.stdout) == expected, report
    assert summary.group(2) == "0", report
    assert done.returncode == 0, report


def test_a_check_needing_what_a_build_lacks_is_skipped(tmp_path: Path) -> None:
    # The same contract without RegisterAck.lease_s: the checks that read it are skipped,
    # the others still run.
    shutil.copytree(FROZEN_PROTOS / "taskbroker", tmp_path / "taskbroker")
    worker_proto = tmp_path / "taskbroker" / "v1" / "worker.proto"
    text = worker_proto.read_text()
    assert "  double lease_s = 3;\n" in text
    worker_proto.write_text(text.replace("  double lease_s = 3;\n", ""))
    full, lacking = plan(FROZEN_PROTOS), plan(tmp_path)
    skipped = {name for name, fate in lacking.items() if fate == "SKIP"}
    assert skipped == {"register_ack_liveness", "lease_renewed_by_heartbeats"}
    assert {name for name, fate in full.items() if fate == "RUN"} == set(full)
