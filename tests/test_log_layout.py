"""The engine on the log layout (format 2, ``docs/log-layout.md``) only: what it
stores, what a commit writes, how a standby follows the log, and how the log fences.

Virtual time as in ``test_engine.py`` (whose helpers are reused); engines here are
built with ``layout="log"`` explicitly, so these tests are not run on both layouts.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from test_engine import (
    KEY,
    WALL0,
    Recorder,
    check_history,
    job,
    log_key,
    make_engine,
    stored,
    wall_clock,
)
from trioq import DocumentInvalid, FaultyStorage, MemoryStorage, NotLeader, Storage
from trioq.core._changes import Changes, encode_record
from trioq.core._engine import Engine, Role
from trioq.core._log_layout import LogLayout
from trioq.core._state import LeaderInfo, NewJob, QueueState

MARKER = b'{"format":"trioq.queue","formatVersion":2,"layout":"log"}'
LOG_PREFIX = "queue/log/"


def engine(
    storage: Storage, broker_id: str = "a", *, layout: str = "log", **timings: float
) -> Engine:
    """``make_engine``'s engine (same round timings, overridable) in ``layout``."""
    return make_engine(storage, broker_id, layout=layout, rng=random.Random(broker_id), **timings)


class Watched:
    """An engine run in its own cancel scope that keeps the DocumentInvalid it ends with."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.scope = trio.CancelScope()
        self.ended = trio.Event()
        self.error: DocumentInvalid | None = None

    async def run(self, *, task_status: trio.TaskStatus[Role] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                await self.engine.run(task_status=task_status)
        except DocumentInvalid as exc:
            self.error = exc
        finally:
            self.ended.set()

    async def crash(self, storage: FaultyStorage) -> None:
        """Cut the engine off the store, then cancel it: its last commit reaches nothing."""
        storage.inject("error", count=None)
        self.scope.cancel()
        await self.ended.wait()


async def start_log_pair(
    nursery: trio.Nursery,
    inner: MemoryStorage,
    *,
    heartbeat: float = 3.0,
    lease_timeout: float = 10.0,
) -> tuple[FaultyStorage, FaultyStorage, Watched, Watched, Recorder]:
    """Engine "a" leads from 0, "b" stands by from 0.25 (polls at 1.25, 2.25, ...), the test
    goes on at 0.5; each behind its own FaultyStorage over one Recorder."""
    recorder = Recorder(inner)
    storage_a, storage_b = FaultyStorage(recorder), FaultyStorage(recorder)
    started: list[Watched] = []
    for name, storage, at in (("a", storage_a, 0.0), ("b", storage_b, 0.25)):
        await trio.sleep_until(at)
        watched = Watched(
            engine(
                storage,
                name,
                broker_heartbeat_interval=heartbeat,
                broker_heartbeat_timeout=lease_timeout,
            )
        )
        role = await nursery.start(watched.run)
        assert role is (Role.LEADER if name == "a" else Role.STANDBY)
        started.append(watched)
    await trio.sleep_until(0.5)
    a, b = started
    return storage_a, storage_b, a, b, recorder


def record(storage: MemoryStorage, seq: int) -> dict[str, Any]:
    got = storage.peek(log_key(seq))
    assert got is not None, seq
    parsed: dict[str, Any] = orjson.loads(got.data)
    return parsed


def following(eng: Engine) -> QueueState:
    layout = eng.layout
    assert isinstance(layout, LogLayout)
    assert layout.following is not None
    return layout.following


def empty_record(state: QueueState, broker_id: str, *, epoch: int) -> bytes:
    """The record after ``state``'s that ``broker_id`` would write with no ops, now."""
    return encode_record(
        state,
        Changes(),
        seq=state.seq + 1,
        epoch=epoch,
        broker_id=broker_id,
        url=f"http://{broker_id}",
        lease_at=wall_clock(),
        released=False,
    )


def jobs(count: int, start: int = 0) -> list[NewJob]:
    return [NewJob(payload={"id": f"j{n}"}, id=f"j{n}") for n in range(start, start + count)]


