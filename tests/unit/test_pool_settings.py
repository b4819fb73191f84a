"""One definition of a pool's settings: the SDK's table (worker_sdk/_pool_settings.py) agrees
with message Pool in the .proto, with the broker's PoolConfig and the SDK's PoolInfo, and every
setting survives each trip it makes (wire, store, audit, config file)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from broker.config import load_config, validate_pool
from broker.domain import (
    BULKHEAD_LIMITS,
    POOL_SCALAR_SETTINGS,
    RATE_MODES,
    BulkheadConfig,
    PoolConfig,
)
from broker.errors import ConfigError
from broker.server.convert import pool_from_pb, pool_to_pb
from broker.storage.codec import pool_limits_from_json, pool_limits_json, pool_settings
from worker_sdk import Bulkhead, Client, PoolInfo, SyncClient, _convert
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pool_settings import (
    BULKHEAD_SETTINGS,
    KNOWN_STRATEGIES,
    NESTED_SETTINGS,
    POOL_DESCRIPTION_FIELDS,
    POOL_SETTINGS,
    SETTING_NAMES,
    PoolSetting,
    PoolSettings,
)

_WIRE_TYPES = {
    FieldDescriptor.TYPE_STRING: str,
    FieldDescriptor.TYPE_DOUBLE: float,
    FieldDescriptor.TYPE_FLOAT: float,
    FieldDescriptor.TYPE_UINT32: int,
    FieldDescriptor.TYPE_UINT64: int,
    FieldDescriptor.TYPE_INT32: int,
    FieldDescriptor.TYPE_INT64: int,
}
NAMES = tuple(s.name for s in POOL_SETTINGS)
BULKHEAD_NAMES = tuple(s.name for s in BULKHEAD_SETTINGS)


def _scalar_fields(descriptor: Descriptor, key: str) -> dict[str, type]:
    """The message's one-value fields (but `key`, the name or task type, and the fields
    that describe a pool's settings) and their types."""
    return {
        f.name: _WIRE_TYPES[f.type]
        for f in descriptor.fields
        if not f.is_repeated and f.name != key and f.name not in POOL_DESCRIPTION_FIELDS
    }


# -- the table against the .proto ---------------------------------------------------------


def test_every_field_of_message_pool_has_a_row_and_every_row_a_field() -> None:
    descriptor = _admin.Pool.DESCRIPTOR
    assert _scalar_fields(descriptor, "name") == {s.name: s.type for s in POOL_SETTINGS}
    nested = {f.name: f for f in descriptor.fields if f.is_repeated}
    assert sorted(nested) == sorted(NESTED_SETTINGS)
    assert nested["bulkheads"].message_type is _admin.Bulkhead.DESCRIPTOR
    weights = nested["fairness_weights"].message_type
    assert weights is not None
    assert weights.GetOptions().map_entry
    assert _WIRE_TYPES[weights.fields_by_name["key"].type] is str
    assert _WIRE_TYPES[weights.fields_by_name["value"].type] is int
    assert descriptor.fields_by_name["name"].type == FieldDescriptor.TYPE_STRING


def test_every_field_of_message_bulkhead_has_a_row_and_every_row_a_field() -> None:
    descriptor = _admin.Bulkhead.DESCRIPTOR
    assert _scalar_fields(descriptor, "task_type") == {s.name: s.type for s in BULKHEAD_SETTINGS}
    assert descriptor.fields_by_name["task_type"].type == FieldDescriptor.TYPE_STRING


def test_rows_are_unique_and_complete() -> None:
    assert len(set(SETTING_NAMES)) == len(SETTING_NAMES)
    assert len({s.flag for s in POOL_SETTINGS}) == len(POOL_SETTINGS)
    assert len({s.key for s in BULKHEAD_SETTINGS}) == len(BULKHEAD_SETTINGS)
    for setting in POOL_SETTINGS:
        assert setting.flag.startswith("--")
        assert setting.help.endswith(".")
        assert isinstance(setting.default, setting.type)
        assert bool(setting.metavar) != bool(setting.choices)
        assert not setting.choices or setting.default in setting.choices


