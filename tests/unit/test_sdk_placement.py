"""Placement hints in the SDK: the types and their protobuf conversion, both ways."""

from __future__ import annotations

import pytest

import worker_sdk
from worker_sdk import Placement, PreferredLabel, TaskRequest, _convert
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import tasks_pb2 as _tasks

HINTED = TaskRequest(
    "train",
    b"p",
    3,
    "gpu",
    require={"gpu": "a100", "zone": "eu"},
    prefer=[PreferredLabel("disk", "ssd"), PreferredLabel("rack", "r1", weight=7)],
    anti_affinity="shard-1",
    anti_affinity_soft=True,
)


def test_placement_types_are_public() -> None:
    assert {"Placement", "PreferredLabel"} <= set(worker_sdk.__all__)
    assert PreferredLabel("k", "v").weight == 1
    assert Placement().free
    assert not Placement(anti_affinity_group="g").free
    assert not Placement(preferred_labels=(PreferredLabel("k", "v"),)).free
    assert not Placement(sticky_key="user-7").free
    # As the broker sees it: consistent_hash reads a routing key in its normal pick.
    assert Placement(routing_key="user-7").free


def test_task_request_with_hints_stays_hashable() -> None:
    assert {HINTED, HINTED} == {HINTED}  # a dict and a list among the fields
    assert TaskRequest("train", b"p", 3, "gpu") != HINTED
    with pytest.raises(TypeError):
        TaskRequest("t", b"", 0, "default", {"a": "b"})  # type: ignore[call-arg]  # keyword-only
    keyed = TaskRequest("t", sticky_key="s", routing_key="r")
    assert {keyed, keyed} == {keyed}
    assert keyed != TaskRequest("t", sticky_key="s")


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (TaskRequest("t", sticky_key="user-7"), _tasks.Placement(sticky_key="user-7")),
        (TaskRequest("t", routing_key="user-7"), _tasks.Placement(routing_key="user-7")),
        (
            TaskRequest("t", require={"gpu": "a100"}, sticky_key="s", routing_key="r"),
            _tasks.Placement(required_labels={"gpu": "a100"}, sticky_key="s", routing_key="r"),
        ),
        (
            TaskRequest("t", anti_affinity="g", anti_affinity_soft=True, sticky_key="s"),
            _tasks.Placement(anti_affinity_group="g", anti_affinity_soft=True, sticky_key="s"),
        ),
    ],
)
def test_task_spec_carries_sticky_and_routing_keys(
    request_: TaskRequest, expected: _tasks.Placement
) -> None:
    assert _convert.task_spec(request_).placement == expected


def test_empty_keys_mean_none() -> None:
    spec = _convert.task_spec(TaskRequest("t", sticky_key="", routing_key=""))
    assert not spec.HasField("placement")


def test_soft_anti_affinity_needs_a_group_even_with_a_key() -> None:
    with pytest.raises(ValueError, match="anti_affinity"):
        _convert.task_spec(TaskRequest("t", sticky_key="s", anti_affinity_soft=True))


def test_keys_round_trip_through_a_task() -> None:
    request = TaskRequest("t", sticky_key="cache-3", routing_key="user-7")
    wire = _tasks.Task(id="1", spec=_convert.task_spec(request))
    hints = _convert.task_info(wire).placement
    assert (hints.sticky_key, hints.routing_key) == ("cache-3", "user-7")
    assert not hints.free
    again = TaskRequest("t", sticky_key=hints.sticky_key, routing_key=hints.routing_key)
    assert _convert.task_spec(again).placement == wire.spec.placement


def test_task_spec_carries_the_hints() -> None:
    spec = _convert.task_spec(HINTED)
    assert spec.placement == _tasks.Placement(
        required_labels={"gpu": "a100", "zone": "eu"},
        preferred_labels=[
            _tasks.PreferredLabel(key="disk", value="ssd", weight=1),
            _tasks.PreferredLabel(key="rack", value="r1", weight=7),
        ],
        anti_affinity_group="shard-1",
        anti_affinity_soft=True,
    )
    assert (spec.task_type, spec.payload, spec.priority, spec.pool) == ("train", b"p", 3, "gpu")


