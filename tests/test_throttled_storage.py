"""ThrottledStorage: token buckets in virtual time (MockClock with autojump)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trioq
from trioq import MemoryStorage, Storage, ThrottledStorage

KEY = "queue.json"


async def _seeded(**limits: float) -> tuple[ThrottledStorage, MemoryStorage, str]:
    """A throttle over a MemoryStorage that already holds KEY (created unthrottled)."""
    inner = MemoryStorage()
    version = await inner.create(KEY, b"0")
    return ThrottledStorage(inner, **limits), inner, version


async def _timed_writes(storage: ThrottledStorage, version: str, n: int) -> list[float]:
    """Run n writes one after the other; the trio time at which each completed."""
    start = trio.current_time()
    done: list[float] = []
    for i in range(n):
        version = await storage.write(KEY, b"%d" % (i + 1), if_match=version)
        done.append(trio.current_time() - start)
    return done


def test_satisfies_the_storage_protocol() -> None:
    storage = ThrottledStorage(MemoryStorage(), max_writes_per_minute=60)
    assert isinstance(storage, Storage)
    assert trioq.ThrottledStorage is ThrottledStorage
    assert "memory storage" in storage.describe()


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_rejects_invalid_rates(bad: float) -> None:
    with pytest.raises(ValueError, match="max_reads_per_minute"):
        ThrottledStorage(MemoryStorage(), max_reads_per_minute=bad)
    with pytest.raises(ValueError, match="max_writes_per_minute"):
        ThrottledStorage(MemoryStorage(), max_writes_per_minute=bad)


async def test_60_per_minute_spaces_writes_one_second_apart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, inner, version = await _seeded(max_writes_per_minute=60)
    assert await _timed_writes(storage, version, 3) == [0.0, 1.0, 2.0]
    stored = inner.peek(KEY)
    assert stored is not None
    assert stored.data == b"3"
    stats = storage.stats()
    assert stats["totalWrites"] == 3
    assert stats["throttledWrites"] == 2
    assert stats["totalWriteDelayMs"] == 2000.0


async def test_concurrent_writes_at_60_per_minute_complete_at_0_1_2(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    storage = ThrottledStorage(inner, max_writes_per_minute=60)
    done: dict[str, float] = {}

    async def create(key: str) -> None:
        await storage.create(key, b"x")
        done[key] = trio.current_time()

    async with trio.open_nursery() as nursery:
        for key in "abc":
            nursery.start_soon(create, key)
    # The three start in the same batch, in no fixed order; one is admitted per second.
    assert sorted(done.values()) == [0.0, 1.0, 2.0]
    # Each waited from the start: 1 s + 2 s.
    assert storage.stats()["totalWriteDelayMs"] == 3000.0
    assert storage.stats()["throttledWrites"] == 2


async def test_below_60_per_minute_the_bucket_holds_one_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, _, version = await _seeded(max_writes_per_minute=30)
    assert await _timed_writes(storage, version, 3) == [0.0, 2.0, 4.0]
    assert storage.stats()["totalWriteDelayMs"] == 4000.0


async def test_very_low_rate(autojump_clock: trio.testing.MockClock) -> None:
    storage, _, version = await _seeded(max_writes_per_minute=1)
    assert await _timed_writes(storage, version, 2) == [0.0, 60.0]


async def test_above_60_per_minute_the_bucket_bursts_its_capacity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 120/min: 2 tokens per second, capacity 2.
    storage, _, version = await _seeded(max_writes_per_minute=120)
    assert await _timed_writes(storage, version, 5) == [0.0, 0.0, 0.5, 1.0, 1.5]
    stats = storage.stats()
    assert stats["throttledWrites"] == 3
    assert stats["totalWriteDelayMs"] == 1500.0


async def test_refill_after_idle_caps_at_capacity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, _, version = await _seeded(max_writes_per_minute=120)
    await _timed_writes(storage, version, 2)  # bucket now empty
    await trio.sleep(60)  # an idle minute refills 2 tokens, not 120
    version = (await storage.read(KEY)).version  # type: ignore[union-attr]
    assert await _timed_writes(storage, version, 4) == [0.0, 0.0, 0.5, 1.0]


async def test_partial_refill_shortens_the_wait(autojump_clock: trio.testing.MockClock) -> None:
    storage, _, version = await _seeded(max_writes_per_minute=60)
    version = await storage.write(KEY, b"1", if_match=version)
    await trio.sleep(0.25)
    start = trio.current_time()
    await storage.write(KEY, b"2", if_match=version)
    assert trio.current_time() - start == 0.75
    assert storage.stats()["totalWriteDelayMs"] == 750.0


async def test_reads_and_writes_are_independent(autojump_clock: trio.testing.MockClock) -> None:
    storage, _, version = await _seeded(max_reads_per_minute=60, max_writes_per_minute=60)
    version = await storage.write(KEY, b"1", if_match=version)  # write bucket now empty
    start = trio.current_time()
    assert await storage.read(KEY) is not None  # read bucket still full
    assert trio.current_time() == start
    await storage.version(KEY)  # `version` counts as a read: waits for the read bucket
    assert trio.current_time() == start + 1.0
    await storage.write(KEY, b"2", if_match=version)  # write bucket refilled meanwhile
    assert trio.current_time() == start + 1.0
    assert storage.stats() == {
        "throttling": True,
        "maxReadsPerMinute": 60.0,
        "maxWritesPerMinute": 60.0,
        "totalReads": 2,
        "totalWrites": 2,
        "throttledReads": 1,
        "throttledWrites": 0,
        "totalReadDelayMs": 1000.0,
        "totalWriteDelayMs": 0.0,
    }


async def test_create_counts_as_a_write(autojump_clock: trio.testing.MockClock) -> None:
    storage = ThrottledStorage(MemoryStorage(), max_writes_per_minute=60)
    await storage.create("a", b"")
    await storage.create("b", b"")
    assert trio.current_time() == 1.0
    assert storage.stats()["totalWrites"] == 2
    assert storage.stats()["totalReads"] == 0


async def test_zero_means_off_but_still_counted(autojump_clock: trio.testing.MockClock) -> None:
    storage, _, version = await _seeded()  # both rates default to 0
    assert await _timed_writes(storage, version, 50) == [0.0] * 50
    for _ in range(50):
        await storage.read(KEY)
        await storage.version(KEY)
    assert trio.current_time() == 0.0
    assert storage.stats() == {
        "throttling": True,
        "maxReadsPerMinute": 0.0,
        "maxWritesPerMinute": 0.0,
        "totalReads": 100,
        "totalWrites": 50,
        "throttledReads": 0,
        "throttledWrites": 0,
        "totalReadDelayMs": 0.0,
        "totalWriteDelayMs": 0.0,
    }


async def test_one_bucket_off_the_other_on(autojump_clock: trio.testing.MockClock) -> None:
    storage, _, version = await _seeded(max_writes_per_minute=60)
    for _ in range(10):
        await storage.read(KEY)
    assert trio.current_time() == 0.0
    assert await _timed_writes(storage, version, 2) == [0.0, 1.0]


async def test_waiters_are_served_in_fifo_order(autojump_clock: trio.testing.MockClock) -> None:
    storage = ThrottledStorage(MemoryStorage(), max_reads_per_minute=60)
    order: list[tuple[int, float]] = []

    async def reader(i: int) -> None:
        await storage.read(KEY)
        order.append((i, trio.current_time()))

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(reader, i)
            # Make sure reader i is queued before reader i+1 arrives.
            await trio.testing.wait_all_tasks_blocked()
    assert order == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    assert storage.stats()["throttledReads"] == 4
    assert storage.stats()["totalReadDelayMs"] == 1000.0 + 2000.0 + 3000.0 + 4000.0


async def test_a_newcomer_does_not_take_the_token_a_waiter_is_due(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The newcomer arrives at the very instant the queued waiter's token is complete, in
    # the same scheduling batch as the waiter's wake-up; trio runs a batch in varying
    # order, so repeat to see both orders. The token is the waiter's either way.
    async def waiter(storage: ThrottledStorage, order: list[tuple[str, float]]) -> None:
        await storage.read(KEY)
        order.append(("waiter", trio.current_time()))

    for _ in range(20):
        storage = ThrottledStorage(MemoryStorage(), max_reads_per_minute=30)  # 1 per 2 s
        base = trio.current_time()
        await storage.read(KEY)  # bucket empty
        order: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, storage, order)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep_until(base + 2.0)  # the waiter's deadline too
            await storage.read(KEY)
            order.append(("newcomer", trio.current_time()))
        assert order == [("waiter", base + 2.0), ("newcomer", base + 4.0)]


async def test_a_cancelled_waiter_does_not_consume_a_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, _, version = await _seeded(max_writes_per_minute=60)
    version = await storage.write(KEY, b"1", if_match=version)  # bucket empty at t=0
    done: dict[str, float] = {}

    async def doomed() -> None:
        with trio.move_on_after(0.5) as scope:
            await storage.write(KEY, b"never", if_match=version)
        assert scope.cancelled_caught
        done["doomed"] = trio.current_time()

    async def patient() -> None:
        await storage.write(KEY, b"2", if_match=version)
        done["patient"] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(doomed)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(patient)  # queued behind "doomed"
    # "doomed" gave up at 0.5 s without a token; "patient" got the one that refilled
    # by 1 s, not one at 2 s.
    assert done == {"doomed": 0.5, "patient": 1.0}
    stats = storage.stats()
    assert stats["totalWrites"] == 2  # the cancelled write was never admitted
    assert stats["throttledWrites"] == 1
    assert stats["totalWriteDelayMs"] == 1000.0


async def test_a_cancelled_head_waiter_leaves_the_refill_to_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = ThrottledStorage(MemoryStorage(), max_reads_per_minute=60)
    await storage.read(KEY)
    await trio.sleep(0.9)  # 0.9 tokens accumulated
    with trio.move_on_after(0.05):
        await storage.read(KEY)
    # Still 0.95 tokens: the next read waits only 0.05 s.
    start = trio.current_time()
    await storage.read(KEY)
    assert trio.current_time() - start == pytest.approx(0.05)
    assert storage.stats()["totalReads"] == 2


async def test_errors_from_the_inner_store_pass_through_and_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, _, _ = await _seeded(max_writes_per_minute=60)
    with pytest.raises(trioq.CASConflict):
        await storage.write(KEY, b"x", if_match="stale")
    with pytest.raises(trioq.CASConflict):
        await storage.create(KEY, b"x")
    assert trio.current_time() == 1.0
    assert storage.stats()["totalWrites"] == 2


def test_constructed_outside_trio() -> None:
    storage = ThrottledStorage(MemoryStorage(), max_reads_per_minute=10)
    assert storage.max_reads_per_minute == 10.0
    assert storage.max_writes_per_minute == 0.0
    assert storage.stats()["totalReads"] == 0

    async def use() -> None:
        await storage.read(KEY)
        await storage.read(KEY)

    # Built before trio runs (as a CLI does), used in a run later.
    trio.run(use, clock=trio.testing.MockClock(autojump_threshold=0))
    assert storage.stats()["totalReads"] == 2
    assert storage.stats()["totalReadDelayMs"] == 6000.0


async def test_list_is_a_read_and_delete_is_a_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, inner, _ = await _seeded(max_reads_per_minute=60, max_writes_per_minute=60)
    start = trio.current_time()
    assert await storage.list_keys("") == [KEY]
    assert await storage.list_keys("", limit=1) == [KEY]  # waits a second for its token
    assert trio.current_time() - start == 1.0
    await storage.delete_key(KEY)  # the write bucket is full: no wait
    assert trio.current_time() - start == 1.0
    await storage.delete_key(KEY)  # waits a second in the write bucket
    assert trio.current_time() - start == 2.0
    assert inner.peek(KEY) is None
    stats = storage.stats()
    assert (stats["totalReads"], stats["throttledReads"]) == (2, 1)
    assert (stats["totalWrites"], stats["throttledWrites"]) == (2, 1)