# -- the dataclasses against the table ---------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def test_the_broker_pool_config_has_exactly_the_settings() -> None:
    names = [f.name for f in dataclasses.fields(PoolConfig)]
    assert names == ["name", *NAMES, *NESTED_SETTINGS]
    assert POOL_SCALAR_SETTINGS == NAMES
    hints = _hints(PoolConfig)
    defaults = PoolConfig(name="p")
    for setting in POOL_SETTINGS:
        assert hints[setting.name] is setting.type, setting.name
        # The SDK's default is the broker's, or 0 / "": "the broker's default".
        assert setting.default in (getattr(defaults, setting.name), setting.type()), setting.name
    assert [f.name for f in dataclasses.fields(BulkheadConfig)] == ["task_type", *BULKHEAD_NAMES]
    assert BULKHEAD_LIMITS == BULKHEAD_NAMES
    bulkhead_hints = _hints(BulkheadConfig)
    assert all(bulkhead_hints[s.name] is s.type for s in BULKHEAD_SETTINGS)
    assert tuple(next(s for s in POOL_SETTINGS if s.name == "rate_mode").choices) == RATE_MODES


def test_the_sdk_pool_info_has_exactly_the_settings() -> None:
    fields = {f.name: f for f in dataclasses.fields(PoolInfo)}
    assert list(fields) == ["name", *NAMES, *NESTED_SETTINGS]
    hints = _hints(PoolInfo)
    for setting in POOL_SETTINGS:
        assert hints[setting.name] is setting.type, setting.name
        if setting.name != "strategy":  # PoolInfo's is required: the broker always says
            assert fields[setting.name].default == setting.default, setting.name
    assert [f.name for f in dataclasses.fields(Bulkhead)] == ["task_type", *BULKHEAD_NAMES]
    bulkhead_hints = _hints(Bulkhead)
    assert all(bulkhead_hints[s.name] is s.type for s in BULKHEAD_SETTINGS)


def test_pool_settings_types_the_keyword_arguments() -> None:
    hints = typing.get_type_hints(PoolSettings)
    assert list(hints) == [n for n in SETTING_NAMES if n != "strategy"]
    for setting in POOL_SETTINGS[1:]:
        assert hints[setting.name] == setting.type | None, setting.name
    assert hints["bulkheads"] == Sequence[Bulkhead] | None
    assert hints["fairness_weights"] == Mapping[str, int] | None


@pytest.mark.parametrize("client", [Client, SyncClient])
def test_create_and_update_pool_take_every_setting(client: type[Client | SyncClient]) -> None:
    create = inspect.signature(client.create_pool).parameters
    assert list(create) == ["self", "name", *SETTING_NAMES]
    for setting in POOL_SETTINGS:
        assert create[setting.name].default == setting.default, setting.name
    assert (create["bulkheads"].default, create["fairness_weights"].default) == ((), None)
    update = inspect.signature(client.update_pool).parameters
    assert list(update) == ["self", "name", *SETTING_NAMES]
    assert all(update[n].default is None for n in SETTING_NAMES)
    assert all(update[n].kind is inspect.Parameter.KEYWORD_ONLY for n in SETTING_NAMES)


# -- round trips ---------------------------------------------------------------------------


def _other(setting: PoolSetting) -> Any:
    """A valid value that is no default, of the broker's or of the SDK's."""
    if setting.choices:
        return next(c for c in reversed(setting.choices) if c != setting.default)
    if setting.type is str:
        return next(n for n in reversed(KNOWN_STRATEGIES) if n != setting.default)
    if setting.name == "adaptive_window":  # compares no fewer than 20 costs
        return 50
    return 3 if setting.type is int else 0.5


FULL = PoolConfig(
    name="full",
    **{s.name: _other(s) for s in POOL_SETTINGS},
    bulkheads=(
        BulkheadConfig(task_type="render", **{n: 2 for n in BULKHEAD_NAMES}),
        BulkheadConfig(task_type="thumb", max_queue=7),
    ),
    fairness_weights={"tenant-a": 3, "tenant-b": 1},
)