async def test_creating_a_queue_writes_the_marker_and_record_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = MemoryStorage()
    eng = engine(storage)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(eng.run) is Role.LEADER
        marker = storage.peek(KEY)
        assert marker is not None
        assert marker.data == MARKER
        assert record(storage, 1) == {
            "seq": 1,
            "epoch": 1,
            "brokerId": "a",
            "url": "http://a",
            "leaseAt": WALL0,
            "released": False,
            "ops": [],
        }
        first = storage.peek(log_key(1))
        assert first is not None
        assert eng.document == first.data
        eng.stop()
    assert eng.role is Role.STOPPED
    assert await storage.list_keys("") == [KEY, log_key(1), log_key(2)]
    assert record(storage, 2)["released"] is True
    assert storage.peek(KEY) == marker  # the marker is never rewritten by a commit
    leader = stored(storage).leader
    assert leader == LeaderInfo("a", "http://a", 1, WALL0 + 50, released=True)


async def test_a_document_engine_refuses_the_log_layout_and_leaves_it_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # (a log-layout engine converts a format-1 document: tests/test_log_migration.py)
    made_by, read_by, hint = "log", "document", "--layout log"
    storage = MemoryStorage()
    maker = engine(storage, "a", layout=made_by)
    async with trio.open_nursery() as nursery:
        await nursery.start(maker.run)
        await maker.enqueue(job("x"))
        maker.stop()
    before = storage.peek(KEY)
    keys = await storage.list_keys("")
    reader = engine(storage, "b", layout=read_by)
    with pytest.raises(DocumentInvalid, match=f"^{KEY} in .*{hint}"):
        await reader.run()
    assert reader.role is Role.STOPPED
    assert storage.peek(KEY) == before
    assert await storage.list_keys("") == keys


