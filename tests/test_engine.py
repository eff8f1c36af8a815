"""The engine's group commit loop, one engine at a time, in virtual time.

Every test drives an :class:`~trioq.core._engine.Engine` directly under
``MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock``) over a
:class:`~trioq.MemoryStorage`, usually through a :class:`Recorder` that logs every
write that landed and, where faults are wanted, a :class:`~trioq.FaultyStorage`
on top of it. Times are asserted exactly (``pytest.approx`` only absorbs float
sums). Two engines on one store are in ``test_engine_failover.py``, which reuses
the helpers defined here.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from trioq import (
    BrokerProtocolError,
    DocumentInvalid,
    FaultyStorage,
    JobNotFound,
    LeaseLost,
    MemoryStorage,
    NotLeader,
    QueueFull,
    Storage,
    StorageUnavailable,
    Versioned,
    WriteOutcomeUnknown,
)
from trioq._backoff import backoff_delay
from trioq.core._changes import apply_record
from trioq.core._config import EngineConfig
from trioq.core._engine import Engine, Role
from trioq.core._pending import ClaimRequest, Mutation, PendingBook, Reader, Stage
from trioq.core._state import (
    EnqueueResult,
    JobReport,
    LeaderInfo,
    Limits,
    NewJob,
    QueueState,
    Reports,
)
from trioq.storage._faulty import FaultKind

KEY = "queue.json"
LAYOUTS = ("document", "log")
_LAYOUT = ["document"]
"""The layout ``make_engine`` gives engines (set by the ``layout`` fixture)."""


@pytest.fixture(autouse=True, params=LAYOUTS)
def layout(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs on both layouts, except those marked ``document_only``
    (they write or read the single document themselves)."""
    name: str = request.param
    if name != "document" and request.node.get_closest_marker("document_only"):
        pytest.skip("handles the single document itself")
    _LAYOUT[0] = name
    try:
        yield name
    finally:
        _LAYOUT[0] = "document"


def log_key(seq: int) -> str:
    return f"queue/log/{seq:020d}.json"


def commit_op() -> FaultKind:
    """The storage operation of a commit: a write over the document, or the create
    of the next log record."""
    return "write" if _LAYOUT[0] == "document" else "create"  # type: ignore[return-value]


def commit_calls(storage: FaultyStorage) -> int:
    """Commit writes made through ``storage`` after the creation of the queue."""
    if _LAYOUT[0] == "document":
        return storage.calls["write"]
    return storage.calls["create"] - 2  # the marker and record 1


def creation_calls() -> int:
    """Storage calls of an election that creates the queue: read, create (the log
    layout creates its marker, then record 1)."""
    return 2 if _LAYOUT[0] == "document" else 3


WALL0 = 1_700_000_000_000
"""The stored (wall-clock) time at virtual time 0, in milliseconds."""


def wall_clock() -> int:
    """Stored times derived from trio's (virtual) clock."""
    return WALL0 + round(trio.current_time() * 1000)


def make_engine(
    storage: Storage,
    broker_id: str = "a",
    *,
    limits: Limits | None = None,
    seed: int = 0,
    url: str | None = None,
    exclusive_url: bool = False,
    create: bool = True,
    layout: str | None = None,
    rng: random.Random | None = None,
    **timings: float,
) -> Engine:
    """An engine with round test timings (overridable by ``EngineConfig`` field name):
    50 ms group commit interval, 3 s lease heartbeat, 10 s lease timeout, 1 s standby poll.
    Its URL is ``http://BROKER_ID`` unless ``url`` says otherwise; its layout is the
    ``layout`` fixture's unless ``layout`` says otherwise."""
    config = EngineConfig(
        group_commit_interval=0.05,
        broker_heartbeat_interval=3.0,
        broker_heartbeat_timeout=10.0,
        standby_poll_interval=1.0,
        layout=_LAYOUT[0] if layout is None else layout,
        checkpoint_in_thread=False,  # exact virtual time (see EngineConfig)
    )
    for name, value in timings.items():
        assert hasattr(config, name), name
        setattr(config, name, value)
    return Engine(
        storage,
        key=KEY,
        broker_id=broker_id,
        url=f"http://{broker_id}" if url is None else url,
        exclusive_url=exclusive_url,
        create=create,
        config=config,
        limits=limits,
        wall_clock=wall_clock,
        rng=random.Random(seed) if rng is None else rng,
    )


def write_retry_waits(engine: Engine, count: int) -> list[float]:
    """The next ``count`` waits between write attempts of ``engine``'s commits: its
    jittered backoff replayed from a copy of its seeded jitter stream (white box), so
    retry times stay exact in virtual time. Each lies in the jittered range, half to
    all of the nominal doubling delay."""
    twin = random.Random()
    twin.setstate(engine._committer.retry_rng.getstate())
    base, cap = engine.config.write_retry_delay, engine.config.broker_heartbeat_interval
    waits = [backoff_delay(n, base=base, cap=cap, rng=twin) for n in range(1, count + 1)]
    for n, wait in enumerate(waits, 1):
        nominal = min(cap, base * 2 ** (n - 1))
        assert nominal / 2 <= wait < nominal
    return waits


@dataclass(frozen=True)
class Landed:
    """One commit that landed on the store, and the header of what it wrote."""

    at: float
    version: str
    data: bytes
    seq: int
    epoch: int
    broker: str
    released: bool
    document: bytes
    """The whole state it stored, as a document (in the log layout: the state of the
    records that landed so far)."""

    def state(self) -> QueueState:
        return QueueState.decode(self.document)


class Recorder:
    """A storage wrapper that logs the writes made through it.

    ``calls`` holds the virtual time at which each ``write`` / ``create`` was made,
    ``landed`` every one that succeeded (with the time it returned). Put it under a
    :class:`~trioq.FaultyStorage` to log what really reached the store.
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.calls: list[float] = []
        self.landed: list[Landed] = []
        self._wrote = trio.Event()
        self._replica = QueueState()
        """The log layout's stored state, replayed from the records that landed."""

    def describe(self) -> str:
        return self.inner.describe()

    async def read(self, key: str) -> Versioned | None:
        return await self.inner.read(key)

    async def version(self, key: str) -> str | None:
        return await self.inner.version(key)

    async def write(self, key: str, data: bytes, *, if_match: str) -> str:
        self.calls.append(trio.current_time())
        version = await self.inner.write(key, data, if_match=if_match)
        self._landed(version, data)
        return version

    async def create(self, key: str, data: bytes) -> str:
        if key.startswith("queue/checkpoint/"):
            return await self.inner.create(key, data)  # a copy of the state, no commit
        if key != KEY or b'"layout":"log"' not in data:  # the marker is no commit
            self.calls.append(trio.current_time())
        version = await self.inner.create(key, data)
        self._landed(version, data)
        return version

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        return await self.inner.list_keys(prefix, start_after=start_after, limit=limit)

    async def delete_key(self, key: str) -> None:
        await self.inner.delete_key(key)

    async def next_write(self) -> None:
        """Wait until the next write lands."""
        await self._wrote.wait()

    def _landed(self, version: str, data: bytes) -> None:
        self._wrote.set()
        self._wrote = trio.Event()
        header = orjson.loads(data)
        if header.get("layout") == "log":
            return  # the log layout's marker: no commit
        if "ops" in header:  # a log record
            apply_record(self._replica, data, seq=self._replica.seq + 1)
            leader, document = header, self._replica.encode()
        else:  # a document: a log that follows (after a conversion) starts from it
            leader, document = header["leader"], data
            self._replica = QueueState.decode(data)
        self.landed.append(
            Landed(
                trio.current_time(),
                version,
                data,
                header["seq"],
                leader["epoch"],
                leader["brokerId"],
                leader["released"],
                document,
            )
        )


