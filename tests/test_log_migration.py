"""Migration from format 1 to the log layout, and a rolling upgrade, in virtual time.

A broker started with ``--layout log`` on a queue in format 1 stands by on the
document as the document layout does and converts it when it takes over: it takes the
document over (compare-and-set, epoch + 1), copies it as the checkpoint of its seq, and
replaces it with the marker (compare-and-set). Brokers still on the document layout
then refuse the marker, and never write it.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from test_engine import KEY, Recorder, check_history, job, log_key, stored
from test_log_layout import MARKER, Watched, engine
from trioq import DocumentInvalid, FaultyStorage, MemoryStorage
from trioq.core._engine import Role
from trioq.core._state import QueueState


def checkpoint_key(seq: int) -> str:
    return f"queue/checkpoint/{seq:020d}.json"


async def test_a_log_standby_converts_a_format_1_queue_when_its_leader_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    recorder = Recorder(inner)
    old = Watched(engine(FaultyStorage(recorder), "a", layout="document"))
    new = Watched(engine(FaultyStorage(recorder), "b", layout="log"))
    async with trio.open_nursery() as nursery:
        await nursery.start(old.run)
        for name in ("x", "y", "z"):
            await old.engine.enqueue(job(name))
        (running,) = await old.engine.claim("w1")
        await trio.sleep_until(0.25)
        assert await nursery.start(new.run) is Role.STANDBY  # on the format-1 document
        await trio.sleep_until(5.0)
        assert not new.engine.is_leader  # a live leader is left alone
        document = inner.peek(KEY)
        assert document is not None
        assert document.data.startswith(b'{"format":"trioq.queue","formatVersion":1')
        old.engine.stop()  # a release: the standby takes over at its next poll
        with trio.fail_after(5):
            await new.engine.wait_leader()
        assert new.engine.epoch == 2
        marker = inner.peek(KEY)
        assert marker is not None
        assert marker.data == MARKER
        # the document the takeover wrote is the checkpoint of its seq
        seq = stored(inner).seq
        checkpoint = inner.peek(checkpoint_key(seq))
        assert checkpoint is not None
        converted = QueueState.decode(checkpoint.data)
        assert sorted(converted.jobs) == ["x", "y", "z"]
        assert converted.leader is not None
        assert (converted.leader.broker_id, converted.leader.epoch) == ("b", 2)
        assert converted.jobs[running.id].status == "in_progress"  # its lease renewed
        # and the log goes on from there
        await new.engine.enqueue(job("after"))
        assert inner.peek(log_key(seq + 1)) is not None
        assert sorted(stored(inner).jobs) == ["after", "x", "y", "z"]
        await new.engine.complete(running.id, "w1", attempt=running.attempt)

        # a broker still on the document layout refuses the marker and writes nothing
        keys = inner.keys()
        stale = engine(inner, "a", layout="document")
        with pytest.raises(DocumentInvalid, match="--layout log"):
            await stale.run()
        assert inner.keys() == keys
        # restarted on the log layout, it stands by on the log
        again = Watched(engine(inner, "a", layout="log"))
        assert await nursery.start(again.run) is Role.STANDBY
        assert again.engine.leader_url == "http://b"
        new.engine.stop()
        with trio.fail_after(5):
            await again.engine.wait_leader()
        assert sorted(stored(inner).jobs) == sorted({"after", "x", "y", "z"} - {running.id})
        again.engine.stop()
    check_history(recorder.landed)


async def test_a_conversion_cut_short_is_finished_by_a_later_takeover_and_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    old = engine(inner, "a", layout="document")
    async with trio.open_nursery() as nursery:
        await nursery.start(old.run)
        await old.enqueue(job("x"))
        old.stop()
    storage = FaultyStorage(inner)
    # the checkpoint's create fails (all three tries): the conversion stops after the
    # document's takeover (epoch 2), leaving a format-1 document led by "b"; the
    # election tries again at once (a broker's own lease is an earlier life of it)
    storage.inject("error", ops=["create"], count=3)
    new = Watched(engine(storage, "b", layout="log"))
    async with trio.open_nursery() as nursery:
        await nursery.start(new.run)
        assert new.engine.is_leader
        assert new.engine.epoch == 3  # the second takeover converted
        assert storage.injected["error"] == 3
        marker = inner.peek(KEY)
        assert marker is not None
        assert marker.data == MARKER
        # seq 1 created the document, 2 the job, 3 the release, 4 and 5 the takeovers
        assert inner.keys("queue/checkpoint/") == [checkpoint_key(5)]
        await new.engine.enqueue(job("y"))
        assert sorted(stored(inner).jobs) == ["x", "y"]
        new.engine.stop()
    assert new.error is None
