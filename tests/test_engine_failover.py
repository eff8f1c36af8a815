"""Two engines on one store: election, fencing and failover.

Most tests run in virtual time (``autojump_clock``) over one shared
:class:`~trioq.MemoryStorage` seen through a :class:`Recorder` (every landed write is
logged) and, per engine, a :class:`~trioq.FaultyStorage` that can cut that engine off
the store. A crash in virtual time is a cancellation of the engine's run scope just
after its storage was cut off, so that its shielded last commit reaches nothing.

Timeline of the virtual-time tests (see ``make_engine``): "a" starts at 0 and leads;
"b" starts at 0.25 and stands by, polling the document's version every second (1.25,
2.25, ...); the test goes on at 0.5. "a" commits at least every 3 s (an empty commit
3 s after the last one started) and at most every 50 ms, so a test's first commits
come at 0.5, 0.55, ... and never at the same instant as a poll of "b". "b" calls
the lease stale 10 s after the poll that saw the last change. The storage has no
latency unless a test adds some, so these times are exact.

The last tests run real processes: ``_engine_child.py`` leads on a
:class:`~trioq.FileStorage` directory and is killed (SIGKILL), stopped (SIGTERM) or
frozen, while an engine in the test process stands by on the same directory.
"""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from test_engine import (
    _LAYOUT,
    KEY,
    Recorder,
    check_history,
    commit_op,
    job,
    layout,  # noqa: F401  (the fixture: each test runs on both layouts)
    make_engine,
    stored,
)
from trioq import (
    DocumentInvalid,
    FaultyStorage,
    FileStorage,
    MemoryStorage,
    NotLeader,
    QueueFull,
    StorageUnavailable,
    Versioned,
)
from trioq.core._config import EngineConfig
from trioq.core._election import Sighting
from trioq.core._engine import Engine, Role
from trioq.core._state import QueueState

B_STARTS = 0.25
TEST_STARTS = 0.5


@dataclass
class Running:
    """An engine running in its own cancel scope; ``ended`` is set when run returns."""

    engine: Engine
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ended: trio.Event = field(default_factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[Role] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                await self.engine.run(task_status=task_status)
        finally:
            self.ended.set()


async def launch(nursery: trio.Nursery, engine: Engine) -> Running:
    running = Running(engine)
    await nursery.start(running.run)
    return running


@dataclass
class Pair:
    """Engines "a" and "b", each behind its own FaultyStorage over one Recorder."""

    inner: MemoryStorage
    recorder: Recorder
    storage_a: FaultyStorage
    storage_b: FaultyStorage
    a: Running
    b: Running


async def start_pair(nursery: trio.Nursery) -> Pair:
    inner = MemoryStorage()
    recorder = Recorder(inner)
    storage_a, storage_b = FaultyStorage(recorder), FaultyStorage(recorder)
    a = await launch(nursery, make_engine(storage_a, "a"))
    assert a.engine.role is Role.LEADER
    await trio.sleep_until(B_STARTS)
    b = await launch(nursery, make_engine(storage_b, "b", seed=1))
    assert b.engine.role is Role.STANDBY
    await trio.sleep_until(TEST_STARTS)
    return Pair(inner, recorder, storage_a, storage_b, a, b)


async def leads(engine: Engine) -> None:
    """Wait until ``engine`` leads; fail (in virtual time) if it never does."""
    with trio.fail_after(60):
        await engine.wait_leader()


async def enqueue_all(engine: Engine, ids: list[str]) -> None:
    for job_id in ids:
        await engine.enqueue(job(job_id))


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n}" for n in range(count)]


def writers_after(pair: Pair, at: float) -> set[str]:
    return {w.broker for w in pair.recorder.landed if w.at > at}


