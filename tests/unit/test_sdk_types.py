"""The SDK's value types, payload encoding, error table and protobuf conversion."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import grpc
import pytest

import worker_sdk
from worker_sdk import (
    NotFound,
    TaskbrokerError,
    TaskErrorInfo,
    TaskFailed,
    TaskInfo,
    TaskRequest,
    TaskState,
    Unavailable,
    _convert,
)
from worker_sdk._errors import error_for_code
from worker_sdk._messages import (
    AssignmentsReceived,
    CancelRequested,
    DrainRequested,
    RegisterAcked,
    SubmitAcked,
    TaskOutcome,
    TasksCompleted,
)
from worker_sdk._payload import MAX_TRACEBACK_CHARS, bound_traceback, encode_payload, encode_result
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import worker_pb2 as _worker


def make_task(**overrides: object) -> TaskInfo:
    values: dict[str, object] = {
        "id": "1",
        "task_type": "t",
        "pool": "default",
        "priority": 0,
        "payload": b"",
        "state": TaskState.SUCCEEDED,
        "attempts": 1,
        "worker_id": "w",
        "created_at": None,
        "assigned_at": None,
        "started_at": None,
        "finished_at": None,
        "result": b"",
        "error": None,
    }
    values.update(overrides)
    return TaskInfo(**values)  # type: ignore[arg-type]


def test_public_api_is_exported() -> None:
    for name in worker_sdk.__all__:
        assert hasattr(worker_sdk, name), name
    assert worker_sdk.DEFAULT_ADDRESS == "127.0.0.1:50051"
    errors = [getattr(worker_sdk, n) for n in worker_sdk.__all__]
    errors = [e for e in errors if isinstance(e, type) and issubclass(e, Exception)]
    assert all(issubclass(e, TaskbrokerError) for e in errors)
    assert all(e.__doc__ and "\n" not in e.__doc__.strip() for e in errors)


def test_task_state_terminal() -> None:
    terminal = {s for s in TaskState if s.terminal}
    assert terminal == {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.DEAD_LETTER,
    }
    assert TaskState("running") is TaskState.RUNNING


def test_task_info_json_and_done() -> None:
    task = make_task(result=b'{"a": 1}')
    assert task.json() == {"a": 1}
    assert task.done
    assert not make_task(state=TaskState.PENDING).done


def test_task_failed_carries_the_task() -> None:
    task = make_task(state=TaskState.FAILED, error=TaskErrorInfo("KeyError", "'x'", "tb"))
    error = TaskFailed(task)
    assert error.task is task
    assert str(error) == "task 1 failed: KeyError: 'x'"
    assert str(TaskFailed(make_task(state=TaskState.CANCELLED))) == "task 1 cancelled"


@pytest.mark.parametrize(
    ("payload", "json_value", "expected"),
    [
        (b"raw", ..., b"raw"),
        ("text \u00e9", ..., "text \u00e9".encode()),
        (None, ..., b""),
        (None, {"a": [1, 2]}, b'{"a":[1,2]}'),
        (None, None, b"null"),
    ],
)
def test_encode_payload(payload: bytes | str | None, json_value: object, expected: bytes) -> None:
    if json_value is ...:
        assert encode_payload(payload) == expected
    else:
        assert encode_payload(payload, json_value) == expected


def test_encode_payload_rejects_mixed_and_odd_types() -> None:
    with pytest.raises(TypeError):
        encode_payload(b"x", {"a": 1})
    with pytest.raises(TypeError, match="json="):
        encode_payload(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"\x00", b"\x00"),
        ("caf\u00e9", "caf\u00e9".encode()),
        (None, b""),
        ({"n": 1}, b'{"n":1}'),
        ([1, "a"], b'[1,"a"]'),
        (3.5, b"3.5"),
        (True, b"true"),
    ],
)
def test_encode_result(value: object, expected: bytes) -> None:
    assert encode_result(value)[0] == expected


@pytest.mark.parametrize(
    ("value", "content_type"),
    [
        (b"raw", "application/octet-stream"),
        ("text", "text/plain; charset=utf-8"),
        (None, ""),
        ({"n": 1}, "application/json"),
        ([1], "application/json"),
    ],
)
def test_a_result_has_the_content_type_the_proto_states(value: object, content_type: str) -> None:
    assert encode_result(value)[1] == content_type


def test_encode_result_rejects_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError):
        encode_result(object())


def test_bound_traceback_keeps_the_tail() -> None:
    assert bound_traceback("short") == "short"
    long = "x" * MAX_TRACEBACK_CHARS + "END"
    bounded = bound_traceback(long)
    assert bounded.endswith("END")
    assert len(bounded) <= MAX_TRACEBACK_CHARS + 10


def test_error_table() -> None:
    assert type(error_for_code(5, "m")) is NotFound
    assert type(error_for_code(14, "m")) is Unavailable
    assert type(error_for_code(13, "m")) is TaskbrokerError
    assert str(error_for_code(5, "gone")) == "gone"
    for code in grpc.StatusCode:
        assert isinstance(error_for_code(code.value[0], ""), TaskbrokerError)


def test_task_info_from_protobuf() -> None:
    wire = _tasks.Task(
        id="42",
        spec=_tasks.TaskSpec(task_type="resize", payload=b"p", priority=-3, pool="gpu"),
        state=_tasks.TASK_STATE_FAILED,
        attempts=2,
        worker_id="w-1",
        created_at_ms=1_700_000_000_123,
        finished_at_ms=1_700_000_001_000,
        error=_tasks.TaskError(type="OSError", message="disk", traceback="tb"),
    )
    info = _convert.task_info(wire)
    assert info == make_task(
        id="42",
        task_type="resize",
        pool="gpu",
        priority=-3,
        payload=b"p",
        state=TaskState.FAILED,
        attempts=2,
        worker_id="w-1",
        created_at=datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
        finished_at=datetime(2023, 11, 14, 22, 13, 21, tzinfo=UTC),
        error=TaskErrorInfo("OSError", "disk", "tb"),
    )
    assert _convert.task_info(_tasks.Task(id="1")).state is TaskState.PENDING
    assert _convert.task_info(_tasks.Task(id="1")).error is None


def test_list_tasks_request_maps_states_and_defaults() -> None:
    request = _convert.list_tasks_request(
        pool=None,
        states=[TaskState.PENDING, TaskState.CANCELLED],
        task_type="t",
        limit=5,
        before_id=None,
    )
    assert list(request.states) == [_tasks.TASK_STATE_PENDING, _tasks.TASK_STATE_CANCELLED]
    assert (request.pool, request.task_type, request.limit, request.before_id) == ("", "t", 5, "")


def test_submit_stream_round_trip() -> None:
    spec = _convert.task_spec(TaskRequest("t", b"x", 2, "p"))
    request = _convert.submit_stream_request(7, [spec], ["9"])
    assert request.batch_id == 7
    assert not request.watch
    assert list(request.watch_task_ids) == ["9"]
    assert request.tasks[0] == _tasks.TaskSpec(
        task_type="t",
        payload=b"x",
        priority=2,
        pool="p",
        payload_content_type="application/octet-stream",
    )
    ack = _tasks.SubmitStreamResponse(ack=_tasks.SubmitAck(batch_id=7, task_ids=["1"]))
    assert _convert.submit_stream_event(ack) == SubmitAcked(7, ["1"], 0, "")
    done = _tasks.SubmitStreamResponse(
        completions=_tasks.Completions(tasks=[_tasks.Task(id="1")], not_found=["2"])
    )
    event = _convert.submit_stream_event(done)
    assert isinstance(event, TasksCompleted)
    assert [t.id for t in event.tasks] == ["1"]
    assert event.not_found == ["2"]
    with pytest.raises(TaskbrokerError):
        _convert.submit_stream_event(_tasks.SubmitStreamResponse())


def test_stats_and_workers_from_protobuf() -> None:
    stats = _convert.stats(
        _admin.StatsResponse(
            broker_state="draining",
            pools=[_admin.PoolStats(pool="p", strategy="least_loaded", assigned=4, capacity=8)],
        )
    )
    assert stats.broker_state == "draining"
    assert stats.pools[0].active == 4
    assert stats.pools[0].capacity == 8
    assert (stats.pools[0].arms, stats.pools[0].runtimes) == ((), ())
    assert stats.pools[0].sticky_hit_rate is None  # no sticky task yet
    pool = _convert.pool_info(
        _admin.Pool(
            name="p",
            strategy="round_robin",
            ab_strategy="adaptive",
            ab_percent=5,
            sticky_timeout_s=2,
        )
    )
    assert (pool.ab_strategy, pool.ab_percent, pool.sticky_timeout_s) == ("adaptive", 5, 2.0)
    worker = _convert.worker_info(
        _admin.WorkerStatus(worker_id="w", labels={"a": "b"}, task_types=["x"], draining=True)
    )
    assert worker.labels == {"a": "b"}
    assert worker.task_types == ("x",)
    assert worker.connected_at is None
    assert worker.draining


def test_worker_messages() -> None:
    register = _convert.register_message(
        worker_id="",
        pool="p",
        labels={"k": "v"},
        capacity=3,
        task_types=["a", "b"],
        sdk_version="1",
    )
    assert register.register.capacity == 3
    assert list(register.register.task_types) == ["a", "b"]
    outcome = TaskOutcome("t", 2, False, b"", TaskErrorInfo("E", "m", "tb"), 1, 2)
    results = _convert.results_message([outcome], ["s"]).results
    assert results.results[0].error == _tasks.TaskError(type="E", message="m", traceback="tb")
    assert results.results[0].attempt == 2
    assert list(results.started_task_ids) == ["s"]
    assert _convert.credit_message(0).credit.capacity == 0
    assert _convert.heartbeat_message(2, 0.5).heartbeat.load == 0.5

    def event(**kind: object) -> object:
        return _convert.broker_event(_worker.BrokerMessage(**kind))  # type: ignore[arg-type]

    assert event(register_ack=_worker.RegisterAck(worker_id="w", heartbeat_interval_s=2)) == (
        RegisterAcked("w", 2.0)
    )
    assignments = event(
        assignments=_worker.Assignments(
            assignments=[_worker.Assignment(task_id="1", attempt=1, task_type="a")]
        )
    )
    assert isinstance(assignments, AssignmentsReceived)
    assert assignments.assignments[0].task_type == "a"
    assert event(cancel=_worker.CancelTasks(task_ids=["1"])) == CancelRequested(["1"])
    assert event(drain=_worker.Drain(reason="r")) == DrainRequested("r")
    assert event() is None


def test_task_context_json() -> None:
    ctx = worker_sdk.TaskContext(
        task_id="1", task_type="t", attempt=1, priority=0, payload=b'{"x": 1}', worker_id="w"
    )
    assert ctx.json() == {"x": 1}
    assert not ctx.cancelled
    assert json.loads(ctx.payload) == {"x": 1}
