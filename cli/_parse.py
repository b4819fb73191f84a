"""Command-line values that need more than a type: bulkheads, fairness weights, times and
durations (30s, 5m, 1h, 2d). Each raises typer.BadParameter, so that a bad value is a usage
error (exit 2) that names its flag."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import typer

from worker_sdk import Bulkhead
from worker_sdk._pool_settings import BULKHEAD_SETTINGS, MAX_FAIRNESS_WEIGHT, UINT32_MAX

# Counts travel as uint32: a larger one would fail in the SDK rather than at the broker,
# whose own, tighter bounds then name the setting (INVALID_ARGUMENT, exit 1).
WIRE_MAX = UINT32_MAX
MAX_DELAY_S = 366 * 86_400.0  # not_before: within a year from now

_TASK_ID = re.compile(r"[1-9][0-9]{0,18}")

# --bulkhead's keys, each for a limit of Bulkhead.
BULKHEAD_KEYS = tuple(s.key for s in BULKHEAD_SETTINGS)
_BULKHEAD_LIMITS = {s.key: s for s in BULKHEAD_SETTINGS}
_BULKHEAD_SYNTAX = "TYPE:KEY=VALUE[,KEY=VALUE...]"


def count(value: int | None) -> int | None:
    """A limit or count that may be 0 (often "none" or "the default")."""
    return _count_from(0, value)


def count_from_one(value: int | None) -> int | None:
    """A count that must be at least 1."""
    return _count_from(1, value)


def _count_from(minimum: int, value: int | None) -> int | None:
    # A callback, not typer's min/max: those would print [0<=x<=4294967295] in --help.
    if value is not None and value < minimum:
        raise typer.BadParameter(f"must be {minimum} or more, got {value}")
    if value is not None and value > WIRE_MAX:
        raise typer.BadParameter(f"must be at most {WIRE_MAX}, got {value}")
    return value


def non_negative(value: float | None) -> float | None:
    """A number of seconds (or a rate) that may be 0. Infinity is refused by name: where 0
    means "no limit" (--rate), 0 is the way to say it."""
    if value is not None and math.isinf(value):
        raise typer.BadParameter("must be a finite number >= 0; infinity is not allowed")
    if value is not None and not (value >= 0 and math.isfinite(value)):
        raise typer.BadParameter(f"must be a number >= 0, got {value:g}")
    return value


def positive(value: float | None) -> float | None:
    """A number of seconds that must be more than 0."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise typer.BadParameter(f"must be a number > 0, got {value:g}")
    return value


def delay(value: float | None) -> float | None:
    """--delay: 0 up to the broker's year."""
    non_negative(value)
    if value is not None and value > MAX_DELAY_S:
        raise typer.BadParameter(f"must be at most {number(MAX_DELAY_S)} seconds (a year)")
    return value


def multiplier(value: float | None) -> float | None:
    """--backoff-multiplier: 1 keeps the backoff constant."""
    if value is not None and not (value >= 1 and math.isfinite(value)):
        raise typer.BadParameter(f"must be a number >= 1, got {value:g}")
    return value


def error_types(values: list[str] | None) -> list[str] | None:
    """--retry-on / --no-retry-on: error type names, e.g. TimeoutError."""
    for name in values or ():
        if not name.strip():
            raise typer.BadParameter("the error type must not be empty")
    return values


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without a UTC offset it is local time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"expected an ISO 8601 time such as 2030-01-02T03:04:05+00:00, got {text!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()


# 1h30m, 90s, 2.5h, 250ms; bare numbers are seconds.
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_DURATION_SYNTAX = "a duration such as 30s, 5m, 1h, 2d or 1h30m (a bare number is seconds)"
_TIME_SYNTAX = "an ISO 8601 time such as 2030-01-02T03:04:05+00:00"