def test_full_pool_sets_every_setting_to_no_default() -> None:
    defaults = PoolConfig(name="full")
    assert all(getattr(FULL, n) != getattr(defaults, n) for n in SETTING_NAMES)
    validate_pool(FULL)


def test_domain_to_proto_to_domain_keeps_every_setting() -> None:
    assert pool_from_pb(pool_to_pb(FULL)) == FULL
    # The wire's zeros are the broker's defaults.
    assert pool_from_pb(_admin.Pool(name="p")) == PoolConfig(name="p")


def test_sdk_to_proto_to_sdk_keeps_every_setting() -> None:
    info = PoolInfo(
        "full",
        **{s.name: _other(s) for s in POOL_SETTINGS if s.name != "strategy"},
        strategy="adaptive",
        bulkheads=(Bulkhead("render", 4, 100, 2.5, 5), Bulkhead("thumb", max_queue=10)),
        fairness_weights={"tenant-a": 3},
    )
    settings = {n: getattr(info, n) for n in SETTING_NAMES}
    wire = _convert.create_pool_request("full", settings).pool
    assert _convert.pool_info(wire) == info
    # And the broker reads what the SDK wrote, and the SDK what the broker writes.
    assert _convert.pool_info(pool_to_pb(pool_from_pb(wire))) == info


def test_codec_json_keeps_every_setting() -> None:
    # The store keeps the strategy, the A/B split and the sticky timeout in columns.
    columns = {n: getattr(FULL, n) for n in ("strategy", "ab_strategy", "ab_percent")}
    stored = PoolConfig(name="full", **columns, sticky_timeout_s=FULL.sticky_timeout_s)
    assert pool_limits_from_json(stored, pool_limits_json(FULL)) == FULL
    assert pool_limits_json(PoolConfig(name="plain")) is None


def test_a_bulkhead_stored_before_a_newer_limit_reads_it_as_its_default() -> None:
    # A shipped layout never changes: task type, then the limits in this order.
    assert BULKHEAD_LIMITS[:4] == ("max_inflight", "max_queue", "rate_per_s", "rate_burst")
    old = '{"bulkheads":[["render",4]]}'
    (bulkhead,) = pool_limits_from_json(PoolConfig(name="p"), old).bulkheads
    assert bulkhead == BulkheadConfig(task_type="render", max_inflight=4)


def test_the_audit_names_every_setting() -> None:
    settings = pool_settings(FULL)
    assert sorted(settings) == sorted(SETTING_NAMES)
    assert settings["bulkheads"][0] == {"task_type": "render", **{n: 2 for n in BULKHEAD_NAMES}}
    assert json.loads(json.dumps(settings)) == settings


def test_the_config_file_takes_every_setting(tmp_path: Path) -> None:
    # A heartbeat interval the pool's lease_s spans twice (a lease must).
    lines = ["[broker]", f"heartbeat_interval_s = {FULL.lease_s / 2}", "[pools.full]"]
    lines += [f"{n} = {json.dumps(getattr(FULL, n))}" for n in NAMES]
    for bulkhead in FULL.bulkheads:
        lines.append(f"[pools.full.bulkheads.{bulkhead.task_type}]")
        lines += [f"{n} = {json.dumps(getattr(bulkhead, n))}" for n in BULKHEAD_NAMES]
    lines.append("[pools.full.fairness_weights]")
    lines += [f'"{key}" = {weight}' for key, weight in FULL.fairness_weights.items()]
    path = tmp_path / "broker.toml"
    path.write_text("\n".join(lines) + "\n")
    (full,) = [p for p in load_config(path).pools if p.name == "full"]
    assert full == FULL


@pytest.mark.parametrize("name", NAMES)
def test_the_broker_bounds_every_setting(name: str) -> None:
    setting = next(s for s in POOL_SETTINGS if s.name == name)
    bad: Any = "no-such-value" if setting.type is str else setting.type(-1)
    with pytest.raises(ConfigError, match=f"pools.p.{name}"):
        validate_pool(dataclasses.replace(PoolConfig(name="p"), **{name: bad}))
