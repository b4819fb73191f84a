"""Admission: what may come into the broker, and what waits in it.

Back-pressure bounds the waiting tasks per pool (`max_queue`), per task type (its
bulkhead's `max_queue`) and in payload bytes (`max_pending_bytes`); a submit over a bound
is refused whole with ResourceExhausted and a retry hint, judged by how fast the pool has
been placing tasks. Rate limits are token buckets per pool, per task type and per client identity;
over one, a submit is refused ("reject") or its tasks are delayed until their tokens are
there ("queue"). Everything here is synchronous, so no submit slips past a bound while
another is being admitted.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence

from broker.config import BrokerConfig
from broker.core.ratelimit import KeyedBuckets, TokenBucket
from broker.domain import PoolConfig, Task, TaskSpec
from broker.errors import OverLimit, ResourceExhausted

# A retry hint stays within these bounds, whatever the pool's recent placement rate says.
MIN_RETRY_HINT_S = 0.05
MAX_RETRY_HINT_S = 30.0
MIN_HINT_SAMPLES = 50  # placements needed to judge a rate by; fewer: hint one second
HINT_WINDOW_S = 10.0
MAX_RECENT_PLACEMENTS = 100_000  # placement times kept per pool, for retry hints


class Admission:
    """The backlog that back-pressure bounds, and the rate limits' buckets."""

    def __init__(
        self,
        config: BrokerConfig,
        pool_config: Callable[[str], PoolConfig],
        events: Counter[tuple[str, str]],
    ) -> None:
        self._config = config
        self._pool_config = pool_config
        self._events = events  # (pool, "rejected" | "rate_limited") counts, for stats
        # Tasks waiting per pool and per (pool, type), and their payload bytes, from the
        # moment a submit is admitted until they are placed or leave for good.
        self.backlog: Counter[str] = Counter()
        self.backlog_by_type: Counter[tuple[str, str]] = Counter()
        self.backlog_bytes = 0
        self._type_buckets: dict[tuple[str, str], TokenBucket] = {}
        self._client_buckets: dict[str, KeyedBuckets] = {}
        self._pool_buckets: dict[str, TokenBucket] = {}
        self._placed: dict[str, deque[float]] = defaultdict(deque)

    def count(self, task: Task, sign: int) -> None:
        """Count a task in (+1) or out of (-1) the backlog."""
        spec = task.spec
        backlog = self.backlog
        backlog[spec.pool] = backlog.get(spec.pool, 0) + sign
        key = (spec.pool, spec.task_type)
        by_type = self.backlog_by_type
        waiting = by_type.get(key, 0) + sign  # (a Counter's [] of a missing key is slow)
        if waiting:
            by_type[key] = waiting
        else:  # task types come and go: keep only those with a backlog
            by_type.pop(key)  # (not `del`: a Counter's __delitem__ is slow)
        if spec.payload:
            self.backlog_bytes += sign * len(spec.payload)

    def placements(self, pool: str) -> deque[float]:
        """The pool's recent placement times; the engine appends one per placement."""
        recent = self._placed[pool]
        while len(recent) > MAX_RECENT_PLACEMENTS:
            recent.popleft()
        return recent

    def check(self, new: Sequence[TaskSpec], client: str, now: float) -> list[float]:
        """Admit these new tasks or raise ResourceExhausted; how long each must wait for
        its rate limit's token (0.0: none)."""
        by_pool = Counter(spec.pool for spec in new)
        by_type = Counter((spec.pool, spec.task_type) for spec in new)
        for pool_name, count in by_pool.items():
            config = self._pool_config(pool_name)
            limit = config.max_queue or self._config.default_max_queue
            waiting = self.backlog[pool_name]
            if count > limit:
                raise OverLimit(
                    f"a batch of {count} tasks for pool {pool_name!r} can never fit its "
                    f"queue of {limit} (max_queue); send smaller batches"
                )
            if waiting + count > limit:
                self._events[(pool_name, "rejected")] += count
                raise ResourceExhausted(
                    f"pool {pool_name!r} has {waiting} tasks waiting and takes at most "
                    f"{limit} (max_queue); try again later",
                    retry_after_s=self._retry_hint(pool_name, waiting + count - limit, now),
                    reason="QUEUE_FULL",
                )
        for (pool_name, task_type), count in by_type.items():
            bulkhead = self._pool_config(pool_name).bulkhead(task_type)
            if bulkhead is None or not bulkhead.max_queue:
                continue
            waiting = self.backlog_by_type[(pool_name, task_type)]
            if count > bulkhead.max_queue:
                raise OverLimit(
                    f"a batch of {count} tasks of type {task_type!r} can never fit its "
                    f"bulkhead queue of {bulkhead.max_queue} (max_queue); send smaller batches"
                )
            if waiting + count > bulkhead.max_queue:
                self._events[(pool_name, "rejected")] += count
                excess = waiting + count - bulkhead.max_queue
                raise ResourceExhausted(
                    f"task type {task_type!r} of pool {pool_name!r} has {waiting} tasks "
                    f"waiting and takes at most {bulkhead.max_queue} (bulkhead max_queue); "
                    "try again later",
                    retry_after_s=self._retry_hint(pool_name, excess, now),
                    reason="QUEUE_FULL",
                )
        size = sum(len(spec.payload) for spec in new)
        if size > self._config.max_pending_bytes:
            raise OverLimit(
                f"a batch of {size} payload bytes can never fit max_pending_bytes "
                f"({self._config.max_pending_bytes}); send smaller batches"
            )
        if self.backlog_bytes + size > self._config.max_pending_bytes:
            for pool_name, count in by_pool.items():
                self._events[(pool_name, "rejected")] += count
            raise ResourceExhausted(
                f"the broker holds {self.backlog_bytes} payload bytes of waiting tasks and "
                f"at most {self._config.max_pending_bytes} (max_pending_bytes); try again later",
                retry_after_s=1.0,
                reason="QUEUE_FULL",
            )
        return self._rate_limit(new, client, now)

    def reconfigure(self, pool: PoolConfig, now: float) -> None:
        """Apply a pool's new rate limits to its buckets."""
        for (name, task_type), bucket in list(self._type_buckets.items()):
            if name != pool.name:
                continue
            bulkhead = pool.bulkhead(task_type)
            if bulkhead is None or not bulkhead.rate_per_s:
                del self._type_buckets[(name, task_type)]
            else:
                burst = _burst(bulkhead.rate_per_s, bulkhead.rate_burst)
                bucket.reconfigure(bulkhead.rate_per_s, burst, now)
        self._client_buckets.pop(pool.name, None)
        pool_bucket = self._pool_buckets.get(pool.name)
        if pool_bucket is not None and pool.rate_per_s:
            burst = _burst(pool.rate_per_s, pool.rate_burst)
            pool_bucket.reconfigure(pool.rate_per_s, burst, now)
        elif pool_bucket is not None:
            del self._pool_buckets[pool.name]

    def _rate_limit(self, new: Sequence[TaskSpec], client: str, now: float) -> list[float]:
        """Take tokens for the new tasks; how long each must wait for them ("queue" mode).

        In "reject" mode a bucket without enough tokens for the whole batch raises
        ResourceExhausted with the time until it has them (tokens taken from other
        buckets of the batch stay taken). In "queue" mode the tasks take their tokens
        one by one, each waiting until its token is there.
        """
        reject = [spec for spec in new if self._pool_config(spec.pool).rate_mode != "queue"]
        for (pool_name, task_type), count in Counter(
            (spec.pool, spec.task_type) for spec in reject
        ).items():
            bucket = self._type_bucket(pool_name, task_type, now)
            if bucket is not None:
                who = f"task type {task_type!r} of pool {pool_name!r}"
                self._over_rate(pool_name, who, bucket.take(now, count), count)
        for pool_name, count in Counter(spec.pool for spec in reject).items():
            pool_bucket = self._pool_bucket(pool_name, now)
            if pool_bucket is not None:
                who = f"pool {pool_name!r}"
                self._over_rate(pool_name, who, pool_bucket.take(now, count), count)
            buckets = self._client_bucket(pool_name)
            if buckets is not None:
                wait = buckets.take(client, now, count)
                who = f"client {client or 'anonymous'!r} of pool {pool_name!r}"
                self._over_rate(pool_name, who, wait, count)
        delays = []
        for spec in new:
            delay = 0.0
            if self._pool_config(spec.pool).rate_mode == "queue":
                bucket = self._type_bucket(spec.pool, spec.task_type, now)
                if bucket is not None:
                    delay = bucket.reserve(now)
                pool_bucket = self._pool_bucket(spec.pool, now)
                if pool_bucket is not None:
                    delay = max(delay, pool_bucket.reserve(now))
                buckets = self._client_bucket(spec.pool)
                if buckets is not None:
                    delay = max(delay, buckets.reserve(client, now))
                if delay > 0:
                    self._events[(spec.pool, "rate_limited")] += 1
            delays.append(delay)
        return delays

    def _type_bucket(self, pool_name: str, task_type: str, now: float) -> TokenBucket | None:
        """The token bucket of a task type with a rate limit (made on first use)."""
        bulkhead = self._pool_config(pool_name).bulkhead(task_type)
        if bulkhead is None or not bulkhead.rate_per_s:
            return None
        key = (pool_name, task_type)
        bucket = self._type_buckets.get(key)
        if bucket is None:
            burst = _burst(bulkhead.rate_per_s, bulkhead.rate_burst)
            bucket = self._type_buckets[key] = TokenBucket(bulkhead.rate_per_s, burst, now)
        return bucket

    def _pool_bucket(self, pool_name: str, now: float) -> TokenBucket | None:
        """The token bucket over all of a pool's submits, if it has a rate limit."""
        config = self._pool_config(pool_name)
        if not config.rate_per_s:
            return None
        bucket = self._pool_buckets.get(pool_name)
        if bucket is None:
            burst = _burst(config.rate_per_s, config.rate_burst)
            bucket = self._pool_buckets[pool_name] = TokenBucket(config.rate_per_s, burst, now)
        return bucket

    def _client_bucket(self, pool_name: str) -> KeyedBuckets | None:
        """The per-client token buckets of a pool with a client rate limit."""
        config = self._pool_config(pool_name)
        if not config.client_rate_per_s:
            return None
        buckets = self._client_buckets.get(pool_name)
        if buckets is None:
            burst = _burst(config.client_rate_per_s, config.client_rate_burst)
            buckets = self._client_buckets[pool_name] = KeyedBuckets(
                config.client_rate_per_s, burst
            )
        return buckets

    def _over_rate(self, pool_name: str, who: str, wait: float, count: int) -> None:
        """Refuse the batch if a bucket said to wait (0: within the limit)."""
        if wait == math.inf:
            raise OverLimit(
                f"a batch of {count} tasks is more than the rate limit of {who} can ever "
                "allow at once (its burst); send smaller batches"
            )
        if wait > 0:
            self._events[(pool_name, "rate_limited")] += count
            raise ResourceExhausted(
                f"{who} is over its rate limit; try again in {wait:.3f} s",
                retry_after_s=wait,
                reason="RATE_LIMITED",
            )

    def _retry_hint(self, pool_name: str, excess: int, now: float) -> float:
        """How long until the pool has probably placed `excess` more tasks, judged by how
        fast it placed them in (at most) the last ten seconds."""
        recent = self._placed[pool_name]
        while recent and recent[0] < now - HINT_WINDOW_S:
            recent.popleft()
        if len(recent) < MIN_HINT_SAMPLES:  # too few to judge a rate by: a second
            return 1.0
        rate = len(recent) / max(1.0, now - recent[0])  # over the time it was busy
        return min(MAX_RETRY_HINT_S, max(MIN_RETRY_HINT_S, excess / rate))


def _burst(rate_per_s: float, burst: int) -> int:
    """A bucket's burst: as set, or (0) the rate, at least 1."""
    return burst or max(1, int(rate_per_s))
