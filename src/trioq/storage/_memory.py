"""In-memory storage: CAS semantics without I/O, for tests and the embedded testing kit."""

from __future__ import annotations

import itertools

import trio

from .._errors import CASConflict
from ._protocol import Versioned, check_limit


class MemoryStorage:
    """A :class:`~trioq.Storage` held in this process's memory.

    Shared by every task of one process (use one instance for several brokers to
    simulate a shared bucket). ``latency`` (seconds) delays every call by that much
    of trio time, which makes races and timeouts reproducible under ``MockClock``.
    """

    def __init__(self, *, latency: float = 0.0) -> None:
        self.latency = latency
        self._objects: dict[str, Versioned] = {}
        self._counter = itertools.count(1)

    def describe(self) -> str:
        return f"memory storage {id(self):#x}"

    async def _delay(self) -> None:
        if self.latency > 0:
            await trio.sleep(self.latency)
        else:
            await trio.lowlevel.checkpoint()

    def _next_version(self) -> str:
        return f"m{next(self._counter)}"

    async def read(self, key: str) -> Versioned | None:
        await self._delay()
        return self._objects.get(key)

    async def version(self, key: str) -> str | None:
        await self._delay()
        current = self._objects.get(key)
        return None if current is None else current.version

    async def write(self, key: str, data: bytes, *, if_match: str) -> str:
        await self._delay()
        current = self._objects.get(key)
        if current is None:
            raise CASConflict(f"{self.describe()}: {key!r} does not exist (if_match={if_match!r})")
        if current.version != if_match:
            raise CASConflict(
                f"{self.describe()}: {key!r} is at version {current.version!r}, not {if_match!r}"
            )
        version = self._next_version()
        self._objects[key] = Versioned(bytes(data), version)
        return version

    async def create(self, key: str, data: bytes) -> str:
        await self._delay()
        if key in self._objects:
            raise CASConflict(f"{self.describe()}: {key!r} already exists")
        version = self._next_version()
        self._objects[key] = Versioned(bytes(data), version)
        return version

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """The keys starting with ``prefix``, in order (code point order of Python
        strings is the byte order of their UTF-8 encodings)."""
        check_limit(limit)
        await self._delay()
        keys = sorted(
            key
            for key in self._objects
            if key.startswith(prefix) and (start_after is None or key > start_after)
        )
        return keys if limit is None else keys[:limit]

    async def delete_key(self, key: str) -> None:
        """Remove ``key`` (after ``latency``, like every call); a missing key is fine."""
        await self._delay()
        self._objects.pop(key, None)

    def peek(self, key: str) -> Versioned | None:
        """The stored object without a checkpoint (for tests and assertions)."""
        return self._objects.get(key)

    def keys(self, prefix: str = "") -> list[str]:
        """The stored keys under ``prefix``, sorted, without a checkpoint (for tests
        and assertions; the protocol's listing is :meth:`list_keys`)."""
        return sorted(key for key in self._objects if key.startswith(prefix))

    def delete(self, key: str) -> None:
        """Remove ``key`` without a checkpoint (for tests: what an operator's mistake
        or a lifecycle rule does to a bucket). The protocol's delete, with
        ``latency`` and a checkpoint, is :meth:`delete_key`."""
        self._objects.pop(key, None)
