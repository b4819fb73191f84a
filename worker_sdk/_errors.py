"""The SDK's exceptions: one root, one class per gRPC status the broker uses on purpose."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker_sdk._types import TaskInfo


class TaskbrokerError(Exception):
    """Root of every error the SDK raises about the broker or a task."""


class InvalidArgument(TaskbrokerError):
    """The broker rejected a malformed request or an out-of-range value."""


class NotFound(TaskbrokerError):
    """A named task, pool or worker does not exist."""


class AlreadyExists(TaskbrokerError):
    """Something with that name exists already."""


class FailedPrecondition(TaskbrokerError):
    """The request is valid but not in the broker's current state."""


class ResourceExhausted(TaskbrokerError):
    """A size, queue, rate or capacity limit of the broker was hit; see `retry_after`."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        # Seconds the broker asked us to wait before trying again; None when it gave no
        # hint (a broker older than this SDK also sent this for a payload over its size
        # limit, which no wait will cure; newer ones say InvalidArgument).
        self.retry_after = retry_after


class Unavailable(TaskbrokerError):
    """The broker is unreachable, shutting down, or the stream to it broke."""


class Unauthenticated(TaskbrokerError):
    """The broker wants a valid token or client certificate; none, or a revoked one, came."""


class PermissionDenied(TaskbrokerError):
    """The caller's roles or pools do not allow this."""


class DeadlineExceeded(TaskbrokerError):
    """A wait or call ran out of time before the broker answered."""


class TaskFailed(TaskbrokerError):
    """The task ended FAILED, CANCELLED or DEAD_LETTER; `.task` holds it, with its error."""

    def __init__(self, task: TaskInfo) -> None:
        detail = f": {task.error.type}: {task.error.message}" if task.error else ""
        super().__init__(f"task {task.id} {task.state.value}{detail}")
        self.task = task


# gRPC status code numbers (grpc.StatusCode values); the broker also sends these
# as plain integers in SubmitAck.error_code.
_BY_CODE: dict[int, type[TaskbrokerError]] = {
    3: InvalidArgument,
    4: DeadlineExceeded,
    5: NotFound,
    6: AlreadyExists,
    7: PermissionDenied,
    8: ResourceExhausted,
    9: FailedPrecondition,
    14: Unavailable,
    16: Unauthenticated,
}


RESOURCE_EXHAUSTED = 8


def error_for_code(code: int, message: str, retry_after: float | None = None) -> TaskbrokerError:
    """The exception for a gRPC status code number; unknown codes give the root class.

    `retry_after` (seconds) is kept by ResourceExhausted, the one error it is sent with.
    """
    if code == RESOURCE_EXHAUSTED:
        return ResourceExhausted(message, retry_after)
    return _BY_CODE.get(code, TaskbrokerError)(message)


class WorkerError(TaskbrokerError):
    """Raised by a handler: the failure is the worker's own fault, not the task's."""

    # `retryable` is sent with the failure (TaskError.retryable): whether trying again may
    # help; None leaves it to the task's RetryPolicy. (Any exception a handler raises may
    # carry `retryable` and `task_fault` attributes; the SDK sends them.)
    def __init__(self, *args: object, retryable: bool | None = None) -> None:
        super().__init__(*args)
        self.retryable = retryable