def check_history(landed: list[Landed]) -> None:
    """What "at no time do two leaders both commit" means for the stored history.

    Each landed write extends the one before it (seq + 1, which a CAS on a stale
    version could not produce); the epoch never goes back and rises by one only (a
    takeover); each epoch belongs to one broker; a released lease is followed by a
    takeover, never by another commit of the releasing leader.
    """
    owners: dict[int, str] = {}
    for write in landed:
        assert owners.setdefault(write.epoch, write.broker) == write.broker, write
    for before, after in itertools.pairwise(landed):
        assert after.seq == before.seq + 1, (before, after)
        assert after.epoch in (before.epoch, before.epoch + 1), (before, after)
        if before.released:
            assert after.epoch == before.epoch + 1, (before, after)


async def start(nursery: trio.Nursery, engine: Engine) -> trio.CancelScope:
    """Start ``engine.run`` in ``nursery`` inside a cancel scope of its own; returns
    the scope (cancelling it kills that engine only)."""
    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[Role] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await engine.run(task_status=task_status)

    await nursery.start(run)
    return scope


def stored(storage: MemoryStorage) -> QueueState:
    """The state stored in ``storage`` (either layout)."""
    got = storage.peek(KEY)
    assert got is not None
    if b'"layout":"log"' not in got.data:
        return QueueState.decode(got.data)
    checkpoints = storage.keys("queue/checkpoint/")
    state = QueueState()
    if checkpoints:  # the newest, then the records after it
        newest = storage.peek(checkpoints[-1])
        assert newest is not None
        state = QueueState.decode(newest.data)
    while (record := storage.peek(log_key(state.seq + 1))) is not None:
        apply_record(state, record.data, seq=state.seq + 1)
    return state


def job(job_id: str, **fields: Any) -> list[NewJob]:
    return [NewJob(payload={"id": job_id}, id=job_id, **fields)]


class Arrivals:
    """When the test handed the engine each mutation (call :meth:`note` right before
    the engine call: nothing between the two lets another task run)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def note(self) -> None:
        self.times.append(trio.current_time())


@dataclass
class Commit:
    start: float
    drained: int
    """How many arrivals had been handed to the engine when this commit drained its
    batch (the drain and the start of the commit happen without a checkpoint)."""
    end: float = math.nan
    wrote: bool = True
    """False for a batch that changed nothing and was answered without a write."""
    reloaded: bool = False
    """The commit re-read the document first (after a failed one)."""


def spy_commits(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, arrivals: Arrivals
) -> list[Commit]:
    """Record when each commit of ``engine`` starts and ends (white box: wraps the
    engine's private ``_commit``, which the commit loop calls right after draining)."""
    commits: list[Commit] = []
    original = engine._committer.commit

    async def spy(batch: list[Any], *, release: bool = False) -> bool:
        commit = Commit(trio.current_time(), len(arrivals.times))
        commit.reloaded = engine._committer.needs_reload
        wrote = True
        try:
            wrote = await original(batch, release=release)
            return wrote
        finally:
            commit.end = trio.current_time()
            commit.wrote = wrote
            commits.append(commit)

    monkeypatch.setattr(engine._committer, "commit", spy)
    return commits


def check_spacing(
    commits: list[Commit],
    arrivals: Arrivals,
    *,
    elected_at: float,
    interval: float,
    heartbeat: float,
) -> None:
    """The group commit rule, exactly: a commit starts as soon as a mutation is
    pending, no commit is in flight and the last one started an interval ago; with
    nothing pending, the leader commits (empty) one heartbeat interval after the
    last start, or when the last commit ends if it took longer. The election's write
    counts as the first commit."""
    previous = Commit(elected_at, 0, elected_at)
    drained = 0
    busy = elected_at
    """When the last commit, writing or not, ended: none starts before."""
    for commit in commits:
        if not commit.wrote:
            # answered without a write (claims that found nothing, rejected requests):
            # it consumed its arrivals but does not count for the spacing, and took no
            # time unless it re-read the document first (meanwhile arrivals wait)
            assert commit.end == commit.start or commit.reloaded
            drained = commit.drained
            busy = commit.end
            continue
        assert commit.start >= previous.start + interval - 1e-9, (previous, commit)
        ready = max(previous.start + interval, previous.end, busy)
        if commit.drained > drained:
            first = arrivals.times[drained]
            assert commit.start == pytest.approx(max(ready, first), abs=1e-9), (previous, commit)
        else:
            # a heartbeat that fell due while a slow commit (retried under faults) was
            # in flight starts as soon as that commit ends
            due = max(previous.start + heartbeat, previous.end, busy)
            assert commit.start == pytest.approx(due, abs=1e-9), (previous, commit)
        previous = commit
        drained = commit.drained
        busy = commit.end


# -- election and document -------------------------------------------------------------


@pytest.mark.document_only
async def test_absent_document_is_created_and_the_engine_leads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = MemoryStorage()
    engine = make_engine(storage)
    async with trio.open_nursery() as nursery:
        role = await nursery.start(engine.run)
        assert role is Role.LEADER
        assert engine.is_leader
        assert engine.epoch == 1
        assert engine.leader_url == "http://a"
        got = storage.peek(KEY)
        assert got is not None
        assert got.data == engine.document
        header = orjson.loads(got.data)
        assert header["format"] == "trioq.queue"
        assert header["formatVersion"] == 1
        assert header["seq"] == 1
        assert header["leader"] == {
            "brokerId": "a",
            "url": "http://a",
            "epoch": 1,
            "leaseAt": WALL0,
            "released": False,
        }
        engine.stop()
    assert engine.role is Role.STOPPED
    # stop() waits for the interval after the election write like any commit
    assert stored(storage).leader == LeaderInfo("a", "http://a", 1, WALL0 + 50, released=True)
    with pytest.raises(NotLeader) as caught:
        await engine.enqueue(job("late"))
    assert caught.value.leader is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{not json", "is not valid JSON"),
        (b'{"hello": "world"}', "is not a trioq queue document"),
        (
            orjson.dumps({"format": "trioq.queue", "formatVersion": 2, "seq": 7}),
            "has format version 2",
        ),
        (
            orjson.dumps({"format": "trioq.queue", "formatVersion": 1, "seq": "seven"}),
            "is damaged",
        ),
    ],
)
async def test_a_document_it_cannot_read_is_never_overwritten(
    data: bytes, problem: str, autojump_clock: trio.testing.MockClock
) -> None:
    storage = MemoryStorage()
    version = await storage.create(KEY, data)
    engine = make_engine(storage)
    name = re.escape(f"{KEY} in {storage.describe()}")
    with pytest.raises(DocumentInvalid, match=f"^{name} {problem}"):
        await engine.run()
    assert engine.role is Role.STOPPED
    assert storage.peek(KEY) == Versioned(data, version)


