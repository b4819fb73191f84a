"""What travels on the two streams, as plain dataclasses; `_convert` maps them to protobuf."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from worker_sdk._records import hot_record
from worker_sdk._types import TaskErrorInfo, TaskInfo

# -- SubmitStream (client) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitAcked:
    """The broker's answer to one SubmitStream message: ids in order, or an error.

    `retry_after` (seconds) comes with a RESOURCE_EXHAUSTED refusal for overload.
    """

    batch_id: int
    task_ids: list[str]
    error_code: int
    error_message: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class TasksCompleted:
    """Watched tasks that reached a terminal state, and watched ids the broker does not know."""

    tasks: list[TaskInfo]
    not_found: list[str]


# -- WorkerService.Connect (worker) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterAcked:
    """The broker accepted the registration."""

    worker_id: str
    heartbeat_interval_s: float
    # Renew the lease on held tasks (a heartbeat) within this, or the broker takes them
    # back; 0 = the broker did not say.
    lease_s: float = 0.0
    heartbeat_timeout_s: float = 0.0  # 0 = the broker did not say
    # The secret that resumes this session on a new stream, and for how long after the
    # stream breaks ("" / 0: the broker does not resume sessions).
    resume_token: str = ""
    resume_window_s: float = 0.0
    resumed: bool = False  # this stream resumed the last one: its tasks are still ours
    # On a resume, the last Results message the broker took (Results.seq); and whether it
    # says so at all (else the worker keeps nothing it wrote).
    results_seen: int = 0
    acks_results: bool = False
    # Holding no task, beat this seldom, and be dropped after this long silent (0: the
    # broker did not say; beat every heartbeat_interval_s).
    idle_heartbeat_interval_s: float = 0.0
    idle_heartbeat_timeout_s: float = 0.0


@hot_record()
class Assignment:
    """One task the broker hands to this worker."""

    task_id: str
    attempt: int  # 1 for the first run
    task_type: str
    payload: bytes
    priority: int
    deadline: datetime | None = None  # the attempt's execution timeout, as a time
    trace_context: Mapping[str, str] = field(default_factory=dict)  # W3C, of the task's trace
    payload_content_type: str = ""  # as the client said; "" = not said


@dataclass(frozen=True, slots=True)
class AssignmentsReceived:
    """A batch of assignments; the broker never exceeds the worker's free credit.

    `seq` counts the stream's Assignments messages (1, 2, 3...); heartbeats echo the last.
    `results_seen`: the last Results message the broker took (0 = none, or not said).
    """

    assignments: list[Assignment]
    seq: int = 0
    results_seen: int = 0


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """Stop these tasks; their results are no longer wanted. `attempts` names the attempt
    of each it knows (stop only that one: the task may come again as a later attempt)."""

    task_ids: list[str]
    attempts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DrainRequested:
    """The broker sends no more work: finish what is held by `deadline`, then disconnect.
    `stopping`: the broker itself is stopping (reconnect later), not draining this worker
    (exit)."""

    reason: str
    deadline: datetime | None = None
    stopping: bool = False


@dataclass(frozen=True, slots=True)
class ResultsDropped:
    """Results the broker did not take: (task id, attempt, why) each."""

    results: list[tuple[str, int, str]]


BrokerEvent = (
    RegisterAcked | AssignmentsReceived | CancelRequested | DrainRequested | ResultsDropped
)


@hot_record()
class TaskOutcome:
    """The result of one attempt, as the worker reports it."""

    task_id: str
    attempt: int
    success: bool
    result: bytes
    error: TaskErrorInfo | None
    started_at_ms: int
    finished_at_ms: int
    content_type: str = ""  # of `result`
