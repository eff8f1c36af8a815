"""Example-based tests of the in-memory queue model (``trioq.core._state``).

Every mutation, every rejection, and the queue.json codec. Times are integer
milliseconds passed in as ``now``; nothing here sleeps.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from trioq import (
    BrokerProtocolError,
    DocumentInvalid,
    JobNotDead,
    JobNotFound,
    LeaseLost,
    PayloadTooLarge,
    QueueFull,
)
from trioq.core._jobs import DeadJob, FinishedJob, Job
from trioq.core._state import (
    ClaimedJob,
    EnqueueResult,
    FailReport,
    JobReport,
    LeaderInfo,
    Limits,
    NewJob,
    QueueState,
    Reports,
)

T = 1_700_000_000_000
"""A wall-clock time in milliseconds."""

LEASE = 30_000


def make(seed: int = 1234, **limits: Any) -> QueueState:
    return QueueState(limits=Limits(**limits), rng=random.Random(seed))


def add(state: QueueState, *ids: str, now: int = T, **fields: Any) -> list[EnqueueResult]:
    return state.enqueue([NewJob({"id": i}, id=i, **fields) for i in ids], now)


def claim1(state: QueueState, worker: str = "w1", now: int = T, **kw: Any) -> ClaimedJob:
    [job] = state.claim(worker, now, **kw)
    return job


def job(state: QueueState, job_id: str) -> Job:
    found = state.jobs[job_id]
    return found


def snapshot(state: QueueState) -> tuple[object, ...]:
    """Everything observable about a state, to check that a rejection changed nothing."""
    return (
        state.encode(),
        state.unclaimed_count,
        state.in_progress_count,
        state.approx_bytes,
        state.next_ready_at(),
        state.next_lease_expiry(),
        state.next_order,
    )


def roundtrip(state: QueueState) -> QueueState:
    return QueueState.decode(state.encode(), limits=state.limits, rng=random.Random(99))


def assert_invariants(state: QueueState) -> None:
    queued, dead, finished = set(state.jobs), set(state.dead), set(state.finished)
    assert not queued & dead
    assert not queued & finished
    assert not dead & finished
    unclaimed = [j for j in state.jobs.values() if j.status == "unclaimed"]
    assert state.unclaimed_count == len(unclaimed)
    assert state.in_progress_count == len(state.jobs) - len(unclaimed)
    assert state.approx_bytes == sum(j.size for j in state.jobs.values())
    c = state.counters
    assert c["enqueued"] == (
        len(state.jobs) + len(state.dead) + c["completed"] + c["cancelled"] + c["deadDropped"]
    )


# --------------------------------------------------------------------- enqueue


def test_enqueue_defaults() -> None:
    state = make()
    [result] = state.enqueue([NewJob({"to": "a@example.com"})], T)
    assert not result.duplicate
    assert len(result.id) == 32
    int(result.id, 16)
    j = job(state, result.id)
    assert j.type == "default"
    assert j.payload == {"to": "a@example.com"}
    assert j.status == "unclaimed"
    assert (j.attempts, j.max_attempts) == (0, 3)
    assert (j.created_at, j.ready_at) == (T, T)
    assert j.order == 1
    assert (j.worker_id, j.heartbeat_at, j.last_error) == (None, None, None)
    assert state.counters["enqueued"] == 1
    assert state.next_order == 2
    assert state.stats() == {"total": 1, "unclaimed": 1, "inProgress": 0, "completedTotal": 0}
    assert state.lookup(result.id) is j
    assert state.knows(result.id)
    assert_invariants(state)


def test_enqueue_fields_and_batch_order() -> None:
    state = make()
    results = state.enqueue(
        [
            NewJob(1, type="email", id="a", max_attempts=7, delay_ms=500),
            NewJob([2], id="b"),
            NewJob(None, id="c:x.y_z-1"),
        ],
        T,
    )
    assert results == [
        EnqueueResult("a", False),
        EnqueueResult("b", False),
        EnqueueResult("c:x.y_z-1", False),
    ]
    assert list(state.jobs) == ["a", "b", "c:x.y_z-1"]
    a = job(state, "a")
    assert (a.type, a.max_attempts, a.ready_at, a.order) == ("email", 7, T + 500, 1)
    assert [job(state, i).order for i in ("b", "c:x.y_z-1")] == [2, 3]
    assert state.counters["enqueued"] == 3
    assert state.unclaimed_count == 3


def test_auto_ids_are_unique() -> None:
    state = make()
    results = state.enqueue([NewJob(i) for i in range(200)], T)
    assert len({r.id for r in results}) == 200
    assert len(state.jobs) == 200


@pytest.mark.parametrize(
    "bad",
    [
        NewJob(1, id=""),
        NewJob(1, id="x" * 129),
        NewJob(1, id="has space"),
        NewJob(1, id="slash/"),
        NewJob(1, id="ümlaut"),
        NewJob(1, id=5),  # type: ignore[arg-type]
        NewJob(1, type=""),
        NewJob(1, type="t" * 129),
        NewJob(1, type="tab\there"),
        NewJob(1, type=None),  # type: ignore[arg-type]
        NewJob(1, type="lone \ud800 surrogate"),  # JSON cannot carry it
        NewJob(1, max_attempts=0),
        NewJob(1, max_attempts=1001),
        NewJob(1, max_attempts=True),
        NewJob(1, max_attempts=2.0),  # type: ignore[arg-type]
        NewJob(1, max_attempts="3"),  # type: ignore[arg-type]
        NewJob(1, delay_ms=-1),
        NewJob(1, delay_ms=1.5),  # type: ignore[arg-type]
        NewJob(1, delay_ms=True),
        NewJob(1, delay_ms=365 * 86_400_000 + 1),
        NewJob(1, delay_ms=2**64 - 1),
        NewJob({1: "non-string key"}),
        NewJob(object()),
        NewJob(2**64),
    ],
)
def test_a_bad_item_rejects_the_whole_batch(bad: NewJob) -> None:
    state = make()
    add(state, "existing")
    before = snapshot(state)
    with pytest.raises(BrokerProtocolError):
        state.enqueue([NewJob("ok", id="good-1"), bad, NewJob("ok", id="good-2")], T)
    assert snapshot(state) == before
    assert not state.knows("good-1")
    assert not state.knows("good-2")
    assert state.counters["enqueued"] == 1


def test_error_message_names_the_item() -> None:
    state = make()
    with pytest.raises(BrokerProtocolError, match=r"jobs\[1\]"):
        state.enqueue([NewJob(1), NewJob(1, id="bad id")], T)
    with pytest.raises(BrokerProtocolError, match=r"^job: "):
        state.enqueue([NewJob(1, max_attempts=0)], T)


def test_limits_at_their_bounds_are_accepted() -> None:
    state = make()
    state.enqueue(
        [
            NewJob(1, id="x" * 128, type="t" * 128, max_attempts=1000, delay_ms=365 * 86_400_000),
            NewJob(1, id="y", max_attempts=1, delay_ms=0),
        ],
        T,
    )
    assert job(state, "x" * 128).ready_at == T + 365 * 86_400_000
    assert job(state, "y").max_attempts == 1


def test_payload_too_large_rejects_the_whole_batch() -> None:
    state = make(max_payload_bytes=100)
    fits = "x" * 98  # encodes to exactly 100 bytes with its quotes
    assert len(orjson.dumps(fits)) == 100
    state.enqueue([NewJob(fits, id="fits")], T)
    before = snapshot(state)
    with pytest.raises(PayloadTooLarge, match="101 bytes"):
        state.enqueue([NewJob(1, id="small"), NewJob(fits + "x", id="big")], T)
    assert snapshot(state) == before
    assert not state.knows("small")


def test_queue_full_by_count() -> None:
    state = make(max_queued=3)
    add(state, "a", "b")
    claim1(state)  # in-progress jobs count too
    before = snapshot(state)
    with pytest.raises(QueueFull):
        add(state, "c", "d")
    assert snapshot(state) == before
    # a duplicate takes no room: one new job fits
    assert add(state, "a", "c") == [EnqueueResult("a", True), EnqueueResult("c", False)]
    with pytest.raises(QueueFull):
        add(state, "d")
    # at the cap, resubmitting a known id still answers "duplicate"
    assert add(state, "b") == [EnqueueResult("b", True)]
    # dead and finished jobs do not count
    w = claim1(state)
    state.fail(w.id, "w1", T, error="x", final=True)
    add(state, "d")
    assert len(state.jobs) == 3


def test_queue_full_by_document_size() -> None:
    payload = "x" * 10_000
    state = make(max_document_bytes=25_000)
    state.enqueue([NewJob(payload, id="a")], T)
    assert 10_000 < state.approx_bytes < 10_500
    before = snapshot(state)
    with pytest.raises(QueueFull, match="25000 bytes"):
        state.enqueue([NewJob(payload, id="b"), NewJob(payload, id="c")], T)
    assert snapshot(state) == before
    state.enqueue([NewJob(payload, id="b")], T)
    with pytest.raises(QueueFull):
        state.enqueue([NewJob(payload, id="c")], T)
    # completing a job frees its room
    state.complete(claim1(state).id, "w1", T)
    state.enqueue([NewJob(payload, id="c")], T)
    assert_invariants(state)


def test_duplicates_create_nothing() -> None:
    state = make()
    add(state, "q", "p", "d", "f")
    p = claim1(state, now=T)  # "q"
    assert p.id == "q"
    state.claim("w1", T)  # "p" is now in progress
    state.complete("p", "w1", T)
    [d] = state.claim("w1", T)
    state.fail(d.id, "w1", T, error="boom", final=True)
    assert "d" in state.dead
    assert "p" in state.finished
    before = snapshot(state)
    results = state.enqueue([NewJob("new payload", id=i) for i in ("q", "p", "d", "f")], T + 1)
    assert results == [EnqueueResult(i, True) for i in ("q", "p", "d", "f")]
    assert snapshot(state) == before
    assert job(state, "f").payload == {"id": "f"}


def test_duplicate_within_a_batch() -> None:
    state = make()
    results = state.enqueue([NewJob(1, id="a"), NewJob(2, id="a")], T)
    assert results == [EnqueueResult("a", False), EnqueueResult("a", True)]
    assert job(state, "a").payload == 1
    assert state.counters["enqueued"] == 1


# ------------------------------------------------------------- per-item enqueue


def test_enqueue_each_takes_each_item_on_its_own() -> None:
    state = make(seed=7, max_payload_bytes=100, max_queued=4)
    add(state, "known")
    parse_error = BrokerProtocolError("jobs[1]: maxAttempts must be an integer from 1 to 1000")
    items: list[NewJob | BrokerProtocolError] = [
        NewJob(1, id="a"),
        parse_error,  # an item that already failed keeps its place and its error
        NewJob("x" * 200, id="big"),
        NewJob(2, id="a"),  # earlier in the same request
        NewJob(3, id="known"),
        NewJob(4),  # a generated id
        NewJob(5, id="b"),  # the fourth job: the queue is full after it
        NewJob(6, id="c"),
        NewJob(7, id="b"),  # a duplicate at capacity still answers
        NewJob(8, max_attempts=0),  # a library caller's item is checked here
    ]
    results = state.enqueue_each(items, T)
    generated = results[5]
    assert isinstance(generated, EnqueueResult)
    assert results[:2] == [EnqueueResult("a", False), parse_error]
    assert isinstance(results[2], PayloadTooLarge)
    assert results[2].message == "jobs[2]: payload is 202 bytes, over the limit of 100"
    assert results[3:7] == [
        EnqueueResult("a", True),
        EnqueueResult("known", True),
        EnqueueResult(generated.id, False),
        EnqueueResult("b", False),
    ]
    assert isinstance(results[7], QueueFull)
    assert results[8] == EnqueueResult("b", True)
    assert isinstance(results[9], BrokerProtocolError)
    assert results[9].message.startswith("jobs[9]: maxAttempts must be")
    # the rejected items changed nothing: the same as enqueueing the good ones alone
    alone = make(seed=7, max_payload_bytes=100, max_queued=4)
    add(alone, "known")
    alone.enqueue_each([NewJob(1, id="a"), NewJob(4), NewJob(5, id="b")], T)
    assert snapshot(state) == snapshot(alone)
    assert_invariants(state)


def test_enqueue_each_by_document_size_lets_later_items_that_fit_in() -> None:
    payload = "x" * 10_000
    state = make(max_document_bytes=25_000)
    results = state.enqueue_each(
        [
            NewJob(payload, id="a"),
            NewJob(payload, id="b"),
            NewJob(payload, id="c"),
            NewJob(1, id="d"),
        ],
        T,
    )
    assert results[:2] == [EnqueueResult("a", False), EnqueueResult("b", False)]
    assert isinstance(results[2], QueueFull)
    assert "25000 bytes" in results[2].message
    assert results[3] == EnqueueResult("d", False)
    assert sorted(state.jobs) == ["a", "b", "d"]
    assert_invariants(state)


# --------------------------------------------------------------------- reports


def test_report_each_applies_every_report_on_its_own() -> None:
    state = make()
    add(state, "hb", "done", "retry", "dead", "back", "gone", "other")
    state.claim("w1", T, max_jobs=6)
    claim1(state, worker="w2")  # "other"
    state.cancel("gone", T)
    parse_error = BrokerProtocolError("complete[2]: jobId must be 1-128 characters")
    reports = Reports(
        heartbeat=[JobReport("hb", 1), JobReport("hb", 2), JobReport("other")],
        complete=[JobReport("done"), JobReport("nope"), parse_error],
        fail=[
            FailReport("retry", error="boom", retry_in_ms=100),
            FailReport("dead", attempt=1, final=True),
        ],
        release=[JobReport("back", attempt=1), JobReport("gone")],
    )
    results = state.report_each("w1", reports, T + 1)

    def shown(outcomes: Sequence[str | Exception]) -> list[object]:
        return [o if isinstance(o, str) else type(o) for o in outcomes]

    assert shown(results.heartbeat) == ["in_progress", LeaseLost, LeaseLost]
    assert shown(results.complete) == ["completed", JobNotFound, BrokerProtocolError]
    assert results.complete[2] is parse_error
    assert shown(results.fail) == ["retrying", "dead"]
    assert shown(results.release) == ["unclaimed", "cancelled"]
    assert job(state, "hb").heartbeat_at == T + 1
    assert state.finished["done"].outcome == "completed"
    assert job(state, "retry").ready_at == T + 101
    assert job(state, "retry").last_error == "boom"
    assert state.dead["dead"].reason == "final"
    assert job(state, "back").status == "unclaimed"
    assert state.finished["gone"].outcome == "cancelled"
    assert job(state, "other").worker_id == "w2"
    assert_invariants(state)


def test_reports_apply_in_order_heartbeat_complete_fail_release() -> None:
    state = make()
    add(state, "a", "b")
    state.claim("w1", T, max_jobs=2)
    results = state.report_each(
        "w1",
        Reports(
            heartbeat=[JobReport("a")],
            complete=[JobReport("a")],
            fail=[FailReport("b", error="e")],
            release=[JobReport("b")],
        ),
        T,
    )
    assert (results.heartbeat, results.complete, results.fail) == (
        ["in_progress"],
        ["completed"],
        ["retrying"],
    )
    [released] = results.release  # the fail came first: b is no longer held
    assert isinstance(released, LeaseLost)


def test_rejected_reports_change_nothing() -> None:
    state = make()
    add(state, "a", "b")
    claim1(state)
    before = snapshot(state)
    results = state.report_each(
        "w1",
        Reports(
            heartbeat=[JobReport("a", 2)],
            complete=[JobReport("b"), JobReport("nope")],
            fail=[FailReport("a", attempt=3, error="e")],
            release=[JobReport("a", 5)],
        ),
        T + 1,
    )
    assert all(
        isinstance(o, LeaseLost | JobNotFound)
        for o in (*results.heartbeat, *results.complete, *results.fail, *results.release)
    )
    assert snapshot(state) == before
    assert state.report_each("w1", Reports(), T) == type(results)()


# ----------------------------------------------------------------------- claim


def test_claim_hands_out_a_lease() -> None:
    state = make(job_lease_ms=LEASE)
    state.enqueue([NewJob({"k": 1}, type="email", id="a")], T)
    [claimed] = state.claim("w1", T + 5)
    assert claimed == ClaimedJob("a", "email", {"k": 1}, 1, LEASE, created_at=T, max_attempts=3)
    j = job(state, "a")
    assert (j.status, j.attempts, j.worker_id, j.heartbeat_at) == ("in_progress", 1, "w1", T + 5)
    assert state.stats() == {"total": 1, "unclaimed": 0, "inProgress": 1, "completedTotal": 0}
    assert state.next_lease_expiry() == T + 5 + LEASE
    assert state.claim("w2", T + 5) == []


def test_claim_order_is_ready_time_then_enqueue_order() -> None:
    state = make()
    state.enqueue([NewJob(0, id="late", delay_ms=100)], T)
    add(state, "b", "c", now=T)
    add(state, "d", now=T, delay_ms=50)
    assert state.next_ready_at() == T
    assert [c.id for c in state.claim("w", T + 49, max_jobs=10)] == ["b", "c"]
    assert state.next_ready_at() == T + 50
    assert [c.id for c in state.claim("w", T + 99, max_jobs=10)] == ["d"]
    assert state.claim("w", T + 99, max_jobs=10) == []
    assert state.next_ready_at() == T + 100
    assert [c.id for c in state.claim("w", T + 100, max_jobs=10)] == ["late"]
    assert state.next_ready_at() is None


def test_claims_take_the_highest_priority_first_then_ready_time_and_order() -> None:
    state = make()
    add(state, "low", now=T, priority=-5)
    add(state, "a", "b", now=T)
    add(state, "x1", now=T, type="x", priority=3)
    add(state, "high", now=T, priority=10)
    add(state, "soon", now=T, priority=100, delay_ms=50)  # not ready: waits
    add(state, "x2", now=T + 1, type="x", priority=3)
    assert [c.id for c in state.claim("w", T + 10, max_jobs=3)] == ["high", "x1", "x2"]
    # a type filter keeps the order within the types asked for
    add(state, "y", now=T + 10, type="y", priority=1)
    assert [c.id for c in state.claim("w", T + 10, types=["default"])] == ["a"]
    # the delayed job's priority counts once it is ready
    assert [c.id for c in state.claim("w", T + 50, max_jobs=5)] == ["soon", "y", "b", "low"]


def test_priority_is_stored_and_kept_through_retry_death_and_requeue() -> None:
    state = make(default_max_attempts=1)
    add(state, "p", now=T, priority=7)
    add(state, "q", now=T)
    state = roundtrip(state)
    assert state.jobs["p"].priority == 7
    assert b'"priority":7' in state.jobs["p"].encode()
    assert b"priority" not in state.jobs["q"].encode()  # 0 is not written
    assert claim1(state, now=T).id == "p"
    state.fail("p", "w1", T, error="boom")
    assert state.dead["p"].priority == 7
    state = roundtrip(state)
    state.requeue_dead("p", T + 1)
    assert claim1(state, now=T + 2).id == "p"


def test_a_retried_job_queues_from_when_it_becomes_ready() -> None:
    state = make()
    add(state, "x")
    claim1(state, now=T)
    state.fail("x", "w1", T + 10, error="e", retry_in_ms=100)  # ready at T + 110
    add(state, "y", now=T + 50)
    add(state, "z", now=T + 200)
    assert [c.id for c in state.claim("w", T + 200, max_jobs=5)] == ["y", "x", "z"]


def test_claim_max_jobs() -> None:
    state = make()
    add(state, *"abcde")
    assert [c.id for c in state.claim("w", T, max_jobs=2)] == ["a", "b"]
    assert [c.id for c in state.claim("w", T, max_jobs=10)] == ["c", "d", "e"]
    assert state.claim("w", T, max_jobs=10) == []


def test_claim_type_filter() -> None:
    state = make()
    for i, t in enumerate(["a", "b", "a", "c", "b"]):
        state.enqueue([NewJob(i, type=t, id=f"{t}{i}")], T + i)
    assert [c.id for c in state.claim("w", T + 10, types=["b"])] == ["b1"]
    assert [c.type for c in state.claim("w", T + 10, types=["c", "a", "c"], max_jobs=10)] == [
        "a",
        "a",
        "c",
    ]
    assert [c.id for c in state.claim("w", T + 10, types=["a", "c"], max_jobs=10)] == []
    assert state.claim("w", T + 10, types=["nope"]) == []
    assert [c.id for c in state.claim("w", T + 10)] == ["b4"]


def test_claim_by_type_merges_types_in_order() -> None:
    state = make()
    state.enqueue([NewJob(0, type="a", id="a0", delay_ms=30)], T)
    state.enqueue([NewJob(0, type="b", id="b1", delay_ms=10)], T)
    state.enqueue([NewJob(0, type="a", id="a2", delay_ms=20)], T)
    state.enqueue([NewJob(0, type="b", id="b3", delay_ms=20)], T)
    claimed = state.claim("w", T + 30, types=["b", "a"], max_jobs=4)
    assert [c.id for c in claimed] == ["b1", "a2", "b3", "a0"]


@pytest.mark.parametrize(
    ("worker", "max_jobs"),
    [("", 1), (None, 1), (7, 1), ("w\udc00", 1), ("w", 0), ("w", -1), ("w", True), ("w", 1.0)],
)
def test_claim_rejects_bad_requests(worker: Any, max_jobs: Any) -> None:
    state = make()
    add(state, "a")
    before = snapshot(state)
    with pytest.raises(BrokerProtocolError):
        state.claim(worker, T, max_jobs=max_jobs)
    assert snapshot(state) == before


def test_a_reused_id_does_not_match_stale_index_entries() -> None:
    """Regression: heap entries left by a job that is gone must not match a later
    job with the same id (a typed claim took a job of another type, out of order)."""
    state = make(dedup_cap=0)
    state.enqueue([NewJob("old", type="x", id="a")], T)
    assert state.cancel("a", T) == "cancelled"  # gone: dedup_cap 0 forgets it at once
    assert not state.knows("a")
    state.enqueue([NewJob("b", type="y", id="b")], T + 1)
    state.enqueue([NewJob("new", type="y", id="a")], T + 2)
    assert state.claim("w", T + 10, types=["x"]) == []
    assert [c.id for c in state.claim("w", T + 10, max_jobs=5)] == ["b", "a"]


def test_a_reused_id_after_decode_does_not_match_stale_index_entries() -> None:
    state = make(dedup_cap=0)
    state.enqueue([NewJob("old", type="x", id="a")], T)
    state = roundtrip(state)
    state.complete(claim1(state, types=["x"]).id, "w1", T)
    assert not state.knows("a")
    state.enqueue([NewJob("b", type="y", id="b")], T + 1)
    state.enqueue([NewJob("new", type="y", id="a")], T + 2)
    assert state.claim("w", T + 10, types=["x"]) == []
    assert [c.id for c in state.claim("w", T + 10, max_jobs=5)] == ["b", "a"]


def test_many_requeues_keep_order_and_bound_the_indexes() -> None:
    state = make()
    add(state, "a", "b", "c")
    for i in range(3000):
        c = claim1(state, now=T + i)
        assert c.id == "a"
        state.release("a", "w1", T + i)
    assert [c.id for c in state.claim("w", T + 5000, max_jobs=5)] == ["a", "b", "c"]
    entries = len(state.index.ready) + sum(map(len, state.index.by_type.values()))
    assert entries < 5000
    assert_invariants(state)


# ------------------------------------------------------------------- heartbeat


def test_heartbeat_renews_the_lease() -> None:
    state = make(job_lease_ms=1000)
    add(state, "a", "b")
    state.claim("w1", T, max_jobs=2)
    assert state.next_lease_expiry() == T + 1000
    state.heartbeat("a", "w1", T + 600)
    assert job(state, "a").heartbeat_at == T + 600
    assert state.next_lease_expiry() == T + 1000  # "b" is first to run out now
    assert state.expire(T + 1000) == ["b"]
    assert state.next_lease_expiry() == T + 1600
    state.heartbeat("a", "w1", T + 1500, attempt=1)
    assert state.expire(T + 2499) == []
    assert state.next_lease_expiry() == T + 2500


def test_heartbeat_rejections() -> None:
    state = make()
    add(state, "held", "done", "dead", "queued")
    assert [c.id for c in state.claim("w1", T, max_jobs=3)] == ["held", "done", "dead"]
    state.complete("done", "w1", T)
    state.fail("dead", "w1", T, error="x", final=True)
    before = snapshot(state)
    with pytest.raises(JobNotFound):
        state.heartbeat("nope", "w1", T)
    with pytest.raises(LeaseLost, match="not held by worker"):
        state.heartbeat("held", "w2", T)
    with pytest.raises(LeaseLost, match="at attempt 1, not 2"):
        state.heartbeat("held", "w1", T, attempt=2)
    with pytest.raises(LeaseLost, match="not held by worker"):
        state.heartbeat("queued", "w1", T)
    with pytest.raises(LeaseLost, match="no longer in progress"):
        state.heartbeat("done", "w1", T)
    with pytest.raises(LeaseLost, match="no longer in progress"):
        state.heartbeat("dead", "w1", T)
    assert snapshot(state) == before


# -------------------------------------------------------------------- complete


def test_complete() -> None:
    state = make()
    add(state, "a")
    claim1(state)
    state.complete("a", "w1", T + 7, attempt=1)
    assert not state.jobs
    fin = state.finished["a"]
    assert (fin.outcome, fin.attempts, fin.created_at, fin.finished_at) == (
        "completed",
        1,
        T,
        T + 7,
    )
    assert state.lookup("a") is fin
    assert state.counters["completed"] == 1
    assert state.stats() == {"total": 0, "unclaimed": 0, "inProgress": 0, "completedTotal": 1}
    assert state.next_lease_expiry() is None
    with pytest.raises(LeaseLost):
        state.complete("a", "w1", T + 8)
    assert_invariants(state)


def test_complete_rejections_change_nothing() -> None:
    state = make()
    add(state, "a", "b")
    claim1(state)
    before = snapshot(state)
    with pytest.raises(JobNotFound):
        state.complete("nope", "w1", T)
    with pytest.raises(LeaseLost):
        state.complete("a", "w2", T)
    with pytest.raises(LeaseLost):
        state.complete("a", "w1", T, attempt=2)
    with pytest.raises(LeaseLost):
        state.complete("b", "w1", T)
    assert snapshot(state) == before


def test_an_old_attempt_cannot_complete_after_a_reclaim() -> None:
    state = make(job_lease_ms=1000)
    add(state, "a")
    claim1(state, "w1", T)
    assert state.expire(T + 1000) == ["a"]
    again = claim1(state, "w1", T + 1000)
    assert again.attempt == 2
    with pytest.raises(LeaseLost):
        state.complete("a", "w1", T + 1001, attempt=1)
    # osqueue clients send no attempt: the current holder may complete
    state.complete("a", "w1", T + 1001)
    assert state.finished["a"].attempts == 2


# ------------------------------------------------------------------------ fail


def test_fail_with_retry_in() -> None:
    state = make()
    add(state, "a")
    claim1(state)
    assert state.fail("a", "w1", T + 10, error="boom", retry_in_ms=500) == "retrying"
    j = job(state, "a")
    assert (j.status, j.attempts, j.ready_at, j.last_error) == ("unclaimed", 1, T + 510, "boom")
    assert (j.worker_id, j.heartbeat_at) == (None, None)
    assert state.counters["failed"] == 1
    assert state.next_lease_expiry() is None
    assert state.claim("w1", T + 509) == []
    assert claim1(state, "w2", T + 510).attempt == 2


def test_fail_with_zero_retry_is_ready_at_once() -> None:
    state = make()
    add(state, "a", "b")
    claim1(state)
    state.fail("a", "w1", T, error="e", retry_in_ms=0)
    assert [c.id for c in state.claim("w", T, max_jobs=2)] == ["a", "b"]


def test_fail_final_goes_to_the_dead_letters() -> None:
    state = make()
    state.enqueue([NewJob({"p": 1}, type="t", id="a", max_attempts=5)], T)
    claim1(state)
    assert state.fail("a", "w1", T + 3, error="bad input", final=True) == "dead"
    assert "a" not in state.jobs
    dead = state.dead["a"]
    assert (dead.reason, dead.attempts, dead.max_attempts, dead.died_at) == ("final", 1, 5, T + 3)
    assert (dead.payload, dead.type, dead.last_error) == ({"p": 1}, "t", "bad input")
    assert state.lookup("a") is dead
    assert (state.counters["failed"], state.counters["dead"]) == (1, 1)
    assert_invariants(state)


def test_fail_exhausted() -> None:
    state = make()
    state.enqueue([NewJob(1, id="a", max_attempts=2)], T)
    claim1(state)
    assert state.fail("a", "w1", T, error="one", retry_in_ms=0) == "retrying"
    assert claim1(state, "w2").attempt == 2
    assert state.fail("a", "w2", T, error="two", retry_in_ms=0) == "dead"
    dead = state.dead["a"]
    assert (dead.reason, dead.attempts, dead.last_error) == ("exhausted", 2, "two")
    assert (state.counters["failed"], state.counters["dead"]) == (2, 1)


@pytest.mark.parametrize("retry", [-1, True, 1.5, "5", 365 * 86_400_000 + 1])
def test_fail_rejects_a_bad_retry_delay(retry: Any) -> None:
    state = make()
    add(state, "a")
    claim1(state)
    before = snapshot(state)
    with pytest.raises(BrokerProtocolError, match="retryInMs"):
        state.fail("a", "w1", T, error="e", retry_in_ms=retry)
    assert snapshot(state) == before


def test_fail_rejections_change_nothing() -> None:
    state = make()
    add(state, "a", "b")
    claim1(state)
    before = snapshot(state)
    with pytest.raises(JobNotFound):
        state.fail("nope", "w1", T, error="e")
    with pytest.raises(LeaseLost):
        state.fail("a", "w2", T, error="e")
    with pytest.raises(LeaseLost):
        state.fail("a", "w1", T, error="e", attempt=3)
    with pytest.raises(LeaseLost):
        state.fail("b", "w1", T, error="e")
    for bad_error in (None, 3, "lone \udc00 surrogate"):
        with pytest.raises(BrokerProtocolError, match="error"):
            state.fail("a", "w1", T, error=bad_error)  # type: ignore[arg-type]
    assert snapshot(state) == before
    assert state.counters["failed"] == 0


def test_backoff_is_exponential_with_seeded_jitter() -> None:
    limits = {"retry_base_ms": 1000, "retry_max_ms": 300_000, "retry_jitter": 0.2}
    state = make(seed=42, **limits)
    rng = random.Random(42)
    for attempts, base in [
        (1, 1000),
        (2, 2000),
        (3, 4000),
        (9, 256_000),
        (10, 300_000),
        (60, 300_000),
    ]:
        expected = round(base * (1 + rng.uniform(-0.2, 0.2)))
        assert state.backoff_ms(attempts) == expected
        assert 0.8 * base <= expected <= 1.2 * base


def test_backoff_without_jitter() -> None:
    state = make(retry_base_ms=100, retry_max_ms=1000, retry_jitter=0.0)
    assert [state.backoff_ms(a) for a in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]


def test_fail_without_retry_in_uses_the_backoff() -> None:
    state = make(seed=7, retry_base_ms=1000, retry_jitter=0.2)
    rng = random.Random(7)
    state.enqueue([NewJob(1, id="a", max_attempts=3)], T)
    now = T
    for attempt, base in [(1, 1000), (2, 2000)]:
        claimed = claim1(state, now=now)
        assert claimed.attempt == attempt
        state.fail("a", "w1", now, error="e")
        expected = now + round(base * (1 + rng.uniform(-0.2, 0.2)))
        assert job(state, "a").ready_at == expected
        assert state.claim("w1", expected - 1) == []
        now = expected
    claim1(state, now=now)
    assert state.fail("a", "w1", now, error="e") == "dead"


# --------------------------------------------------------------------- release


def test_release_keeps_the_place_and_does_not_count_the_attempt() -> None:
    state = make()
    add(state, "a", "b")
    add(state, "c", now=T + 5)
    claim1(state, now=T + 10)
    before_failed = state.counters["failed"]
    assert state.release("a", "w1", T + 20, attempt=1) == "unclaimed"
    j = job(state, "a")
    assert (j.status, j.attempts, j.ready_at, j.worker_id) == ("unclaimed", 0, T, None)
    assert state.counters["failed"] == before_failed
    assert [(c.id, c.attempt) for c in state.claim("w2", T + 20, max_jobs=3)] == [
        ("a", 1),
        ("b", 1),
        ("c", 1),
    ]


def test_release_of_a_retried_job_keeps_its_retry_time() -> None:
    state = make()
    add(state, "a")
    claim1(state, now=T)
    state.fail("a", "w1", T, error="e", retry_in_ms=100)
    claim1(state, now=T + 100)
    add(state, "b", now=T + 150)
    state.release("a", "w1", T + 200)
    assert job(state, "a").attempts == 1
    assert job(state, "a").ready_at == T + 100
    assert [c.id for c in state.claim("w", T + 200, max_jobs=2)] == ["a", "b"]


def test_release_rejections() -> None:
    state = make()
    add(state, "a", "b")
    claim1(state)
    before = snapshot(state)
    with pytest.raises(JobNotFound):
        state.release("nope", "w1", T)
    with pytest.raises(LeaseLost):
        state.release("a", "w2", T)
    with pytest.raises(LeaseLost):
        state.release("a", "w1", T, attempt=2)
    with pytest.raises(LeaseLost):
        state.release("b", "w1", T)
    assert snapshot(state) == before


# ---------------------------------------------------------------------- cancel


def test_cancel_a_queued_job() -> None:
    state = make()
    add(state, "a", "b")
    assert state.cancel("a", T + 1) == "cancelled"
    fin = state.finished["a"]
    assert (fin.outcome, fin.attempts, fin.finished_at) == ("cancelled", 0, T + 1)
    assert state.counters["cancelled"] == 1
    assert [c.id for c in state.claim("w", T + 1, max_jobs=5)] == ["b"]
    assert_invariants(state)


def test_cancel_an_in_progress_job_then_heartbeat() -> None:
    state = make()
    add(state, "a")
    claim1(state)
    assert state.cancel("a", T + 1) == "cancelling"
    assert state.cancel("a", T + 2) == "cancelling"
    assert job(state, "a").cancel_requested
    assert state.counters["cancelled"] == 0
    with pytest.raises(LeaseLost, match="cancelled"):
        state.heartbeat("a", "w1", T + 3)
    fin = state.finished["a"]
    assert (fin.outcome, fin.attempts, fin.finished_at) == ("cancelled", 1, T + 3)
    assert state.counters["cancelled"] == 1
    assert state.in_progress_count == 0
    assert_invariants(state)


def test_cancelled_in_progress_job_then_complete_or_fail() -> None:
    state = make()
    add(state, "a", "b")
    state.claim("w1", T, max_jobs=2)
    state.cancel("a", T)
    state.cancel("b", T)
    with pytest.raises(LeaseLost, match="cancelled"):
        state.complete("a", "w1", T + 1)
    with pytest.raises(LeaseLost, match="cancelled"):
        state.fail("b", "w1", T + 1, error="e")
    assert {i: state.finished[i].outcome for i in ("a", "b")} == {
        "a": "cancelled",
        "b": "cancelled",
    }
    assert (state.counters["completed"], state.counters["failed"]) == (0, 0)
    assert state.counters["cancelled"] == 2


def test_cancelled_in_progress_job_then_release() -> None:
    state = make()
    add(state, "a")
    claim1(state)
    state.cancel("a", T)
    # no LeaseLost: the worker was letting go anyway
    assert state.release("a", "w1", T + 1) == "cancelled"
    fin = state.finished["a"]
    assert (fin.outcome, fin.attempts) == ("cancelled", 0)
    assert state.counters["cancelled"] == 1


def test_cancelled_in_progress_job_whose_lease_expires() -> None:
    state = make(job_lease_ms=1000)
    add(state, "a")
    claim1(state)
    state.cancel("a", T)
    assert state.expire(T + 1000) == ["a"]
    assert state.finished["a"].outcome == "cancelled"
    assert (state.counters["cancelled"], state.counters["expired"]) == (1, 1)
    assert not state.jobs


def test_cancel_a_dead_job() -> None:
    state = make()
    add(state, "a")
    claim1(state)
    state.fail("a", "w1", T, error="e", final=True)
    assert state.cancel("a", T + 5) == "cancelled"
    assert "a" not in state.dead
    fin = state.finished["a"]
    assert (fin.outcome, fin.attempts, fin.finished_at) == ("cancelled", 1, T + 5)
    assert (state.counters["dead"], state.counters["cancelled"]) == (1, 1)
    with pytest.raises(JobNotDead, match="not in the dead-letter list"):
        state.requeue_dead("a", T + 6)
    assert_invariants(state)


def test_cancel_a_finished_job_changes_nothing() -> None:
    state = make()
    add(state, "a", "b")
    state.complete(claim1(state).id, "w1", T)
    state.cancel("b", T)
    before = snapshot(state)
    assert state.cancel("a", T + 1) == "completed"
    assert state.cancel("b", T + 1) == "cancelled"
    assert snapshot(state) == before
    assert state.counters["cancelled"] == 1


def test_cancel_unknown() -> None:
    state = make()
    with pytest.raises(JobNotFound):
        state.cancel("nope", T)


# ---------------------------------------------------------------- dead letters


def kill(state: QueueState, job_id: str, now: int = T) -> None:
    add(state, job_id, now=now)
    assert claim1(state, "killer", now, types=["default"]).id == job_id
    state.fail(job_id, "killer", now, error=f"error of {job_id}", final=True)


def test_dead_letter_cap_drops_the_oldest_and_counts_it(caplog: pytest.LogCaptureFixture) -> None:
    state = make(dead_letter_cap=2)
    kill(state, "d1")
    kill(state, "d2")
    assert state.counters["deadDropped"] == 0
    with caplog.at_level(logging.WARNING, logger="trioq.state"):
        kill(state, "d3")
    assert list(state.dead) == ["d2", "d3"]
    assert (state.counters["dead"], state.counters["deadDropped"]) == (3, 1)
    [record] = [r for r in caplog.records if r.name == "trioq.state"]
    assert record.levelno == logging.WARNING
    assert "'d1'" in record.getMessage()
    assert "error of d1" in record.getMessage()
    # a dropped id is forgotten: submitting it again creates a new job
    assert not state.knows("d1")
    assert add(state, "d1") == [EnqueueResult("d1", False)]
    assert_invariants(state)


def test_requeue_dead() -> None:
    state = make()
    state.enqueue([NewJob({"p": 1}, type="t", id="a", max_attempts=2)], T)
    add(state, "b")
    claim1(state, types=["t"])
    state.fail("a", "w1", T, error="e1", retry_in_ms=0)
    claim1(state, types=["t"])
    state.fail("a", "w1", T, error="e2", retry_in_ms=0)
    assert state.dead["a"].reason == "exhausted"
    state.requeue_dead("a", T + 100)
    assert "a" not in state.dead
    j = job(state, "a")
    assert (j.status, j.attempts, j.max_attempts, j.type, j.payload) == (
        "unclaimed",
        0,
        2,
        "t",
        {"p": 1},
    )
    assert (j.created_at, j.ready_at, j.last_error, j.order) == (T, T + 100, "e2", 3)
    assert list(state.jobs) == ["b", "a"]
    assert state.counters["requeued"] == 1
    assert [(c.id, c.attempt) for c in state.claim("w", T + 100, max_jobs=2)] == [
        ("b", 1),
        ("a", 1),
    ]
    assert_invariants(state)


def test_requeue_dead_rejections() -> None:
    state = make(max_queued=1)
    kill(state, "d")
    add(state, "q")
    before = snapshot(state)
    with pytest.raises(JobNotFound):
        state.requeue_dead("nope", T)
    with pytest.raises(JobNotDead):
        state.requeue_dead("q", T)
    with pytest.raises(QueueFull):
        state.requeue_dead("d", T)
    assert snapshot(state) == before


# ---------------------------------------------------------------- lease expiry


def test_lease_expiry_requeues() -> None:
    state = make(job_lease_ms=1000)
    add(state, "a", "b")
    claim1(state, now=T)
    assert state.expire(T + 999) == []
    assert state.expire(T + 1000) == ["a"]
    j = job(state, "a")
    assert (j.status, j.attempts, j.ready_at, j.last_error) == (
        "unclaimed",
        1,
        T + 1000,
        "lease expired",
    )
    assert (j.worker_id, j.heartbeat_at) == (None, None)
    assert state.counters["expired"] == 1
    assert state.counters["failed"] == 0
    # it queues from when its lease ran out: "b" (ready since T) goes first
    assert [(c.id, c.attempt) for c in state.claim("w2", T + 1000, max_jobs=2)] == [
        ("b", 1),
        ("a", 2),
    ]
    with pytest.raises(LeaseLost):
        state.heartbeat("a", "w1", T + 1001)


def test_lease_expiry_of_the_last_attempt_dead_letters() -> None:
    state = make(job_lease_ms=1000)
    state.enqueue([NewJob(1, id="a", max_attempts=1), NewJob(2, id="b", max_attempts=2)], T)
    state.claim("w1", T, max_jobs=2)
    assert state.expire(T + 1000) == ["a", "b"]
    dead = state.dead["a"]
    assert (dead.reason, dead.attempts, dead.died_at, dead.last_error) == (
        "expired",
        1,
        T + 1000,
        "lease expired",
    )
    assert job(state, "b").status == "unclaimed"
    assert (state.counters["expired"], state.counters["dead"]) == (2, 1)


def test_lease_expiry_keeps_the_last_real_error() -> None:
    state = make(job_lease_ms=1000)
    state.enqueue([NewJob(1, id="a", max_attempts=2)], T)
    claim1(state)
    state.fail("a", "w1", T, error="real cause", retry_in_ms=0)
    claim1(state)
    state.expire(T + 1000)
    assert state.dead["a"].last_error == "real cause"


def test_expiry_processes_leases_that_end_together_in_a_canonical_order() -> None:
    """Leases ending at the same time expire in (heartbeat, enqueue order), whatever
    the order of the heartbeats, so a decoded document behaves as the original."""
    state = make(job_lease_ms=1000, dead_letter_cap=10)
    state.enqueue([NewJob(i, id=i, max_attempts=1) for i in ("a", "b", "c")], T)
    state.claim("w", T, max_jobs=3)
    state.heartbeat("c", "w", T + 5)
    state.heartbeat("a", "w", T + 5)
    state.heartbeat("b", "w", T + 5)
    twin = roundtrip(state)
    assert state.expire(T + 1005) == ["a", "b", "c"]
    assert twin.expire(T + 1005) == ["a", "b", "c"]
    assert list(state.dead) == ["a", "b", "c"]
    assert state.encode() == twin.encode()


def test_renew_all_leases() -> None:
    state = make(job_lease_ms=1000)
    add(state, "a", "b", "c")
    claim1(state, now=T)
    claim1(state, now=T + 100)
    state.renew_all_leases(T + 5000)
    assert [job(state, i).heartbeat_at for i in "abc"] == [T + 5000, T + 5000, None]
    assert state.next_lease_expiry() == T + 6000
    assert state.expire(T + 5999) == []
    assert state.expire(T + 6000) == ["a", "b"]
    assert state.encode() == roundtrip(state).encode()


# ------------------------------------------------------------------ dedup window


def test_dedup_window_expiry_by_time() -> None:
    state = make(dedup_window_ms=1000)
    add(state, "a")
    state.complete(claim1(state).id, "w1", T + 10)
    state.expire(T + 1009)
    assert state.knows("a")
    assert add(state, "a", now=T + 1009) == [EnqueueResult("a", True)]
    state.expire(T + 1010)
    assert not state.knows("a")
    assert state.lookup("a") is None
    assert add(state, "a", now=T + 1010) == [EnqueueResult("a", False)]
    assert job(state, "a").created_at == T + 1010


def test_dedup_window_keeps_dead_jobs() -> None:
    state = make(dedup_window_ms=1000)
    kill(state, "d")
    state.expire(T + 10**9)
    assert add(state, "d") == [EnqueueResult("d", True)]


def test_dedup_window_expiry_by_count() -> None:
    state = make(dedup_cap=2)
    add(state, "a", "b", "c")
    for _ in range(3):
        c = claim1(state)
        state.complete(c.id, "w1", T)
    assert list(state.finished) == ["b", "c"]
    assert add(state, "b", "a") == [EnqueueResult("b", True), EnqueueResult("a", False)]


def test_expire_trims_the_dedup_window_to_a_lower_cap() -> None:
    state = make()
    add(state, "a", "b", "c")
    state.cancel("a", T)
    state.cancel("b", T)
    state.cancel("c", T)
    smaller = QueueState.decode(state.encode(), limits=Limits(dedup_cap=1))
    assert len(smaller.finished) == 3
    smaller.expire(T)
    assert list(smaller.finished) == ["c"]


# ----------------------------------------------------------- delayed wake-ups


def test_next_delayed_at_and_pop_due() -> None:
    state = make()
    add(state, "now")
    assert state.next_delayed_at() is None  # ready at once: no wake-up needed
    state.enqueue([NewJob(1, id="d1", delay_ms=300), NewJob(2, id="d2", delay_ms=100)], T)
    assert state.next_delayed_at() == T + 100
    assert state.pop_due(T + 99) == 0
    assert state.pop_due(T + 100) == 1
    assert state.next_delayed_at() == T + 300
    claim1(state, now=T + 100)  # "now"
    state.fail("now", "w1", T + 100, error="e", retry_in_ms=50)
    assert state.next_delayed_at() == T + 150
    state.cancel("now", T + 120)  # the cancelled job's wake-up goes with it
    assert state.next_delayed_at() == T + 300
    assert state.pop_due(T + 1000) == 1
    assert state.next_delayed_at() is None


def test_a_released_job_needs_no_wake_up() -> None:
    state = make()
    add(state, "a")
    claim1(state)
    state.release("a", "w1", T + 10)
    assert state.next_delayed_at() is None
    assert state.next_ready_at() == T


# ------------------------------------------------------------------- the codec


def populated() -> QueueState:
    state = make(job_lease_ms=1000, dead_letter_cap=5)
    state.seq = 41
    state.leader = LeaderInfo("broker-1", "http://10.0.0.1:8080", 3, T - 5)
    state.enqueue(
        [
            NewJob({"n": 1, "nested": [1, 2.5, None, True, "ü"]}, type="email", id="a"),
            NewJob("b", id="b", max_attempts=1),
            NewJob(None, id="c", delay_ms=5000),
            NewJob(3, id="d"),
            NewJob(4, id="e"),
            NewJob(5, type="resize", id="f"),
        ],
        T,
    )
    state.claim("w1", T + 1, max_jobs=3)  # a, b, d
    state.heartbeat("a", "w1", T + 2)
    state.complete("d", "w1", T + 3)
    state.fail("b", "w1", T + 4, error="bad", final=True)
    state.cancel("a", T + 5)
    state.cancel("e", T + 6)
    return state


def test_encode_is_deterministic_json() -> None:
    state = populated()
    data = state.encode()
    assert data == state.encode()
    doc = orjson.loads(data)
    assert doc["format"] == "trioq.queue"
    assert doc["formatVersion"] == 1
    assert doc["seq"] == 41
    assert doc["leader"] == {
        "brokerId": "broker-1",
        "url": "http://10.0.0.1:8080",
        "epoch": 3,
        "leaseAt": T - 5,
        "released": False,
    }
    assert [j["id"] for j in doc["jobs"]] == ["a", "c", "f"]
    assert [j["status"] for j in doc["jobs"]] == ["in_progress", "unclaimed", "unclaimed"]
    assert doc["jobs"][0]["cancelRequested"] is True
    assert doc["jobs"][0]["workerId"] == "w1"
    assert [d["id"] for d in doc["dead"]] == ["b"]
    assert [(f["id"], f["outcome"]) for f in doc["finished"]] == [
        ("d", "completed"),
        ("e", "cancelled"),
    ]
    assert doc["counters"]["enqueued"] == 6


def test_decode_encode_is_the_identity() -> None:
    state = populated()
    data = state.encode()
    decoded = QueueState.decode(data, limits=state.limits)
    assert decoded.encode() == data
    assert decoded.seq == 41
    assert decoded.leader == state.leader
    assert decoded.stats() == state.stats()
    assert decoded.approx_bytes == state.approx_bytes
    assert decoded.next_lease_expiry() == state.next_lease_expiry()
    assert decoded.next_ready_at() == state.next_ready_at()
    assert_invariants(decoded)


def test_a_decoded_state_behaves_the_same() -> None:
    state = populated()
    twin = QueueState.decode(state.encode(), limits=state.limits, rng=random.Random(5))
    state.rng.seed(5)
    for s in (state, twin):
        with pytest.raises(LeaseLost, match="cancelled"):
            s.heartbeat("a", "w1", T + 10)
        assert [c.id for c in s.claim("w2", T + 10, max_jobs=5)] == ["f"]
        s.fail("f", "w2", T + 11, error="x")
        # "f" retries after about a second, "c" was delayed by five
        assert [c.id for c in s.claim("w2", T + 6000, max_jobs=5)] == ["f", "c"]
        s.expire(T + 7000)
        s.enqueue([NewJob(1, id="g")], T + 7000)
        s.requeue_dead("b", T + 7001)
    assert state.encode() == twin.encode()


def test_the_size_cap_holds_the_same_after_decode() -> None:
    """Regression: a decoded state measured in-progress and failed jobs by their
    current encoding, the original by their size when they entered."""
    state = make()
    add(state, "a")
    claim1(state, "a-worker-with-a-long-name")
    state.fail("a", "a-worker-with-a-long-name", T, error="e" * 5000, retry_in_ms=0)
    state.encode()
    twin = roundtrip(state)
    assert twin.approx_bytes == state.approx_bytes > 5000
    payload = "p" * 998  # 1000 bytes encoded: one more such job fits, two do not
    for s in (state, twin):
        s.limits.max_document_bytes = s.approx_bytes + 1500
        s.enqueue([NewJob(payload, id="fits")], T)
        with pytest.raises(QueueFull):
            s.enqueue([NewJob(payload, id="does-not")], T)


def test_decode_preserves_orders_and_indexes() -> None:
    state = make(job_lease_ms=1000)
    for i, t in enumerate(["x", "y", "x", "y"]):
        state.enqueue([NewJob(i, type=t, id=f"j{i}", delay_ms=40 - 10 * i)], T)
    claim1(state, now=T + 100, types=["y"])  # j3
    twin = roundtrip(state)
    assert [c.id for c in twin.claim("w", T + 200, types=["x"], max_jobs=5)] == ["j2", "j0"]
    assert [c.id for c in twin.claim("w", T + 200, max_jobs=5)] == ["j1"]
    assert twin.expire(T + 1100) == ["j3"]
    assert twin.expire(T + 1200) == ["j0", "j1", "j2"]


def valid_doc() -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(populated().encode())
    return doc


def damaged(**changes: Any) -> bytes:
    doc = valid_doc()
    for key, value in changes.items():
        if value is KeyError:
            del doc[key]
        else:
            doc[key] = value
    return orjson.dumps(doc)


def with_job(**fields: Any) -> bytes:
    doc = valid_doc()
    for key, value in fields.items():
        if value is KeyError:
            del doc["jobs"][0][key]
        else:
            doc["jobs"][0][key] = value
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'"trioq.queue"',
        b"{}",
        b'{"format": "osqueue", "formatVersion": 1}',
        damaged(format="trioq.queue.v2"),
        damaged(formatVersion=2),
        damaged(formatVersion="1"),
        damaged(formatVersion=KeyError),
    ],
)
def test_decode_rejects_unknown_documents(data: bytes) -> None:
    with pytest.raises(DocumentInvalid):
        QueueState.decode(data)


def test_decode_names_the_document_and_the_version() -> None:
    with pytest.raises(DocumentInvalid, match=r"s3://bucket/queue\.json .*version 2"):
        QueueState.decode(damaged(formatVersion=2), name="s3://bucket/queue.json")
    with pytest.raises(DocumentInvalid, match="not valid JSON"):
        QueueState.decode(b"{", name="q")


@pytest.mark.parametrize(
    "data",
    [
        damaged(seq=-1),
        damaged(seq=True),
        damaged(seq="3"),
        damaged(seq=KeyError),
        damaged(nextOrder=KeyError),
        damaged(counters=[]),
        damaged(counters={"enqueued": -2}),
        damaged(jobs=KeyError),
        damaged(jobs=7),
        damaged(jobs={"a": 1}),
        damaged(jobs=[1]),
        damaged(dead=KeyError),
        damaged(dead=[{"id": "x"}]),
        damaged(finished=[{"id": "x", "outcome": "exploded"}]),
        damaged(leader=[]),
        damaged(leader={"brokerId": "b"}),
        damaged(leader={"brokerId": "b", "url": "u", "epoch": -1, "leaseAt": 0}),
        with_job(status="running"),
        with_job(id=5),
        with_job(attempts="1"),
        with_job(attempts=1.0),
        with_job(maxAttempts=KeyError),
        with_job(readyAt=None),
        with_job(workerId=None),
        with_job(heartbeatAt=None),
        with_job(lastError=3),
    ],
)
def test_decode_rejects_damaged_documents(data: bytes) -> None:
    with pytest.raises(DocumentInvalid, match="damaged"):
        QueueState.decode(data)


def test_decode_rejects_a_job_listed_twice() -> None:
    doc = valid_doc()
    doc["jobs"].append(doc["jobs"][1])
    with pytest.raises(DocumentInvalid, match="twice"):
        QueueState.decode(orjson.dumps(doc))


def test_records_roundtrip() -> None:
    state = populated()
    assert state.jobs
    assert state.dead
    assert state.finished
    for job_record in state.jobs.values():
        assert Job.from_json(orjson.loads(job_record.encode())).encode() == job_record.encode()
    for dead in state.dead.values():
        assert DeadJob.from_json(orjson.loads(dead.encode())).encode() == dead.encode()
    for fin in state.finished.values():
        assert FinishedJob.from_json(orjson.loads(fin.encode())).encode() == fin.encode()


def test_decode_header_reads_seq_and_leader_without_the_jobs() -> None:
    state = QueueState(rng=random.Random(1))
    state.seq = 41
    # a URL and payloads that contain the marker the header reader cuts at
    state.leader = LeaderInfo('b-1",x', 'http://h/,"jobs":[', 7, 1000, released=True)
    state.enqueue([NewJob({"k": ',"jobs":'}, type=',"jobs":')], 1000)
    data = state.encode()
    assert QueueState.decode_header(data) == (41, state.leader)
    assert QueueState.decode(data).leader == state.leader
    with pytest.raises(DocumentInvalid, match="format version 2"):
        QueueState.decode_header(data.replace(b'"formatVersion":1', b'"formatVersion":2'))
    with pytest.raises(DocumentInvalid, match="not valid JSON"):
        QueueState.decode_header(b'{"format":"trioq.queue",')


def test_the_size_cap_counts_dead_letters_and_the_dedup_window() -> None:
    state = make()
    big = {"blob": "x" * 4000}
    state.enqueue([NewJob(big, id="doomed", max_attempts=1)], T)
    state.claim("w", T)
    state.fail("doomed", "w", T, error="boom")
    state.enqueue([NewJob(1, id="done")], T)
    state.claim("w", T)
    state.complete("done", "w", T)
    assert state.approx_bytes == 0
    assert state.side_bytes > 4000
    # the dead job's payload still rides in every write: it counts against the cap
    state.limits.max_document_bytes = state.side_bytes + 1000
    with pytest.raises(QueueFull):
        state.enqueue([NewJob({"blob": "y" * 900})], T)
    state.cancel("doomed", T)  # leaves the dead letters: its payload is gone
    state.enqueue([NewJob({"blob": "y" * 400})], T)
