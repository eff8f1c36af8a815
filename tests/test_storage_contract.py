"""The storage contract, run against every backend.

Each test gets a :class:`Backend`: a way to open handles on one store. Every handle
of a backend sees the same objects (one shared :class:`~trioq.MemoryStorage`, one
directory for :class:`~trioq.FileStorage`, one bucket for :class:`~trioq.S3Storage`),
so racing tests can give each contender its own handle, as separate brokers would
have.

Backends: memory, file (a ``tmp_path`` directory), S3 on SeaweedFS and S3 on moto.
The racing tests skip moto, whose conditional PUT is not atomic.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from _servers import S3Server
from trioq import CASConflict, MemoryStorage, S3Storage, Storage, Versioned
from trioq.storage._file import FileStorage

KEY = "queue.json"
CONTENDERS = 8

# Racing writers: RACE_LANES keys raced on at once, RACE_ROUNDS_PER_LANE rounds each,
# 50 rounds in all. SeaweedFS serializes conditional writes per object and a loser
# can wait ~1 s for the object's lock, so one 8-writer round costs 1-3 s; racing
# on several objects at once keeps all 50 rounds within ~15 s.
RACE_LANES = 10
RACE_ROUNDS_PER_LANE = 5


@dataclass
class Backend:
    """One store, and a way to open more handles on it."""

    name: str
    opener: Callable[[], Storage]
    handles: list[Storage] = field(default_factory=list)

    def open(self) -> Storage:
        """A new handle on the same store."""
        handle = self.opener()
        self.handles.append(handle)
        return handle

    def close(self) -> None:
        for handle in self.handles:
            if isinstance(handle, S3Storage):
                handle.close()


def _s3_backend(name: str, server: S3Server, bucket: str) -> Backend:
    def opener() -> Storage:
        return S3Storage(
            bucket,
            endpoint_url=server.endpoint_url,
            region="us-east-1",
            access_key_id=server.access_key_id,
            secret_access_key=server.secret_access_key,
            max_threads=2 * RACE_LANES,
        )

    return Backend(name, opener)


def _make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    name: str = request.param
    if name == "memory":
        shared = MemoryStorage()
        return Backend(name, lambda: shared)
    if name == "file":
        directory = tmp_path / "store"
        return Backend(name, lambda: FileStorage(directory))
    if name == "seaweedfs":
        server: S3Server = request.getfixturevalue("seaweedfs")
        return _s3_backend(name, server, request.getfixturevalue("seaweedfs_bucket"))
    if name == "moto":
        server = request.getfixturevalue("moto_server")
        return _s3_backend(name, server, request.getfixturevalue("moto_bucket"))
    raise AssertionError(f"unknown backend {name!r}")


@pytest.fixture(params=["memory", "file", "seaweedfs", "moto"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every backend."""
    made = _make_backend(request, tmp_path)
    yield made
    made.close()


@pytest.fixture(params=["memory", "file", "seaweedfs"])
def racing_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every backend whose compare-and-set is atomic under concurrency (not moto)."""
    made = _make_backend(request, tmp_path)
    yield made
    made.close()


@pytest.fixture
def storage(backend: Backend) -> Storage:
    """A handle on the backend's store."""
    return backend.open()


# -- single-writer contract ------------------------------------------------------------


async def test_missing_key_reads_as_none(storage: Storage) -> None:
    assert await storage.read("absent.json") is None
    assert await storage.version("absent.json") is None


async def test_read_your_writes(backend: Backend) -> None:
    storage, other = backend.open(), backend.open()
    v1 = await storage.create(KEY, b'{"seq": 1}')
    assert await storage.read(KEY) == Versioned(b'{"seq": 1}', v1)
    assert await other.read(KEY) == Versioned(b'{"seq": 1}', v1)

    v2 = await storage.write(KEY, b'{"seq": 2}', if_match=v1)
    assert await storage.read(KEY) == Versioned(b'{"seq": 2}', v2)
    assert await other.read(KEY) == Versioned(b'{"seq": 2}', v2)


async def test_version_matches_read(storage: Storage) -> None:
    created = await storage.create(KEY, b'{"seq": 1}')
    assert await storage.version(KEY) == created
    written = await storage.write(KEY, b'{"seq": 2}', if_match=created)
    current = await storage.read(KEY)
    assert current is not None
    assert await storage.version(KEY) == current.version == written


async def test_stale_if_match_conflicts(storage: Storage) -> None:
    v1 = await storage.create(KEY, b'{"seq": 1}')
    v2 = await storage.write(KEY, b'{"seq": 2}', if_match=v1)
    with pytest.raises(CASConflict):
        await storage.write(KEY, b'{"seq": 3, "stale": true}', if_match=v1)
    assert await storage.read(KEY) == Versioned(b'{"seq": 2}', v2)