@pytest.mark.document_only
async def test_a_leader_that_meets_a_damaged_document_stops_without_writing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = MemoryStorage()
    engine = make_engine(storage)
    outcome: list[BaseException] = []
    fatal: list[DocumentInvalid] = []

    async def run(*, task_status: trio.TaskStatus[Role] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await engine.run(task_status=task_status)
        except DocumentInvalid as exc:
            fatal.append(exc)

    async def enqueue() -> None:
        try:
            await engine.enqueue(job("x"))
        except NotLeader as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        got = storage.peek(KEY)
        assert got is not None
        # someone overwrites the document with garbage
        version = await storage.write(KEY, b"garbage", if_match=got.version)
        nursery.start_soon(enqueue)
    (error,) = fatal
    assert str(error).startswith(f"{KEY} in {storage.describe()} is not valid JSON")
    assert storage.peek(KEY) == Versioned(b"garbage", version)
    assert [type(exc) for exc in outcome] == [NotLeader]
    assert engine.role is Role.STOPPED


@pytest.mark.parametrize(("fault", "epoch"), [("ambiguous", 2), ("ambiguous_lost", 1)])
async def test_election_resolves_a_create_whose_outcome_is_unknown(
    fault: FaultKind, epoch: int, autojump_clock: trio.testing.MockClock
) -> None:
    # "ambiguous": the create landed but its answer was lost; the engine finds its
    # own document and takes it over (bumping the epoch). "ambiguous_lost": the
    # create never arrived; the engine creates the document again.
    recorder = Recorder(MemoryStorage())
    storage = FaultyStorage(recorder)
    storage.inject(fault, ops=["create"])
    engine = make_engine(storage)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(engine.run) is Role.LEADER
        # the log layout's first create is its marker, which is the same from every
        # broker: one that landed is simply kept
        assert engine.epoch == (1 if _LAYOUT[0] == "log" else epoch)
        await engine.enqueue(job("x"))
        engine.stop()
    check_history(recorder.landed)
    assert recorder.landed[-1].state().knows("x")


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("group_commit_interval", -0.01, "group commit interval must be >= 0"),
        ("broker_heartbeat_interval", 0.0, "heartbeat interval must be > 0"),
        ("broker_heartbeat_timeout", 3.0, r"\(3000 ms\) must be shorter than"),
        ("group_commit_interval", 10.0, "shorter than the broker heartbeat timeout"),
        ("standby_poll_interval", 0.0, "standby poll interval must be > 0"),
        ("write_retries", 0, "write retries must be >= 1"),
        ("write_retry_delay", -1.0, "must be >= 0"),
        ("shutdown_timeout", -1.0, "must be >= 0"),
        ("max_pending", 0, "max pending must be >= 1"),
    ],
)
def test_settings_that_cannot_work_are_refused(name: str, value: float, problem: str) -> None:
    config = EngineConfig()  # osqueue's defaults
    setattr(config, name, value)
    with pytest.raises(ValueError, match=problem):
        Engine(MemoryStorage(), config=config)


# -- group commit timing ---------------------------------------------------------------

SPACING_CASES = {
    # A mutation that finds the engine idle, with the last commit an interval ago,
    # is committed at once; one that arrives while a commit is in flight, or within
    # an interval of the last start, waits for both; an idle leader commits empty
    # every heartbeat interval (3 s); stop() commits once more.
    "fast store": (
        0.01,
        0.05,
        [(1.0, "A"), (1.005, "B"), (1.02, "C"), (1.2, "D"), (1.23, "E")],
        8.0,
        [0.01, 1.0, 1.05, 1.2, 1.25, 4.25, 7.25, 8.0],
        {"A": 1.01, "B": 1.06, "C": 1.06, "D": 1.21, "E": 1.26},
    ),
    # Writes slower than the interval: the commit in flight is what holds the next.
    "slow store": (
        0.08,
        0.05,
        [(1.0, "A"), (1.01, "B"), (1.09, "C"), (1.5, "D")],
        2.0,
        [0.08, 1.0, 1.08, 1.16, 1.5, 2.0],
        {"A": 1.08, "B": 1.16, "C": 1.24, "D": 1.58},
    ),
    # No interval: only a commit in flight makes a batch.
    "zero interval": (
        0.01,
        0.0,
        [(1.0, "A"), (1.001, "B"), (1.002, "C"), (1.05, "D")],
        2.0,
        [0.01, 1.0, 1.01, 1.05, 2.0],
        {"A": 1.01, "B": 1.02, "C": 1.02, "D": 1.06},
    ),
}


