"""Property-based tests of the queue model: random mutation sequences (hypothesis).

A :class:`RuleBasedStateMachine` drives a :class:`QueueState` with every mutation,
valid and invalid, and checks it against a plain reference model (lists and dicts,
scanned in full, obviously right and far too slow for production). After every
step it checks the properties the model exists for:

- every job is in exactly one place (queued, in progress, dead or finished);
- claims come in order of (ready time, enqueue order) and respect the type filter;
- attempts never exceed the maximum;
- the counters add up;
- decode(encode(s)) re-encodes to the same bytes, and behaves the same: a twin
  decoded from the document gets every mutation too and must answer the same and
  encode the same, step after step;
- resubmitting an id ever accepted creates nothing while it is within the dedup
  window (its job queued, in progress or dead, or finished less than the window ago
  and not pushed out by the count cap).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from trioq import BrokerProtocolError, JobNotDead, JobNotFound, LeaseLost, QueueFull, TrioqError
from trioq.core._state import Limits, NewJob, QueueState

T0 = 1_700_000_000_000
IDS = [f"j{i}" for i in range(10)]
TYPES = ["a", "b"]
WORKERS = ["w1", "w2"]
LIMITS = {
    "job_lease_ms": 1000,
    "max_queued": 8,
    "dead_letter_cap": 3,
    "dedup_window_ms": 4000,
    "dedup_cap": 4,
    "retry_base_ms": 100,
    "retry_max_ms": 800,
    "retry_jitter": 0.5,
    "max_attempts_limit": 5,
}


def limits() -> Limits:
    return Limits(**LIMITS)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the model


@dataclass
class MJob:
    id: str
    type: str
    payload: Any
    max_attempts: int
    created_at: int
    ready_at: int
    order: int
    status: str = "unclaimed"
    attempts: int = 0
    worker: str | None = None
    hb: int | None = None
    last_error: str | None = None
    cancel: bool = False
    priority: int = 0
    unique_key: str | None = None

    def claim_key(self) -> tuple[int, int, int]:
        """The order claims take ready jobs in."""
        return (-self.priority, self.ready_at, self.order)


@dataclass
class MDead:
    job: MJob
    reason: str
    died_at: int


@dataclass
class MFinished:
    type: str
    outcome: str
    attempts: int
    created_at: int
    finished_at: int


class Model:
    """The queue as the design describes it, with no indexes at all."""

    def __init__(self) -> None:
        self.limits = limits()
        self.jobs: dict[str, MJob] = {}  # document order
        self.leases: list[str] = []  # claim / heartbeat order
        self.dead: dict[str, MDead] = {}
        self.finished: dict[str, MFinished] = {}
        self.counters = dict.fromkeys(
            [
                "enqueued",
                "completed",
                "failed",
                "dead",
                "deadDropped",
                "expired",
                "cancelled",
                "requeued",
            ],
            0,
        )
        self.next_order = 1
        # history for the dedup property: when each id last finished, and how many
        # jobs finished before it; ids pushed out of the dead-letter list
        self.finishes = 0
        self.last_finish: dict[str, tuple[int, int]] = {}
        self.dead_dropped: set[str] = set()
        self.dead_cancelled = 0

    def knows(self, job_id: str) -> bool:
        return job_id in self.jobs or job_id in self.dead or job_id in self.finished

    def holder(self, key: str) -> str | None:
        """The queued job a submit with uniqueness ``key`` duplicates: the first in
        document order with it."""
        return next((j.id for j in self.jobs.values() if j.unique_key == key), None)

    def held(self, job_id: str, worker: str, attempt: int | None) -> type[TrioqError] | None:
        job = self.jobs.get(job_id)
        if job is None:
            return LeaseLost if self.knows(job_id) else JobNotFound
        if job.status != "in_progress" or job.worker != worker:
            return LeaseLost
        if attempt is not None and attempt != job.attempts:
            return LeaseLost
        return None

    def ready(self, now: int, types: list[str] | None) -> list[MJob]:
        return sorted(
            (
                j
                for j in self.jobs.values()
                if j.status == "unclaimed"
                and j.ready_at <= now
                and (types is None or j.type in types)
            ),
            key=MJob.claim_key,
        )

    def add(self, job: MJob) -> None:
        self.jobs[job.id] = job
        self.last_finish.pop(job.id, None)
        self.dead_dropped.discard(job.id)

    def leave(self, job: MJob) -> None:
        del self.jobs[job.id]
        if job.status == "in_progress":
            self.leases.remove(job.id)

    def finish(self, job: MJob, outcome: str, now: int) -> None:
        self.leave(job)
        self.remember(job.id, MFinished(job.type, outcome, job.attempts, job.created_at, now))

    def remember(self, job_id: str, record: MFinished) -> None:
        self.finished[job_id] = record
        self.last_finish[job_id] = (record.finished_at, self.finishes)
        self.finishes += 1
        if len(self.finished) > self.limits.dedup_cap:
            del self.finished[next(iter(self.finished))]

    def kill(self, job: MJob, reason: str, now: int) -> None:
        self.leave(job)
        self.dead[job.id] = MDead(replace(job), reason, now)
        self.counters["dead"] += 1
        while len(self.dead) > self.limits.dead_letter_cap:
            dropped = next(iter(self.dead))
            del self.dead[dropped]
            self.dead_dropped.add(dropped)
            self.counters["deadDropped"] += 1

    def requeue(self, job: MJob, ready_at: int) -> None:
        self.leases.remove(job.id)
        job.status = "unclaimed"
        job.worker = job.hb = None
        job.ready_at = ready_at


# -------------------------------------------------------------- the machine


Outcome = tuple[str, Any]


def run(op: Callable[[QueueState], Any], state: QueueState) -> Outcome:
    try:
        return ("ok", op(state))
    except TrioqError as exc:
        return (type(exc).__name__, str(exc))


def twin_of(state: QueueState) -> QueueState:
    rng = random.Random()
    rng.setstate(state.rng.getstate())
    return QueueState.decode(state.encode(), limits=limits(), rng=rng)


def has_leases(machine: QueueMachine) -> bool:
    return machine.state.in_progress_count > 0


def has_unclaimed(machine: QueueMachine) -> bool:
    return machine.state.unclaimed_count > 0


def has_dead(machine: QueueMachine) -> bool:
    return bool(machine.state.dead)


def valid_item() -> st.SearchStrategy[NewJob]:
    return st.builds(
        NewJob,
        payload=st.one_of(
            st.integers(-5, 5), st.text(max_size=3), st.lists(st.booleans(), max_size=2)
        ),
        type=st.sampled_from(TYPES),
        id=st.one_of(st.none(), st.sampled_from(IDS)),
        max_attempts=st.sampled_from([None, 1, 2, 3]),
        delay_ms=st.sampled_from([0, 0, 0, 50, 700, 3000]),
        priority=st.sampled_from([0, 0, 0, 1, -1, 5]),
        unique_key=st.sampled_from([None, None, None, "k1", "k2"]),
    )


INVALID_ITEMS = [
    NewJob(1, id="bad id"),
    NewJob(1, type=""),
    NewJob(1, max_attempts=0),
    NewJob(1, max_attempts=6),
    NewJob(1, delay_ms=-1),
    NewJob(1, priority=2**31),
    NewJob(1, unique_key=""),
    NewJob(1, unique_key="\ud800"),
]


class QueueMachine(RuleBasedStateMachine):
    state: QueueState
    twin: QueueState

    @initialize(seed=st.integers(0, 2**32 - 1))
    def setup(self, seed: int) -> None:
        self.now = T0
        self.state = QueueState(limits=limits(), rng=random.Random(seed))
        self.twin = twin_of(self.state)
        self.model = Model()
        self.accepted: set[str] = set()

    # -- helpers

    def both(self, op: Callable[[QueueState], Any]) -> Outcome:
        """Apply ``op`` to the state, to its long-lived twin, and to a state decoded
        from its document just now: all three must answer and encode the same."""
        fresh = twin_of(self.state)
        outcome = run(op, self.state)
        assert run(op, self.twin) == outcome
        assert run(op, fresh) == outcome
        assert fresh.encode() == self.state.encode()
        return outcome

    def pick(self, data: st.DataObject, preferred: list[str]) -> str:
        everything = sorted(self.accepted | {"nope"})
        choices = [st.sampled_from(everything)]
        if preferred:
            choices.insert(0, st.sampled_from(sorted(preferred)))
        job_id: str = data.draw(st.one_of(*choices))
        return job_id

    def lease_args(self, data: st.DataObject) -> tuple[str, str, int | None]:
        in_progress = [i for i, j in self.model.jobs.items() if j.status == "in_progress"]
        job_id = self.pick(data, in_progress)
        job = self.model.jobs.get(job_id)
        holder = job.worker if job is not None and job.worker is not None else "w1"
        worker = data.draw(st.sampled_from([holder, holder, "w2" if holder == "w1" else "w1"]))
        current = job.attempts if job is not None else 1
        attempt = data.draw(st.sampled_from([None, current, current, current - 1, current + 1]))
        return job_id, worker, attempt

    @staticmethod
    def expect(outcome: Outcome, error: type[TrioqError] | None) -> Any:
        name, value = outcome
        if error is None:
            assert name == "ok", value
            return value
        assert name == error.__name__, (name, value)
        return None

    # -- time

    @rule(ms=st.sampled_from([1, 10, 100, 400, 1000, 3000]), commit=st.booleans())
    def advance(self, ms: int, commit: bool) -> None:
        self.now += ms
        if commit:
            # what the engine does at the start of every commit
            self.expire()
            self.pop_due()

    # -- mutations

    @rule(
        items=st.lists(valid_item(), min_size=1, max_size=3),
        invalid=st.one_of(st.none(), st.sampled_from(INVALID_ITEMS)),
        where=st.integers(0, 3),
    )
    def enqueue(self, items: list[NewJob], invalid: NewJob | None, where: int) -> None:
        m, now = self.model, self.now
        if invalid is not None:
            items = [*items[:where], invalid, *items[where:]]
        outcome = self.both(lambda s: s.enqueue(items, now))
        if invalid is not None:
            self.expect(outcome, BrokerProtocolError)
            return
        # what each item becomes: a new job, or the duplicate of a known id or of the
        # job holding its uniqueness key (queued, or earlier in this batch)
        plan: list[str | None] = []  # None: new; else the id it duplicates
        ids: set[str] = set()
        keys: dict[str, str] = {}
        for item in items:
            if item.id is not None and (item.id in ids or m.knows(item.id)):
                plan.append(item.id)
                continue
            key = item.unique_key
            holder = None if key is None else (m.holder(key) or keys.get(key))
            if holder is not None:
                plan.append(holder)
                continue
            plan.append(None)
            if item.id is not None:
                ids.add(item.id)
            if key is not None:
                keys[key] = item.id or "?"  # a generated id: checked below
        new = plan.count(None)
        if len(m.jobs) + new > m.limits.max_queued:
            self.expect(outcome, QueueFull)
            return
        results = self.expect(outcome, None)
        assert len(results) == len(items)
        made: dict[str, str] = {}  # key -> the id the new job with it got
        for item, result, dup_of in zip(items, results, plan, strict=True):
            if dup_of is not None:
                assert result.duplicate
                if dup_of == "?":
                    assert item.unique_key is not None
                    dup_of = made[item.unique_key]
                assert result.id == dup_of
                continue
            assert not result.duplicate
            if item.id is not None:
                assert result.id == item.id
            else:
                assert len(result.id) == 32
            if item.unique_key is not None:
                made[item.unique_key] = result.id
            self.accepted.add(result.id)
            m.add(
                MJob(
                    id=result.id,
                    type=item.type,
                    payload=item.payload,
                    max_attempts=item.max_attempts or 3,
                    created_at=now,
                    ready_at=now + item.delay_ms,
                    order=m.next_order,
                    priority=item.priority,
                    unique_key=item.unique_key,
                )
            )
            m.next_order += 1
            m.counters["enqueued"] += 1

    @precondition(lambda self: bool(self.accepted))
    @rule(data=st.data())
    def resubmit(self, data: st.DataObject) -> None:
        """Any id ever accepted, auto-generated ones included, while it is known."""
        job_id = data.draw(st.sampled_from(sorted(self.accepted)))
        if not self.model.knows(job_id):
            return  # forgotten: a resubmit would be a new job (enqueue covers it)
        before = (len(self.state.jobs), dict(self.state.counters))
        outcome = self.both(lambda s: s.enqueue([NewJob("again", id=job_id)], self.now))
        [result] = self.expect(outcome, None)
        assert result.duplicate
        assert (len(self.state.jobs), self.state.counters) == before

    @precondition(has_unclaimed)
    @rule(
        worker=st.sampled_from(WORKERS),
        types=st.one_of(st.none(), st.lists(st.sampled_from(TYPES), min_size=1, max_size=3)),
        max_jobs=st.integers(1, 3),
    )
    def claim(self, worker: str, types: list[str] | None, max_jobs: int) -> None:
        m, now = self.model, self.now
        claimed = self.expect(
            self.both(lambda s: s.claim(worker, now, types=types, max_jobs=max_jobs)), None
        )
        expected = m.ready(now, types)[:max_jobs]
        assert [c.id for c in claimed] == [j.id for j in expected]
        for c, j in zip(claimed, expected, strict=True):
            # the type filter, attempts, and the lease handed out
            assert types is None or c.type in types
            assert (c.type, c.payload, c.attempt) == (j.type, j.payload, j.attempts + 1)
            assert c.lease_ms == m.limits.job_lease_ms
            assert c.attempt <= j.max_attempts
            j.status, j.worker, j.hb = "in_progress", worker, now
            j.attempts += 1
            m.leases.append(j.id)
        # nothing claimable was passed over
        left = m.ready(now, types)
        if claimed and left:
            last = m.jobs[claimed[-1].id]
            assert last.claim_key() < left[0].claim_key()
        assert len(claimed) == max_jobs or not left

    @precondition(has_leases)
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        m, now = self.model, self.now
        job_id, worker, attempt = self.lease_args(data)
        outcome = self.both(lambda s: s.heartbeat(job_id, worker, now, attempt))
        error = m.held(job_id, worker, attempt)
        if error is not None:
            self.expect(outcome, error)
            return
        job = m.jobs[job_id]
        if job.cancel:
            self.expect(outcome, LeaseLost)
            m.finish(job, "cancelled", now)
            m.counters["cancelled"] += 1
            return
        self.expect(outcome, None)
        job.hb = now
        m.leases.remove(job_id)
        m.leases.append(job_id)

    @precondition(has_leases)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        m, now = self.model, self.now
        job_id, worker, attempt = self.lease_args(data)
        outcome = self.both(lambda s: s.complete(job_id, worker, now, attempt))
        error = m.held(job_id, worker, attempt)
        if error is not None:
            self.expect(outcome, error)
            return
        job = m.jobs[job_id]
        if job.cancel:
            self.expect(outcome, LeaseLost)
            m.finish(job, "cancelled", now)
            m.counters["cancelled"] += 1
            return
        self.expect(outcome, None)
        m.finish(job, "completed", now)
        m.counters["completed"] += 1

    @precondition(has_leases)
    @rule(
        data=st.data(),
        retry_in_ms=st.sampled_from([None, None, 0, 200]),
        final=st.booleans(),
        error=st.sampled_from(["boom", "timeout"]),
    )
    def fail(self, data: st.DataObject, retry_in_ms: int | None, final: bool, error: str) -> None:
        m, now = self.model, self.now
        job_id, worker, attempt = self.lease_args(data)
        outcome = self.both(
            lambda s: s.fail(
                job_id,
                worker,
                now,
                error=error,
                attempt=attempt,
                retry_in_ms=retry_in_ms,
                final=final,
            )
        )
        expected_error = m.held(job_id, worker, attempt)
        if expected_error is not None:
            self.expect(outcome, expected_error)
            return
        job = m.jobs[job_id]
        if job.cancel:
            self.expect(outcome, LeaseLost)
            m.finish(job, "cancelled", now)
            m.counters["cancelled"] += 1
            return
        status = self.expect(outcome, None)
        m.counters["failed"] += 1
        job.last_error = error
        if final or job.attempts >= job.max_attempts:
            assert status == "dead"
            m.kill(job, "final" if final else "exhausted", now)
            return
        assert status == "retrying"
        if retry_in_ms is None:
            # exponential backoff with jitter: within the jitter of base * 2^(n-1)
            lim = m.limits
            base = min(lim.retry_max_ms, lim.retry_base_ms * 2 ** (job.attempts - 1))
            delay = self.state.jobs[job_id].ready_at - now
            assert base * (1 - lim.retry_jitter) - 1 <= delay <= base * (1 + lim.retry_jitter) + 1
        else:
            delay = retry_in_ms
        m.requeue(job, now + delay)

    @precondition(has_leases)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        m, now = self.model, self.now
        job_id, worker, attempt = self.lease_args(data)
        outcome = self.both(lambda s: s.release(job_id, worker, now, attempt))
        error = m.held(job_id, worker, attempt)
        if error is not None:
            self.expect(outcome, error)
            return
        self.expect(outcome, None)
        job = m.jobs[job_id]
        job.attempts -= 1
        if job.cancel:
            m.finish(job, "cancelled", now)
            m.counters["cancelled"] += 1
        else:
            m.requeue(job, job.ready_at)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        m, now = self.model, self.now
        job_id = self.pick(data, [])
        outcome = self.both(lambda s: s.cancel(job_id, now))
        job = m.jobs.get(job_id)
        if job is not None:
            if job.status == "unclaimed":
                assert self.expect(outcome, None) == "cancelled"
                m.finish(job, "cancelled", now)
                m.counters["cancelled"] += 1
            else:
                assert self.expect(outcome, None) == "cancelling"
                job.cancel = True
        elif job_id in m.dead:
            assert self.expect(outcome, None) == "cancelled"
            dead = m.dead.pop(job_id)
            m.remember(
                job_id,
                MFinished(dead.job.type, "cancelled", dead.job.attempts, dead.job.created_at, now),
            )
            m.counters["cancelled"] += 1
            m.dead_cancelled += 1
        elif job_id in m.finished:
            assert self.expect(outcome, None) == m.finished[job_id].outcome
        else:
            self.expect(outcome, JobNotFound)

    @precondition(has_dead)
    @rule(data=st.data())
    def requeue_dead(self, data: st.DataObject) -> None:
        m, now = self.model, self.now
        job_id = self.pick(data, list(m.dead))
        outcome = self.both(lambda s: s.requeue_dead(job_id, now))
        if job_id not in m.dead:
            self.expect(outcome, JobNotDead if m.knows(job_id) else JobNotFound)
            return
        if len(m.jobs) + 1 > m.limits.max_queued:
            self.expect(outcome, QueueFull)
            return
        self.expect(outcome, None)
        old = m.dead.pop(job_id).job
        m.add(
            MJob(
                id=job_id,
                type=old.type,
                payload=old.payload,
                max_attempts=old.max_attempts,
                created_at=old.created_at,
                ready_at=now,
                order=m.next_order,
                last_error=old.last_error,
                priority=old.priority,
                unique_key=old.unique_key,
            )
        )
        m.next_order += 1
        m.counters["requeued"] += 1

    @rule()
    def expire(self) -> None:
        m, now = self.model, self.now
        expired = self.expect(self.both(lambda s: s.expire(now)), None)
        deadline = now - m.limits.job_lease_ms
        due = sorted(
            (m.jobs[i] for i in m.leases if (m.jobs[i].hb or 0) <= deadline),
            key=lambda j: (j.hb, j.order),
        )
        assert expired == [j.id for j in due]
        for job in due:
            m.counters["expired"] += 1
            if job.cancel:
                m.finish(job, "cancelled", now)
                m.counters["cancelled"] += 1
            elif job.attempts >= job.max_attempts:
                job.last_error = job.last_error or "lease expired"
                m.kill(job, "expired", now)
            else:
                job.last_error = "lease expired"
                m.requeue(job, now)
        while m.finished:
            first = next(iter(m.finished))
            record = m.finished[first]
            if (
                record.finished_at > now - m.limits.dedup_window_ms
                and len(m.finished) <= m.limits.dedup_cap
            ):
                break
            del m.finished[first]

    @rule()
    def renew_all_leases(self) -> None:
        now = self.now
        self.expect(self.both(lambda s: s.renew_all_leases(now)), None)
        for job_id in self.model.leases:
            self.model.jobs[job_id].hb = now

    @rule()
    def pop_due(self) -> None:
        now = self.now
        # how many entries it pops is index bookkeeping (a decoded document has not
        # seen the earlier calls): compare only what it leaves
        self.state.pop_due(now)
        self.twin.pop_due(now)
        future = [
            j.ready_at
            for j in self.model.jobs.values()
            if j.status == "unclaimed" and j.ready_at > now
        ]
        expected = min(future) if future else None
        assert self.state.next_delayed_at() == expected
        assert self.twin.next_delayed_at() == expected

    @rule()
    def roundtrip(self) -> None:
        """Carry on with the state decoded from its own document."""
        self.state = twin_of(self.state)

    # -- properties

    @invariant()
    def matches_the_model(self) -> None:
        s, m = self.state, self.model
        assert list(s.jobs) == list(m.jobs)
        for job_id, j in s.jobs.items():
            mj = m.jobs[job_id]
            assert (
                j.type,
                j.payload,
                j.status,
                j.attempts,
                j.max_attempts,
                j.created_at,
                j.ready_at,
                j.order,
                j.worker_id,
                j.heartbeat_at,
                j.last_error,
                j.cancel_requested,
            ) == (
                mj.type,
                mj.payload,
                mj.status,
                mj.attempts,
                mj.max_attempts,
                mj.created_at,
                mj.ready_at,
                mj.order,
                mj.worker,
                mj.hb,
                mj.last_error,
                mj.cancel,
            )
        assert list(s.dead) == list(m.dead)
        for job_id, d in s.dead.items():
            md = m.dead[job_id]
            assert (d.type, d.payload, d.attempts, d.max_attempts, d.created_at) == (
                md.job.type,
                md.job.payload,
                md.job.attempts,
                md.job.max_attempts,
                md.job.created_at,
            )
            assert (d.reason, d.died_at, d.last_error) == (md.reason, md.died_at, md.job.last_error)
        assert list(s.finished) == list(m.finished)
        for job_id, f in s.finished.items():
            mf = m.finished[job_id]
            assert (f.type, f.outcome, f.attempts, f.created_at, f.finished_at) == (
                mf.type,
                mf.outcome,
                mf.attempts,
                mf.created_at,
                mf.finished_at,
            )
        assert s.counters == m.counters
        assert s.next_order == m.next_order

    @invariant()
    def every_job_is_in_exactly_one_place(self) -> None:
        s = self.state
        queued = {i for i, j in s.jobs.items() if j.status == "unclaimed"}
        in_progress = {i for i, j in s.jobs.items() if j.status == "in_progress"}
        places = [queued, in_progress, set(s.dead), set(s.finished)]
        assert sum(map(len, places)) == len(set().union(*places))
        assert queued | in_progress == set(s.jobs)
        for job_id in self.accepted:
            assert sum(job_id in p for p in places) <= 1
        assert s.unclaimed_count == len(queued)
        assert s.in_progress_count == len(in_progress)
        assert set(s.index.leases) == in_progress
        assert len(s.dead) <= s.limits.dead_letter_cap
        assert len(s.finished) <= s.limits.dedup_cap
        assert len(s.jobs) <= s.limits.max_queued

    @invariant()
    def attempts_never_exceed_the_maximum(self) -> None:
        for j in self.state.jobs.values():
            if j.status == "unclaimed":
                assert 0 <= j.attempts < j.max_attempts
            else:
                assert 1 <= j.attempts <= j.max_attempts
        for d in self.state.dead.values():
            assert d.attempts <= d.max_attempts
        for f in self.state.finished.values():
            assert f.attempts <= self.state.limits.max_attempts_limit

    @invariant()
    def counters_add_up(self) -> None:
        s = self.state
        c = s.counters
        assert c["enqueued"] == (
            len(s.jobs) + len(s.dead) + c["completed"] + c["cancelled"] + c["deadDropped"]
        )
        # every job that died is still dead, was dropped, requeued, or cancelled
        assert c["dead"] == (
            len(s.dead) + c["deadDropped"] + c["requeued"] + self.model.dead_cancelled
        )
        assert s.approx_bytes == sum(j.size for j in s.jobs.values())
        assert s.side_bytes == sum(len(d.encode()) for d in s.dead.values()) + sum(
            len(f.encode()) for f in s.finished.values()
        )
        assert s.stats() == {
            "total": len(s.jobs),
            "unclaimed": s.unclaimed_count,
            "inProgress": s.in_progress_count,
            "completedTotal": c["completed"],
        }

    @invariant()
    def indexes_answer_like_a_scan(self) -> None:
        s = self.state
        # an index entry a claim would take is one for the job as it stands now
        heaps = [(None, s.index.ready), *s.index.by_type.items()]
        for heap_type, heap in heaps:
            for minus_priority, ready_at, order, ticket, job_id in heap:
                job = s.jobs.get(job_id)
                if job is None or job.status != "unclaimed" or job.ticket != ticket:
                    continue  # stale: skipped by every reader
                assert (-minus_priority, ready_at, order) == (
                    job.priority,
                    job.ready_at,
                    job.order,
                ), job_id
                assert heap_type in (None, job.type), job_id
        for ready_at, order, ticket, job_id in s.index.delayed:
            job = s.jobs.get(job_id)
            if job is not None and job.status == "unclaimed" and job.ticket == ticket:
                assert (ready_at, order) == (job.ready_at, job.order), job_id
        keys = {j.unique_key for j in self.model.jobs.values() if j.unique_key is not None}
        assert s.jobs.holders == {k: self.model.holder(k) for k in keys}
        unclaimed = [j.ready_at for j in s.jobs.values() if j.status == "unclaimed"]
        assert s.next_ready_at() == (min(unclaimed) if unclaimed else None)
        leases = [j.heartbeat_at or 0 for j in s.jobs.values() if j.status == "in_progress"]
        assert s.next_lease_expiry() == (min(leases) + s.limits.job_lease_ms if leases else None)

    @invariant()
    def decode_encode_is_the_identity(self) -> None:
        data = self.state.encode()
        again = QueueState.decode(data, limits=limits())
        assert again.encode() == data
        assert again.approx_bytes == self.state.approx_bytes
        assert again.side_bytes == self.state.side_bytes
        # the twin, decoded long ago and fed the same mutations, writes the same bytes
        assert self.twin.encode() == data

    @invariant()
    def accepted_ids_stay_known_within_the_window(self) -> None:
        m, s = self.model, self.state
        for job_id in self.accepted:
            if s.knows(job_id):
                continue
            if job_id in m.dead_dropped:
                continue  # pushed out of the bounded dead-letter list (counted)
            finished_at, index = m.last_finish[job_id]
            later = m.finishes - index - 1
            assert (
                self.now - finished_at >= m.limits.dedup_window_ms or later >= m.limits.dedup_cap
            ), f"{job_id} forgotten {self.now - finished_at} ms after it finished"


QueueMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Passing takes a few seconds; a failure is shrunk for up to hypothesis's own limit
# (five minutes), which must not be cut short by the suite's per-test timeout.
TestQueueMachine = pytest.mark.timeout(420)(QueueMachine.TestCase)
