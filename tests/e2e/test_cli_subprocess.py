"""The command line as a user runs it: `taskbroker serve`, `worker run`, `submit` as processes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli_processes import (
    LISTENING,
    WAIT_S,
    Proc,
    run,
    start,
    start_broker,
    start_worker,
    wait_for,
)
from worker_sdk import SyncClient

# Real processes for seconds: make test runs it, make test-fast skips it.
pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    workdir: Path
    address: str
    broker: Proc
    worker: Proc
    worker_id: str

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(*args, "--broker", self.address, cwd=self.workdir)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cli-e2e")
    procs: list[Proc] = []
    try:
        broker, address = start_broker(workdir)
        procs.append(broker)
        worker, worker_id = start_worker(workdir, address, "worker")
        procs.insert(0, worker)
        yield Cluster(workdir, address, broker, worker, worker_id)
    finally:
        for proc in procs:  # the worker first, then the broker
            proc.stop()


def test_submit_wait_prints_the_result(cluster: Cluster) -> None:
    done = cluster.run("submit", "upper", "--payload", '{"text": "hello"}', "--wait")
    assert (done.returncode, done.stdout) == (0, "HELLO\n"), done.stderr
    assert re.fullmatch(r"task \S+ accepted; waiting\.\.\.\n", done.stderr), done.stderr


def test_submit_wait_on_a_failing_task_exits_1(cluster: Cluster) -> None:
    done = cluster.run("submit", "boom", "--wait", "--timeout", "15")
    assert done.returncode == 1
    assert done.stdout == ""
    assert re.fullmatch(
        r"task (\S+) accepted; waiting\.\.\.\nerror: task \1 failed: ValueError: kaboom\n",
        done.stderr,
    ), done.stderr


def test_submit_prints_the_id_and_tasks_list_json_has_it(cluster: Cluster) -> None:
    done = cluster.run("submit", "upper", "--payload", '{"text": "x"}', "--priority", "7")
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    assert task_id

    listed = cluster.run("tasks", "list", "--wide", "--output", "json", "--type", "upper")
    assert listed.returncode == 0, listed.stderr
    tasks = {t["id"]: t for t in json.loads(listed.stdout)}
    assert tasks[task_id]["priority"] == 7
    assert tasks[task_id]["payload"] == '{"text": "x"}'

    def finished() -> dict[str, Any] | None:
        shown = cluster.run("tasks", "show", task_id, "--output", "json")
        task: dict[str, Any] = json.loads(shown.stdout)
        return task if task["state"] in ("succeeded", "failed", "cancelled") else None

    task = wait_for(finished, "the task to finish")
    assert task["state"] == "succeeded"
    assert (task["result"], task["result_encoding"]) == ("X", "utf-8")
    assert task["worker_id"] == cluster.worker_id


def test_submit_with_sticky_and_routing_keys(cluster: Cluster) -> None:
    args = ("--sticky-key", "cache-3", "--routing-key", "user-7")
    done = cluster.run("submit", "upper", "--payload", '{"text": "k"}', *args, "--wait")
    assert (done.returncode, done.stdout) == (0, "K\n"), done.stderr
    listed = cluster.run("tasks", "list", "--wide", "--type", "upper", "--limit", "1", "-o", "json")
    (task,) = json.loads(listed.stdout)
    placement = task["placement"]
    assert (placement["sticky_key"], placement["routing_key"]) == ("cache-3", "user-7")


def test_cancel_a_pending_task(cluster: Cluster) -> None:
    # No worker handles "nobody", so the task stays pending until cancelled.
    task_id = cluster.run("submit", "nobody").stdout.strip()
    cancelled = cluster.run("tasks", "cancel", task_id, "--output", "json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["state"] == "cancelled"
    listed = cluster.run(
        "tasks", "list", "--wide", "--state", "cancelled", "--state", "failed", "-o", "json"
    )
    assert task_id in {t["id"] for t in json.loads(listed.stdout)}
    pending = cluster.run("tasks", "list", "--wide", "--state", "pending", "-o", "json")
    assert task_id not in {t["id"] for t in json.loads(pending.stdout)}


def test_submit_to_an_unknown_pool_is_not_found(cluster: Cluster) -> None:
    done = cluster.run("submit", "upper", "--pool", "nowhere")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: ")
    assert "nowhere" in done.stderr
    assert done.stderr.count("\n") == 1


def test_required_labels_place_the_task_or_say_why_it_waits(cluster: Cluster) -> None:
    done = cluster.run(
        "submit",
        "upper",
        *("--payload", '{"text": "placed"}', "--require", "zone=eu", "--prefer", "suite=cli:5"),
        *("--wait", "--timeout", "15"),
    )
    assert (done.returncode, done.stdout) == (0, "PLACED\n"), done.stderr
    assert re.fullmatch(r"task \S+ accepted; waiting\.\.\.\n", done.stderr), done.stderr
    listed = json.loads(
        cluster.run("tasks", "list", "--wide", "--type", "upper", "-o", "json").stdout
    )
    (placed,) = [t for t in listed if t["payload"] == '{"text": "placed"}']
    assert placed["placement"]["required_labels"] == {"zone": "eu"}
    assert placed["placement"]["preferred_labels"] == [
        {"key": "suite", "value": "cli", "weight": 5}
    ]
    assert placed["worker_id"] == cluster.worker_id
    assert placed["unschedulable"] is False

    # No worker has zone=mars: the task waits, and says why.
    submitted = cluster.run(
        "submit", "upper", "--payload", '{"text": "x"}', "--require", "zone=mars"
    )
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.strip()

    def unschedulable() -> dict[str, Any] | None:
        shown = cluster.run("tasks", "show", task_id, "-o", "json")
        task: dict[str, Any] = json.loads(shown.stdout)
        return task if task["unschedulable"] else None

    task = wait_for(unschedulable, "the task to be marked unschedulable")
    assert task["state"] == "pending"
    assert task["worker_id"] is None
    assert "zone=mars" in task["placement_note"], task["placement_note"]
    assert task["placement"]["required_labels"] == {"zone": "mars"}
    table = cluster.run("tasks", "show", task_id).stdout
    assert "pending (unschedulable)" in table
    assert "zone=mars" in table
    assert f"{task_id} " in cluster.run("tasks", "list", "--wide", "--state", "pending").stdout

    def default_pool() -> dict[str, Any]:
        stats = json.loads(cluster.run("stats", "--wide", "-o", "json").stdout)
        pool: dict[str, Any] = next(p for p in stats["pools"] if p["pool"] == "default")
        return pool

    assert default_pool()["unschedulable"] == 1
    assert "UNSCHEDULABLE" in cluster.run("stats", "--wide").stdout
    assert cluster.run("tasks", "cancel", task_id).returncode == 0
    assert default_pool()["unschedulable"] == 0


def test_pools_create_then_list(cluster: Cluster) -> None:
    created = cluster.run("pools", "create", "gpu", "--strategy", "least_loaded")
    assert created.returncode == 0, created.stderr
    again = cluster.run("pools", "create", "gpu")
    assert again.returncode == 1
    assert "gpu" in again.stderr
    pools = json.loads(cluster.run("pools", "list", "--wide", "-o", "json").stdout)
    (gpu,) = [p for p in pools if p["name"] == "gpu"]
    assert {k: gpu[k] for k in ("name", "strategy", "ab_strategy", "ab_percent")} == {
        "name": "gpu",
        "strategy": "least_loaded",
        "ab_strategy": None,
        "ab_percent": 0,
    }
    assert (gpu["sticky_timeout_s"], gpu["max_queue"], gpu["bulkheads"]) == (5.0, 0, [])
    assert "STICKY TIMEOUT" in cluster.run("pools", "list", "--wide").stdout


def test_pools_set_and_an_unknown_strategy(cluster: Cluster) -> None:
    created = cluster.run("pools", "create", "cpu", "--sticky-timeout", "0.5")
    assert created.returncode == 0, created.stderr
    changed = cluster.run("pools", "set", "cpu", "--strategy", "least_loaded", "-o", "json")
    assert changed.returncode == 0, changed.stderr
    pool = json.loads(changed.stdout)
    assert (pool["strategy"], pool["sticky_timeout_s"]) == ("least_loaded", 0.5)
    unknown = cluster.run("pools", "set", "cpu", "--strategy", "random")
    assert unknown.returncode == 1
    assert "random" in unknown.stderr
    assert "round_robin" in unknown.stderr  # the broker lists the strategies it knows
    missing = cluster.run("pools", "set", "nowhere", "--sticky-timeout", "1")
    assert missing.returncode == 1
    assert "nowhere" in missing.stderr


def test_workers_list_and_stats(cluster: Cluster) -> None:
    workers = json.loads(cluster.run("workers", "list", "--wide", "-o", "json").stdout)
    (worker,) = [w for w in workers if w["worker_id"] == cluster.worker_id]
    assert worker["labels"] == {"suite": "cli", "zone": "eu"}
    assert worker["task_types"] == ["boom", "upper"]
    stats = json.loads(cluster.run("stats", "--wide", "-o", "json").stdout)
    assert stats["broker_state"] == "running"
    assert "default" in {p["pool"] for p in stats["pools"]}
    table = cluster.run("stats", "--wide")
    assert table.returncode == 0
    assert "default" in table.stdout


def test_health(cluster: Cluster) -> None:
    done = cluster.run("health")
    assert (done.returncode, done.stdout) == (0, "SERVING\n")


def test_unreachable_broker_prints_one_line(tmp_path: Path) -> None:
    done = run("submit", "upper", "--broker", "127.0.0.1:1", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: ")
    assert done.stderr.count("\n") == 1, done.stderr


def test_drain_stops_the_worker(tmp_path: Path) -> None:
    broker, address = start_broker(tmp_path)
    worker: Proc | None = None
    try:
        worker, worker_id = start_worker(tmp_path, address, "drained")
        drained = run(
            "workers", "drain", worker_id, "-o", "json", "--broker", address, cwd=tmp_path
        )
        assert drained.returncode == 0, drained.stderr
        assert json.loads(drained.stdout)["draining"] is True
        assert worker.process.wait(WAIT_S) == 0, worker.output()
    finally:
        if worker is not None:
            worker.stop()
        assert broker.stop() == 0, broker.output()


def test_dead_letter_retry_and_cordon(tmp_path: Path) -> None:
    # A broker of its own: failures would open the shared worker's circuit breaker.
    broker, address = start_broker(tmp_path)
    worker: Proc | None = None
    try:
        worker, worker_id = start_worker(tmp_path, address, "failing")

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return run(*args, "--broker", address, cwd=tmp_path)

        failed = cli("submit", "boom", "--max-attempts", "2", "--backoff", "0.01", "--wait")
        assert failed.returncode == 1
        assert failed.stdout == ""
        dead = re.fullmatch(
            r"task (\S+) accepted; waiting\.\.\.\n"
            r"error: task \1 failed after 2 attempts \(dead letter\): ValueError: kaboom\n",
            failed.stderr,
        )
        assert dead, failed.stderr
        listed = json.loads(cli("tasks", "list", "--state", "dead_letter", "-o", "json").stdout)
        assert [t["id"] for t in listed] == [dead.group(1)]
        cordoned = cli("workers", "cordon", worker_id, "-o", "json")
        assert cordoned.returncode == 0, cordoned.stderr
        assert json.loads(cordoned.stdout)["cordoned"] is True
        retried = cli("tasks", "retry", "--dead-letter", "default", "-o", "json")
        assert retried.returncode == 0, retried.stderr
        assert [(t["id"], t["state"]) for t in json.loads(retried.stdout)] == [
            (dead.group(1), "pending")
        ]
        unknown = cli("workers", "uncordon", "no-such-worker")
        assert (unknown.returncode, unknown.stdout) == (1, "")
        assert unknown.stderr == "error: worker 'no-such-worker' is not connected\n"
    finally:
        if worker is not None:
            worker.stop()
        assert broker.stop() == 0, broker.output()


def test_sigterm_stops_broker_and_worker_cleanly(tmp_path: Path) -> None:
    broker, address = start_broker(tmp_path)
    worker: Proc | None = None
    try:
        worker, _ = start_worker(tmp_path, address, "worker")
        assert worker.stop() == 0, worker.output()
    finally:
        if worker is not None:
            worker.stop()
        assert broker.stop() == 0, broker.output()
    for proc in (broker, worker):
        assert "Traceback" not in proc.stderr.read_text()
    assert "stopped" in broker.stderr.read_text()


def test_a_second_broker_on_the_same_db_exits_naming_the_first(tmp_path: Path) -> None:
    broker, address = start_broker(tmp_path)
    db = tmp_path / "broker.db"
    second: Proc | None = None
    try:
        second = start(["serve", "--port", "0", "--db", str(db)], tmp_path, "second")
        try:
            assert second.process.wait(WAIT_S) == 1, second.output()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"a second broker runs on {db}") from None
        errors = [line for line in second.stderr.read_text().splitlines() if "error" in line]
        assert errors == [
            f"error: the database {db} is in use by process {broker.process.pid}"
            f" (lock file {db}.lock); one broker per database file"
        ], second.output()
        assert "listening" not in second.stdout.read_text()
        with SyncClient(address) as client:  # the first broker is undisturbed
            assert client.submit("upper", json={"text": "x"}) == "1"
    finally:
        if second is not None:
            second.stop()
        assert broker.stop() == 0, broker.output()
    # Once the first has stopped, the file is free.
    third = start(["serve", "--port", "0", "--db", str(db)], tmp_path, "third")
    try:
        wait_for(lambda: LISTENING.search(third.stdout.read_text()), "listening", third)
    finally:
        assert third.stop() == 0, third.output()


def test_demo_runs_and_cleans_up(tmp_path: Path) -> None:
    done = run("demo", "--tasks", "40", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done: 40 tasks" in done.stdout
    removed = re.search(r"removed (\S+)", done.stdout)
    assert removed
    assert not Path(removed.group(1)).exists()


def test_sighup_reloads_the_config_file_and_logs_json(tmp_path: Path) -> None:
    config = tmp_path / "taskbroker.toml"
    config.write_text('[broker]\nlog_format = "json"\n\n[pools.gpu]\nstrategy = "round_robin"\n')
    db = tmp_path / "broker.db"
    broker = start(
        ["serve", "--config", str(config), "--port", "0", "--db", str(db)], tmp_path, "b"
    )
    try:
        match = wait_for(lambda: LISTENING.search(broker.stdout.read_text()), "listening", broker)
        address = match.group(1)
        config.write_text(
            '[broker]\nlog_format = "json"\n\n[pools.gpu]\nstrategy = "least_loaded"\n'
        )
        broker.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: "SIGHUP: config reloaded, pools changed: gpu" in broker.stderr.read_text(),
            "the reload",
            broker,
        )
        with SyncClient(address) as client:
            pools = {p.name: p.strategy for p in client.list_pools()}
            (change, *_) = client.config_history(pool="gpu")
        assert pools["gpu"] == "least_loaded"
        assert (change.who, change.source, change.fields) == ("sighup", "reload", ("strategy",))
        again = run("config", "reload", "--broker", address, cwd=tmp_path)
        assert (again.returncode, again.stdout) == (0, "no changes\n"), again.stderr
        config.write_text(  # a bad value: refused, and nothing changes
            '[broker]\nlog_format = "json"\n\n[pools.gpu]\nstrategy = "fastest"\n'
        )
        broker.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: "settings stay as they were" in broker.stderr.read_text(),
            "the refused reload",
            broker,
        )
        assert "pools.gpu.strategy" in broker.stderr.read_text()
        with SyncClient(address) as client:
            assert {p.name: p.strategy for p in client.list_pools()}["gpu"] == "least_loaded"
        refused = run("config", "reload", "--broker", address, cwd=tmp_path)
        assert refused.returncode == 1
        assert "pools.gpu.strategy" in refused.stderr
    finally:
        assert broker.stop() == 0, broker.output()
    logged = [json.loads(line) for line in broker.stderr.read_text().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(logged[0])
    assert any(entry["message"] == "SIGHUP received: reloading the config file" for entry in logged)