async def test_a_commit_writes_its_batch_only_and_an_idle_one_no_ops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = MemoryStorage()
    eng = engine(storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        for start in range(0, 500, 100):
            await eng.enqueue(jobs(100, start))
        await eng.enqueue(job("last"))
        last_commit = trio.current_time()
        seq = stored(storage).seq
        assert seq == 7  # creation, five batches, one job
        newest = storage.peek(log_key(seq))
        assert newest is not None
        assert len(newest.data) < 1024
        ops = orjson.loads(newest.data)["ops"]
        assert [list(op) for op in ops] == [["put"]]
        assert ops[0]["put"]["id"] == "last"
        assert len(stored(storage).jobs) == 501
        # idle: the lease refresh one heartbeat interval after the last commit started
        await trio.sleep_until(last_commit + 3.0 + 0.01)
        assert stored(storage).seq == seq + 1
        assert record(storage, seq + 1) == {
            "seq": seq + 1,
            "epoch": 1,
            "brokerId": "a",
            "url": "http://a",
            "leaseAt": WALL0 + round((last_commit + 3.0) * 1000),
            "released": False,
            "ops": [],
        }
        eng.stop()


async def test_a_standby_follows_the_log_one_read_a_poll_and_takes_over_without_a_load(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # heartbeats 8 s apart: a quiet stretch of 7 polls between two commits of "a"
    inner = MemoryStorage()
    async with trio.open_nursery() as nursery:
        _, storage_b, a, b, recorder = await start_log_pair(
            nursery, inner, heartbeat=8.0, lease_timeout=20.0
        )
        for n in range(3):  # commits at 0.5, 0.55, 0.6
            await a.engine.enqueue(jobs(2, 2 * n))
        await trio.sleep_until(1.5)  # after b's poll at 1.25
        assert following(b.engine).seq == stored(inner).seq == 4
        assert following(b.engine).encode() == stored(inner).encode()
        quiet = dict(storage_b.calls)
        await trio.sleep_until(8.5)  # polls at 2.25 ... 8.25; a commits next at 8.6
        assert stored(inner).seq == 4
        calls = dict(storage_b.calls)
        assert calls == {**quiet, "read": quiet["read"] + 7}
        a.engine.stop()  # releases at 8.5
        await a.ended.wait()
        with trio.fail_after(5):
            await b.engine.wait_leader()
        assert trio.current_time() == pytest.approx(9.25)  # its next poll
        assert b.engine.epoch == 2
        took = dict(storage_b.calls)
        # the released record and the next number; the tail check; the marker (read:
        # it must still be the marker); the create
        assert {op: took[op] - calls.get(op, 0) for op in took} == {
            "read": 3,
            "list_keys": 1,
            "create": 1,
        }
        assert b.engine.state is not None
        assert sorted(b.engine.state.jobs) == sorted(f"j{n}" for n in range(6))
        assert sorted(stored(inner).jobs) == sorted(b.engine.state.jobs)
        b.engine.stop()
    check_history(recorder.landed)
    assert [(w.broker, w.epoch, w.released) for w in recorder.landed[-3:]] == [
        ("a", 1, True),
        ("b", 2, False),
        ("b", 2, True),
    ]


async def test_a_foreign_record_at_the_next_number_fences_the_leader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    eng = engine(inner)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        await eng.enqueue(job("x"))
        state = stored(inner)
        n = state.seq
        foreign = empty_record(state, "b", epoch=2)
        await inner.create(log_key(n + 1), foreign)
        with pytest.raises(NotLeader) as caught:
            await eng.enqueue(job("y"))
        assert caught.value.leader == "http://b"
        assert eng.role is Role.STANDBY
        assert eng.leader_url == "http://b"
        got = inner.peek(log_key(n + 1))
        assert got is not None
        assert got.data == foreign
        assert inner.peek(log_key(n + 2)) is None
        assert not stored(inner).knows("y")
        eng.stop()


async def test_a_standby_refuses_a_log_with_a_gap_and_creates_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    storage_a = FaultyStorage(inner)
    a = Watched(engine(storage_a))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        for n in range(4):
            await a.engine.enqueue(job(f"x{n}"))
        assert stored(inner).seq == 5
        await a.crash(storage_a)
    assert a.error is None
    inner.delete(log_key(2))  # as garbage collection of an old record would
    keys = await inner.list_keys("")
    assert keys == [KEY] + [log_key(n) for n in (1, 3, 4, 5)]
    storage_b = FaultyStorage(inner)
    b = engine(storage_b, "b")
    with pytest.raises(DocumentInvalid, match="has a gap: record 2 is missing"):
        await b.run()
    assert b.role is Role.STOPPED
    assert await inner.list_keys("") == keys
    assert storage_b.calls["create"] == storage_b.calls["write"] == 0


async def test_a_standby_halts_on_a_damaged_next_record_and_writes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    async with trio.open_nursery() as nursery:
        storage_a, storage_b, a, b, _ = await start_log_pair(nursery, inner)
        damaged = log_key(2)
        version = await inner.create(damaged, b"{not json")
        with trio.fail_after(5):
            await b.ended.wait()  # its poll at 1.25
        assert trio.current_time() == pytest.approx(1.25)
        assert b.error is not None
        assert damaged in str(b.error)
        assert b.engine.role is Role.STOPPED
        assert [storage_b.calls[op] for op in ("create", "write", "delete_key")] == [0, 0, 0]
        assert inner.peek(damaged) == (b"{not json", version)
        await a.crash(storage_a)


async def test_an_ambiguous_create_of_a_commit_that_landed_is_acknowledged_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    storage = FaultyStorage(inner)
    eng = engine(storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        await trio.sleep_until(1.0)
        storage.inject("ambiguous", ops=["create"])
        creates = storage.calls["create"]
        (result,) = await eng.enqueue(job("x"))
        assert trio.current_time() == 1.0
        assert storage.calls["create"] == creates + 1  # read back, not created again
        assert await inner.list_keys(LOG_PREFIX) == [log_key(1), log_key(2)]
        assert [list(op) for op in record(inner, 2)["ops"]] == [["put"]]
        assert list(stored(inner).jobs) == [result.id] == ["x"]
        assert eng.metrics["writeErrors"] == 1
        assert eng.metrics["failedBatches"] == 0
        await eng.enqueue(job("y"))  # the next commit follows on at number 3
        assert list(stored(inner).jobs) == ["x", "y"]
        assert stored(inner).seq == 3
        eng.stop()


async def test_a_record_that_lands_during_a_takeover_does_not_stop_later_takeovers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    async with trio.open_nursery() as nursery:
        storage_a, storage_b, a, b, recorder = await start_log_pair(nursery, inner)
        await a.crash(storage_a)  # its last commit never lands: the log ends at 1
        assert stored(inner).seq == 1
        await trio.sleep_until(10.0)
        storage_b.inject("latency", ops=["list_keys"], delay=0.5)
        await trio.sleep_until(10.5)  # b's takeover (its poll at 10.25) is listing
        # its election's two (checkpoints, then the log); the takeover's is delayed
        assert storage_b.calls["list_keys"] == 2
        assert storage_b.calls["create"] == 0
        # a late commit of the old leader lands now (then it is gone for good)
        await recorder.create(log_key(2), empty_record(stored(inner), "a", epoch=1))
        await trio.sleep_until(40.0)  # the last record is ~30 s old; the timeout is 10 s
        assert b.engine.is_leader
        assert b.engine.epoch == 2
        leader = stored(inner).leader
        assert leader is not None
        assert (leader.broker_id, leader.epoch) == ("b", 2)
        b.engine.stop()