async def test_write_to_missing_key_conflicts(storage: Storage) -> None:
    # A version that is real somewhere, so only the key's absence can fail the write.
    elsewhere = await storage.create("other.json", b'{"seq": 1}')
    with pytest.raises(CASConflict):
        await storage.write(KEY, b'{"seq": 1}', if_match=elsewhere)
    assert await storage.read(KEY) is None


async def test_create_of_existing_key_conflicts(storage: Storage) -> None:
    version = await storage.create(KEY, b'{"seq": 1}')
    with pytest.raises(CASConflict):
        await storage.create(KEY, b'{"seq": 1, "second": true}')
    assert await storage.read(KEY) == Versioned(b'{"seq": 1}', version)


async def test_large_document_round_trips(storage: Storage) -> None:
    first = os.urandom(20 * 1024 * 1024)
    version = await storage.create(KEY, first)
    assert await storage.read(KEY) == Versioned(first, version)

    second = first[1:] + b"!"
    new_version = await storage.write(KEY, second, if_match=version)
    current = await storage.read(KEY)
    assert current is not None
    assert current.version == new_version
    assert current.data == second


async def test_every_write_of_new_data_gets_a_new_version(storage: Storage) -> None:
    version = await storage.create(KEY, b'{"seq": 0}')
    seen = [version]
    for seq in range(1, 6):
        data = f'{{"seq": {seq}}}'.encode()
        version = await storage.write(KEY, data, if_match=version)
        assert version not in seen
        seen.append(version)
        assert await storage.read(KEY) == Versioned(data, version)


# -- racing contenders -----------------------------------------------------------------


async def _race(attempts: list[Callable[[], Awaitable[str]]]) -> list[str | CASConflict]:
    """Start every attempt at once; each result is a version or the CASConflict raised."""
    results: list[str | CASConflict | None] = [None] * len(attempts)
    waiting = 0
    go = trio.Event()

    async def contender(index: int) -> None:
        nonlocal waiting
        waiting += 1
        if waiting == len(attempts):
            go.set()  # the last contender to arrive starts them all
        await go.wait()
        try:
            results[index] = await attempts[index]()
        except CASConflict as exc:
            results[index] = exc

    async with trio.open_nursery() as nursery:
        for index in range(len(attempts)):
            nursery.start_soon(contender, index)
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]


def _single_winner(results: list[str | CASConflict]) -> tuple[int, str]:
    winners = [(index, result) for index, result in enumerate(results) if isinstance(result, str)]
    assert len(winners) == 1, f"expected exactly one winner, got {results!r}"
    losers = [result for result in results if isinstance(result, CASConflict)]
    assert len(losers) == len(results) - 1
    return winners[0]


async def test_racing_creates_have_one_winner(racing_backend: Backend) -> None:
    handles = [racing_backend.open() for _ in range(CONTENDERS)]

    async def lane(key: str) -> None:
        def attempt(index: int) -> Callable[[], Awaitable[str]]:
            return lambda: handles[index].create(key, f'{{"creator": {index}}}'.encode())

        results = await _race([attempt(index) for index in range(CONTENDERS)])
        winner, version = _single_winner(results)
        stored = await handles[0].read(key)
        assert stored == Versioned(f'{{"creator": {winner}}}'.encode(), version)

    async with trio.open_nursery() as nursery:
        for lane_number in range(RACE_LANES):
            nursery.start_soon(lane, f"race-create-{lane_number}.json")


async def test_racing_writers_have_one_winner_per_round(racing_backend: Backend) -> None:
    handles = [racing_backend.open() for _ in range(CONTENDERS)]
    rounds_won = 0

    async def lane(lane_number: int) -> None:
        nonlocal rounds_won
        key = f"race-write-{lane_number}.json"
        version = await handles[0].create(key, b'{"seq": 0}')
        for round_number in range(1, RACE_ROUNDS_PER_LANE + 1):

            def attempt(index: int, base: str, rnd: int) -> Callable[[], Awaitable[str]]:
                data = f'{{"seq": {rnd}, "writer": {index}}}'.encode()
                return lambda: handles[index].write(key, data, if_match=base)

            results = await _race(
                [attempt(index, version, round_number) for index in range(CONTENDERS)]
            )
            winner, new_version = _single_winner(results)
            expected = f'{{"seq": {round_number}, "writer": {winner}}}'.encode()
            assert await handles[0].read(key) == Versioned(expected, new_version)
            version = new_version
            rounds_won += 1

    async with trio.open_nursery() as nursery:
        for lane_number in range(RACE_LANES):
            nursery.start_soon(lane, lane_number)
    assert rounds_won == RACE_LANES * RACE_ROUNDS_PER_LANE >= 50
