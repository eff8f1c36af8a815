"""The storage contract, run against every backend.

Each test gets a :class:`Backend`: a way to open handles on one store. Every handle
of a backend sees the same objects (one shared :class:`~trioq.MemoryStorage`, one
directory for :class:`~trioq.FileStorage`, one bucket for :class:`~trioq.S3Storage`),
so racing tests can give each contender its own handle, as separate brokers would
have.

Backends: memory, file (a ``tmp_path`` directory), S3 on SeaweedFS, S3 on moto and
GCS on fake-gcs-server (whose generation preconditions are atomic under concurrent
writers: tests/test_gcs_storage.py checks it). The racing tests skip moto, whose
conditional PUT is not atomic.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from _gcs_server import GCSServer
from _servers import S3Server
from trioq import CASConflict, MemoryStorage, S3Storage, Storage, Versioned
from trioq.storage._file import FileStorage
from trioq.storage._gcs import GCSStorage

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
            if isinstance(handle, S3Storage | GCSStorage):
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
    if name == "gcs":
        gcs: GCSServer = request.getfixturevalue("fake_gcs")
        bucket: str = request.getfixturevalue("gcs_bucket")
        return Backend(
            name,
            lambda: GCSStorage(bucket, endpoint_url=gcs.endpoint_url, max_threads=2 * RACE_LANES),
        )
    raise AssertionError(f"unknown backend {name!r}")


@pytest.fixture(params=["memory", "file", "seaweedfs", "moto", "gcs"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every backend."""
    made = _make_backend(request, tmp_path)
    yield made
    made.close()


@pytest.fixture(params=["memory", "file", "seaweedfs", "gcs"])
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


# -- listing and deleting (for the log layout) -----------------------------------------

# Keys whose UTF-8 byte order differs from a case-insensitive or "natural" order:
# upper case sorts before lower case, "-" (0x2D) and "." (0x2E) before "0" (0x30),
# "Z" before "_" before "a", a key before its extensions ("a" < "a-b" < "a0"), and
# non-ASCII (multi-byte UTF-8) after every ASCII byte. No "/" after the prefix:
# see test_list_order_with_slashes_below_the_prefix for those.
ORDER_KEYS = [
    "log/A.json",
    "log/B",
    "log/Z",
    "log/_",
    "log/a",
    "log/a-b",
    "log/a.b",
    "log/a0",
    "log/b",
    "log/\u00e9",
    "log/\u4e2d",
]

# Keys with "/" below the listed prefix, in byte order: "/" (0x2F) sorts after "-"
# and "." and before "0", so "a/b" comes between "a.b" and "a0".
NESTED_KEYS = ["nest/a", "nest/a-b", "nest/a.b", "nest/a/b", "nest/a/b/c", "nest/a0"]

# SeaweedFS stores "/" as directories and walks them: a directory is listed where
# its bare name sorts, before siblings with "-" or "." (seen with SeaweedFS 4.x).
SEAWEEDFS_NESTED_ORDER = ["nest/a", "nest/a/b", "nest/a/b/c", "nest/a-b", "nest/a.b", "nest/a0"]


async def _create_all(storage: Storage, keys: list[str]) -> None:
    """Create every key (a few at a time, so hundreds of S3 objects take seconds)."""
    limiter = trio.CapacityLimiter(16)

    async def one(key: str) -> None:
        async with limiter:
            await storage.create(key, key.encode())

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(one, key)


async def test_list_of_an_empty_store_or_missing_prefix_is_empty(storage: Storage) -> None:
    assert await storage.list_keys("") == []
    assert await storage.list_keys("log/") == []
    await storage.create("other/1", b"1")
    assert await storage.list_keys("log/") == []
    assert await storage.list_keys("other/2") == []
    assert await storage.list_keys("other/", start_after="other/1") == []


async def test_list_returns_keys_in_utf8_byte_order(storage: Storage) -> None:
    shuffled = ORDER_KEYS[::2] + ORDER_KEYS[1::2]
    for key in shuffled:  # one at a time, in an order that is not the sorted one
        await storage.create(key, b"x")
    await storage.create("logbook", b"x")  # shares "log" but not "log/"
    expected = sorted(ORDER_KEYS, key=lambda key: key.encode("utf-8"))
    assert expected == sorted(ORDER_KEYS) == ORDER_KEYS
    assert await storage.list_keys("log/") == expected
    assert await storage.list_keys("log") == [*expected, "logbook"]
    assert await storage.list_keys("") == [*expected, "logbook"]
    assert await storage.list_keys("log/a") == ["log/a", "log/a-b", "log/a.b", "log/a0"]


