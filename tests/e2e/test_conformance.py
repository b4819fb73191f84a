"""A client and workers written in JavaScript from the .proto files alone
(tests/conformance/conformance.js) against a real broker process: registration, credit,
batches and streams, results, failures and retries, cancellation, drain, a worker process
killed while it holds a task, and the limits; and what the contract gained since: read
views, page tokens, UpdatePool masks and etags (an older client's read-modify-write
included), google.rpc error details and retry pushback, strict ids, idempotency conflicts,
terminal states, reflection v1, RegisterAck's limits, zero-credit registration, dropped
results, cancels with attempts, drain deadlines, session resumption, Leave, broker-side
timestamps, worker error flags and broker error types, content types.

It runs twice: built from the current protos/taskbroker/v1 files, and from the frozen
copy of the first v1 (tests/conformance/frozen_v1), so a client generated from the old
contract is shown to keep working. A check of a newer part of the contract names the
fields it needs and is skipped when built from files without them; built from the
current files, none is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.conformance import CURRENT_PROTOS, FROZEN_PROTOS, node_argv, run_node
from tests.support.processes import Deadline, Process, child_env, logs, spawn, stop_all

# Real processes for seconds: make test runs it, make test-fast skips it.
pytestmark = pytest.mark.slow

LISTENING = re.compile(r"taskbroker listening on (\S+)")
SUMMARY = re.compile(r"^conformance: (\d+) passed, (\d+) failed, (\d+) skipped$", re.MULTILINE)
BROKER_ENV = {
    # Short enough for the lease check to hold a task past its lease within a second or two.
    "TASKBROKER_HEARTBEAT_INTERVAL_S": "0.2",
    "TASKBROKER_HEARTBEAT_TIMEOUT_S": "1.5",
    "TASKBROKER_SHUTDOWN_GRACE_S": "1",
    # Short enough for the drain check to see a held task taken back at the deadline.
    "TASKBROKER_DRAIN_TIMEOUT_S": "1",
}
RUN_TIMEOUT_S = 50.0
# The checks of the contract as it grew after the first v1: a build from the frozen files
# skips exactly these, a build from the current files runs them all.
NEWER_CHECKS = {
    "read_views",
    "answers_within_max_response_bytes",
    "page_tokens",
    "update_pool_mask_and_etag",
    "old_client_read_modify_write",
    "error_details",
    "overload_pushback",
    "strict_ids",
    "idempotency_conflict",
    "terminal",
    "reflection_v1",
    "submit_stream_acks_every_message",
    "register_ack_limits",
    "any_message_is_a_sign_of_life",
    "zero_credit_registration",
    "results_dropped",
    "cancel_names_the_attempt",
    "drain_deadline_and_close",
    "session_resumption",
    "leave",
    "broker_timestamps",
    "task_error_types",
    "content_types",
}


def start_broker(workdir: Path) -> tuple[Process, str]:
    """`taskbroker serve` on a SQLite file and an ephemeral loopback port, and its address."""
    argv = [sys.executable, "-m", "cli.main", "serve", "--port", "0", "--db", "broker.db"]
    broker = spawn("broker", argv, workdir, child_env(BROKER_ENV))
    try:
        deadline = Deadline(20)
        while not (match := LISTENING.search(broker.log.read_text(errors="replace"))):
            assert broker.popen.poll() is None, broker.output()
            deadline.left("the broker listens")
            time.sleep(0.02)
    except BaseException:
        stop_all([broker])
        raise
    return broker, match.group(1)


@pytest.fixture(scope="module")
def broker_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker shared by both runs (each run tags its task types and worker ids)."""
    broker, address = start_broker(tmp_path_factory.mktemp("conformance"))
    try:
        yield address
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
    skipped = {name for name, fate in expected.items() if fate == "SKIP"}
    assert set(expected) >= NEWER_CHECKS, f"checks missing from the plan: {expected}"
    if protos == CURRENT_PROTOS:
        assert not skipped, f"checks the current protos cannot run: {skipped}"
    else:
        assert skipped == NEWER_CHECKS, f"the frozen build skips {skipped}"
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
    assert skipped == NEWER_CHECKS | {"register_ack_liveness", "lease_renewed_by_heartbeats"}
    assert {name for name, fate in full.items() if fate == "RUN"} == set(full) - NEWER_CHECKS


@pytest.mark.parametrize("protos", [CURRENT_PROTOS, FROZEN_PROTOS], ids=["current", "frozen_v1"])
def test_a_stopping_broker_drains_its_workers_before_it_goes(tmp_path: Path, protos: Path) -> None:
    # The check `broker_stopping` holds a task on a broker of its own and says READY; the
    # broker is then sent SIGTERM, and the check sees a Drain (of kind BROKER_STOPPING,
    # where the contract has it), its result taken and the stream ended by the broker.
    broker, address = start_broker(tmp_path)
    check = spawn(
        "conformance",
        node_argv([str(protos), address, "broker_stopping"]),
        tmp_path,
        dict(os.environ),
    )
    try:
        deadline = Deadline(30)
        while "READY broker_stopping" not in check.log.read_text(errors="replace"):
            assert check.popen.poll() is None, logs([check, broker])
            deadline.left("the check's worker holds a task")
            time.sleep(0.02)
        broker.popen.terminate()
        check.popen.wait(deadline.left("the check ends"))
        assert "PASS broker_stopping" in check.log.read_text(errors="replace"), logs(
            [check, broker]
        )
        assert check.popen.returncode == 0, logs([check, broker])
    finally:
        stop_all([check, broker])
