"""The log layout's checkpoints and garbage collection (``trioq.core._log_upkeep``),
in virtual time: when a checkpoint is written and what it holds, what a load reads,
what collection deletes and when, and that neither a reader that fell behind nor a
leader that went silent is fooled by what was deleted."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from test_engine import Recorder, check_history, log_key, stored
from test_log_layout import LOG_PREFIX, Watched, engine, jobs
from trioq import CASConflict, FaultyStorage, MemoryStorage
from trioq.core._engine import Engine, Role
from trioq.core._log_layout import LogLayout, newest_leader
from trioq.core._state import QueueState

CHECKPOINTS = "queue/checkpoint/"


def checkpoint_key(seq: int) -> str:
    return f"{CHECKPOINTS}{seq:020d}.json"


def upkept(storage: FaultyStorage | MemoryStorage | Recorder, name: str = "a") -> Engine:
    """A log-layout engine that checkpoints every 5 commits (on the event loop, so
    that virtual time stays exact) and collects after 30 s."""
    return engine(storage, name, checkpoint_commits=5, gc_grace=30.0)


def layout_of(eng: Engine) -> LogLayout:
    layout = eng.layout
    assert isinstance(layout, LogLayout)
    return layout


async def checkpointed(eng: Engine, count: int) -> None:
    """Let the upkeep task run, then check that ``eng`` wrote ``count`` checkpoints."""
    await trio.testing.wait_all_tasks_blocked()
    assert eng.metrics["checkpoints"] == count


async def commits(eng: Engine, count: int, start: int = 0) -> None:
    """``count`` commits of one job each (ids ``j<start>``...)."""
    for n in range(start, start + count):
        await eng.enqueue(jobs(1, n))


async def test_a_checkpoint_holds_the_state_of_its_record_and_never_delays_a_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    eng = upkept(inner)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        await commits(eng, 3)  # records 2-4: four records (creation counts)
        await trio.testing.wait_all_tasks_blocked()
        assert inner.keys(CHECKPOINTS) == []
        await commits(eng, 1, 3)  # the fifth: due
        await checkpointed(eng, 1)
        (key,) = inner.keys(CHECKPOINTS)
        assert key == checkpoint_key(5)
        got = inner.peek(key)
        assert got is not None
        saved = QueueState.decode(got.data)
        assert saved.seq == 5
        assert sorted(saved.jobs) == ["j0", "j1", "j2", "j3"]
        # byte for byte the state the log holds up to record 5
        assert got.data == stored(inner).encode()
        assert eng.metrics["checkpoints"] == 1
        # commits went on at their own pace: no commit waited for the checkpoint
        started = trio.current_time()
        await commits(eng, 1, 4)
        assert trio.current_time() - started <= 0.05
        eng.stop()


async def test_a_new_engine_loads_the_newest_checkpoint_and_the_records_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    eng = upkept(inner)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        await commits(eng, 4)  # records 2-5: a checkpoint at 5
        await checkpointed(eng, 1)
        await commits(eng, 5, 4)  # records 6-10: at 10
        await checkpointed(eng, 2)
        await commits(eng, 3, 9)  # records 11-13
        assert inner.keys(CHECKPOINTS) == [checkpoint_key(5), checkpoint_key(10)]
        reader = FaultyStorage(inner)
        standby = upkept(reader, "b")
        assert await nursery.start(standby.run) is Role.STANDBY
        # the checkpoint of 10, then records 11-13 and a look for 14: no record at or
        # below 10 is read
        assert reader.calls["read"] == 1 + 1 + 4  # the marker, the checkpoint, the log
        state = layout_of(standby).following
        assert state is not None
        assert state.encode() == stored(inner).encode()
        assert sorted(state.jobs) == sorted(f"j{n}" for n in range(12))
        standby.stop()
        eng.stop()


async def test_collection_deletes_what_is_older_than_the_grace_period_and_nothing_else(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    eng = upkept(inner)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        await commits(eng, 4)  # records 2-5: a checkpoint at 5 (creation counts)
        await checkpointed(eng, 1)
        await commits(eng, 5, 4)  # records 6-10: at 10
        await checkpointed(eng, 2)
        assert inner.keys(CHECKPOINTS) == [checkpoint_key(5), checkpoint_key(10)]
        before = inner.keys(LOG_PREFIX)
        assert before == [log_key(n) for n in range(1, 11)]
        # within the grace period nothing goes
        await trio.sleep_until(29.0)
        assert inner.keys(LOG_PREFIX)[:10] == before
        # then every record at or below the newest checkpoint that is old enough: idle,
        # the leader commits every 3 s (records 11, 12, ... from 3.5 s), so checkpoints
        # 15, 20 and 25 come at 15.5, 30.5 and 45.5 s; the collection at 30.5 s has 10
        # for its horizon (written at 0.5 s), the one at 45.5 s has 15
        await trio.sleep_until(60.0)
        assert eng.metrics["collected"] == 2 + 15  # checkpoints 5 and 10, records 1-15
        assert inner.keys(CHECKPOINTS) == [checkpoint_key(n) for n in (15, 20, 25)]
        assert inner.keys(LOG_PREFIX)[0] == log_key(16)
        assert inner.keys("queue.json") == ["queue.json"]  # the marker stays
        # what is left loads to the state the leader holds
        assert stored(inner).encode() == await eng.read(lambda state: state.encode())
        eng.stop()


async def test_what_a_burst_of_checkpoints_replaced_goes_a_grace_period_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two checkpoints in a burst, then only the leader's heartbeat records (one every
    3 s): the older checkpoint and the records up to the newer one are deleted when
    the newer leaves its grace period (7 s here), not at the next checkpoint (15.5 s)."""
    inner = MemoryStorage()
    eng = engine(inner, "a", checkpoint_commits=5, gc_grace=7.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        await commits(eng, 4)  # records 2-5: a checkpoint at 5
        await checkpointed(eng, 1)
        await commits(eng, 5, 4)  # records 6-10: at 10
        await checkpointed(eng, 2)
        burst = trio.current_time()
        assert burst < 1.0
        assert inner.keys(CHECKPOINTS) == [checkpoint_key(5), checkpoint_key(10)]
        await trio.sleep_until(burst + 7.0 - 0.01)
        assert inner.keys(CHECKPOINTS) == [checkpoint_key(5), checkpoint_key(10)]
        await trio.sleep_until(burst + 7.0 + 0.01)
        assert eng.metrics["checkpoints"] == 2  # no checkpoint since the burst
        assert inner.keys(CHECKPOINTS) == [checkpoint_key(10)]
        assert inner.keys(LOG_PREFIX)[0] == log_key(11)
        assert eng.metrics["collected"] == 1 + 10
        assert stored(inner).encode() == await eng.read(lambda state: state.encode())
        eng.stop()


async def test_the_newest_leader_is_read_from_the_last_record_after_collection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What ``Client.from_storage`` reads in the log layout: the newest record's
    leader, found after the newest checkpoint, also once older ones are collected and
    once the leader has released its lease."""
    inner = MemoryStorage()
    eng = upkept(inner)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        await commits(eng, 9)  # checkpoints at 5 and 10
        await checkpointed(eng, 2)
        leader = await newest_leader(inner, "queue.json")
        assert leader is not None
        assert (leader.broker_id, leader.epoch, leader.released) == ("a", 1, False)
        await trio.sleep(60.0)  # collection, heartbeat records after the checkpoints
        assert eng.metrics["collected"] > 0
        leader = await newest_leader(inner, "queue.json")
        assert leader is not None
        assert (leader.broker_id, leader.released) == ("a", False)
        eng.stop()
    leader = await newest_leader(inner, "queue.json")
    assert leader is not None
    assert (leader.broker_id, leader.released) == ("a", True)
    assert await newest_leader(MemoryStorage(), "queue.json") is None


async def test_a_standby_that_fell_behind_past_collection_loads_afresh_and_takes_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    recorder = Recorder(inner)
    storage_a, storage_b = FaultyStorage(recorder), FaultyStorage(recorder)
    a = Watched(upkept(storage_a, "a"))
    b = Watched(upkept(storage_b, "b"))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        assert await nursery.start(b.run) is Role.STANDBY
        storage_b.inject("error", count=None)  # b sees nothing for a while
        await commits(a.engine, 20)
        await trio.sleep_until(100.0)  # checkpoints, and collections past b's seq
        assert a.engine.metrics["collected"] > 0
        assert layout_of(b.engine).following is not None
        assert layout_of(b.engine).following.seq < int(
            inner.keys(LOG_PREFIX)[0].removeprefix(LOG_PREFIX).removesuffix(".json")
        )
        storage_b.clear()
        await a.crash(storage_a)
        with trio.fail_after(60):
            await b.engine.wait_leader()
        assert b.error is None
        assert b.engine.state is not None
        assert sorted(b.engine.state.jobs) == sorted(f"j{n}" for n in range(20))
        await b.engine.enqueue(jobs(1, 20))
        b.engine.stop()
    check_history(recorder.landed)
    assert sorted(stored(inner).jobs) == sorted(f"j{n}" for n in range(21))


async def test_a_leader_cut_off_past_collection_steps_down_and_creates_no_collected_number(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    recorder = Recorder(inner)
    storage_a, storage_b = FaultyStorage(recorder), FaultyStorage(recorder)
    a = Watched(upkept(storage_a, "a"))
    b = Watched(upkept(storage_b, "b"))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        assert await nursery.start(b.run) is Role.STANDBY
        await commits(a.engine, 3)
        assert a.engine.state is not None
        next_seq = a.engine.state.seq + 1
        storage_a.inject("error", count=None)  # a is cut off: its commits fail
        with trio.fail_after(60):
            await b.engine.wait_leader()
        await commits(b.engine, 12, 3)
        await trio.sleep_until(120.0)  # b's checkpoints age; collection passes next_seq
        assert b.engine.metrics["collected"] > 0
        assert inner.peek(log_key(next_seq)) is not None or (
            inner.keys(LOG_PREFIX)[0] > log_key(next_seq)
        )
        storage_a.clear()  # a reaches the store again and tries to commit
        await trio.sleep_until(125.0)
        assert a.engine.role is Role.STANDBY
        a.engine.stop()
        b.engine.stop()
    check_history(recorder.landed)
    # a wrote nothing after b took over: every record a landed has epoch 1
    assert all(w.epoch == 1 for w in recorder.landed if w.broker == "a")
    assert sorted(stored(inner).jobs) == sorted(f"j{n}" for n in range(15))


async def test_a_silent_leader_looks_past_its_last_record_before_it_creates_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    eng = upkept(inner)
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.run)
        layout = layout_of(eng)
        assert eng.state is not None
        seq = eng.state.seq
        # another broker's record 3 is stored and record 2 was collected: a create of
        # 2 would succeed, so a leader silent for longer than a lease must look first
        await inner.create(log_key(seq + 2), b"{}")
        layout.upkeep.last_write = trio.current_time() - 11.0
        creates = len(inner.keys(LOG_PREFIX))
        with pytest.raises(CASConflict, match="went past record"):
            await layout.write(b"{}", seq + 1, str(seq))
        assert len(inner.keys(LOG_PREFIX)) == creates
        assert inner.peek(log_key(seq + 1)) is None
        # not silent: no listing, the create goes ahead (and lands)
        layout.upkeep.last_write = trio.current_time()
        await layout.write(b"{}", seq + 1, str(seq))
        assert inner.peek(log_key(seq + 1)) is not None
        nursery.cancel_scope.cancel()


async def test_short_reigns_still_make_checkpoints(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # each leader leads for fewer commits than a checkpoint needs (5): the records
    # since the checkpoint a new leader's state came from count towards its first
    inner = MemoryStorage()
    a = Watched(upkept(inner, "a"))
    b = Watched(upkept(inner, "b"))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        assert await nursery.start(b.run) is Role.STANDBY
        await commits(a.engine, 3)  # records 2-4
        a.engine.stop()  # record 5 releases the lease
        with trio.fail_after(5):
            await b.engine.wait_leader()  # record 6
        assert inner.keys(CHECKPOINTS) == []
        await commits(b.engine, 1, 3)  # record 7: 7 records since none
        await checkpointed(b.engine, 1)
        assert inner.keys(CHECKPOINTS) == [checkpoint_key(7)]
        b.engine.stop()
