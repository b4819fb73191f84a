"""`taskbroker worker run` with --pool, --capacity, --labels, --worker-id, --log-format and
--log-level: a real broker and a real worker process; `workers list` shows what they set."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import assert_one_line_error, invoke
from tests.support.cli_processes import Proc, run, start, start_broker, wait_for
from worker_sdk import SyncClient, Worker

FLAGS_MODULE = """
from worker_sdk import TaskContext, Worker

worker = Worker(pool="elsewhere", capacity=1, labels={"zone": "eu", "suite": "flags"})


@worker.task("echo")
def echo(ctx: TaskContext) -> bytes:
    return ctx.payload
"""


def test_worker_run_flags_override_the_worker(tmp_path: Path) -> None:
    broker, address = start_broker(tmp_path)
    (tmp_path / "flags_worker.py").write_text(FLAGS_MODULE)
    procs: list[Proc] = [broker]
    try:
        worker = start(
            [
                "worker",
                "run",
                "flags_worker:worker",
                "--broker",
                address,
                "--pool",
                "default",
                "--capacity",
                "3",
                "--labels",
                "zone=us",
                "--labels",
                "gpu=yes",
                "--worker-id",
                "flags-1",
                "--log-format",
                "json",
                "--log-level",
                "debug",
            ],
            tmp_path,
            "worker",
        )
        procs.insert(0, worker)
        with SyncClient(address) as client:
            (info,) = wait_for(lambda: client.list_workers(), "the worker", worker)
            assert client.result(client.submit("echo", payload=b"hi"), timeout=20) == b"hi"
        listed = run("workers", "list", "-o", "json", "--broker", address, cwd=tmp_path)
        (shown,) = json.loads(listed.stdout)
        assert shown["worker_id"] == "flags-1"
        assert shown["pool"] == "default"
        assert shown["capacity"] == 3
        assert shown["labels"] == {"zone": "us", "gpu": "yes", "suite": "flags"}
        assert info.worker_id == "flags-1"
        assert worker.stop() == 0, worker.output()
        lines = worker.stderr.read_text().splitlines()
        assert lines, worker.output()
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        assert {"time", "level", "logger", "message"} <= set(records[0])
        assert "debug" in {record["level"] for record in records}, worker.output()
    finally:
        for proc in procs:
            proc.stop()


def test_worker_configure_overrides_before_run() -> None:
    worker = Worker(pool="a", capacity=2, labels={"k": "v", "x": "1"}, worker_id="w0")
    worker.configure(pool="b", capacity=5, labels={"x": "2"}, worker_id="w1")
    assert (worker.pool, worker.capacity, worker.labels, worker.worker_id) == (
        "b",
        5,
        {"k": "v", "x": "2"},
        "w1",
    )
    worker.configure()  # nothing given: nothing changes
    assert (worker.pool, worker.capacity) == ("b", 5)


def test_worker_run_bad_override_flags_are_one_line(tmp_path: Path) -> None:
    for args, expected in (
        (["--capacity", "0"], "Invalid value for '--capacity'"),
        (["--labels", "novalue"], "KEY=VALUE"),
        (["--labels", "a=1", "--labels", "a=2"], "given twice"),
        (["--log-format", "xml"], "Invalid value for '--log-format'"),
    ):
        result = invoke("worker", "run", "nosuchmodule:worker", *args)
        line = assert_one_line_error(result, 2)
        assert expected in line, line
