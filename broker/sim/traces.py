"""Trace files: a workload from JSON or CSV, each mistake named by its line and field.

JSON is either a list of task objects, or an object ``{"workers": [...],
"worker_events": [...], "tasks": [...], "jitter_sigma": 0, "sticky_timeout_s": 5}``
where only "tasks" is required. A task (a JSON object, or a CSV row under a header)
has:

    arrival_s            seconds from the start (required)
    task_type            (required)
    duration_s           mean run time on any worker class
    duration_s_<class>   mean run time on workers of that class (overrides duration_s)
    priority             -1000..1000, default 0
    required_labels      k=v;k=v (or a JSON object)
    anti_affinity_group  hard unless anti_affinity_soft is true
    anti_affinity_soft   true/false
    sticky_key, routing_key

A worker object has "id", "capacity", and optionally "task_types" (default: every
type in the trace), "labels", "class" (default "default"), "fail_rate" (0..1),
"fail_time_factor", "join_s". A worker event has "at_s", "worker" and "change" (join,
leave = drain then disconnect, crash = disconnect at once, its tasks requeued).
Without a workers section (CSV, or a JSON list) the workers come from a spec,
`DEFAULT_TRACE_WORKERS` unless given: ``COUNTxCAPACITY[:CLASS]``, comma-separated,
e.g. ``4x2:fast,4x2:slow``; each takes every task type and carries the label
class=CLASS when a class is named.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from broker.domain import MAX_PRIORITY, MIN_PRIORITY, Placement
from broker.sim.workload import (
    ANY_CLASS,
    DEFAULT_CLASS,
    DEFAULT_TRACE_WORKERS,
    DURATION_PREFIX,
    SimTask,
    SimulationError,
    SimWorker,
    TraceError,
    WorkerChange,
    WorkerEvent,
    Workload,
    check_workload,
    classes_by_type,
    task_problem,
)

_TASK_FIELDS = frozenset(
    {
        "arrival_s",
        "task_type",
        "duration_s",
        "priority",
        "required_labels",
        "anti_affinity_group",
        "anti_affinity_soft",
        "sticky_key",
        "routing_key",
    }
)
_WORKER_FIELDS = frozenset(
    {"id", "capacity", "task_types", "labels", "class", "fail_rate", "fail_time_factor", "join_s"}
)
_EVENT_FIELDS = frozenset({"at_s", "worker", "change"})
_TOP_FIELDS = frozenset({"workers", "worker_events", "tasks", "jitter_sigma", "sticky_timeout_s"})


class _Bad(Exception):
    """A field's value is wrong; the caller adds where."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


