"""A per-worker circuit breaker: stop sending work to a worker that keeps failing it.

CLOSED: the worker gets work. A run of consecutive failures, or (if set) too high a
share of failures among its recent results, opens the breaker. OPEN: no work until
the cool-down has passed; then HALF_OPEN: one trial task at a time. A success closes
the breaker; a failure opens it again for a fresh cool-down. Pure: time is passed in.

Whose fault: a failure is the worker's (an infrastructure failure: an attempt timed
out on it, or its SDK reported the error as the worker's own), or
the task's (its handler raised). Handler errors blame the worker only when they are
spread over at least two task types (within the run of consecutive failures, or
within the window for the failure rate): a run of one type's exceptions is the
payload's fault and leaves a worker that serves other types open to them. (A worker
that serves one type only cannot tell the two apart: each failure counts.)
`failures = 0` turns the breaker off: it never opens.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

from broker.domain import (
    DEFAULT_BREAKER_COOLDOWN_S,
    DEFAULT_BREAKER_FAILURES,
    DEFAULT_BREAKER_WINDOW,
)


class BreakerState(enum.Enum):
    """Whether a worker gets work: all it can take, none, or one trial task."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerSettings:
    """When a breaker opens, and how long it stays open before a trial."""

    failures: int = DEFAULT_BREAKER_FAILURES  # consecutive failures that open it; 0 = off
    failure_rate: float = 0.0  # 0 = off; else open above this share of `window` results
    window: int = DEFAULT_BREAKER_WINDOW
    cooldown_s: float = DEFAULT_BREAKER_COOLDOWN_S

    def __post_init__(self) -> None:
        if self.failures < 0:
            raise ValueError(f"failures must be 0 (off) or more, not {self.failures}")
        if not 0.0 <= self.failure_rate < 1.0:
            raise ValueError(f"failure_rate must be 0 (off) or below 1, not {self.failure_rate}")
        if self.window < 1:
            raise ValueError(f"window must be at least 1, not {self.window}")
        if not (math.isfinite(self.cooldown_s) and self.cooldown_s >= 0.0):
            raise ValueError(f"cooldown_s must be a finite number >= 0, not {self.cooldown_s}")


class CircuitBreaker:
    """One worker's breaker: fed its results, it says whether the worker may get work."""

    def __init__(self, settings: BreakerSettings, types_served: int = 1) -> None:
        self._settings = settings
        # How many task types a handler error must be spread over to blame the worker.
        self._types_to_blame = 1 if types_served < 2 else 2
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        # The run of consecutive failures: its first failing type, and whether it was
        # spread over another type or had an infrastructure failure (the worker's).
        self._run_type: str | None = None
        self._run_blames = False
        # Recent results: None a success, else the failing task type ("" infrastructure).
        # (Made at the first result counted: an empty deque costs about 760 bytes, and a
        # broker may hold 10,000 workers that have sent none.)
        self._recent: deque[str | None] | None = None
        self._recent_failures = 0
        self._recent_types: dict[str, int] = {}  # failures in the window, by task type
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def settings(self) -> BreakerSettings:
        return self._settings

    @property
    def state(self) -> BreakerState:
        """The state as of the last call; OPEN turns HALF_OPEN only in `allows`."""
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success (or since the breaker last closed)."""
        return self._consecutive_failures

    @property
    def opened_at(self) -> float | None:
        """When the breaker last opened; None while it is closed."""
        return self._opened_at

    def allows(self, now: float) -> bool:
        """Whether the worker may be given a task now.

        An open breaker whose cool-down has passed turns half-open here and allows
        one trial; a half-open one allows nothing more while its trial is out.
        """
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            reopen_at = self.reopen_at()
            if reopen_at is None or now < reopen_at:
                return False
            self._state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
        return not self._trial_in_flight

    def on_assign(self) -> None:
        """The worker was given a task: while half-open, that is the trial."""
        if self._state is BreakerState.HALF_OPEN:
            self._trial_in_flight = True

    def trial_returned(self) -> None:
        """The trial came back without a result (requeued, worker gone): free its slot."""
        if self._state is BreakerState.HALF_OPEN:
            self._trial_in_flight = False

    def record(
        self, success: bool, now: float, task_type: str = "", infra: bool = False
    ) -> BreakerState | None:
        """Count one result of the worker; the new state if this changed it, else None.

        `task_type` is the type of the task whose attempt this was; `infra` says the
        failure was the worker's own (see the module's rule). While open, results are of
        tasks given out before it opened and are ignored: only the trial after the
        cool-down decides. While half-open, any result decides.
        """
        state = self._state
        if state is BreakerState.OPEN:
            return None
        if state is BreakerState.HALF_OPEN:
            self._trial_in_flight = False
            if success:
                self._close()
                return BreakerState.CLOSED
            self._consecutive_failures += 1
            self._open(now)
            return BreakerState.OPEN
        if not self._settings.failures:
            return None  # off
        failed_as = None if success else ("" if infra else task_type)
        self._remember(failed_as)
        if success:
            self._consecutive_failures = 0
            self._run_type = None
            self._run_blames = False
            return None
        self._consecutive_failures += 1
        if infra or self._types_to_blame < 2:
            self._run_blames = True
        elif self._run_type is None:
            self._run_type = task_type
        elif task_type != self._run_type:
            self._run_blames = True
        if (
            self._run_blames and self._consecutive_failures >= self._settings.failures
        ) or self._rate_exceeded():
            self._open(now)
            return BreakerState.OPEN
        return None

    def reopen_at(self) -> float | None:
        """While open: when it turns half-open (for a timer); else None."""
        if self._state is not BreakerState.OPEN or self._opened_at is None:
            return None
        return self._opened_at + self._settings.cooldown_s

    def reconfigure(self, settings: BreakerSettings) -> None:
        """New settings, same state; thresholds apply from the next result on."""
        self._settings = settings
        if self._recent is not None:
            self._recent = deque(self._recent, maxlen=settings.window)
        self._recent_failures = 0
        self._recent_types.clear()
        for failed_as in self._recent or ():
            if failed_as is not None:
                self._count(failed_as, 1)

    def _remember(self, failed_as: str | None) -> None:
        recent = self._recent
        if recent is None:
            recent = self._recent = deque(maxlen=self._settings.window)
        if len(recent) == recent.maxlen and (oldest := recent[0]) is not None:
            self._count(oldest, -1)
        recent.append(failed_as)
        if failed_as is not None:
            self._count(failed_as, 1)

    def _count(self, failed_as: str, change: int) -> None:
        self._recent_failures += change
        types = self._recent_types
        left = types.get(failed_as, 0) + change
        if left > 0:
            types[failed_as] = left
        else:
            types.pop(failed_as, None)

    def _rate_exceeded(self) -> bool:
        settings = self._settings
        recent = self._recent
        if not settings.failure_rate or recent is None or len(recent) < settings.window:
            return False
        if self._recent_failures / settings.window <= settings.failure_rate:
            return False
        types = self._recent_types
        return len(types) >= self._types_to_blame or "" in types

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._trial_in_flight = False

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._opened_at = None
        self._consecutive_failures = 0
        self._run_type = None
        self._run_blames = False
        self._recent = None
        self._recent_failures = 0
        self._recent_types.clear()