@pytest.mark.parametrize(
    ("latency", "interval", "arrivals", "stop_at", "writes", "answers"),
    list(SPACING_CASES.values()),
    ids=list(SPACING_CASES),
)
async def test_commit_spacing_follows_the_group_commit_rule_exactly(
    latency: float,
    interval: float,
    arrivals: list[tuple[float, str]],
    stop_at: float,
    writes: list[float],
    answers: dict[str, float],
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage(latency=latency)
    recorder = Recorder(inner)
    engine = make_engine(recorder, group_commit_interval=interval)
    answered: dict[str, float] = {}

    async def enqueue_at(at: float, job_id: str) -> None:
        await trio.sleep_until(at)
        await engine.enqueue(job(job_id))
        answered[job_id] = trio.current_time()
        # answered only once the commit that holds it is stored
        assert stored(inner).knows(job_id)

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        assert trio.current_time() == pytest.approx(creation_calls() * latency)
        for at, job_id in arrivals:
            nursery.start_soon(enqueue_at, at, job_id)
        await trio.sleep_until(stop_at)
        engine.stop()
    if _LAYOUT[0] == "log":  # record 1 is created after the marker
        writes = [writes[0] + latency, *writes[1:]]
    assert recorder.calls == pytest.approx(writes)
    assert answered == pytest.approx(answers)
    check_history(recorder.landed)
    assert recorder.landed[-1].released
    assert sorted(stored(inner).jobs) == sorted(answers)
    assert engine.metrics["commits"] == len(writes) - 1
    assert engine.metrics["mutations"] == len(answers)


async def test_an_idle_leader_refreshes_its_lease_every_heartbeat_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder(MemoryStorage())
    engine = make_engine(recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await trio.sleep_until(10.0)
        engine.stop()
    assert [w.at for w in recorder.landed] == pytest.approx([0.0, 3.0, 6.0, 9.0, 10.0])
    assert [w.seq for w in recorder.landed] == [1, 2, 3, 4, 5]
    leases = [w.state().leader for w in recorder.landed]
    assert [leader.lease_at for leader in leases if leader] == [
        WALL0,
        WALL0 + 3000,
        WALL0 + 6000,
        WALL0 + 9000,
        WALL0 + 10000,
    ]
    assert [w.released for w in recorder.landed] == [False] * 4 + [True]
    assert engine.metrics["commits"] == 4
    assert engine.metrics["mutations"] == 0


async def test_mutations_beyond_max_pending_are_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = make_engine(MemoryStorage(latency=1.0), max_pending=2)
    results: list[str] = []

    async def enqueue(job_id: str) -> None:
        await engine.enqueue(job(job_id))
        results.append(job_id)

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        nursery.start_soon(enqueue, "a")
        await trio.sleep(0.1)  # "a" is being written
        nursery.start_soon(enqueue, "b")
        nursery.start_soon(enqueue, "c")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(QueueFull, match="2 mutations pending"):
            await engine.enqueue(job("d"))
        await trio.sleep(5)
        assert sorted(results) == ["a", "b", "c"]
        await engine.enqueue(job("e"))  # the count went down again
        engine.stop()


# -- faults on the store ---------------------------------------------------------------


async def test_an_ambiguous_write_that_landed_is_acknowledged_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    storage = FaultyStorage(inner)
    engine = make_engine(storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await trio.sleep_until(1.0)
        storage.inject("ambiguous", ops=[commit_op()])
        (result,) = await engine.enqueue([NewJob(payload="x")])
        assert trio.current_time() == 1.0
        assert commit_calls(storage) == 1  # read back, not written again
        assert list(stored(inner).jobs) == [result.id]
        assert engine.metrics["writeErrors"] == 1
        assert engine.metrics["failedBatches"] == 0
        engine.stop()


async def test_an_ambiguous_write_that_was_lost_is_written_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    storage = FaultyStorage(inner)
    engine = make_engine(storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        storage.inject("ambiguous_lost", ops=[commit_op()])
        await trio.sleep(1)
        (wait,) = write_retry_waits(engine, 1)
        (result,) = await engine.enqueue([NewJob(payload="x")])
        assert trio.current_time() == pytest.approx(1.0 + wait)  # one retry delay
        assert commit_calls(storage) == 1
        assert list(stored(inner).jobs) == [result.id]
        engine.stop()


async def test_an_unknown_outcome_that_cannot_be_read_back_fails_and_reloads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    storage = FaultyStorage(inner)
    engine = make_engine(storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        storage.inject("ambiguous", ops=[commit_op()])  # lands, answer lost
        storage.inject("error", ops=["read"])  # and the read-back fails
        with pytest.raises(StorageUnavailable, match="commit outcome unknown"):
            await engine.enqueue([NewJob(payload="x")])
        # it did land: one job "x"
        (landed,) = stored(inner).jobs.values()
        assert landed.payload == "x"
        reads = storage.calls["read"]
        await engine.enqueue([NewJob(payload="y")])
        # reloaded before committing: the document, or the marker, records 1 and 2
        # and a look for record 3
        assert storage.calls["read"] == reads + (1 if _LAYOUT[0] == "document" else 4)
        assert [j.payload for j in stored(inner).jobs.values()] == ["x", "y"]
        assert engine.state is not None
        assert [j.payload for j in engine.state.jobs.values()] == ["x", "y"]
        assert engine.is_leader
        engine.stop()


async def test_the_engine_keeps_serving_after_storage_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    storage = FaultyStorage(inner)
    engine = make_engine(storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.enqueue(job("before"))
        await trio.sleep_until(1.0)
        storage.inject("error", count=None)  # the store is down
        first, second = write_retry_waits(engine, 2)
        with pytest.raises(StorageUnavailable, match="could not be written"):
            await engine.enqueue(job("during"))
        # three attempts: at 1.0, after a wait of 50-100 ms, after one of 100-200 ms
        assert trio.current_time() == pytest.approx(1.0 + first + second)
        assert engine.metrics["writeErrors"] == 3
        with pytest.raises(StorageUnavailable, match="cannot reload"):
            await engine.enqueue(job("still down"))
        assert engine.is_leader
        storage.clear()
        await engine.enqueue(job("after"))
        assert sorted(stored(inner).jobs) == ["after", "before"]
        assert engine.state is not None
        assert sorted(engine.state.jobs) == ["after", "before"]
        assert engine.metrics["failedBatches"] == 1
        engine.stop()


@pytest.mark.document_only
async def test_a_conflict_with_a_new_epoch_fails_everything_pending_and_steps_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage(latency=0.01)
    recorder = Recorder(inner)
    engine = make_engine(recorder)
    failures: dict[str, NotLeader] = {}

    async def call(name: str, operation: Callable[[], Any]) -> None:
        try:
            await operation()
        except NotLeader as exc:
            failures[name] = exc

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.enqueue(job("kept"))
        (claimed,) = await engine.claim("w1")
        nursery.start_soon(call, "waiting claim", lambda: engine.claim("w2", wait=100))
        await trio.sleep_until(1.0)
        # another broker takes over (epoch 2) behind this leader's back
        got = inner.peek(KEY)
        assert got is not None
        theirs = QueueState.decode(got.data)
        theirs.leader = LeaderInfo("b", "http://b", 2, wall_clock())
        theirs.seq += 1
        foreign = theirs.encode()
        await recorder.write(KEY, foreign, if_match=got.version)
        # this batch conflicts; more mutations queue up while it is in flight
        nursery.start_soon(call, "batch", lambda: engine.enqueue(job("lost-1")))
        await trio.sleep(0.005)
        nursery.start_soon(call, "queued", lambda: engine.enqueue(job("lost-2")))
        nursery.start_soon(
            call, "complete", lambda: engine.complete(claimed.id, "w1", attempt=claimed.attempt)
        )
        await trio.sleep_until(2.0)
        assert set(failures) == {"waiting claim", "batch", "queued", "complete"}
        assert {exc.leader for exc in failures.values()} == {"http://b"}
        assert engine.role is Role.STANDBY
        assert engine.leader_url == "http://b"
        assert engine.metrics["stepDowns"] == 1
        now_stored = inner.peek(KEY)
        assert now_stored is not None
        assert now_stored.data == foreign
        with pytest.raises(NotLeader) as caught:
            await engine.enqueue(job("refused"))
        assert caught.value.leader == "http://b"
        # the foreign leader never heartbeats: the stepped-down engine stands by and
        # takes over once the document has been still for the lease timeout
        await engine.wait_leader()
        # stepped down at 1.03 (write and read back); at 2.04 its first standby poll
        # (1 s, then a 10 ms read: after a step-down it reads afresh) saw the new
        # leader; polls (a 10 ms version call) then end every 1.01 s, the first at
        # least 10 s later at 12.14; read, CAS write
        assert trio.current_time() == pytest.approx(12.16)
        assert engine.epoch == 3
        engine.stop()
    check_history(recorder.landed)
    assert [w.epoch for w in recorder.landed] == [
        1,
        1,
        1,
        2,
        3,
        3,
    ]  # the parked claim cost no write
    final = stored(inner)
    assert sorted(final.jobs) == ["kept"]
    assert not final.knows("lost-1")
    assert not final.knows("lost-2")


@pytest.mark.document_only
async def test_a_conflict_with_its_own_epoch_adopts_what_is_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # An earlier write of this very leader (its epoch) landed late: the leader
    # adopts the stored document, answers the conflicting batch with an error
    # (it was not written) and goes on leading from what is stored.
    inner = MemoryStorage()
    recorder = Recorder(inner)
    engine = make_engine(recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.enqueue(job("first"))
        got = inner.peek(KEY)
        assert got is not None
        late = QueueState.decode(got.data)
        late.enqueue(job("late"), wall_clock())
        late.seq += 1
        await recorder.write(KEY, late.encode(), if_match=got.version)
        with pytest.raises(StorageUnavailable, match="raced"):
            await engine.enqueue(job("conflicted"))
        assert engine.is_leader
        assert engine.state is not None
        assert sorted(engine.state.jobs) == ["first", "late"]
        await engine.enqueue(job("next"))
        engine.stop()
    check_history(recorder.landed)
    assert sorted(stored(inner).jobs) == ["first", "late", "next"]
    assert engine.metrics["conflicts"] == 1
    assert engine.metrics["stepDowns"] == 0


async def test_an_injected_conflict_on_its_own_document_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    storage = FaultyStorage(inner)
    engine = make_engine(storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.enqueue(job("a"))
        storage.inject("conflict")
        if _LAYOUT[0] == "log":
            # nothing is stored at the record's number: the conflict was made up, the
            # create did not land, and it is tried again
            await engine.enqueue(job("b"))
            assert engine.metrics["conflicts"] == 1
        else:
            with pytest.raises(StorageUnavailable):
                await engine.enqueue(job("b"))
            assert engine.state is not None
            assert sorted(engine.state.jobs) == ["a"]  # the failed batch is not kept
        await engine.enqueue(job("c"))
        engine.stop()
    kept = ["a", "b", "c"] if _LAYOUT[0] == "log" else ["a", "c"]
    assert sorted(stored(inner).jobs) == kept


@pytest.mark.parametrize("seed", range(4))
async def test_random_faults_lose_no_acknowledged_mutation_and_apply_none_twice(
    seed: int, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    inner = MemoryStorage()
    recorder = Recorder(inner)
    storage = FaultyStorage(recorder, seed=seed, latency=(0.0, 0.03))
    # leases far longer than the test: a claim whose answer was lost stays in progress
    engine = make_engine(storage, seed=seed, limits=Limits(job_lease_ms=3_600_000))
    arrivals = Arrivals()
    commits = spy_commits(engine, monkeypatch, arrivals)
    acked: dict[str, str] = {}  # payload token -> job id
    claims: list[tuple[str, str, int]] = []  # acknowledged (job id, worker, attempt)
    completed: set[str] = set()
    draining = False

    async def producer(p: int) -> None:
        for k in range(30):
            await trio.sleep(rng.uniform(0, 0.3))
            token = f"p{p}-{k}"
            batch = [NewJob(payload=token)]
            arrivals.note()
            try:
                (result,) = await engine.enqueue(batch)
            except StorageUnavailable:
                continue
            acked[token] = result.id

    async def worker(w: int) -> None:
        worker_id = f"w{w}"
        while True:
            arrivals.note()
            try:
                jobs = await engine.claim(worker_id, max_jobs=2, wait=rng.uniform(0, 1))
            except StorageUnavailable:
                continue
            if not jobs and draining:
                return
            for claimed in jobs:
                claims.append((claimed.id, worker_id, claimed.attempt))
                await trio.sleep(rng.uniform(0, 0.2))
                give_back = rng.random() < 0.2
                for _ in range(10):
                    arrivals.note()
                    try:
                        if give_back:
                            await engine.release(claimed.id, worker_id, attempt=claimed.attempt)
                        else:
                            await engine.complete(claimed.id, worker_id, attempt=claimed.attempt)
                            completed.add(claimed.id)
                    except StorageUnavailable:
                        continue
                    except LeaseLost:
                        pass  # an earlier try landed after all
                    break

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        elected_at = trio.current_time()
        storage.conflict_rate = 0.08
        storage.error_rate = 0.08
        storage.ambiguous_write_rate = 0.08
        storage.ambiguous_lost_rate = 0.08
        async with trio.open_nursery() as workers:
            for w in range(3):
                workers.start_soon(worker, w)
            async with trio.open_nursery() as producers:
                for p in range(4):
                    producers.start_soon(producer, p)
            # heal the store; the workers finish what is left and leave
            storage.conflict_rate = storage.error_rate = 0.0
            storage.ambiguous_write_rate = storage.ambiguous_lost_rate = 0.0
            draining = True
        await trio.sleep(5)  # idle: heartbeat commits
        arrivals.note()
        engine.stop()

    # the faults did happen, and some commits failed
    assert min(storage.injected[kind] for kind in ("conflict", "error", "ambiguous")) > 0
    assert storage.injected["ambiguous_lost"] > 0
    if _LAYOUT[0] == "document":
        assert engine.metrics["failedBatches"] > 0
    else:  # a made-up conflict on a log record is retried: fewer batches fail
        assert engine.metrics["conflicts"] > 0
    assert len(acked) > 60

    check_history(recorder.landed)
    assert {(w.epoch, w.broker) for w in recorder.landed} == {(1, "a")}
    check_spacing(
        commits,
        arrivals,
        elected_at=elected_at,
        interval=engine.config.group_commit_interval,
        heartbeat=engine.config.broker_heartbeat_interval,
    )

    history = [w.state() for w in recorder.landed]
    # none applied twice: each payload token was enqueued as one job at most
    ids_by_token: dict[str, set[str]] = {}
    held: set[tuple[str, str | None, int]] = set()
    for state in history:
        for j in state.jobs.values():
            ids_by_token.setdefault(j.payload, set()).add(j.id)
            held.add((j.id, j.worker_id, j.attempts))
    assert all(len(ids) == 1 for ids in ids_by_token.values())
    # none lost: every acknowledged mutation is in the stored history, and jobs
    # stay until they finish
    final = history[-1]
    assert final.encode() == stored(inner).encode()
    for token, job_id in acked.items():
        assert ids_by_token[token] == {job_id}
        assert job_id in final.jobs or job_id in final.finished
    for claim in claims:
        assert claim in held
    assert completed <= {f.id for f in final.finished.values() if f.outcome == "completed"}
    # the counters agree with the history
    assert final.counters["enqueued"] == len(ids_by_token)
    assert final.counters["completed"] == len(final.finished)


# -- waiting claims --------------------------------------------------------------------


async def test_a_job_submitted_to_an_idle_queue_reaches_a_waiting_worker_in_its_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder(MemoryStorage(latency=0.01))
    engine = make_engine(recorder)
    got: list[tuple[float, str, int]] = []

    async def worker() -> None:
        (claimed,) = await engine.claim("w", wait=10)
        got.append((trio.current_time(), claimed.id, claimed.attempt))

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await trio.sleep_until(1.0)
        nursery.start_soon(worker)
        await trio.sleep_until(2.0)
        assert got == []
        await engine.enqueue(job("j"))
        assert trio.current_time() == pytest.approx(2.01)
        await trio.testing.wait_all_tasks_blocked()
        ((at, job_id, attempt),) = got
        assert at == pytest.approx(2.01)
        assert (job_id, attempt) == ("j", 1)
        # the commit that enqueued it handed it out
        last = recorder.landed[-1]
        assert last.at == pytest.approx(2.01)
        (stored_job,) = last.state().jobs.values()
        assert (stored_job.status, stored_job.worker_id) == ("in_progress", "w")
        engine.stop()


async def test_a_waiting_claim_ends_empty_at_its_deadline_without_a_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder(MemoryStorage())
    engine = make_engine(recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await trio.sleep_until(1.0)
        assert await engine.claim("w", wait=2.5) == []
        assert trio.current_time() == pytest.approx(3.5)
        writes = len(recorder.landed)
        await trio.sleep(0.4)
        assert len(recorder.landed) == writes  # nothing written for the deadline
        assert await engine.claim("w") == []  # wait=0: answered by its own commit
        assert trio.current_time() == pytest.approx(3.9)
        engine.stop()


async def test_a_delayed_job_reaches_a_waiting_worker_when_it_becomes_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder(MemoryStorage())
    engine = make_engine(recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await trio.sleep_until(1.0)
        await engine.enqueue(job("later", delay_ms=1500))
        await trio.sleep_until(1.2)
        assert engine.state is not None
        (claimed,) = await engine.claim("w", wait=10)
        assert claimed.id == "later"
        assert trio.current_time() == pytest.approx(2.5)
        assert recorder.landed[-1].at == pytest.approx(2.5)
        engine.stop()


async def test_an_expired_lease_reaches_a_waiting_worker_when_it_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder(MemoryStorage())
    engine = make_engine(recorder, limits=Limits(job_lease_ms=2000))
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await trio.sleep_until(1.0)
        await engine.enqueue(job("j"))
        (first,) = await engine.claim("w1")
        assert first.attempt == 1
        assert trio.current_time() == pytest.approx(1.05)
        await trio.sleep_until(1.5)
        (second,) = await engine.claim("w2", wait=10)
        # w1 never heartbeats: its lease ends 2 s after its claim
        assert (second.id, second.attempt) == ("j", 2)
        assert trio.current_time() == pytest.approx(3.05)
        with pytest.raises(LeaseLost):
            await engine.complete("j", "w1", attempt=1)
        await engine.complete("j", "w2", attempt=2)
        engine.stop()
    assert stored(recorder.inner).counters["expired"] == 1  # type: ignore[arg-type]


async def test_a_job_no_waiting_claim_can_take_costs_no_extra_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder(MemoryStorage())
    engine = make_engine(recorder)
    got: list[str] = []

    async def worker() -> None:
        (claimed,) = await engine.claim("w", types=["x"], wait=100)
        got.append(claimed.id)

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await trio.sleep_until(1.0)
        nursery.start_soon(worker)
        await trio.sleep_until(2.0)
        await engine.enqueue(job("y1", type="y"))  # ready, but not for this worker
        await trio.sleep_until(2.5)
        await engine.enqueue(job("x1", type="x"))
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["x1"]
        engine.stop()
    assert [w.at for w in recorder.landed if w.at > 1.5] == pytest.approx([2.0, 2.5, 2.55])


async def test_mutations_answer_their_own_errors_after_the_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage(latency=0.01)
    engine = make_engine(inner)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await trio.sleep_until(1.0)
        with pytest.raises(JobNotFound):
            await engine.complete("nope", "w")
        # a rejection changed nothing: answered without a write (no storage latency)
        assert trio.current_time() == 1.0
        await engine.enqueue(job("j"))
        assert trio.current_time() == pytest.approx(1.01)
        with pytest.raises(LeaseLost):
            await engine.heartbeat("j", "w")
        engine.stop()


# -- per-item mutations: enqueue_each and exchange --------------------------------------


async def test_enqueue_each_is_one_mutation_with_a_result_per_item(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder(MemoryStorage())
    engine = make_engine(recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await trio.sleep_until(1.0)
        writes, mutations = len(recorder.landed), engine.metrics["mutations"]
        results = await engine.enqueue_each(
            [NewJob(1, id="a"), NewJob(2, id="a"), NewJob(3, max_attempts=0)]
        )
        assert results[:2] == [EnqueueResult("a", False), EnqueueResult("a", True)]
        assert isinstance(results[2], BrokerProtocolError)
        assert (len(recorder.landed), engine.metrics["mutations"]) == (writes + 1, mutations + 1)
        assert list(recorder.landed[-1].state().jobs) == ["a"]
        engine.stop()


async def test_an_exchange_is_one_mutation_in_one_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder(MemoryStorage())
    engine = make_engine(recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await trio.sleep_until(1.0)
        await engine.enqueue([NewJob(n, id=f"j{n}") for n in range(4)])
        await engine.claim("w", max_jobs=3)  # j0, j1, j2
        writes, mutations = len(recorder.landed), engine.metrics["mutations"]
        done = await engine.exchange(
            "w",
            Reports(
                complete=[JobReport("j0"), JobReport("j1", attempt=2), JobReport("nope")],
                release=[JobReport("j2")],
            ),
            max_jobs=5,
        )
        assert (len(recorder.landed), engine.metrics["mutations"]) == (writes + 1, mutations + 1)
        assert done.reports.complete[0] == "completed"
        assert [type(r) for r in done.reports.complete[1:]] == [LeaseLost, JobNotFound]
        assert done.reports.release == ["unclaimed"]
        # the claim came after the release, in the same commit: j2 first, in its place
        assert [(j.id, j.attempt) for j in done.jobs] == [("j2", 1), ("j3", 1)]
        last = recorder.landed[-1].state()
        assert last.finished["j0"].outcome == "completed"
        assert {j.id: j.worker_id for j in last.jobs.values()} == {"j1": "w", "j2": "w", "j3": "w"}
        engine.stop()


async def test_a_batchs_claims_take_the_jobs_its_later_submits_enqueue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # a busy worker's exchange (its outcome and a claim) reaches the broker before a
    # producer's submit, both within one interval: the claim takes the new job in
    # that same commit instead of one commit later
    recorder = Recorder(MemoryStorage())
    engine = make_engine(recorder)
    got: list[list[str]] = []

    async def report() -> None:
        done = await engine.exchange("w", Reports(complete=[JobReport("a")]), max_jobs=5)
        got.append([j.id for j in done.jobs])

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await trio.sleep_until(1.0)
        await engine.enqueue(job("a"))
        await engine.claim("w")
        writes = len(recorder.landed)
        nursery.start_soon(report)
        await trio.testing.wait_all_tasks_blocked()
        assert engine.book.queued == 1  # the exchange waits for the interval
        await engine.enqueue(job("b"))
        await trio.testing.wait_all_tasks_blocked()
        assert got == [["b"]]
        assert len(recorder.landed) == writes + 1  # one commit for both
        stored_jobs = recorder.landed[-1].state().jobs
        assert {j.id: j.worker_id for j in stored_jobs.values()} == {"b": "w"}
        engine.stop()


async def test_an_exchange_with_reports_never_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    engine = make_engine(inner)
    got: list[tuple[float, list[str]]] = []

    async def waiter() -> None:
        done = await engine.exchange("w2", Reports(), max_jobs=1, wait=10)
        got.append((trio.current_time(), [j.id for j in done.jobs]))

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.enqueue(job("held"))
        await engine.claim("w")
        await trio.sleep_until(1.0)
        done = await engine.exchange(
            "w", Reports(heartbeat=[JobReport("held")]), max_jobs=1, wait=10
        )
        assert (done.reports.heartbeat, done.jobs) == (["in_progress"], [])
        assert trio.current_time() == pytest.approx(1.0)
        # its claim took nothing, but its report changed the queue: it was written
        assert stored(inner).jobs["held"].heartbeat_at == WALL0 + 1000
        # a report that failed its parse is a report too: no wait
        rejected = BrokerProtocolError("complete[0]: jobId must be ...")
        done = await engine.exchange("w", Reports(complete=[rejected]), max_jobs=1, wait=10)
        assert (done.reports.complete, done.jobs) == ([rejected], [])
        assert trio.current_time() == pytest.approx(1.05)
        # without reports, it waits as a claim does
        nursery.start_soon(waiter)
        await trio.sleep_until(3.0)
        assert got == []
        await engine.enqueue(job("later"))
        await trio.testing.wait_all_tasks_blocked()
        ((at, ids),) = got
        assert at == pytest.approx(3.0)
        assert ids == ["later"]
        engine.stop()


async def test_a_failed_commit_answers_an_exchange_by_whether_it_claims(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    storage = FaultyStorage(inner)
    engine = make_engine(storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.enqueue([NewJob(n, id=f"j{n}") for n in range(3)])
        await engine.claim("w", max_jobs=2)  # j0, j1
        before = inner.peek(KEY)
        storage.inject("error", count=None, ops=[commit_op()])
        with pytest.raises(WriteOutcomeUnknown, match="claim outcome unknown"):
            await engine.exchange("w", Reports(complete=[JobReport("j0")]), max_jobs=1)
        with pytest.raises(StorageUnavailable) as failed:
            await engine.exchange("w", Reports(complete=[JobReport("j1")]))
        assert not isinstance(failed.value, WriteOutcomeUnknown)
        storage.clear()
        assert inner.peek(KEY) == before
        # reloaded: neither exchange left a trace
        statuses = await engine.read(lambda s: {j.id: j.status for j in s.jobs.values()})
        assert statuses == {"j0": "in_progress", "j1": "in_progress", "j2": "unclaimed"}
        assert engine.state is not None
        assert engine.state.counters["completed"] == 0
        done = await engine.exchange("w", Reports(complete=[JobReport("j0"), JobReport("j1")]))
        assert done.reports.complete == ["completed", "completed"]
        engine.stop()


async def test_an_abandoned_exchange_applies_its_reports_but_claims_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage(latency=1.0)
    engine = make_engine(inner)

    async def busy() -> None:
        await engine.enqueue(job("busy"))

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.enqueue(job("held"))
        await engine.claim("w")
        await engine.enqueue(job("ready"))
        await trio.sleep_until(10.0)
        nursery.start_soon(busy)  # written from 10.0 to 11.0
        await trio.sleep_until(10.2)
        with trio.move_on_after(0.3) as gave_up:  # queued behind that write
            await engine.exchange("w", Reports(complete=[JobReport("held")]), max_jobs=1)
        assert gave_up.cancelled_caught
        await engine.enqueue(job("after"))  # the next commit carries the exchange
        engine.stop()
    final = stored(inner)
    assert final.finished["held"].outcome == "completed"
    assert final.jobs["ready"].status == "unclaimed"


# -- stop and cancellation -------------------------------------------------------------


async def test_a_graceful_stop_commits_what_is_pending_and_releases_the_lease(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage(latency=0.01)
    recorder = Recorder(inner)
    engine = make_engine(recorder)
    answered: dict[str, float] = {}
    waiter: list[object] = []

    async def enqueue(job_id: str) -> None:
        await engine.enqueue(job(job_id))
        answered[job_id] = trio.current_time()

    async def wait_for_work() -> None:
        waiter.append(await engine.claim("w", types=["none"], wait=100))

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        nursery.start_soon(wait_for_work)
        await trio.sleep_until(1.0)
        nursery.start_soon(enqueue, "a")
        await trio.sleep_until(1.005)
        nursery.start_soon(enqueue, "b")  # waits for the interval
        await trio.sleep_until(1.006)
        engine.stop()
        assert engine.stopping
    assert trio.current_time() == pytest.approx(1.06)
    assert answered == pytest.approx({"a": 1.01, "b": 1.06})
    assert [w.at for w in recorder.landed][-2:] == pytest.approx([1.01, 1.06])
    assert recorder.landed[-1].released
    assert sorted(stored(inner).jobs) == ["a", "b"]
    assert engine.role is Role.STOPPED
    # a waiting claim simply found nothing
    assert waiter == [[]]


async def test_cancellation_commits_what_is_pending_and_releases_the_lease(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage(latency=0.01)
    engine = make_engine(inner)
    answered: dict[str, float] = {}

    async def enqueue(job_id: str) -> None:
        await engine.enqueue(job(job_id))
        answered[job_id] = trio.current_time()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            scope = await start(nursery, engine)
            await trio.sleep_until(1.0)
            nursery.start_soon(enqueue, "first")  # committed 1.0 - 1.01
            await trio.sleep_until(1.02)
            nursery.start_soon(enqueue, "taken")  # the loop takes it, waits for 1.05
            await trio.sleep_until(1.03)
            nursery.start_soon(enqueue, "queued")  # still in the channel
            await trio.sleep_until(1.04)
            scope.cancel()
    # the shielded last commit runs at once, interval or not
    assert answered == pytest.approx({"first": 1.01, "taken": 1.05, "queued": 1.05})
    final = stored(inner)
    assert sorted(final.jobs) == ["first", "queued", "taken"]
    assert final.leader is not None
    assert final.leader.released
    assert engine.role is Role.STOPPED


async def test_cancelled_mid_write_every_caller_is_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage(latency=1.0)
    engine = make_engine(inner)
    errors: list[BaseException] = []

    async def enqueue(job_id: str) -> None:
        try:
            await engine.enqueue(job(job_id))
        except StorageUnavailable as exc:
            errors.append(exc)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            scope = await start(nursery, engine)
            await trio.sleep_until(10.0)
            nursery.start_soon(enqueue, "in-flight")
            await trio.sleep_until(10.5)  # its write takes until 11.0
            scope.cancel()
    # the write was abandoned: its caller learns that the outcome is unknown
    assert len(errors) == 1
    final = stored(inner)
    assert not final.knows("in-flight")
    assert final.leader is not None
    assert final.leader.released


# -- the pending book, without an engine -----------------------------------------------


def claim_request(deadline: float = math.inf) -> ClaimRequest:
    return ClaimRequest("w", None, 1, deadline)


async def answer_of(mutation: Mutation) -> object:
    try:
        return await mutation.wait()
    except Exception as exc:
        return exc


async def test_a_mutation_goes_queued_gathered_applied_answered() -> None:
    book = PendingBook(max_pending=10)
    state = QueueState()
    mutation = Mutation(lambda s, now: s.enqueue(job("j"), now))
    book.submit(mutation)
    assert (mutation.stage, book.queued) == (Stage.QUEUED, 1)
    assert book.gather() == [mutation]
    assert (mutation.stage, book.queued) == (Stage.GATHERED, 0)
    mutation.apply(state, 1)
    book.applied(mutation)
    assert mutation.stage is Stage.APPLIED
    book.answer_batch()
    assert mutation.stage is Stage.ANSWERED
    [result] = await mutation.wait()
    assert result.id == "j"


async def test_a_waiting_claim_fulfilled_by_a_failed_write_waits_again() -> None:
    book = PendingBook(max_pending=10)
    state = QueueState()
    waiter = Mutation(None, claim_request())
    book.submit(waiter)
    book.gather()
    book.park(waiter)
    assert (waiter.stage, list(book.waiting)) == (Stage.WAITING, [waiter])
    state.enqueue(job("j"), 1)

    def fulfil(m: Mutation) -> bool:
        m.apply(state, 1)
        return bool(m.result)

    assert book.fulfil(fulfil) == 1
    assert (waiter.stage, list(book.waiting)) == (Stage.APPLIED, [])
    book.fail_batch(lambda m: StorageUnavailable("not written"))
    assert (waiter.stage, waiter.result, list(book.waiting)) == (Stage.WAITING, None, [waiter])
    # fulfilled again, and this time the write was abandoned: the caller must hear
    # that the outcome is unknown, not wait on
    state.enqueue(job("k"), 1)
    assert book.fulfil(fulfil) == 1
    book.fail_batch(lambda m: StorageUnavailable("unknown"), rewait=False)
    assert isinstance(await answer_of(waiter), StorageUnavailable)


async def test_waiting_claims_end_empty_at_their_deadline_or_at_a_stop() -> None:
    book = PendingBook(max_pending=10)
    early, late = Mutation(None, claim_request(5.0)), Mutation(None, claim_request(9.0))
    for mutation in (early, late):
        book.submit(mutation)
    for mutation in book.gather():
        book.park(mutation)
    assert book.next_deadline() == 5.0
    book.expire_waits(5.0)
    assert (early.stage, late.stage) == (Stage.ANSWERED, Stage.WAITING)
    book.end_waits()
    assert await early.wait() == []
    assert await late.wait() == []


async def test_fail_all_answers_every_stage_and_every_reader() -> None:
    book = PendingBook(max_pending=10)
    state = QueueState()
    applied, gathered, waiting, queued = (
        Mutation(lambda s, now: None),
        Mutation(lambda s, now: None),
        Mutation(None, claim_request()),
        Mutation(lambda s, now: None),
    )
    for mutation in (applied, gathered, waiting):
        book.submit(mutation)
    book.gather()
    applied.apply(state, 1)
    book.applied(applied)
    book.park(waiting)
    book.submit(queued)
    stages = [m.stage for m in (applied, gathered, waiting, queued)]
    assert stages == [Stage.APPLIED, Stage.GATHERED, Stage.WAITING, Stage.QUEUED]
    outcomes: list[object] = []

    async def read() -> None:
        try:
            outcomes.append(await book.read(Reader(lambda s: "never")))
        except NotLeader as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert book.readers == 1
        book.fail_all(lambda: NotLeader("gone", leader=None))
    for mutation in (applied, gathered, waiting, queued):
        assert isinstance(await answer_of(mutation), NotLeader)
    assert [type(o) for o in outcomes] == [NotLeader]
    assert (book.queued, book.readers, list(book.waiting)) == (0, 0, [])


async def test_the_book_refuses_past_max_pending_and_counts_queued_only() -> None:
    book = PendingBook(max_pending=2, owner="broker x")
    book.submit(Mutation(lambda s, now: None))
    book.submit(Mutation(lambda s, now: None))
    with pytest.raises(QueueFull, match="broker x has 2 mutations pending"):
        book.submit(Mutation(lambda s, now: None))
    book.gather()  # in a commit: no longer pending
    book.submit(Mutation(lambda s, now: None))
    assert book.queued == 1


async def test_a_mutation_with_an_op_and_a_claim_never_waits() -> None:
    state = QueueState()
    both = Mutation(lambda s, now: "reported", claim_request())
    both.apply(state, 1)
    assert (both.reported, both.result, both.error) == ("reported", [], None)
    assert not both.may_wait(0.0)
    plain = Mutation(None, claim_request())
    plain.apply(state, 1)
    assert plain.may_wait(0.0)


async def test_a_batch_of_rejected_requests_is_answered_without_a_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder(MemoryStorage())
    engine = make_engine(recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await trio.sleep_until(1.0)
        await engine.enqueue([NewJob(1, id="held")])
        [job] = await engine.claim("w")
        writes = len(recorder.landed)
        with pytest.raises(JobNotFound):
            await engine.complete("nobody", "w")
        with pytest.raises(LeaseLost):
            await engine.heartbeat(job.id, "someone-else")
        assert len(recorder.landed) == writes  # rejected: nothing to store
        # the rule's exception: a worker's call on a job whose cancel was requested
        # finishes the cancel (and is answered LeaseLost): that is written
        assert await engine.cancel(job.id) == "cancelling"
        writes = len(recorder.landed)
        with pytest.raises(LeaseLost):
            await engine.heartbeat(job.id, "w")
        assert len(recorder.landed) == writes + 1
        assert recorder.landed[-1].state().finished[job.id].outcome == "cancelled"
        engine.stop()


async def test_a_run_of_failed_commits_is_logged_once_and_its_end_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FaultyStorage(MemoryStorage())
    engine = make_engine(storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await trio.sleep_until(1.0)
        storage.inject("error", count=None, ops=[commit_op(), "read"])  # an outage
        for n in range(3):
            with pytest.raises(StorageUnavailable):
                await engine.enqueue([NewJob(n, id=f"lost-{n}")])
        storage.clear()
        await engine.enqueue([NewJob(9, id="after")])
        engine.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "trioq.engine"]
    assert sum("failed (later failures in a row are not logged)" in m for m in lines) == 1
    assert sum("commits succeed again after 3 failed" in m for m in lines) == 1