async def first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of ``waits`` returns (the others are cancelled)."""
    async with trio.open_nursery() as nursery:

        async def one(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(one, wait)


async def test_a_standby_refuses_mutations_and_names_the_leader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        pair = await start_pair(nursery)
        standby = pair.b.engine
        assert not standby.is_leader
        assert standby.epoch == 1
        assert standby.leader_url == "http://a"
        got = pair.inner.peek(KEY)
        assert got is not None
        if _LAYOUT[0] == "document":
            assert standby.observed_version == got.version
        else:  # the number of the last log record
            assert standby.observed_version == str(stored(pair.inner).seq)
        with pytest.raises(NotLeader) as caught:
            await standby.enqueue(job("x"))
        assert caught.value.leader == "http://a"
        with pytest.raises(NotLeader):
            await standby.claim("w", wait=5)
        await trio.sleep(20)  # a live leader is never taken over
        assert not standby.is_leader
        assert writers_after(pair, 0.0) == {"a"}
        pair.a.engine.stop()
        pair.b.engine.stop()


async def test_two_engines_starting_together_elect_one_leader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder(MemoryStorage(latency=0.01))
    engines = [make_engine(recorder, name) for name in "ab"]
    roles: dict[str, Role] = {}

    async def run(engine: Engine) -> None:
        roles[engine.broker_id] = await nursery.start(engine.run)

    async with trio.open_nursery() as nursery:
        for engine in engines:
            nursery.start_soon(run, engine)
        await trio.sleep(1)
        assert sorted(roles.values(), key=lambda r: r.value) == [Role.LEADER, Role.STANDBY]
        for engine in engines:
            engine.stop()
    assert len(recorder.landed) == 2  # one create, one release
    check_history(recorder.landed)


@pytest.mark.parametrize("how", ["stop", "cancel"])
async def test_after_a_graceful_stop_the_standby_takes_over_at_its_next_poll(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        pair = await start_pair(nursery)
        a, b = pair.a.engine, pair.b.engine
        acked = ids("a", 20)
        await enqueue_all(a, acked)
        await trio.sleep_until(7.0)
        if how == "stop":
            a.stop()
        else:
            pair.a.scope.cancel()  # its shielded last commit releases the lease
        await pair.a.ended.wait()
        assert trio.current_time() == 7.0
        assert pair.recorder.landed[-1].released
        await leads(b)
        assert trio.current_time() == 7.25  # its next poll, not the lease timeout
        assert b.epoch == 2
        assert b.state is not None
        assert set(acked) <= set(b.state.jobs)
        await enqueue_all(b, ["b0"])
        b.stop()
    check_history(pair.recorder.landed)
    assert set(acked) | {"b0"} == set(stored(pair.inner).jobs)
    assert a.role is Role.STOPPED


async def test_after_a_crash_the_standby_takes_over_when_the_lease_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        pair = await start_pair(nursery)
        a, b = pair.a.engine, pair.b.engine
        acked = ids("a", 20)
        await enqueue_all(a, acked)
        await trio.sleep_until(7.0)
        lost: list[BaseException] = []

        async def doomed() -> None:
            try:
                await a.enqueue(job("doomed"))
            except StorageUnavailable as exc:
                lost.append(exc)

        nursery.start_soon(doomed)
        pair.storage_a.inject("error", count=None)  # nothing more reaches the store
        await trio.testing.wait_all_tasks_blocked()
        pair.a.scope.cancel()
        await pair.a.ended.wait()
        assert len(lost) == 1
        # a committed the jobs at 0.5 ... 1.45, then (empty) at 4.45; b saw that
        # write at its poll at 5.25, so it calls the lease stale at 15.25
        with trio.move_on_at(15.2):
            await b.wait_leader()
        assert not b.is_leader
        await leads(b)
        assert trio.current_time() == 15.25
        assert b.epoch == 2
        assert b.state is not None
        assert set(b.state.jobs) == set(acked)
        b.stop()
    check_history(pair.recorder.landed)
    assert writers_after(pair, 5.0) == {"b"}
    assert set(stored(pair.inner).jobs) == set(acked)


async def test_a_broker_restarted_with_its_id_takes_its_lease_back_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        pair = await start_pair(nursery)
        await enqueue_all(pair.a.engine, ["a0"])
        await trio.sleep_until(7.0)
        pair.storage_a.inject("error", count=None)
        pair.a.scope.cancel()
        await pair.a.ended.wait()
        await trio.sleep_until(8.0)
        again = await launch(nursery, make_engine(pair.inner, "a"))
        assert again.engine.is_leader
        assert again.engine.epoch == 2
        await trio.sleep(20)  # it leads on; the standby stays a standby
        assert not pair.b.engine.is_leader
        again.engine.stop()
        pair.b.engine.stop()
    check_history(pair.recorder.landed)
    assert stored(pair.inner).knows("a0")


async def test_a_restart_on_its_own_exclusive_url_takes_the_lease_back_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # a broker that bound the URL the document names (new id, same address) knows
    # the previous holder is gone; without exclusive_url it waits out the lease
    async with trio.open_nursery() as nursery:
        pair = await start_pair(nursery)
        await enqueue_all(pair.a.engine, ["a0"])
        await trio.sleep_until(7.0)
        pair.storage_a.inject("error", count=None)
        pair.a.scope.cancel()
        await pair.a.ended.wait()
        await trio.sleep_until(8.0)
        polite = make_engine(pair.inner, "a-reborn-1", url=pair.a.engine.url)
        first = await launch(nursery, polite)
        assert not first.engine.is_leader
        first.engine.stop()
        await first.ended.wait()
        reborn = make_engine(pair.inner, "a-reborn-2", url=pair.a.engine.url, exclusive_url=True)
        again = await launch(nursery, reborn)
        assert again.engine.is_leader
        assert again.engine.epoch == 2
        assert trio.current_time() < 8.1
        again.engine.stop()
        pair.b.engine.stop()
    check_history(pair.recorder.landed)
    assert stored(pair.inner).knows("a0")


async def test_a_forced_takeover_fences_the_old_leader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        pair = await start_pair(nursery)
        a, b = pair.a.engine, pair.b.engine
        await enqueue_all(a, ["a0", "a1"])  # at 0.5, 0.55; then a commits at 3.55, 6.55
        await trio.sleep_until(7.5)
        b.request_takeover(b.observed_version)  # the version b saw at 7.25
        await leads(b)
        assert trio.current_time() == 7.5
        assert b.epoch == 2
        assert a.is_leader  # a does not know yet
        refused: dict[str, NotLeader] = {}

        async def refused_enqueue(job_id: str) -> None:
            try:
                await a.enqueue(job(job_id))
            except NotLeader as exc:
                refused[job_id] = exc

        await trio.sleep_until(8.0)
        pair.storage_a.inject("latency", ops=[commit_op()], delay=0.01)
        nursery.start_soon(refused_enqueue, "x0")  # its commit conflicts
        await trio.sleep(0.005)
        nursery.start_soon(refused_enqueue, "x1")  # queued behind it
        await trio.sleep_until(8.1)
        assert set(refused) == {"x0", "x1"}
        assert {exc.leader for exc in refused.values()} == {"http://b"}
        assert a.role is Role.STANDBY
        assert a.leader_url == "http://b"
        await enqueue_all(b, ["b0"])
        # b stops gracefully: a, a standby again, takes over at its next poll
        # (a stepped down at 8.01; it polls at 9.01, 10.01, ...)
        await trio.sleep_until(9.5)
        b.stop()
        await leads(a)
        assert trio.current_time() == pytest.approx(10.01)
        assert a.epoch == 3
        assert a.state is not None
        assert set(a.state.jobs) == {"a0", "a1", "b0"}
        a.stop()
    check_history(pair.recorder.landed)
    assert [(w.broker, w.epoch) for w in pair.recorder.landed if w.at >= 7.0] == [
        ("b", 2),
        ("b", 2),
        ("b", 2),
        ("a", 3),
        ("a", 3),
    ]


async def test_a_takeover_request_for_another_version_is_ignored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        pair = await start_pair(nursery)
        b = pair.b.engine
        await trio.sleep_until(7.0)
        b.request_takeover("some older version")
        await trio.sleep_until(8.0)
        assert not b.is_leader
        b.request_takeover(None)  # unconditional
        await leads(b)
        assert trio.current_time() == 8.0
        pair.a.engine.stop()
        b.stop()
    check_history(pair.recorder.landed)


async def test_a_partitioned_leader_is_fenced_and_steps_down_without_writing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        pair = await start_pair(nursery)
        a, b = pair.a.engine, pair.b.engine
        await enqueue_all(a, ["a0"])  # at 0.5; then a commits at 3.5, 6.5
        await trio.sleep_until(7.0)
        pair.storage_a.inject("error", count=None)  # a cannot reach the store
        await trio.sleep_until(10.0)
        with pytest.raises(StorageUnavailable, match="cannot reload"):
            await a.enqueue(job("unreachable"))
        assert a.is_leader  # a keeps trying; it cannot know better
        await leads(b)
        assert trio.current_time() == 17.25  # b saw a's last write at 7.25
        await enqueue_all(b, ["b0"])
        await trio.sleep_until(18.0)
        pair.storage_a.clear()  # the partition heals
        with pytest.raises(NotLeader) as caught:
            await a.enqueue(job("too late"))
        assert caught.value.leader == "http://b"
        assert a.role is Role.STANDBY
        assert trio.current_time() == 18.0
        b.stop()
        await leads(a)  # and a takes over again after b's graceful stop
        a.stop()
    check_history(pair.recorder.landed)
    assert writers_after(pair, 6.5) == {"b", "a"}
    assert [w.broker for w in pair.recorder.landed if 6.5 < w.at < 18.5] == ["b", "b", "b"]
    final = stored(pair.inner)
    assert sorted(final.jobs) == ["a0", "b0"]


async def test_a_standby_that_cannot_see_the_store_does_not_take_over_a_live_leader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        pair = await start_pair(nursery)
        pair.storage_b.inject("error", count=None)
        await trio.sleep_until(30.0)
        pair.storage_b.clear()
        await trio.sleep_until(45.0)
        assert not pair.b.engine.is_leader
        assert writers_after(pair, 0.0) == {"a"}
        pair.a.engine.stop()
        pair.b.engine.stop()


async def test_a_takeover_that_fails_after_a_release_is_retried_at_the_next_poll(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        pair = await start_pair(nursery)
        await enqueue_all(pair.a.engine, ["a0"])
        await trio.sleep_until(7.0)
        pair.storage_b.inject("error", ops=[commit_op()])  # b's first takeover write fails
        pair.a.engine.stop()
        await leads(pair.b.engine)
        assert trio.current_time() == 8.25  # not 17.25, the lease timeout
        pair.b.engine.stop()
    check_history(pair.recorder.landed)


@pytest.mark.document_only
async def test_neither_engine_overwrites_a_document_it_cannot_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    engines = [make_engine(inner, name) for name in "ab"]
    errors: dict[str, DocumentInvalid] = {}

    async def run(engine: Engine, *, task_status: trio.TaskStatus[Role]) -> None:
        try:
            await engine.run(task_status=task_status)
        except DocumentInvalid as exc:
            errors[engine.broker_id] = exc

    async with trio.open_nursery() as nursery:
        for engine in engines:
            await nursery.start(run, engine)
        await trio.sleep_until(TEST_STARTS)
        got = inner.peek(KEY)
        assert got is not None
        damaged = got.data.replace(b'"formatVersion":1', b'"formatVersion":99')
        version = await inner.write(KEY, damaged, if_match=got.version)
        await trio.sleep(30)  # the leader's heartbeat, the standby's polls
        assert inner.peek(KEY) == Versioned(damaged, version)
    name = f"{KEY} in {inner.describe()} has format version 99"
    assert {broker: str(exc).startswith(name) for broker, exc in errors.items()} == {
        "a": True,
        "b": True,
    }
    assert [engine.role for engine in engines] == [Role.STOPPED, Role.STOPPED]


@pytest.mark.parametrize("seed", range(3))
async def test_random_failovers_under_faults_lose_no_acknowledged_mutation(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    rng = random.Random(seed)
    inner = MemoryStorage()
    recorder = Recorder(inner)
    storages = {
        name: FaultyStorage(recorder, seed=10 * seed + n, latency=(0.0, 0.02))
        for n, name in enumerate("ab")
    }
    running: dict[str, Running] = {}
    acked: set[str] = set()
    completed: set[str] = set()
    rates = 0.03
    events: list[str] = []
    calm = trio.Event()

    def set_rates(storage: FaultyStorage, rate: float) -> None:
        storage.conflict_rate = storage.error_rate = rate
        storage.ambiguous_write_rate = storage.ambiguous_lost_rate = rate

    async def start_engine(name: str) -> None:
        storage = storages[name]
        storage.clear()
        set_rates(storage, 0.0)  # elections are not what this test is about
        engine = make_engine(storage, name, seed=rng.randrange(1 << 30))
        running[name] = await launch(nursery, engine)
        set_rates(storage, rates)

    def leaders() -> list[Engine]:
        return [r.engine for r in running.values() if r.engine.is_leader]

    async def true_leader() -> Engine:
        """The engine the stored document names (one that was fenced may still
        believe it leads until its next commit): waits for the writes and the
        elections that settle it."""
        try:
            with trio.fail_after(30):
                while True:
                    leader = stored(inner).leader
                    for engine in leaders():
                        if leader and (engine.broker_id, engine.epoch) == (
                            leader.broker_id,
                            leader.epoch,
                        ):
                            return engine
                    electing = [
                        r.engine.wait_leader for r in running.values() if not r.engine.is_leader
                    ]
                    await first_of(recorder.next_write, *electing)
        except trio.TooSlowError:
            raise AssertionError(f"nobody leads: {events}") from None

    def any_engine() -> Engine:
        return (leaders() or [r.engine for r in running.values()])[0]

    async def producer(p: int) -> None:
        for k in itertools.count():
            if calm.is_set():
                return
            job_id = f"p{p}-{k}"
            try:
                await any_engine().enqueue(job(job_id))
            except (NotLeader, StorageUnavailable, QueueFull):
                pass
            else:
                acked.add(job_id)
            await trio.sleep(rng.uniform(0, 0.4))

    async def worker() -> None:
        while True:
            engine = any_engine()
            try:
                jobs = await engine.claim("w", wait=0.5)
                for claimed in jobs:
                    await engine.complete(claimed.id, "w", attempt=claimed.attempt)
                    completed.add(claimed.id)
            except (NotLeader, StorageUnavailable):
                await trio.sleep(0.1)

    async def chaos() -> None:
        plan = ["stop", "crash", "takeover", "partition"] * 2
        chaos_rng = random.Random(seed)
        chaos_rng.shuffle(plan)
        for action in plan:
            await trio.sleep(chaos_rng.uniform(2, 5))
            leader = await true_leader()
            name = leader.broker_id
            other = "b" if name == "a" else "a"
            events.append(f"{trio.current_time():.2f} {action} {name}")
            if action == "takeover":
                # a one-shot request: a storage fault at the wrong moment voids it
                running[other].engine.request_takeover()
            elif action == "partition":
                # long enough, or not, for the other engine to take over
                storages[name].inject("error", count=None)
                await trio.sleep(chaos_rng.uniform(1, 15))
                storages[name].clear()
            else:
                if action == "crash":
                    storages[name].inject("error", count=None)
                    running[name].scope.cancel()
                else:
                    leader.stop()
                await running[name].ended.wait()
                await trio.sleep(chaos_rng.uniform(0.5, 3))
                await start_engine(name)
        calm.set()

    async with trio.open_nursery() as nursery:
        await start_engine("a")
        await trio.sleep_until(0.25)
        await start_engine("b")
        async with trio.open_nursery() as work:
            work.start_soon(worker)
            async with trio.open_nursery() as busy:
                for p in range(3):
                    busy.start_soon(producer, p)
                busy.start_soon(chaos)
            for storage in storages.values():
                storage.clear()
                set_rates(storage, 0.0)
            await true_leader()
            await trio.sleep(5)  # the worker finishes what is queued
            work.cancel_scope.cancel()
        for r in running.values():
            r.engine.stop()

    # the lease did move on (each stop, crash and forced takeover moves it once,
    # unless a storage fault voided that takeover request)
    assert len({w.epoch for w in recorder.landed}) >= 4, events
    assert len(acked) > 200
    check_history(recorder.landed)
    final = stored(inner)
    assert final.leader is not None
    assert final.leader.released
    for job_id in acked:
        assert job_id in final.jobs or job_id in final.finished, (job_id, events)
    for job_id in completed:
        finished = final.finished.get(job_id)
        assert finished is not None
        assert finished.outcome == "completed"


# -- real processes on FileStorage -----------------------------------------------------

CHILD = Path(__file__).with_name("_engine_child.py")
HEARTBEAT_MS = 200
TIMEOUT_MS = 1000
SAFETY_NET = 30.0
"""Seconds of real time after which a wait fails the test: a bound for a hung test,
never what a test measures (the real-process tests wait for events, then check the
engine's own account of why it took over)."""


def last_sighting(engine: Engine) -> Sighting:
    """What a standby last saw of the document before it took over (white box)."""
    sighting = engine._campaign.sighting
    assert sighting is not None
    assert sighting.leader is not None
    return sighting


def real_engine(directory: Path, broker_id: str, timeout_ms: int = TIMEOUT_MS) -> Engine:
    """The in-test engine: the child's timings, and the real wall clock."""
    config = EngineConfig(
        group_commit_interval=0.010,
        broker_heartbeat_interval=HEARTBEAT_MS / 1000,
        broker_heartbeat_timeout=timeout_ms / 1000,
        standby_poll_interval=0.050,
        layout=_LAYOUT[0],
    )
    return Engine(
        FileStorage(directory), broker_id=broker_id, url=f"http://{broker_id}", config=config
    )


class Child:
    """``_engine_child.py`` as a subprocess; :meth:`pump` collects its output lines."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.closed = False
        self._changed = trio.Event()

    @classmethod
    async def spawn(
        cls, nursery: trio.Nursery, directory: Path, broker_id: str, timeout_ms: int = TIMEOUT_MS
    ) -> Child:
        process = await trio.lowlevel.open_process(
            [
                sys.executable,
                str(CHILD),
                str(directory),
                broker_id,
                str(HEARTBEAT_MS),
                str(timeout_ms),
                _LAYOUT[0],
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        child = cls(process)
        nursery.start_soon(child.pump)
        return child

    async def pump(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines += [line.decode() for line in complete]
            self._changed.set()
            self._changed = trio.Event()
        self.closed = True
        self._changed.set()

    async def wait_for(self, condition: Callable[[], bool], within: float = SAFETY_NET) -> None:
        with trio.fail_after(within):
            while not condition():
                assert not self.closed, self.lines[-5:]
                await self._changed.wait()

    async def wait_line(self, prefix: str, within: float = SAFETY_NET) -> str:
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self.lines if line.startswith(prefix)]
            return bool(found)

        await self.wait_for(seen, within)
        return found[0]

    def with_prefix(self, prefix: str) -> list[str]:
        return [line.split()[1] for line in self.lines if line.startswith(prefix)]

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")

    async def finish(self) -> None:
        """Wait for the process to end and its output to be read."""
        with trio.fail_after(SAFETY_NET):
            await self.process.wait()
            await self.wait_for(lambda: self.closed)

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


async def read_disk(directory: Path) -> QueueState:
    """The state stored in ``directory`` (either layout), loaded as a broker would."""
    engine = make_engine(FileStorage(directory), "reader")
    state = await engine.layout.reload(lambda leader: True)
    assert state[1] is not None
    return state[1].state


async def test_real_processes_sigkilled_leader_is_taken_over_after_the_timeout(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        child = await Child.spawn(nursery, tmp_path, "child")
        try:
            assert await child.wait_line("role ") == "role leader 1"
            standby = real_engine(tmp_path, "test")
            assert await nursery.start(standby.run) is Role.STANDBY
            await child.wait_for(lambda: len(child.with_prefix("acked")) >= 50)
            child.process.send_signal(signal.SIGKILL)
            await child.finish()
            acked = child.with_prefix("acked")
            assert acked
            with trio.fail_after(SAFETY_NET):
                await standby.wait_leader()
            # it took over because the document stood still for the lease timeout
            # (1 s), measured on its own clock from the poll that last saw it change:
            # the dead leader's lease, never released
            seen = last_sighting(standby)
            assert (seen.leader.broker_id, seen.leader.released) == ("child", False)
            assert trio.current_time() - seen.since >= TIMEOUT_MS / 1000
            assert standby.epoch == 2
            assert standby.state is not None
            assert set(acked) <= set(standby.state.jobs)
            await standby.enqueue(job("after"))
            standby.stop()
        finally:
            child.kill()
    on_disk = await read_disk(tmp_path)
    assert set(acked) | {"after"} <= set(on_disk.jobs)
    assert on_disk.leader is not None
    assert (on_disk.leader.broker_id, on_disk.leader.epoch) == ("test", 2)


async def test_real_processes_sigterm_releases_the_lease_for_an_immediate_takeover(
    tmp_path: Path,
) -> None:
    timeout_ms = 5000  # long, so that "at once" cannot be the lease timeout
    async with trio.open_nursery() as nursery:
        child = await Child.spawn(nursery, tmp_path, "child", timeout_ms)
        try:
            assert await child.wait_line("role ") == "role leader 1"
            standby = real_engine(tmp_path, "test", timeout_ms)
            assert await nursery.start(standby.run) is Role.STANDBY
            await child.wait_for(lambda: len(child.with_prefix("acked")) >= 50)
            child.process.send_signal(signal.SIGTERM)
            await child.wait_line("stopped")
            await child.finish()
            assert child.process.returncode == 0
            with trio.fail_after(SAFETY_NET):
                await standby.wait_leader()
            # it took over because the child released its lease, at the poll that saw
            # the release, not once the lease (5 s) timed out
            seen = last_sighting(standby)
            assert (seen.leader.broker_id, seen.leader.released) == ("child", True)
            assert trio.current_time() - seen.since < timeout_ms / 1000
            assert standby.epoch == 2
            acked = child.with_prefix("acked")
            assert standby.state is not None
            assert set(acked) <= set(standby.state.jobs)
            standby.stop()
        finally:
            child.kill()
    assert set(acked) <= set((await read_disk(tmp_path)).jobs)


async def test_real_processes_a_frozen_leader_is_fenced_when_it_wakes(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        child = await Child.spawn(nursery, tmp_path, "child")
        try:
            assert await child.wait_line("role ") == "role leader 1"
            standby = real_engine(tmp_path, "test")
            assert await nursery.start(standby.run) is Role.STANDBY
            await child.wait_for(lambda: len(child.with_prefix("acked")) >= 20)
            await child.send("freeze")
            await child.wait_line("frozen")
            with trio.fail_after(SAFETY_NET):
                await standby.wait_leader()
            seen = last_sighting(standby)
            assert (seen.leader.broker_id, seen.leader.released) == ("child", False)
            await standby.enqueue(job("during"))
            await child.send("thaw")
            # the child's commit that waited at the door conflicts: it steps down
            await child.wait_line("failed ")
            await standby.enqueue(job("after"))
            assert standby.is_leader
            assert standby.metrics["conflicts"] == 0
            assert standby.metrics["stepDowns"] == 0
        finally:
            child.kill()
        await child.finish()
        standby.stop()
    acked = child.with_prefix("acked")
    failed = child.with_prefix("failed")
    assert acked
    assert failed
    assert all(line.endswith(" NotLeader") for line in child.lines if line.startswith("failed "))
    on_disk = await read_disk(tmp_path)
    assert set(acked) | {"during", "after"} <= set(on_disk.jobs)
    assert not set(failed) & set(on_disk.jobs)
    assert on_disk.leader is not None
    assert (on_disk.leader.broker_id, on_disk.leader.epoch) == ("test", 2)
