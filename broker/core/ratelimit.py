"""Token buckets, for submit rate limits: per task type, and per client identity.

A bucket holds at most `burst` tokens and gains `rate_per_s` a second; it starts
full. `take` is the "reject" mode (all or nothing, and how long until it would
work); `reserve` is the "queue" mode (take now, into debt if need be, and how long
the caller must hold the work back). Pure: time is passed in as float seconds.

A bucket is kept as one number, the time it will be full again if nothing more is
taken (the GCRA form of a token bucket). Waiting exactly the returned time always
works: waits shorter than a microsecond count as none, since float seconds near the
Unix epoch are exact only to about a quarter of one. Waits are rounded to the
nanosecond, so that a rate of 10/s says 0.1 and not 0.10000000000000003.
"""

from __future__ import annotations

import math
from collections import OrderedDict

_TOLERANCE_S = 1e-6


def _wait(seconds: float) -> float:
    return round(seconds, 9) if seconds > _TOLERANCE_S else 0.0


def _check(rate_per_s: float, burst: int) -> None:
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"rate_per_s must be a finite number > 0, not {rate_per_s}")
    if burst < 1:
        raise ValueError(f"burst must be at least 1, not {burst}")


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")


class TokenBucket:
    """At most `burst` tokens, refilled at `rate_per_s`; starts full at `now`."""

    __slots__ = ("_burst", "_full_at", "_rate")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        _check(rate_per_s, burst)
        self._rate = rate_per_s
        self._burst = burst
        self._full_at = now  # when it is full again if nothing more is taken

    @property
    def rate_per_s(self) -> float:
        return self._rate

    @property
    def burst(self) -> int:
        return self._burst

    def tokens(self, now: float) -> float:
        """The tokens there at `now`; below 0 while in debt from `reserve`."""
        return self._burst - max(0.0, self._full_at - now) * self._rate

    def full(self, now: float) -> bool:
        """Full again: it behaves exactly like a new bucket."""
        return self._full_at <= now

    def take(self, now: float, n: int = 1) -> float:
        """Take n tokens: 0.0 if taken, else the seconds until they will be there.

        Takes nothing unless it takes all n. More than `burst` never fits: math.inf.
        """
        _check_n(n)
        if n > self._burst:
            return math.inf
        full_at = max(self._full_at, now) + n / self._rate
        wait = _wait((full_at - now) - self._burst / self._rate)
        if not wait:
            self._full_at = full_at
        return wait

    def reserve(self, now: float, n: int = 1) -> float:
        """Take n tokens whether or not they are there (into debt); the seconds the
        caller must wait until they are, 0.0 if at once. The "queue, don't reject" mode.
        """
        _check_n(n)
        self._full_at = max(self._full_at, now) + n / self._rate
        return _wait((self._full_at - now) - self._burst / self._rate)

    def reconfigure(self, rate_per_s: float, burst: int, now: float) -> None:
        """New rate and burst; the tokens there now (or the debt) carry over, capped at burst."""
        _check(rate_per_s, burst)
        tokens = min(self.tokens(now), float(burst))
        self._rate = rate_per_s
        self._burst = burst
        self._full_at = now + (burst - tokens) / rate_per_s


class KeyedBuckets:
    """One bucket per key (e.g. per client identity), made full on first use.

    Memory is bounded: past `max_keys` buckets, full ones are dropped first (a new one
    would behave the same), then the least recently used. Looking for full ones costs
    a pass over all buckets, so that runs at most once per max_keys/2 new keys.
    """

    def __init__(self, rate_per_s: float, burst: int, max_keys: int = 10_000) -> None:
        _check(rate_per_s, burst)
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self._rate = rate_per_s
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # least recent first
        self._new_keys_before_sweep = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def take(self, key: str, now: float, n: int = 1) -> float:
        """`TokenBucket.take` on this key's bucket."""
        return self._bucket(key, now).take(now, n)

    def reserve(self, key: str, now: float, n: int = 1) -> float:
        """`TokenBucket.reserve` on this key's bucket."""
        return self._bucket(key, now).reserve(now, n)

    def reconfigure(self, rate_per_s: float, burst: int, now: float) -> None:
        """New rate and burst for every bucket, kept or made from now on."""
        _check(rate_per_s, burst)
        self._rate = rate_per_s
        self._burst = burst
        for bucket in self._buckets.values():
            bucket.reconfigure(rate_per_s, burst, now)

    def _bucket(self, key: str, now: float) -> TokenBucket:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is not None:
            buckets.move_to_end(key)
            return bucket
        if len(buckets) >= self._max_keys:
            self._make_room(now)
        bucket = buckets[key] = TokenBucket(self._rate, self._burst, now)
        self._new_keys_before_sweep -= 1
        return bucket

    def _make_room(self, now: float) -> None:
        """Bring the buckets below max_keys: full ones first, then the least recent."""
        buckets = self._buckets
        if self._new_keys_before_sweep <= 0:
            for key in [key for key, bucket in buckets.items() if bucket.full(now)]:
                del buckets[key]
            self._new_keys_before_sweep = self._max_keys // 2
        while len(buckets) >= self._max_keys:
            buckets.popitem(last=False)
