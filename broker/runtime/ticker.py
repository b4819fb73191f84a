"""The broker's one loop timer, over the lifecycle's one heap of wake-ups.

Delays, retry backoffs, start deadlines, execution timeouts, breakers' cool-downs and
sticky waits are all keys of one `Timers` heap, due at times on the injected clock
(broker.core.lifecycle). The ticker sleeps until the earliest of them with a single
`call_later` and then calls `on_due`, which acts on whatever is due by the clock (the
loop's own clock only says when to look). A test that moves a fake clock calls the
engine's `tick()` itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from broker.clock import Clock
from broker.core.timers import Timers


class Ticker:
    """One `call_later` for the next due timer, while active."""

    def __init__(self, timers: Timers, clock: Clock, on_due: Callable[[], None]) -> None:
        self._timers = timers
        self._clock = clock
        self._on_due = on_due
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0
        self.active = False

    def arm(self) -> None:
        """Wake up when the next timer is due (sooner than planned, if it is earlier)."""
        if not self.active:
            return
        when = self._timers.next_at()
        if when is None:
            return
        if self._handle is not None:
            if self._at <= when:
                return
            self._handle.cancel()
        self._at = when
        delay = max(0.0, when - self._clock.now())
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def disarm(self) -> None:
        """Forget the planned wake-up (the caller acts on what is due now, then arms)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def stop(self) -> None:
        self.active = False
        self.disarm()

    def _fire(self) -> None:
        self._handle = None
        self._on_due()
