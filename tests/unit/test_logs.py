"""Structured logs: JSON and human lines with task and trace ids."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from broker.domain import Task, TaskSpec
from broker.observability.logs import configure, task_fields, trace_id_of

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libraries = {name: logging.getLogger(name).level for name in ("aiosqlite", "asyncio", "grpc")}
    yield
    for name, library_level in libraries.items():
        logging.getLogger(name).setLevel(library_level)
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def task() -> Task:
    spec = TaskSpec(task_type="resize", pool="gpu", trace_context={"traceparent": TRACEPARENT})
    return Task(id=42, spec=spec, worker_id="w1", attempts=2)


def test_trace_ids_come_from_the_traceparent() -> None:
    assert trace_id_of(task()) == "0af7651916cd43dd8448eb211c80319c"
    assert trace_id_of(Task(id=1, spec=TaskSpec(task_type="t"))) == ""
    broken = TaskSpec(task_type="t", trace_context={"traceparent": "garbage"})
    assert trace_id_of(Task(id=1, spec=broken)) == ""


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_the_task_and_trace_ids() -> None:
    out = io.StringIO()
    configure("json", "info", out)
    logging.getLogger("taskbroker.engine").warning("lease expired", extra=task_fields(task()))
    logging.getLogger("taskbroker.engine").debug("not shown")
    (line,) = out.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "lease expired"
    assert entry["level"] == "warning"
    assert entry["logger"] == "taskbroker.engine"
    assert entry["task_id"] == 42
    assert entry["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert (entry["pool"], entry["task_type"], entry["worker_id"], entry["attempt"]) == (
        "gpu",
        "resize",
        "w1",
        2,
    )
    assert entry["time"].endswith("Z")


@pytest.mark.usefixtures("restore_logging")
def test_human_lines_append_the_ids() -> None:
    out = io.StringIO()
    configure("human", "debug", out)
    logging.getLogger("x").info("placed", extra=task_fields(task()))
    logging.getLogger("x").info("plain")
    placed, plain = out.getvalue().splitlines()
    assert placed.endswith(
        "placed task_id=42 trace_id=0af7651916cd43dd8448eb211c80319c pool=gpu "
        "task_type=resize worker_id=w1 attempt=2"
    )
    assert plain.endswith("x: plain")


@pytest.mark.usefixtures("restore_logging")
def test_debug_level_shows_the_broker_s_debug_but_not_the_libraries() -> None:
    out = io.StringIO()
    configure("json", "debug", out)
    logging.getLogger("taskbroker.engine").debug("a broker detail")
    logging.getLogger("aiosqlite").debug("executing a statement")
    logging.getLogger("aiosqlite").warning("a library warning")
    messages = [json.loads(line)["message"] for line in out.getvalue().splitlines()]
    assert messages == ["a broker detail", "a library warning"]
