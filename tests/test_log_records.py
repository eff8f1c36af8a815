"""Change tracking and the log record codec (``trioq.core._changes``, the log layout
of ``docs/log-layout.md``).

The property: a random history of mutations (valid and rejected ones), cut into
random commits, each commit's changes encoded as a log record; then from a
checkpoint (the format-1 document of the state at a random earlier commit) the later
records replayed in order give a state that encodes byte for byte as the live one,
and behaves as it does (its indexes: claims, lease expiry, ready times). Applying a
record twice changes nothing; a rejected mutation notes no change (but the one that
finishes a requested cancel); a record's size follows its batch, not the queue.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from functools import partial
from typing import Any

import hypothesis.strategies as st
import orjson
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from trioq import DocumentInvalid, TrioqError
from trioq.core._changes import ADD, DROP, MOVE, PUT, Changes, apply_record, encode_record
from trioq.core._codec import LeaderInfo
from trioq.core._state import FailReport, JobReport, Limits, NewJob, QueueState, Reports

T0 = 1_700_000_000_000
IDS = [f"j{i}" for i in range(8)]
TYPES = ["a", "b"]
WORKERS = ["w1", "w2", "w3"]


def limits() -> Limits:
    # small caps and short windows, so that trims by count and by time happen often
    return Limits(
        job_lease_ms=1000,
        max_queued=7,
        dead_letter_cap=2,
        dedup_window_ms=2500,
        dedup_cap=3,
        retry_base_ms=100,
        retry_max_ms=800,
        max_attempts_limit=4,
    )


KIND_NAMES = {PUT: "put", ADD: "add", DROP: "drop", MOVE: "move"}


def leader_fields(seq: int, now: int) -> dict[str, Any]:
    return {
        "seq": seq,
        "epoch": 1 + seq // 5,
        "broker_id": f"b{seq // 5}",
        "url": "http://10.0.0.5:8080",
        "lease_at": now,
        "released": seq % 7 == 3,
    }


def commit(state: QueueState, seq: int, now: int) -> bytes:
    """What the log layout's leader does per commit: take the batch's changes,
    write them as record ``seq``, and hold the leader fields it wrote."""
    fields = leader_fields(seq, now)
    record = encode_record(state, state.take_changes(), **fields)
    state.seq = seq
    state.leader = LeaderInfo(
        fields["broker_id"], fields["url"], fields["epoch"], now, fields["released"]
    )
    return record


def decode(document: bytes) -> QueueState:
    return QueueState.decode(document, limits=limits())


payloads = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)


def new_job() -> st.SearchStrategy[NewJob]:
    return st.builds(
        NewJob,
        payload=payloads,
        type=st.sampled_from(TYPES),
        id=st.one_of(st.none(), st.sampled_from(IDS)),
        max_attempts=st.sampled_from([None, 1, 2]),
        delay_ms=st.sampled_from([0, 0, 300, 2000]),
    )


def snapshot(changes: Changes | None) -> Changes | None:
    return copy.deepcopy(changes)


class History(RuleBasedStateMachine):
    """The live state, driven by random mutations; every ``commit`` rule writes a
    record and checks replay against it."""

    @initialize(seed=st.integers(0, 2**32 - 1), data=st.data())
    def setup(self, seed: int, data: st.DataObject) -> None:
        self.now = T0
        self.state = QueueState(limits=limits(), rng=random.Random(seed))
        # a history may start from a state that already holds jobs, untracked
        for item in data.draw(st.lists(new_job(), max_size=3)):
            self.state.enqueue_each([item], self.now)
        self.state.track_changes()
        self.checkpoints = [self.state.encode()]  # checkpoint k: the state as of record k
        self.records: list[bytes] = [b""]  # record 0: the start (never replayed)
        # a standby that follows the log and tracks what its replays change
        self.standby = decode(self.checkpoints[0])
        self.standby.track_changes()
        self.echo = decode(self.checkpoints[0])

    # -- helpers

    def apply(self, op: Callable[[QueueState], object]) -> None:
        """``op`` on the live state; if rejected and the document did not move, no
        change may have been noted (a rejected call that finished a requested cancel
        moved it, and notes that)."""
        before_doc = self.state.encode()
        before = snapshot(self.state._changes)
        try:
            op(self.state)
        except TrioqError:
            if self.state.encode() == before_doc:
                assert self.state._changes == before

    def pick(self, data: st.DataObject, in_progress: bool = False) -> str:
        held = sorted(j.id for j in self.state.jobs.values() if j.status == "in_progress")
        known = sorted(set(self.state.jobs) | set(self.state.dead) | set(self.state.finished))
        choices = [st.sampled_from([*IDS, "nope"])]
        if known:
            choices.insert(0, st.sampled_from(known))
        if in_progress and held:
            choices.insert(0, st.sampled_from(held))
        job_id: str = data.draw(st.one_of(*choices))
        return job_id

    def lease(self, data: st.DataObject) -> tuple[str, str, int | None]:
        job_id = self.pick(data, in_progress=True)
        job = self.state.jobs.get(job_id)
        holder = job.worker_id if job is not None and job.worker_id else "w1"
        worker = data.draw(st.sampled_from([holder, holder, holder, "w2"]))
        attempts = job.attempts if job is not None else 1
        attempt = data.draw(st.sampled_from([None, attempts, attempts, attempts - 1]))
        return job_id, worker, attempt

    # -- time

    @rule(ms=st.sampled_from([1, 50, 400, 1100, 3000]), then_commit=st.booleans(), data=st.data())
    def advance(self, ms: int, then_commit: bool, data: st.DataObject) -> None:
        """Time passes, then what the engine does at the start of a commit (and
        maybe the commit)."""
        self.now += ms
        now = self.now
        self.apply(lambda s: s.expire(now))
        self.apply(lambda s: s.pop_due(now))
        if then_commit:
            self.commit(data)

    # -- mutations

    @rule(items=st.lists(new_job(), min_size=1, max_size=3), each=st.booleans(), bad=st.booleans())
    def enqueue(self, items: list[NewJob], each: bool, bad: bool) -> None:
        if bad:
            items = [*items, NewJob(1, max_attempts=9)]  # over the limit: rejected
        now = self.now
        if each:
            self.apply(lambda s: s.enqueue_each(items, now))
        else:
            self.apply(lambda s: s.enqueue(items, now))

    @rule(
        worker=st.sampled_from(WORKERS),
        types=st.one_of(st.none(), st.lists(st.sampled_from(TYPES), min_size=1, max_size=2)),
        max_jobs=st.integers(1, 3),
    )
    def claim(self, worker: str, types: list[str] | None, max_jobs: int) -> None:
        now = self.now
        self.apply(lambda s: s.claim(worker, now, types=types, max_jobs=max_jobs))

    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        job_id, worker, attempt = self.lease(data)
        now = self.now
        self.apply(lambda s: s.heartbeat(job_id, worker, now, attempt))

    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        job_id, worker, attempt = self.lease(data)
        now = self.now
        self.apply(lambda s: s.complete(job_id, worker, now, attempt))

    @rule(
        data=st.data(),
        final=st.booleans(),
        retry=st.sampled_from([None, 0, 500]),
        error=st.sampled_from(["boom", "\u00e9chec", 5]),
    )
    def fail(self, data: st.DataObject, final: bool, retry: int | None, error: Any) -> None:
        job_id, worker, attempt = self.lease(data)
        now = self.now
        self.apply(
            lambda s: s.fail(
                job_id, worker, now, error=error, attempt=attempt, retry_in_ms=retry, final=final
            )
        )

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        job_id, worker, attempt = self.lease(data)
        now = self.now
        self.apply(lambda s: s.release(job_id, worker, now, attempt))

    @rule(data=st.data(), worker=st.sampled_from(WORKERS))
    def report_each(self, data: st.DataObject, worker: str) -> None:
        def some(n: int) -> list[JobReport]:
            return [JobReport(self.pick(data, in_progress=True)) for _ in range(n)]

        reports = Reports(
            heartbeat=some(data.draw(st.integers(0, 2))),
            complete=some(data.draw(st.integers(0, 1))),
            fail=[FailReport(r.job_id, error="x") for r in some(data.draw(st.integers(0, 1)))],
            release=some(data.draw(st.integers(0, 1))),
        )
        now = self.now
        self.apply(lambda s: s.report_each(worker, reports, now))

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = self.pick(data, in_progress=data.draw(st.booleans()))
        now = self.now
        self.apply(lambda s: s.cancel(job_id, now))

    @precondition(lambda self: bool(self.state.dead))
    @rule(data=st.data())
    def requeue_dead(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from([*sorted(self.state.dead), "j0"]))
        now = self.now
        self.apply(lambda s: s.requeue_dead(job_id, now))

    # -- composites: a list entry that leaves and comes back within one batch

    @rule(data=st.data())
    def kill_and_requeue(self, data: st.DataObject) -> None:
        """A live job dies and is requeued: it moves to the end of the jobs."""
        job_id, worker, attempt = self.lease(data)
        now = self.now
        self.apply(lambda s: s.fail(job_id, worker, now, error="x", attempt=attempt, final=True))
        self.apply(lambda s: s.requeue_dead(job_id, now))

    @precondition(lambda self: bool(self.state.dead))
    @rule(data=st.data())
    def requeue_and_kill(self, data: st.DataObject) -> None:
        """A dead job is requeued, claimed and dies again: it moves to the end of
        the dead letters."""
        job_id = data.draw(st.sampled_from(sorted(self.state.dead)))
        now = self.now
        self.apply(lambda s: s.requeue_dead(job_id, now))
        self.apply(lambda s: s.claim("w3", now, max_jobs=7))
        self.apply(lambda s: s.fail(job_id, "w3", now, error="again", final=True))

    @precondition(lambda self: bool(self.state.finished))
    @rule(data=st.data())
    def churn(self, data: st.DataObject) -> None:
        """Enough jobs finish to push a finished id out of the dedup window, then it
        is submitted and finishes again: it moves to the end of the window."""
        job_id = data.draw(st.sampled_from(sorted(self.state.finished)))
        now = self.now
        for item in [*[NewJob("churn") for _ in range(3)], NewJob("back", id=job_id)]:
            self.apply(partial(QueueState.enqueue, items=[item], now=now))
            for claimed in self.state.claim("w3", now, max_jobs=7):
                self.apply(partial(QueueState.complete, job_id=claimed.id, worker_id="w3", now=now))

    @rule()
    def renew_all_leases(self) -> None:
        now = self.now
        self.apply(lambda s: s.renew_all_leases(now))

    # -- commits

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        seq = len(self.records)
        changes = copy.deepcopy(self.state._changes)
        record = commit(self.state, seq, self.now)
        self.records.append(record)
        assert changes is not None
        for name in ("jobs", "dead", "finished"):  # what the histories reach
            for kind in set(getattr(changes, name).values()):
                event(f"{name}: {KIND_NAMES[kind]}")
        document = self.state.encode()
        self.checkpoints.append(document)

        # replay from a random earlier checkpoint; each record maybe twice
        start = data.draw(st.integers(0, seq - 1), label="checkpoint")
        replica = decode(self.checkpoints[start])
        for later in self.records[start + 1 :]:
            apply_record(replica, later)
            if data.draw(st.booleans(), label="twice"):
                apply_record(replica, later)
                assert replica.encode() == self.checkpoints[replica.seq]
        assert replica.encode() == document

        # replaying the same record again changes nothing
        apply_record(replica, record)
        assert replica.encode() == document

        # the standby's own replays, tracked and written as a record, say the same
        apply_record(self.standby, record)
        echoed = encode_record(
            self.standby, self.standby.take_changes(), **leader_fields(seq, self.now)
        )
        apply_record(self.echo, echoed)
        assert self.standby.encode() == document
        assert self.echo.encode() == document

        # the replica's indexes behave as a freshly decoded state's
        same_behaviour(replica, decode(document), self.now, data)


def same_behaviour(a: QueueState, b: QueueState, now: int, data: st.DataObject) -> None:
    """Drive ``a`` and ``b`` alike through time: they must answer and encode the same."""
    for step in range(3):
        assert a.next_lease_expiry() == b.next_lease_expiry()
        assert a.next_ready_at() == b.next_ready_at()
        assert a.pop_due(now) == b.pop_due(now)
        assert a.next_delayed_at() == b.next_delayed_at()
        assert a.expire(now) == b.expire(now)
        types = data.draw(st.sampled_from([None, ["a"], ["b"]]), label="probe types")
        claimed_a = a.claim(WORKERS[step], now, types=types, max_jobs=2)
        claimed_b = b.claim(WORKERS[step], now, types=types, max_jobs=2)
        assert claimed_a == claimed_b
        assert a.encode() == b.encode()
        now += 700


History.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHistory = pytest.mark.timeout(420)(History.TestCase)


# ------------------------------------------------------------ tracking


def test_tracking_is_off_until_asked() -> None:
    state = QueueState()
    state.enqueue([NewJob(1, id="a")], T0)
    assert state._changes is None
    with pytest.raises(RuntimeError, match="track_changes"):
        state.take_changes()


def test_changes_name_what_a_batch_touched() -> None:
    state = QueueState(limits=Limits(dedup_cap=1, dead_letter_cap=1))
    state.enqueue([NewJob(1, id="a"), NewJob(2, id="b"), NewJob(3, id="c")], T0)
    state.track_changes()
    assert not state.take_changes()
    state.claim("w", T0, max_jobs=3)
    state.complete("a", "w", T0)
    state.fail("b", "w", T0, error="x", final=True)
    state.fail("c", "w", T0, error="x", final=True)  # pushes b out of the dead letters
    state.requeue_dead("c", T0)  # c: dropped, then added again at the end
    changes = state.take_changes()
    assert changes.jobs == {"a": DROP, "b": DROP, "c": MOVE}
    assert changes.dead == {"b": DROP, "c": DROP}
    assert changes.finished == {"a": ADD}
    assert changes.header
    state.pop_due(T0 + 10)  # the delayed heap only: nothing stored changes
    assert not state.take_changes()


def test_rejected_mutations_note_nothing() -> None:
    state = QueueState()
    state.enqueue([NewJob(1, id="a")], T0)
    state.claim("w", T0)
    state.track_changes()
    for op in (
        lambda: state.heartbeat("a", "other", T0),
        lambda: state.complete("a", "w", T0, attempt=7),
        lambda: state.enqueue([NewJob(2, id="b"), NewJob(3, delay_ms=-1)], T0),
        lambda: state.requeue_dead("a", T0),
        lambda: state.cancel("nope", T0),
    ):
        with pytest.raises(TrioqError):
            op()
    assert not state.take_changes()


def test_a_worker_call_that_finishes_a_cancel_notes_it() -> None:
    state = QueueState()
    state.enqueue([NewJob(1, id="a")], T0)
    state.claim("w", T0)
    state.track_changes()
    assert state.cancel("a", T0) == "cancelling"
    assert state.take_changes().jobs == {"a": PUT}
    with pytest.raises(TrioqError, match="cancelled"):
        state.heartbeat("a", "w", T0)
    changes = state.take_changes()
    assert (changes.jobs, changes.finished, changes.header) == ({"a": DROP}, {"a": ADD}, True)


# ------------------------------------------------------------ record size


def test_a_held_job_changed_without_a_renewal_keeps_its_lease_place_in_a_replay() -> None:
    """Found by History: a cancel request on a held job, replayed, re-entered its
    lease behind a later one, so a standby (and the leader it becomes) saw it expire
    up to a lease late."""
    state = QueueState(limits=limits(), rng=random.Random(1))
    state.enqueue([NewJob(None, type="a"), NewJob(None, type="a")], T0)
    state.track_changes()
    start = state.encode()
    first = state.claim("w1", T0, max_jobs=1)[0].id
    records = [commit(state, 1, T0)]
    second = state.claim("w1", T0 + 1, max_jobs=1)[0].id
    records.append(commit(state, 2, T0 + 1))
    assert state.cancel(first, T0 + 1) == "cancelling"
    records.append(commit(state, 3, T0 + 1))

    replica = decode(start)
    for record in records:
        apply_record(replica, record)
    assert replica.encode() == state.encode()
    lease_ms = limits().job_lease_ms
    assert replica.next_lease_expiry() == state.next_lease_expiry() == T0 + lease_ms
    # the first lease ends first, on the replica as on the leader
    assert replica.expire(T0 + lease_ms) == [first]
    assert replica.jobs[second].status == "in_progress"


def test_a_record_follows_its_batch_not_the_queue() -> None:
    state = QueueState(limits=Limits(max_queued=20_000))
    payload = {"data": "x" * 100}
    for start in range(0, 10_000, 1000):
        state.enqueue([NewJob(payload, id=f"job-{i:05d}") for i in range(start, start + 1000)], T0)
    state.track_changes()
    job_bytes = len(orjson.dumps(state.jobs["job-00000"].to_json()))
    [claimed] = state.claim("w", T0 + 1)
    claim = commit(state, 1, T0 + 1)
    assert len(claim) < 300 + job_bytes, claim
    state.heartbeat(claimed.id, "w", T0 + 2)
    assert len(commit(state, 2, T0 + 2)) < 300 + job_bytes
    state.complete(claimed.id, "w", T0 + 3)
    finish = commit(state, 3, T0 + 3)
    assert len(finish) < 500, finish
    idle = commit(state, 4, T0 + 4)
    assert b'"ops":[]' in idle
    assert b"counters" not in idle  # nothing changed them
    assert len(idle) < 150


# ------------------------------------------------------------ malformed records

GOOD = {
    "seq": 1,
    "epoch": 1,
    "brokerId": "b",
    "url": "u",
    "leaseAt": T0,
    "released": False,
    "ops": [],
}
JOB = {
    "id": "a",
    "type": "t",
    "payload": 1,
    "status": "unclaimed",
    "attempts": 0,
    "maxAttempts": 3,
    "createdAt": T0,
    "readyAt": T0,
    "order": 1,
    "workerId": None,
    "heartbeatAt": None,
    "lastError": None,
    "cancelRequested": False,
}


def bad(**fields: Any) -> bytes:
    return orjson.dumps({**GOOD, **fields})


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "not valid JSON"),
        (b'{"seq":1', "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "epoch"}), "no 'epoch' field"),
        (bad(seq=-1), "'seq' is -1, not a non-negative integer"),
        (bad(epoch=True), "'epoch' is true"),
        (bad(brokerId=3), "'brokerId' is 3, not a string"),
        (bad(released="no"), "'released' is \"no\", not true or false"),
        (bad(ops={}), "'ops' is {}, not an array"),
        (bad(ops=[{"put": JOB}, 7]), r"ops\[1\] is 7, not an object of one op"),
        (bad(ops=[{"drop": "a", "put": JOB}]), r"ops\[0\] is .*not an object of one op"),
        (bad(ops=[{"zap": "a"}]), r"ops\[0\] is an unknown op 'zap'"),
        (bad(ops=[{"drop": 5}]), r"ops\[0\] \(drop\) names 5, not an id"),
        (bad(ops=[{"put": [1]}]), r"ops\[0\] \(put\) holds \[1\], not a record"),
        (bad(ops=[{"put": {**JOB, "status": None}}]), r"\(put\): unknown job status None"),
        (bad(ops=[{"put": {"id": "a"}}]), r"\(put\) has no 'status' field"),
        (bad(ops=[{"put": {**JOB, "attempts": "1"}}]), r"\(put\): expected an integer"),
        (
            bad(ops=[{"put": {**JOB, "status": "in_progress"}}]),
            "in-progress job 'a' has no worker/heartbeat",
        ),
        (bad(ops=[{"finish": {"id": "a", "type": "t"}}]), r"\(finish\) has no 'outcome' field"),
        (bad(ops=[{"dead": {**JOB, "reason": "bored"}}]), "unknown dead-letter reason"),
        (bad(counters={}), "'counters' and 'nextOrder' come together"),
        (bad(counters=[], nextOrder=1), "'counters' is \\[\\], not an object"),
        (bad(counters={"enqueued": 1}, nextOrder=1), "counters.completed is null"),
        (
            bad(counters=dict.fromkeys(QueueState().counters, 0), nextOrder="2"),
            "'nextOrder' is \"2\"",
        ),
    ],
)
def test_a_malformed_record_is_refused_and_changes_nothing(data: bytes, says: str) -> None:
    state = QueueState()
    state.enqueue([NewJob(1, id="x")], T0)
    before = state.encode()
    with pytest.raises(DocumentInvalid, match=says) as caught:
        apply_record(state, data, name="queue/log/00000000000000000001.json")
    assert str(caught.value).startswith("queue/log/00000000000000000001.json ")
    assert state.encode() == before