def test_task_spec_without_hints_has_no_placement() -> None:
    spec = _convert.task_spec(TaskRequest("t", require={}, prefer=[], anti_affinity=""))
    assert not spec.HasField("placement")
    only_group = _convert.task_spec(TaskRequest("t", anti_affinity="g"))
    assert only_group.placement == _tasks.Placement(anti_affinity_group="g")


def test_hints_round_trip_through_a_task() -> None:
    wire = _tasks.Task(
        id="9",
        spec=_convert.task_spec(HINTED),
        state=_tasks.TASK_STATE_PENDING,
        placement_note="unschedulable: no connected worker takes type 'train'",
        unschedulable=True,
    )
    info = _convert.task_info(wire)
    assert info.placement == Placement(
        required_labels={"gpu": "a100", "zone": "eu"},
        preferred_labels=(PreferredLabel("disk", "ssd", 1), PreferredLabel("rack", "r1", 7)),
        anti_affinity_group="shard-1",
        anti_affinity_soft=True,
    )
    assert info.placement_note.startswith("unschedulable:")
    assert info.unschedulable
    # And back: the stored hints submit the same task again.
    hints = info.placement
    again = TaskRequest(
        info.task_type,
        require=hints.required_labels,
        prefer=hints.preferred_labels,
        anti_affinity=hints.anti_affinity_group,
        anti_affinity_soft=hints.anti_affinity_soft,
    )
    assert _convert.task_spec(again).placement == wire.spec.placement


def test_task_without_hints_reads_as_free() -> None:
    info = _convert.task_info(_tasks.Task(id="1", spec=_tasks.TaskSpec(task_type="t")))
    assert info.placement == Placement()
    assert info.placement.free
    assert (info.placement_note, info.unschedulable) == ("", False)


def test_soft_anti_affinity_needs_a_group() -> None:
    with pytest.raises(ValueError, match="anti_affinity"):
        _convert.task_spec(TaskRequest("t", anti_affinity_soft=True))
    with pytest.raises(ValueError, match="anti_affinity"):
        _convert.task_spec(TaskRequest("t", anti_affinity="", anti_affinity_soft=True))


@pytest.mark.parametrize(
    "request_",
    [
        TaskRequest("t", require={"gpus": 2}),  # type: ignore[dict-item]
        TaskRequest("t", prefer=[("zone", "eu", 2)]),  # type: ignore[list-item]
        TaskRequest("t", prefer=[PreferredLabel("zone", "eu", "high")]),  # type: ignore[arg-type]
        TaskRequest("t", anti_affinity=7),  # type: ignore[arg-type]
        TaskRequest("t", sticky_key=7),  # type: ignore[arg-type]
        TaskRequest("t", routing_key=["user-7"]),  # type: ignore[arg-type]
    ],
)
def test_hints_of_the_wrong_type_are_a_clear_type_error(request_: TaskRequest) -> None:
    with pytest.raises(TypeError, match="placement hints: require maps str to str") as raised:
        _convert.task_spec(request_)
    assert "sticky_key and routing_key are str" in str(raised.value)


def test_weights_are_left_to_the_broker_unless_the_wire_cannot_hold_them() -> None:
    spec = _convert.task_spec(TaskRequest("t", prefer=[PreferredLabel("k", "v", 0)]))
    assert spec.placement.preferred_labels[0].weight == 0  # the broker says INVALID_ARGUMENT
    with pytest.raises(ValueError, match="out of range"):
        _convert.task_spec(TaskRequest("t", prefer=[PreferredLabel("k", "v", 1 << 40)]))


def test_spec_size_counts_the_hints() -> None:
    plain = _convert.spec_size(_convert.task_spec(TaskRequest("train", b"p", 3, "gpu")))
    hinted = _convert.spec_size(_convert.task_spec(HINTED))
    assert plain > len(b"p")
    assert hinted > plain + len("gpua100zoneeudiskssdrackr1shard-1")


def test_pool_stats_unschedulable() -> None:
    response = _admin.StatsResponse(pools=[_admin.PoolStats(pool="p", pending=5, unschedulable=2)])
    (pool,) = _convert.stats(response).pools
    assert (pool.pending, pool.unschedulable) == (5, 2)
