"""A storage wrapper that times every request, for the broker's latency histogram.

:class:`TimedStorage` passes each call through to the store it wraps and hands the
operation's name (``read``, ``version``, ``write``, ``create``, ``list_keys``,
``delete_key``) and its duration in seconds to ``observe``, whether the call
returned or raised (a failed request took time too). It changes nothing else: the
engine never times storage itself, so the wrapper is where the broker builds its
storage.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ._protocol import Storage, Versioned

Observe = Callable[[str, float], None]
"""``observe(op, seconds)``: called once per request, after it ends."""


class TimedStorage:
    """A :class:`~trioq.Storage` that reports each request's duration to ``observe``.

    Durations are wall time (:func:`time.perf_counter`), not trio time: a request's
    latency is real even under a mock clock.
    """

    def __init__(self, inner: Storage, observe: Observe) -> None:
        self.inner = inner
        self._observe = observe

    def describe(self) -> str:
        return self.inner.describe()

    async def read(self, key: str) -> Versioned | None:
        start = time.perf_counter()
        try:
            return await self.inner.read(key)
        finally:
            self._observe("read", time.perf_counter() - start)

    async def version(self, key: str) -> str | None:
        start = time.perf_counter()
        try:
            return await self.inner.version(key)
        finally:
            self._observe("version", time.perf_counter() - start)

    async def write(self, key: str, data: bytes, *, if_match: str) -> str:
        start = time.perf_counter()
        try:
            return await self.inner.write(key, data, if_match=if_match)
        finally:
            self._observe("write", time.perf_counter() - start)

    async def create(self, key: str, data: bytes) -> str:
        start = time.perf_counter()
        try:
            return await self.inner.create(key, data)
        finally:
            self._observe("create", time.perf_counter() - start)

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        start = time.perf_counter()
        try:
            return await self.inner.list_keys(prefix, start_after=start_after, limit=limit)
        finally:
            self._observe("list_keys", time.perf_counter() - start)

    async def delete_key(self, key: str) -> None:
        start = time.perf_counter()
        try:
            await self.inner.delete_key(key)
        finally:
            self._observe("delete_key", time.perf_counter() - start)
