"""JSON for the parts of tasks and pools the store keeps in one column each.

A task's options (retry policy, deadlines, keys) and a pool's limits are read and
written whole and never queried field by field, so one JSON column each keeps the
schema small. Defaults are left out, so a task without options stores NULL.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from typing import Any

from broker.domain import (
    BULKHEAD_LIMITS,
    POOL_SCALAR_SETTINGS,
    BulkheadConfig,
    PoolConfig,
    RetryPolicy,
    TaskSpec,
)

_COMPACT = (",", ":")
_SPEC_DEFAULTS = TaskSpec(task_type="-")
_OPTION_FIELDS = (
    "start_timeout_s",
    "execution_timeout_s",
    "idempotency_key",
    "fairness_key",
    "payload_content_type",
    "submitter",
)
_OPTION_DEFAULTS = tuple(
    (name, getattr(_SPEC_DEFAULTS, name)) for name in (*_OPTION_FIELDS, "not_before")
)
_encode = json.JSONEncoder(separators=_COMPACT).encode  # one encoder, not one per call
_json_string = json.encoder.encode_basestring_ascii  # a str quoted as json.dumps does
# Stored as given (a mapping); compared with the default as a dict.
_MAPPING_FIELDS = ("trace_context",)
_POOL_DEFAULTS = PoolConfig(name="-")
# The pools table has columns of its own for these (they predate the JSON of its limits).
_COLUMN_SETTINGS = ("strategy", "ab_strategy", "ab_percent", "sticky_timeout_s")
# Every other setting goes in the JSON, under its name.
_LIMIT_FIELDS = tuple(name for name in POOL_SCALAR_SETTINGS if name not in _COLUMN_SETTINGS)


def task_options_json(spec: TaskSpec) -> str | None:
    """The spec's retry policy, deadlines, keys and not-before time; None if all default.

    Written piece by piece rather than through json.dumps: most tasks with options have
    one or two (a content type, a trace context), and an encoder's setup for each would
    cost more than writing them.
    """
    if not spec.has_options:
        return None
    parts: list[str] = []
    for name, default in _OPTION_DEFAULTS:
        if (value := getattr(spec, name)) != default:
            parts.append(f'"{name}":{_json_value(value)}')
    for name in _MAPPING_FIELDS:
        if mapping := getattr(spec, name):
            items = ",".join([f"{_json_string(k)}:{_json_string(v)}" for k, v in mapping.items()])
            parts.append(f'"{name}":{{{items}}}')
    if spec.has_retry:
        retry = spec.retry
        retry_list = [
            retry.max_attempts,
            retry.initial_backoff_s,
            retry.max_backoff_s,
            retry.backoff_multiplier,
            sorted(retry.retryable_errors),
            sorted(retry.non_retryable_errors),
        ]
        parts.append(f'"retry":{_encode(retry_list)}')
    return f"{{{','.join(parts)}}}" if parts else None


def _json_value(value: str | float) -> str:
    """A str, int or finite float as json.dumps writes it."""
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, float) and not math.isfinite(value):
        return _encode(value)
    return repr(value)


def task_options_from_json(spec: TaskSpec, text: str | None) -> TaskSpec:
    """The spec with the options stored by task_options_json."""
    if text is None:
        return spec
    data = json.loads(text)
    retry = data.pop("retry", None)
    if retry is not None:
        attempts, initial, cap, multiplier, retryable, non_retryable = retry
        data["retry"] = RetryPolicy(
            max_attempts=attempts,
            initial_backoff_s=initial,
            max_backoff_s=cap,
            backoff_multiplier=multiplier,
            retryable_errors=frozenset(retryable),
            non_retryable_errors=frozenset(non_retryable),
        )
    return replace(spec, **data)


def pool_limits_json(pool: PoolConfig) -> str | None:
    """The pool's limits, breaker and lease settings, bulkheads and fairness weights."""
    data: dict[str, Any] = {
        name: getattr(pool, name)
        for name in _LIMIT_FIELDS
        if getattr(pool, name) != getattr(_POOL_DEFAULTS, name)
    }
    if pool.bulkheads:
        # A list each, in field order: a new limit goes last, and is missing (its default)
        # from the rows written before it.
        data["bulkheads"] = [
            [b.task_type, *(getattr(b, name) for name in BULKHEAD_LIMITS)] for b in pool.bulkheads
        ]
    if pool.fairness_weights:
        data["fairness_weights"] = dict(pool.fairness_weights)
    return json.dumps(data, separators=_COMPACT, sort_keys=True) if data else None


def pool_limits_from_json(pool: PoolConfig, text: str | None) -> PoolConfig:
    """The pool with the settings stored by pool_limits_json."""
    if text is None:
        return pool
    data = json.loads(text)
    bulkheads = data.pop("bulkheads", None)
    if bulkheads is not None:
        data["bulkheads"] = tuple(
            BulkheadConfig(task_type=task_type, **dict(zip(BULKHEAD_LIMITS, limits, strict=False)))
            for task_type, *limits in bulkheads
        )
    return replace(pool, **data)


def pool_settings(pool: PoolConfig) -> dict[str, Any]:
    """Every setting of a pool, as JSON-ready values (for the audit of changes)."""
    return {
        **{name: getattr(pool, name) for name in POOL_SCALAR_SETTINGS},
        "bulkheads": [asdict(b) for b in pool.bulkheads],
        "fairness_weights": dict(sorted(pool.fairness_weights.items())),
    }


def settings_json(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, separators=_COMPACT)
