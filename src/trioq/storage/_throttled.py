"""A storage wrapper that rate-limits requests, as osqueue's S3 throttle does.

Object stores bill (and some throttle) per request, so a broker can be given a budget:
``S3_MAX_READS_PER_MINUTE`` and ``S3_MAX_WRITES_PER_MINUTE``. :class:`ThrottledStorage`
enforces it with two independent token buckets, one for reads (``read``,
``version`` and ``list_keys``) and one for writes (``write``, ``create`` and
``delete_key``):

- a bucket refills continuously at ``rate / 60`` tokens per second;
- it holds at most ``max(1, rate / 60)`` tokens, so a rate below 60 a minute still
  lets one request through at once, and an idle period buys at most one second's
  worth of burst;
- it starts full;
- a request that finds no token *waits* until one has accumulated: the throttle delays,
  it never rejects;
- waiting requests are admitted in arrival (FIFO) order, and a request that is
  cancelled while it waits takes no token with it;
- a rate of ``0`` turns that bucket off: requests pass at once but are still counted.

A ``list_keys`` takes one read token per call, although S3 answers it with one
request per page of 1000 keys: the throttle sees calls, not requests, so a listing
of many keys costs more requests than it is charged for.

Time is :func:`trio.current_time`, so the throttle runs in virtual time under
:class:`trio.testing.MockClock`.
"""

from __future__ import annotations

import math

import trio

from ._protocol import Storage, Versioned

# A refill that lands within this many tokens of a whole token counts as a whole token,
# so float rounding never turns an exact wait (2.0 s) into 2.0000000000000004 s.
_EPSILON = 1e-9


class _TokenBucket:
    """One token bucket with FIFO waiters; see the module docstring for the rules."""

    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0  # tokens per second
        self._capacity = max(1.0, self._rate)
        self._tokens = self._capacity
        self._updated: float | None = None  # set on first use: needs a running trio
        # Held by the task at the head of the queue while it waits for its token; trio's
        # Lock is fair, so the tasks parked on it are admitted in arrival order.
        self._queue = trio.Lock()
        self.total = 0
        self.throttled = 0
        self.delay_seconds = 0.0

    def _refill(self, now: float) -> None:
        if self._updated is not None:
            # Never negative, even if a later trio.run starts its clock lower.
            elapsed = max(0.0, now - self._updated)
            self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
        self._updated = now

    def _take(self) -> None:
        self._tokens = max(0.0, self._tokens - 1.0)
        self.total += 1

    async def acquire(self) -> None:
        """Wait for a token (if the bucket is on) and take it."""
        if self._rate == 0:
            self.total += 1
            return
        start = trio.current_time()
        self._refill(start)
        if not self._queue.locked() and self._tokens >= 1.0 - _EPSILON:
            # A token is there and nobody is queued ahead of us: no wait, no checkpoint
            # (the wrapped call that follows has its own).
            self._take()
            return
        async with self._queue:
            while True:
                now = trio.current_time()
                self._refill(now)
                if self._tokens >= 1.0 - _EPSILON:
                    break
                # If this sleep is cancelled we leave without a token: the refill above
                # only brought the bucket up to date, it took nothing.
                await trio.sleep_until(now + (1.0 - self._tokens) / self._rate)
            self._take()
        self.throttled += 1
        self.delay_seconds += trio.current_time() - start


def _check_rate(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0 = unlimited), got {value!r}")
    return float(value)


class ThrottledStorage:
    """A :class:`~trioq.Storage` that delays requests to stay within per-minute budgets.

    ``read``, ``version`` and ``list_keys`` draw from the read bucket, ``write``,
    ``create`` and ``delete_key`` from the write bucket; the two are independent. A request is counted when the throttle
    admits it, whatever the wrapped store then answers; a request cancelled while it
    waits is not counted. See the module docstring for the bucket rules.

    Args:
        inner: the store to wrap.
        max_reads_per_minute: read budget; ``0`` (the default) means unlimited.
        max_writes_per_minute: write budget; ``0`` (the default) means unlimited.
    """

    def __init__(
        self,
        inner: Storage,
        *,
        max_reads_per_minute: float = 0,
        max_writes_per_minute: float = 0,
    ) -> None:
        self.inner = inner
        self._reads = _TokenBucket(_check_rate("max_reads_per_minute", max_reads_per_minute))
        self._writes = _TokenBucket(_check_rate("max_writes_per_minute", max_writes_per_minute))

    @property
    def max_reads_per_minute(self) -> float:
        """The configured read budget (``0`` = unlimited)."""
        return self._reads.per_minute

    @property
    def max_writes_per_minute(self) -> float:
        """The configured write budget (``0`` = unlimited)."""
        return self._writes.per_minute

    def describe(self) -> str:
        return (
            f"{self.inner.describe()} (throttled to {self._reads.per_minute:g} reads/min, "
            f"{self._writes.per_minute:g} writes/min; 0 = unlimited)"
        )

    def stats(self) -> dict[str, int | float | bool]:
        """Counters in the shape of osqueue's ``GET /v1/throttle-stats`` body.

        ``total*`` counts admitted requests, ``throttled*`` those that had to wait for
        a token, and ``total*DelayMs`` the milliseconds they waited in all.
        """
        return {
            "throttling": True,
            "maxReadsPerMinute": self._reads.per_minute,
            "maxWritesPerMinute": self._writes.per_minute,
            "totalReads": self._reads.total,
            "totalWrites": self._writes.total,
            "throttledReads": self._reads.throttled,
            "throttledWrites": self._writes.throttled,
            "totalReadDelayMs": self._reads.delay_seconds * 1000.0,
            "totalWriteDelayMs": self._writes.delay_seconds * 1000.0,
        }

    async def read(self, key: str) -> Versioned | None:
        await self._reads.acquire()
        return await self.inner.read(key)

    async def version(self, key: str) -> str | None:
        await self._reads.acquire()
        return await self.inner.version(key)

    async def write(self, key: str, data: bytes, *, if_match: str) -> str:
        await self._writes.acquire()
        return await self.inner.write(key, data, if_match=if_match)

    async def create(self, key: str, data: bytes) -> str:
        await self._writes.acquire()
        return await self.inner.create(key, data)

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        await self._reads.acquire()
        return await self.inner.list_keys(prefix, start_after=start_after, limit=limit)

    async def delete_key(self, key: str) -> None:
        await self._writes.acquire()
        await self.inner.delete_key(key)
