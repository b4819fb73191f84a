"""Taskbroker SDK: `Worker` runs tasks, `Client` and `SyncClient` submit and watch them."""

from worker_sdk._client import Client
from worker_sdk._context import TaskContext
from worker_sdk._errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TaskbrokerError,
    TaskFailed,
    Unavailable,
)
from worker_sdk._sync import SyncClient
from worker_sdk._types import (
    DEFAULT_ADDRESS,
    ArmStats,
    Bulkhead,
    BulkheadStats,
    Placement,
    PoolInfo,
    PoolStats,
    PreferredLabel,
    RetryPolicy,
    RuntimeStats,
    Stats,
    TaskErrorInfo,
    TaskInfo,
    TaskRequest,
    TaskState,
    WorkerInfo,
)
from worker_sdk._version import __version__
from worker_sdk._worker import Worker

__all__ = [
    "DEFAULT_ADDRESS",
    "AlreadyExists",
    "ArmStats",
    "Bulkhead",
    "BulkheadStats",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "Placement",
    "PoolInfo",
    "PoolStats",
    "PreferredLabel",
    "ResourceExhausted",
    "RetryPolicy",
    "RuntimeStats",
    "Stats",
    "SyncClient",
    "TaskContext",
    "TaskErrorInfo",
    "TaskFailed",
    "TaskInfo",
    "TaskRequest",
    "TaskState",
    "TaskbrokerError",
    "Unavailable",
    "Worker",
    "WorkerInfo",
    "__version__",
]
