"""Values every converter needs: times, seconds, counts and filters as the wire has them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime

from worker_sdk._pool_settings import UINT32_MAX


def wire_time(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


def epoch_ms(when: datetime, name: str) -> int:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, e.g. datetime.now(UTC)")
    return round(when.timestamp() * 1000)


def seconds_or_none(value: float) -> float | None:
    return value if value > 0 else None


def positive_seconds(value: float | None, name: str) -> float:
    """Seconds for a wire field where 0 means "none"; None gives 0."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} is a number of seconds, not {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number of seconds (None = none)")
    return float(value)


def uint32(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} is a whole number, not {type(value).__name__}")
    if not minimum <= value <= UINT32_MAX:
        raise ValueError(f"{name} must be {minimum}..{UINT32_MAX}, got {value}")
    return value


def optional_filter(value: str | None, name: str) -> str:
    """An optional filter; None and "" both mean "all"."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} is a str, not {type(value).__name__}")
    return value or ""


def str_map(field: Mapping[str, str]) -> dict[str, str]:
    """A map field as a dict; `dict(field)` would go through the abstract Mapping's
    methods, which costs an empty map as much as a comprehension costs a full one."""
    return {key: field[key] for key in field} if field else {}