def _duration_seconds(text: str) -> float | None:
    """The seconds `text` spells, or None if it is no duration."""
    cleaned = text.strip().lower()
    try:
        seconds = float(cleaned)
    except ValueError:
        if not _DURATION.fullmatch(cleaned):
            return None
        seconds = sum(
            float(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION_PART.findall(cleaned)
        )
    return seconds if math.isfinite(seconds) else None


def parse_duration(text: str | float) -> timedelta:
    """A duration more than 0: 30s, 5m, 1h, 2d, 1w, 1h30m, 250ms, or seconds (90, 0.5).

    A number passes as seconds: typer hands an option's default to its parser too.
    """
    seconds = float(text) if isinstance(text, int | float) else _duration_seconds(text)
    if seconds is None:
        raise typer.BadParameter(f"expected {_DURATION_SYNTAX}, got {text!r}")
    if not seconds > 0:
        raise typer.BadParameter(f"must be more than 0 seconds, got {text!r}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise typer.BadParameter(f"{text!r} is too long") from None


def parse_seconds(text: str | float) -> float:
    """A duration more than 0 (see parse_duration), in seconds."""
    return parse_duration(text).total_seconds()


def parse_whole_seconds(text: str | float) -> int:
    """A duration of whole seconds, at least 1 (see parse_duration): 5m is 300."""
    seconds = parse_duration(text).total_seconds()
    if not seconds.is_integer():
        raise typer.BadParameter(f"must be a whole number of seconds, got {text!r}")
    if seconds > WIRE_MAX:
        raise typer.BadParameter(f"must be at most {WIRE_MAX} seconds, got {text!r}")
    return int(seconds)


def parse_bucket(text: str | float) -> int:
    """--bucket: a whole number of minutes, as the broker keeps its history (5m is 300)."""
    seconds = parse_whole_seconds(text)
    if seconds % 60:
        raise typer.BadParameter(f"must be a whole number of minutes (1m, 5m, 1h), got {text!r}")
    return seconds


def task_id(value: str | None) -> str | None:
    """A task id: the decimal digits of a positive number, as the broker writes them."""
    if value is not None and _TASK_ID.fullmatch(value) is None:
        raise typer.BadParameter(f"must be a task id (digits, e.g. 42), got {value[:40]!r}")
    return value


def time_or_duration(text: str, flag: str) -> datetime | timedelta:
    """An ISO 8601 time (local time without a UTC offset) or a duration back from now
    (see parse_duration); a BadParameter naming `flag` for anything else."""
    if _duration_seconds(text) is not None:  # 90 is seconds, never the year 90
        try:
            return parse_duration(text)
        except typer.BadParameter as exc:
            raise typer.BadParameter(exc.message, param_hint=f"'{flag}'") from None
    try:
        return parse_time(text)
    except typer.BadParameter:
        raise typer.BadParameter(
            f"expected {_DURATION_SYNTAX}, or {_TIME_SYNTAX}, got {text!r}",
            param_hint=f"'{flag}'",
        ) from None


@dataclass(frozen=True, slots=True)
class FairnessWeight:
    """A KEY=N fairness weight from the command line."""

    key: str
    weight: int


def parse_fairness_weight(text: str) -> FairnessWeight:
    """KEY=N, split at the last "=" (so a key may hold one); N is 1..1000."""
    key, sep, number = text.rpartition("=")
    if not sep or not key:
        raise typer.BadParameter(f"expected KEY=N, got {text!r}")
    try:
        weight = int(number)
    except ValueError:
        raise typer.BadParameter(f"weight {number!r} in {text!r} is not a whole number") from None
    if not 1 <= weight <= MAX_FAIRNESS_WEIGHT:
        raise typer.BadParameter(
            f"weight must be 1..{MAX_FAIRNESS_WEIGHT}, got {weight} in {text!r}"
        )
    return FairnessWeight(key, weight)


def fairness_weights(weights: list[FairnessWeight]) -> dict[str, int]:
    """The weights as a map; a key given twice is an error."""
    by_key: dict[str, int] = {}
    for weight in weights:
        if weight.key in by_key:
            raise typer.BadParameter(
                f"key {weight.key!r} given twice", param_hint="'--fairness-weight'"
            )
        by_key[weight.key] = weight.weight
    return by_key


def parse_bulkhead(text: str) -> Bulkhead:
    """TYPE:KEY=VALUE,... with keys max_inflight, max_queue, burst (whole numbers) and rate
    (per second). The type is what precedes the last ":", so it may hold one."""
    task_type, sep, settings = text.rpartition(":")
    if not sep or not task_type.strip() or not settings.strip():
        raise typer.BadParameter(f"expected {_BULKHEAD_SYNTAX}, got {text!r}")
    values: dict[str, Any] = {}
    for item in settings.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r} in {text!r}")
        if key not in BULKHEAD_KEYS:
            known = ", ".join(BULKHEAD_KEYS)
            raise typer.BadParameter(f"unknown key {key!r} in {text!r}; keys: {known}")
        if key in values:
            raise typer.BadParameter(f"{key} given twice in {text!r}")
        values[key] = _bulkhead_value(key, value.strip(), text)
    return Bulkhead(task_type, **{_BULKHEAD_LIMITS[key].name: v for key, v in values.items()})


def _bulkhead_value(key: str, value: str, text: str) -> float | int:
    if _BULKHEAD_LIMITS[key].type is float:
        try:
            rate = float(value)
        except ValueError:
            raise typer.BadParameter(f"{key} {value!r} in {text!r} is not a number") from None
        if not (rate >= 0 and math.isfinite(rate)):
            raise typer.BadParameter(f"{key} must be a number >= 0, got {value} in {text!r}")
        return rate
    try:
        count = int(value)
    except ValueError:
        raise typer.BadParameter(f"{key} {value!r} in {text!r} is not a whole number") from None
    if not 0 <= count <= WIRE_MAX:
        raise typer.BadParameter(f"{key} must be 0..{WIRE_MAX}, got {count} in {text!r}")
    return count


def bulkheads(given: list[Bulkhead]) -> tuple[Bulkhead, ...]:
    """The bulkheads in order; a task type given twice is an error."""
    seen: set[str] = set()
    for bulkhead in given:
        if bulkhead.task_type in seen:
            raise typer.BadParameter(
                f"task type {bulkhead.task_type!r} given twice", param_hint="'--bulkhead'"
            )
        seen.add(bulkhead.task_type)
    return tuple(given)


def bulkhead_text(bulkhead: Bulkhead) -> str:
    """A bulkhead as --bulkhead takes it, its non-zero settings only: render:max_inflight=4."""
    settings = [
        f"{s.key}={number(value)}"
        for s in BULKHEAD_SETTINGS
        if (value := getattr(bulkhead, s.name))
    ]
    return f"{bulkhead.task_type}:{','.join(settings)}" if settings else bulkhead.task_type


def number(value: float) -> str:
    """A number as typed: 4, 2.5, 1000000 (not 1e+06)."""
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(value)