async def test_list_order_with_slashes_below_the_prefix(backend: Backend) -> None:
    storage = backend.open()
    # Not in sorted order, but each key before the keys it is a "directory" of:
    # SeaweedFS refuses to create (If-None-Match: *) an object where its
    # directory of the same name exists.
    for key in ["nest/a", "nest/a0", "nest/a/b", "nest/a.b", "nest/a/b/c", "nest/a-b"]:
        await storage.create(key, b"x")
    assert sorted(NESTED_KEYS) == NESTED_KEYS
    listed = await storage.list_keys("nest/")
    if backend.name == "seaweedfs":
        # A known deviation (docs/storage.md): same keys, directory-walk order, and a
        # start_after naming a "directory" skips the keys below it.
        assert listed == SEAWEEDFS_NESTED_ORDER
        assert await storage.list_keys("nest/", start_after="nest/a") == [
            "nest/a-b",
            "nest/a.b",
            "nest/a0",
        ]
    else:
        assert listed == NESTED_KEYS
        assert await storage.list_keys("nest/", start_after="nest/a") == NESTED_KEYS[1:]
        assert await storage.list_keys("nest/", start_after="nest/a.b") == NESTED_KEYS[3:]
    assert await storage.list_keys("nest/a/") == ["nest/a/b", "nest/a/b/c"]
    below_b = await storage.list_keys("nest/a/", start_after="nest/a/b")
    assert below_b == ([] if backend.name == "seaweedfs" else ["nest/a/b/c"])


async def test_list_start_after_and_limit(storage: Storage) -> None:
    for key in ORDER_KEYS:
        await storage.create(key, b"x")
    assert await storage.list_keys("log/", start_after="log/a") == ORDER_KEYS[5:]
    # start_after need not be a stored key, nor start with the prefix
    assert await storage.list_keys("log/", start_after="log/a-a") == ORDER_KEYS[5:]
    assert await storage.list_keys("log/", start_after="a") == ORDER_KEYS
    assert await storage.list_keys("log/", start_after="log") == ORDER_KEYS
    assert await storage.list_keys("log/", start_after="log/\u4e2d") == []
    assert await storage.list_keys("log/", start_after="m") == []
    assert await storage.list_keys("log/", limit=3) == ORDER_KEYS[:3]
    assert await storage.list_keys("log/", limit=0) == []
    assert await storage.list_keys("log/", limit=100) == ORDER_KEYS
    assert await storage.list_keys("log/", start_after="log/Z", limit=2) == ["log/_", "log/a"]
    # paging by hand: each call continues after the last key of the one before
    pages: list[list[str]] = []
    last: str | None = None
    while page := await storage.list_keys("log/", start_after=last, limit=5):
        pages.append(page)
        last = page[-1]
    assert [len(page) for page in pages] == [5, 5, 1]
    assert [key for page in pages for key in page] == ORDER_KEYS
    with pytest.raises(ValueError, match="limit"):
        await storage.list_keys("log/", limit=-1)


async def test_delete_removes_the_object_and_create_works_again(backend: Backend) -> None:
    storage, other = backend.open(), backend.open()
    first = await storage.create(KEY, b'{"seq": 1}')
    await storage.create("log/1", b"1")
    await storage.delete_key(KEY)
    assert await storage.read(KEY) is None
    assert await storage.version(KEY) is None
    assert await other.read(KEY) is None
    with pytest.raises(CASConflict):
        await storage.write(KEY, b'{"seq": 2}', if_match=first)
    again = await other.create(KEY, b'{"seq": 1, "again": true}')
    assert await storage.read(KEY) == Versioned(b'{"seq": 1, "again": true}', again)
    assert await storage.read("log/1") is not None  # other keys are untouched


async def test_delete_of_a_missing_key_is_fine(storage: Storage) -> None:
    await storage.delete_key("absent.json")
    await storage.create(KEY, b"1")
    await storage.delete_key(KEY)
    await storage.delete_key(KEY)  # twice: idempotent
    assert await storage.read(KEY) is None
    assert await storage.list_keys("") == []


async def test_list_after_create_and_delete(backend: Backend) -> None:
    """Each change is in the next listing, through the same and another handle."""
    storage, other = backend.open(), backend.open()
    keys = [f"log/{n:020d}.json" for n in range(10)]
    await _create_all(storage, keys)
    assert await other.list_keys("log/") == keys
    for index, key in enumerate(keys[:6]):
        await storage.delete_key(key)
        assert await other.list_keys("log/") == keys[index + 1 :]
        assert await storage.list_keys("log/", limit=1) == [keys[index + 1]]
    await storage.create(keys[0], b"again")
    assert await other.list_keys("log/") == [keys[0], *keys[6:]]


async def test_list_pages_over_more_than_1000_keys(backend: Backend) -> None:
    """Real paging: S3 answers at most 1000 keys a request (the memory and file
    backends have no pages; they get the same keys, as a check of the same rules)."""
    storage = backend.open()
    keys = [f"log/{n:06d}" for n in range(1100)]
    await _create_all(storage, [*keys, "other"])
    assert await storage.list_keys("log/") == keys
    assert await storage.list_keys("log/", start_after=keys[499]) == keys[500:]
    assert await storage.list_keys("log/", start_after=keys[10], limit=1050) == keys[11:1061]
    assert await storage.list_keys("", limit=1001) == keys[:1001]