def load_trace(path: Path, workers: str | None = None) -> Workload:
    """A workload from a JSON or CSV trace file; TraceError names the first bad line/field.

    `workers` (a spec like "4x2:fast,4x2:slow") replaces the trace's own workers;
    a trace without them gets `DEFAULT_TRACE_WORKERS`.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read: {exc}") from None
    is_json = path.suffix.lower() == ".json" or (
        path.suffix.lower() != ".csv" and text.lstrip()[:1] in ("[", "{")
    )
    if is_json:
        return _load_json(path, text, workers)
    return _load_csv(path, text, workers)


def parse_workers(spec: str, task_types: Iterable[str]) -> tuple[SimWorker, ...]:
    """Workers from COUNTxCAPACITY[:CLASS],...; each takes every one of `task_types`."""
    types = frozenset(task_types)
    made: list[SimWorker] = []
    for part in spec.split(","):
        size, _, worker_class = part.strip().partition(":")
        count_text, x, capacity_text = size.partition("x")
        try:
            count, capacity = int(count_text), int(capacity_text)
        except ValueError:
            count = capacity = 0
        if not x or count < 1 or capacity < 1:
            raise SimulationError(
                f"bad workers spec {part.strip()!r}: expected COUNTxCAPACITY[:CLASS], e.g. 4x2:fast"
            )
        name = worker_class or DEFAULT_CLASS
        made += [
            SimWorker(
                worker_id=f"{name}-{i}",
                capacity=capacity,
                task_types=types,
                labels={"class": worker_class} if worker_class else {},
                worker_class=name,
            )
            for i in range(1, count + 1)
        ]
    ids = [w.worker_id for w in made]
    if len(set(ids)) != len(ids):
        raise SimulationError(f"bad workers spec {spec!r}: a class is named twice")
    return tuple(made)


def _load_csv(path: Path, text: str, workers: str | None) -> Workload:
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames
    if not header:
        raise TraceError(f"{path}: empty CSV, expected a header line")
    for name in header:
        if name not in _TASK_FIELDS and not name.startswith(DURATION_PREFIX):
            raise TraceError(f"{path}: line 1: unknown column {name!r}")
    for required in ("arrival_s", "task_type"):
        if required not in header:
            raise TraceError(f"{path}: line 1: missing column {required!r}")
    tasks: list[tuple[SimTask, str]] = []
    for row in reader:
        where = f"line {reader.line_num}"
        if None in row:
            raise TraceError(f"{path}: {where}: more fields than the header has")
        record = {k: v for k, v in row.items() if v not in (None, "")}
        tasks.append((_task(path, where, record), where))
    if not tasks:
        raise TraceError(f"{path}: no tasks")
    types = {t.task_type for t, _ in tasks}
    return _workload(path, tasks, parse_workers(workers or DEFAULT_TRACE_WORKERS, types))


def _load_json(path: Path, text: str, workers: str | None) -> Workload:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(
            f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})"
        ) from None
    if isinstance(data, list):
        data = {"tasks": data}
    if not isinstance(data, dict):
        raise TraceError(f"{path}: expected a list of tasks or an object with 'tasks'")
    for key in data:
        if key not in _TOP_FIELDS:
            raise TraceError(f"{path}: unknown key {key!r}")
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise TraceError(f"{path}: 'tasks' must be a non-empty list")
    tasks: list[tuple[SimTask, str]] = []
    for i, record in enumerate(raw_tasks):
        where = f"tasks[{i}]"
        if not isinstance(record, dict):
            raise TraceError(f"{path}: {where}: expected an object")
        record = {k: v for k, v in record.items() if v is not None}
        tasks.append((_task(path, where, record), where))
    types = {t.task_type for t, _ in tasks}
    raw_workers = data.get("workers")
    if workers is not None or raw_workers is None:
        fleet = parse_workers(workers or DEFAULT_TRACE_WORKERS, types)
    else:
        if not isinstance(raw_workers, list) or not raw_workers:
            raise TraceError(f"{path}: 'workers' must be a non-empty list")
        fleet = tuple(_worker(path, f"workers[{i}]", w, types) for i, w in enumerate(raw_workers))
    raw_events = data.get("worker_events", [])
    if not isinstance(raw_events, list):
        raise TraceError(f"{path}: 'worker_events' must be a list")
    events = tuple(_event(path, f"worker_events[{i}]", e) for i, e in enumerate(raw_events))
    try:
        jitter_sigma = _number("jitter_sigma", data.get("jitter_sigma", 0.0))
        sticky_timeout_s = _number("sticky_timeout_s", data.get("sticky_timeout_s", 5.0))
    except _Bad as exc:
        raise TraceError(f"{path}: field {exc.field_name!r}: {exc}") from None
    return _workload(
        path, tasks, fleet, events, jitter_sigma=jitter_sigma, sticky_timeout_s=sticky_timeout_s
    )


def _workload(
    path: Path,
    located: list[tuple[SimTask, str]],
    workers: tuple[SimWorker, ...],
    events: tuple[WorkerEvent, ...] = (),
    *,
    jitter_sigma: float = 0.0,
    sticky_timeout_s: float = 5.0,
) -> Workload:
    classes = classes_by_type(workers)
    for task, where in located:
        if problem := task_problem(task, classes):
            raise TraceError(f"{path}: {where}: {problem}")
    tasks = sorted((t for t, _ in located), key=lambda t: t.arrival_s)  # stable
    workload = Workload(
        name=path.name,
        workers=workers,
        tasks=tuple(tasks),
        worker_events=events,
        jitter_sigma=jitter_sigma,
        sticky_timeout_s=sticky_timeout_s,
    )
    try:
        check_workload(workload)
    except SimulationError as exc:
        raise TraceError(f"{path}: {exc}") from None
    return workload


def _task(path: Path, where: str, record: Mapping[str, Any]) -> SimTask:
    try:
        for key in record:
            if key not in _TASK_FIELDS and not key.startswith(DURATION_PREFIX):
                raise _Bad(key, "unknown field")
        for key in ("arrival_s", "task_type"):
            if key not in record:
                raise _Bad(key, "missing")
        durations: dict[str, float] = {}
        if "duration_s" in record:
            durations[ANY_CLASS] = _number("duration_s", record["duration_s"])
        for key, value in record.items():
            if key.startswith(DURATION_PREFIX):
                worker_class = key.removeprefix(DURATION_PREFIX)
                if not worker_class:
                    raise _Bad(key, "a per-class duration needs a class name after the prefix")
                durations[worker_class] = _number(key, value)
        if not durations:
            raise _Bad("duration_s", "missing (give duration_s or duration_s_<class>)")
        group = _text("anti_affinity_group", record.get("anti_affinity_group", ""))
        soft = _flag("anti_affinity_soft", record.get("anti_affinity_soft", False))
        if soft and not group:
            raise _Bad("anti_affinity_soft", "needs an anti_affinity_group")
        task_type = _text("task_type", record["task_type"])
        if not task_type.strip():
            raise _Bad("task_type", "must not be empty")
        return SimTask(
            arrival_s=_number("arrival_s", record["arrival_s"]),
            task_type=task_type,
            duration_s=durations,
            priority=_priority(record.get("priority", 0)),
            placement=Placement(
                required_labels=_labels("required_labels", record.get("required_labels", "")),
                anti_affinity_group=group,
                anti_affinity_soft=soft,
                sticky_key=_text("sticky_key", record.get("sticky_key", "")),
                routing_key=_text("routing_key", record.get("routing_key", "")),
            ),
        )
    except _Bad as exc:
        raise TraceError(f"{path}: {where}, field {exc.field_name!r}: {exc}") from None


def _worker(path: Path, where: str, record: object, all_types: set[str]) -> SimWorker:
    try:
        if not isinstance(record, dict):
            raise _Bad("", "expected an object")
        for key in record:
            if key not in _WORKER_FIELDS:
                raise _Bad(key, "unknown field")
        for key in ("id", "capacity"):
            if key not in record:
                raise _Bad(key, "missing")
        worker_id = _text("id", record["id"])
        if not worker_id:
            raise _Bad("id", "must not be empty")
        capacity = record["capacity"]
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise _Bad("capacity", f"expected a whole number >= 1, got {capacity!r}")
        raw_types = record.get("task_types", sorted(all_types))
        if (
            not isinstance(raw_types, list)
            or not raw_types
            or not all(isinstance(t, str) and t for t in raw_types)
        ):
            raise _Bad("task_types", "expected a non-empty list of task type names")
        fail_rate = _number("fail_rate", record.get("fail_rate", 0.0))
        if fail_rate > 1:
            raise _Bad("fail_rate", f"must be 0..1, got {fail_rate}")
        return SimWorker(
            worker_id=worker_id,
            capacity=capacity,
            task_types=frozenset(raw_types),
            labels=_labels("labels", record.get("labels", "")),
            worker_class=_text("class", record.get("class", DEFAULT_CLASS)) or DEFAULT_CLASS,
            fail_rate=fail_rate,
            fail_time_factor=_number("fail_time_factor", record.get("fail_time_factor", 1.0)),
            join_s=_number("join_s", record.get("join_s", 0.0)),
        )
    except _Bad as exc:
        named = f", field {exc.field_name!r}" if exc.field_name else ""
        raise TraceError(f"{path}: {where}{named}: {exc}") from None


def _event(path: Path, where: str, record: object) -> WorkerEvent:
    try:
        if not isinstance(record, dict):
            raise _Bad("", "expected an object")
        for key in _EVENT_FIELDS:
            if key not in record:
                raise _Bad(key, "missing")
        for key in record:
            if key not in _EVENT_FIELDS:
                raise _Bad(key, "unknown field")
        change = _text("change", record["change"])
        if change not in {c.value for c in WorkerChange}:
            raise _Bad("change", f"expected join, leave or crash, got {change!r}")
        return WorkerEvent(
            _number("at_s", record["at_s"]), _text("worker", record["worker"]), WorkerChange(change)
        )
    except _Bad as exc:
        named = f", field {exc.field_name!r}" if exc.field_name else ""
        raise TraceError(f"{path}: {where}{named}: {exc}") from None


def _number(name: str, value: object) -> float:
    """A finite number >= 0, from a JSON number or a CSV cell."""
    if isinstance(value, bool):
        raise _Bad(name, f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise _Bad(name, f"expected a number, got {value!r}") from None
    else:
        raise _Bad(name, f"expected a number, got {value!r}")
    if not math.isfinite(number) or number < 0:
        raise _Bad(name, f"expected a finite number >= 0, got {value!r}")
    return number


def _priority(value: object) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise _Bad("priority", f"expected a whole number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad("priority", f"expected a whole number, got {value!r}")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise _Bad("priority", f"must be {MIN_PRIORITY}..{MAX_PRIORITY}, got {value}")
    return value


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise _Bad(name, f"expected a string, got {value!r}")
    return value


def _flag(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise _Bad(name, f"expected true or false, got {value!r}")


def _labels(name: str, value: object) -> dict[str, str]:
    """k=v;k=v, or a JSON object of strings."""
    if isinstance(value, dict):
        if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()):
            raise _Bad(name, "expected an object of string labels")
        return dict(value)
    if not isinstance(value, str):
        raise _Bad(name, f"expected k=v;k=v, got {value!r}")
    labels: dict[str, str] = {}
    for item in value.split(";"):
        if not item.strip():
            continue
        key, sep, label_value = item.strip().partition("=")
        if not sep or not key:
            raise _Bad(name, f"expected k=v;k=v, got {item.strip()!r}")
        if key in labels:
            raise _Bad(name, f"label {key!r} given twice")
        labels[key] = label_value
    return labels
