"""Committed-only reads, abandoned claims, where a queue may be created, and
decoding in steps: the engine in virtual time (helpers from ``test_engine.py``)."""

from __future__ import annotations

import random

import orjson
import pytest
import trio
import trio.testing

from test_engine import job, make_engine, start, stored
from trioq import (
    FaultyStorage,
    JobNotFound,
    MemoryStorage,
    StorageUnavailable,
)
from trioq._errors import QueueNotFound
from trioq.core._engine import Role
from trioq.core._state import Limits, NewJob, QueueState

KEY = "queue.json"

# -- reads show committed state only --------------------------------------------------


async def test_a_job_whose_submit_failed_is_never_visible(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The batch is applied in memory before its write: neither during the write nor
    after it failed may a read show the job its caller was told failed."""
    inner = MemoryStorage(latency=1.0)
    storage = FaultyStorage(inner)
    engine = make_engine(storage, write_retries=1)
    seen: list[object] = []

    async def look() -> None:
        try:
            seen.append(await engine.read(lambda s: s.lookup("doomed")))
        except StorageUnavailable as exc:
            seen.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.enqueue(job("kept"))
        storage.inject("error", ops=["write"])

        async def doomed() -> None:
            with pytest.raises(StorageUnavailable):
                await engine.enqueue(job("doomed"))

        nursery.start_soon(doomed)
        # the batch is applied and its write under way (the write takes 1 s)
        await trio.sleep(0.5)
        assert engine.state is not None
        assert engine.state.knows("doomed")
        assert engine.committed_stats["total"] == 1  # ...but not committed
        nursery.start_soon(look)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == []  # the read waits for the commit's outcome
        await trio.sleep(2.0)  # the write failed; the reload read the stored state
        assert seen == [None]
        assert (await engine.read(lambda s: s.lookup("doomed"))) is None
        assert (await engine.read(lambda s: s.lookup("kept"))) is not None
        assert engine.committed_stats["total"] == 1
        engine.stop()
    assert sorted(stored(inner).jobs) == ["kept"]


async def test_a_read_during_a_commit_sees_it_once_it_is_written(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage(latency=1.0)
    engine = make_engine(inner)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        submitted = trio.current_time()
        nursery.start_soon(engine.enqueue, job("a"))
        await trio.sleep(0.5)  # applied, being written
        assert await engine.read(lambda s: s.knows("a"))
        # answered when written: one commit interval, then the 1 s write
        assert trio.current_time() == pytest.approx(submitted + 0.05 + 1.0)
        engine.stop()


async def test_reads_fail_while_the_state_cannot_be_reloaded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    storage = FaultyStorage(inner)
    engine = make_engine(storage, write_retries=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.enqueue(job("a"))
        storage.inject("error", count=None)
        with pytest.raises(StorageUnavailable):
            await engine.enqueue(job("b"))
        with pytest.raises(StorageUnavailable, match="cannot reload"):
            await engine.read(lambda s: s.knows("b"))
        storage.clear()
        assert not await engine.read(lambda s: s.knows("b"))
        with pytest.raises(JobNotFound):
            await engine.read(_lookup_or_raise("b"))
        engine.stop()


def _lookup_or_raise(job_id: str):  # type: ignore[no-untyped-def]
    def fn(state: QueueState) -> object:
        found = state.lookup(job_id)
        if found is None:
            raise JobNotFound(job_id)
        return found

    return fn


# -- a claim whose caller went away ---------------------------------------------------


async def test_a_claim_cancelled_before_its_commit_takes_no_job(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The claim waits in the channel behind a commit in flight; its caller gives up
    before that commit ends. The next commit must not hand it the job."""
    inner = MemoryStorage(latency=1.0)
    engine = make_engine(inner)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.enqueue(job("j"))
        nursery.start_soon(engine.enqueue, job("other"))  # a commit in flight
        await trio.sleep(0.1)
        with trio.move_on_after(0.5):
            await engine.claim("gone", wait=30)
        # the claim's batch is committed after the in-flight write; nothing took "j"
        [claimed] = await engine.claim("w2")
        assert claimed.id == "j"
        assert claimed.attempt == 1
        engine.stop()


# -- where a queue may be created -----------------------------------------------------


async def test_an_engine_not_allowed_to_create_refuses_a_missing_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = MemoryStorage()
    engine = make_engine(storage, create=False)
    with pytest.raises(QueueNotFound, match=r"no queue at queue\.json in memory storage"):
        await engine.run()
    assert storage.peek(KEY) is None


async def test_a_standby_never_recreates_a_queue_that_vanished(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    storage = MemoryStorage()
    leader = make_engine(storage, "a")
    standby = make_engine(storage, "b")
    async with trio.open_nursery() as nursery:
        scope = await start(nursery, leader)
        await leader.enqueue(job("x"))
        assert await nursery.start(standby.run) is Role.STANDBY
        scope.cancel()  # the leader releases its lease as it stops
        await standby.wait_leader()
        await standby.enqueue(job("y"))
        # someone deletes the object under the new leader
        storage.delete(KEY)
        with pytest.raises(StorageUnavailable, match="vanished"):
            await standby.enqueue(job("z"))
        assert storage.peek(KEY) is None
        standby.stop()
    assert storage.peek(KEY) is None


async def test_a_standby_that_saw_the_queue_waits_instead_of_creating_one(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    storage = MemoryStorage()
    leader = make_engine(storage, "a")
    standby = make_engine(storage, "b")
    async with trio.open_nursery() as nursery:
        await start(nursery, leader)
        assert await nursery.start(standby.run) is Role.STANDBY
        storage.delete(KEY)
        await trio.sleep(30)  # past the lease timeout: nothing is stale, nothing is there
        assert standby.role is Role.STANDBY
        assert "vanished after this broker had seen it" in caplog.text
        nursery.cancel_scope.cancel()
    assert storage.peek(KEY) is None


# -- decoding in steps ----------------------------------------------------------------


def _state(depth: int) -> QueueState:
    state = QueueState(limits=Limits(max_queued=depth + 10), rng=random.Random(3))
    state.enqueue([NewJob({"n": i, "s": "a,\nb]"}, type=f"t{i % 3}") for i in range(depth)], 1)
    state.claim("w", 2, max_jobs=depth // 10)
    state.complete(next(iter(state.index.leases)), "w", 3)
    state.fail(next(iter(state.index.leases)), "w", 4, error="boom", final=True)
    return state


@pytest.mark.parametrize("legacy", [False, True], ids=["line layout", "compact legacy"])
async def test_decode_async_equals_decode_and_checkpoints(legacy: bool) -> None:
    state = _state(3000)
    data = state.encode()
    assert data.count(b"\n") == len(state.jobs) + len(state.dead) + len(state.finished)
    if legacy:
        data = orjson.dumps(orjson.loads(data))  # as trioq 0.1 wrote it: no newlines
    checkpoints = 0

    class Counter(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            nonlocal checkpoints
            checkpoints += 1

    trio.lowlevel.add_instrument(Counter())
    decoded = await QueueState.decode_async(data)
    assert decoded.encode() == state.encode()
    assert QueueState.decode(data).encode() == state.encode()
    assert decoded.stats() == state.stats()
    # every job is claimable in the same order as from the original
    order = [j.id for j in decoded.claim("w2", 10, max_jobs=3000)]
    assert order == [j.id for j in state.claim("w2", 10, max_jobs=3000)]
    # 3000 records in steps of 256: the loop got control back many times
    assert checkpoints >= 10


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:-2],
        lambda d: d.replace(b'"status":"unclaimed"', b'"status":"weird"', 1),
        lambda d: d.replace(b"\n,", b",", 1),  # a record split differently: still valid
    ],
    ids=["truncated", "bad status", "hand-edited layout"],
)
async def test_decode_async_rejects_what_decode_rejects(damage) -> None:  # type: ignore[no-untyped-def]
    data = damage(_state(300).encode())
    try:
        expected = QueueState.decode(data).encode()
    except Exception as exc:
        with pytest.raises(type(exc)):
            await QueueState.decode_async(data)
    else:
        assert (await QueueState.decode_async(data)).encode() == expected
