"""The queue's in-memory model: its value types and :class:`QueueState`.

Every mutation costs O(1) or O(log n) in the queue depth (the indexes that make it
so are in :mod:`trioq.core._index`), and validates everything before it changes
anything: a rejected mutation (any :class:`~trioq.TrioqError`) leaves the state as it
was. The one exception is deliberate: a worker's call on a job whose cancel was
requested finishes the job as cancelled, then answers LeaseLost.

Times are integers: milliseconds since the Unix epoch, from the injected clock. The
queue.json codec is :mod:`trioq.core._codec`; the change tracking and log records of
the log layout are :mod:`trioq.core._changes`.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from .._errors import (
    BrokerProtocolError,
    JobNotDead,
    JobNotFound,
    LeaseLost,
    PayloadTooLarge,
    QueueFull,
    TrioqError,
)
from .._wire import (
    MAX_ATTEMPTS,
    MAX_DELAY_MS,
    RULES,
    WORKER_ID,
    ScheduleRequest,
    TypeRuleRequest,
    checked_job,
    parse,
)
from .._wire import ClaimedJob as ClaimedJob
from .._wire import FailReport as FailReport
from .._wire import JobReport as JobReport
from .._wire import NewJob as NewJob
from .._wire._payload import encode_payload, too_deep
from . import _codec, _schedules, _type_rules
from ._archive import DEDUP_CAP, Archive
from ._changes import Changes, added, changed, removed
from ._codec import LeaderInfo as LeaderInfo
from ._index import JobIndex, JobTable
from ._jobs import DeadJob, DeadReason, FinishedJob, FinishedOutcome, Job, valid_text
from ._schedules import Schedule
from ._type_rules import TypeRule

log = logging.getLogger("trioq.state")


@dataclass(slots=True)
class Limits:
    """Bounds and timings the model enforces (milliseconds where it says ms)."""

    job_lease_ms: int = 30_000
    """How long a claimed job stays leased without a heartbeat."""
    max_queued: int = 100_000
    """Cap on jobs in the queue (unclaimed + in progress)."""
    max_document_bytes: int = 256 * 1024 * 1024
    """Cap on the approximate encoded size of the jobs in the document."""
    max_payload_bytes: int = 1024 * 1024
    """Cap on one job's encoded payload."""
    default_max_attempts: int = 3
    max_attempts_limit: int = MAX_ATTEMPTS
    """Cap on a job's ``max_attempts``: the wire's (:mod:`trioq._wire`), or lower."""
    dead_letter_cap: int = 10_000
    dedup_window_ms: int = 86_400_000
    dedup_cap: int = DEDUP_CAP
    """Cap on finished jobs kept for the dedup window (see :data:`~trioq.core._archive.DEDUP_CAP`)."""
    retry_base_ms: int = 1000
    retry_max_ms: int = 300_000
    retry_jitter: float = 0.2
    """Retry delays vary by up to this fraction either way."""
    max_result_bytes: int = 64 * 1024
    """Cap on a completed job's stored result (its JSON)."""
    max_progress_bytes: int = 4096
    """Cap on a running job's progress report (its JSON)."""
    max_delay_ms: int = MAX_DELAY_MS
    """Cap on a job's ``delay_ms`` and on a failure's ``retry_in_ms``: the wire's (365
    days, so stored times stay far inside JSON's exact-integer range), or lower."""


@dataclass(slots=True, frozen=True)
class EnqueueResult:
    id: str
    duplicate: bool


Outcome = str | TrioqError
"""A report's result: the job's status afterwards, or the report's own error."""
R = TypeVar("R", JobReport, FailReport)


@dataclass(frozen=True, slots=True)
class Reports:
    """A worker's reports of one exchange, applied in this order, each on its own.
    An item may be the error its parse met: it stays that item's result."""

    heartbeat: Sequence[JobReport | TrioqError] = ()
    complete: Sequence[JobReport | TrioqError] = ()
    fail: Sequence[FailReport | TrioqError] = ()
    release: Sequence[JobReport | TrioqError] = ()

    def __bool__(self) -> bool:
        return bool(self.heartbeat or self.complete or self.fail or self.release)


@dataclass(frozen=True, slots=True)
class ReportResults:
    """Each report's :data:`Outcome`, list by list, in the order of :class:`Reports`."""

    heartbeat: list[Outcome] = field(default_factory=list)
    complete: list[Outcome] = field(default_factory=list)
    fail: list[Outcome] = field(default_factory=list)
    release: list[Outcome] = field(default_factory=list)


COUNTER_NAMES = (
    "enqueued",
    "completed",
    "failed",
    "dead",
    "deadDropped",
    "expired",
    "cancelled",
    "requeued",
)


@dataclass(slots=True, eq=False)
class QueueState:
    """The whole queue: document header, jobs, dead letters, finished ids, counters.

    Jobs live in a dict by id (insertion order = document order), indexed by a
    :class:`~trioq.core._index.JobIndex` (ready heaps, delayed heap, lease order);
    jobs that left the queue live in an :class:`~trioq.core._archive.Archive`.
    """

    limits: Limits = field(default_factory=Limits)
    seq: int = 0
    leader: LeaderInfo | None = None
    next_order: int = 1
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))
    rng: random.Random = field(default_factory=random.Random)
    jobs: JobTable = field(default_factory=JobTable, init=False)
    index: JobIndex = field(init=False)
    archive: Archive = field(default_factory=Archive, init=False)
    schedules: dict[str, Schedule] = field(default_factory=dict, init=False)
    """Periodic jobs by name (:mod:`trioq.core._schedules`)."""
    type_rules: dict[str, TypeRule] = field(default_factory=dict, init=False)
    """Per-type rules by type (:mod:`trioq.core._type_rules`)."""
    job_bytes: int = field(default=0, init=False)
    """Encoded size of the queued jobs as of the last :meth:`encode` (jobs that
    entered since count with their size when they entered)."""
    _changes: Changes | None = field(default=None, init=False, repr=False)
    """What changed since :meth:`take_changes`, while tracking (:meth:`track_changes`)."""
    _header_mark: tuple[int, ...] = field(default=(), init=False, repr=False)
    """``nextOrder`` and the counters as of the last :meth:`take_changes`."""

    def __post_init__(self) -> None:
        self.index = JobIndex(self.jobs)

    # ------------------------------------------------------------------ reads

    @property
    def dead(self) -> OrderedDict[str, DeadJob]:
        return self.archive.dead

    @property
    def finished(self) -> OrderedDict[str, FinishedJob]:
        return self.archive.finished

    @property
    def unclaimed_count(self) -> int:
        return self.index.unclaimed_count

    @property
    def in_progress_count(self) -> int:
        return len(self.index.leases)

    @property
    def side_bytes(self) -> int:
        """Encoded size of the dead-letter and finished lists (counted by the size cap)."""
        return self.archive.bytes

    @property
    def approx_bytes(self) -> int:
        """Encoded size of the queued jobs (see :attr:`job_bytes`)."""
        return self.job_bytes

    def stats(self) -> dict[str, int]:
        """osqueue's stats fields (without ``brokerAddress``)."""
        return {
            "total": len(self.jobs),
            "unclaimed": self.unclaimed_count,
            "inProgress": self.in_progress_count,
            "completedTotal": self.counters["completed"],
        }

    def counts_by_type(self) -> dict[str, dict[str, int]]:
        """``{type: {"unclaimed": n, "inProgress": n}}`` for each type with queued
        jobs; O(types) (the index keeps the counts as jobs come and go)."""
        return self.index.counts_by_type()

    def lookup(self, job_id: str) -> Job | DeadJob | FinishedJob | None:
        return self.jobs.get(job_id) or self.dead.get(job_id) or self.finished.get(job_id)

    def knows(self, job_id: str) -> bool:
        return job_id in self.jobs or job_id in self.dead or job_id in self.finished

    def iter_jobs(self) -> Iterator[Job]:
        return iter(self.jobs.values())

    def next_ready_at(self) -> int | None:
        """When the earliest unclaimed job becomes (or became) claimable."""
        return self.index.next_ready_at()

    def next_delayed_at(self) -> int | None:
        """The earliest future ready time among queued jobs (delays and retries)
        that has not yet been passed by :meth:`pop_due`."""
        return self.index.next_delayed_at()

    def pop_due(self, now: int) -> int:
        """Forget delayed entries whose time has come; returns how many became ready."""
        return self.index.pop_due(now)

    def next_lease_expiry(self) -> int | None:
        job = self.index.first_lease()
        if job is None:
            return None
        assert job.heartbeat_at is not None
        return job.heartbeat_at + self.limits.job_lease_ms

    # --------------------------------------------------------- change tracking

    def track_changes(self) -> None:
        """Start noting what changes (for the log layout's records): from now on
        :meth:`take_changes` returns it. Off by default, so that a state nobody takes
        changes from (the single-document layout) does not collect them forever."""
        self._changes = self.archive.changes = Changes()
        self._header_mark = self._header()

    def take_changes(self) -> Changes:
        """What changed since tracking started or since the last call, and start
        afresh; costs O(changes). RuntimeError unless tracking."""
        changes = self._changes
        if changes is None:
            raise RuntimeError("take_changes() needs track_changes() first")
        mark = self._header()
        changes.header = mark != self._header_mark
        self._changes = self.archive.changes = Changes()
        self._header_mark = mark
        return changes

    def _header(self) -> tuple[int, ...]:
        # comparing the eight counters when changes are taken is cheaper than a
        # hook at every increment, and cannot miss one
        return (self.next_order, *self.counters.values())

    # ------------------------------------------------------------- schedules

    def note_schedules(self) -> None:
        """The schedules changed: the next log record carries them all."""
        if self._changes is not None:
            self._changes.schedules = True

    def put_schedule(self, name: str, request: ScheduleRequest, now: int) -> Schedule:
        """Create or replace a periodic job (:func:`trioq.core._schedules.put`)."""
        return _schedules.put(self, name, request, now)

    def delete_schedule(self, name: str) -> None:
        """Remove a periodic job; NotFound if there is none of that name."""
        _schedules.delete(self, name)

    def fire_schedules(self, now: int) -> tuple[bool, list[str]]:
        """Enqueue the occurrences due at ``now``: whether a schedule moved on (the
        state changed), and the ids enqueued."""
        return _schedules.fire(self, now) if self.schedules else (False, [])

    def next_schedule_at(self) -> int | None:
        """When the next occurrence is due (None without schedules)."""
        return _schedules.next_due(self)

    # ------------------------------------------------------------- type rules

    def note_rules(self) -> None:
        """The type rules changed: the next log record carries them all."""
        if self._changes is not None:
            self._changes.types = True

    def put_type_rule(self, request: TypeRuleRequest) -> TypeRule:
        """Pause, resume or limit a job type (:func:`trioq.core._type_rules.put`)."""
        return _type_rules.put(self, request)

    def next_unblock_at(self, now: int) -> int | None:
        """When a rate-limited type with unclaimed jobs may be claimed again."""
        return _type_rules.next_unblock_at(self, now) if self.type_rules else None

    def _touched(self, job: Job) -> None:
        """``job``'s stored fields changed in place: drop its cached encoding and
        note the change. Every place that changes a job's stored field calls it
        (claim and heartbeat inline it)."""
        job.encoded = None
        if self._changes is not None:
            changed(self._changes.jobs, job.id)

    # -------------------------------------------------------------- mutations

    def enqueue(self, items: Sequence[NewJob], now: int) -> list[EnqueueResult]:
        """Enqueue a batch, validated as a whole: one bad item rejects them all."""
        prepared: list[tuple[NewJob, str, bytes]] = []
        seen: set[str] = set()
        results: list[EnqueueResult] = []
        new_bytes = 0
        keys: dict[str, str] = {}  # uniqueness keys taken earlier in this batch
        for index, item in enumerate(items):
            payload_json = self._checked(item, f"jobs[{index}]" if len(items) > 1 else "job")
            job_id = item.id if item.id is not None else _new_id(self.rng)
            duplicate = job_id in seen or self.knows(job_id)
            key = item.unique_key
            if not duplicate and key is not None:
                holder = self.jobs.holders.get(key) or keys.get(key)
                if holder is not None:
                    job_id, duplicate = holder, True
                else:
                    keys[key] = job_id
            results.append(EnqueueResult(job_id, duplicate))
            if not duplicate:
                seen.add(job_id)
                prepared.append((item, job_id, payload_json))
                new_bytes += len(payload_json) + 256
        self._check_room(len(prepared), new_bytes)
        for item, job_id, payload_json in prepared:
            self._create(item, job_id, payload_json, now)
        return results

    def enqueue_each(
        self, items: Sequence[NewJob | TrioqError], now: int
    ) -> list[EnqueueResult | TrioqError]:
        """Enqueue each item on its own, in order: a rejected item's error is its
        result (an item that is an error already stays so) and changes nothing. A
        duplicate (known, or earlier in ``items``) creates nothing; once the queue is
        full, the items that no longer fit are QueueFull."""
        return _per_item(items, lambda index, item: self._enqueue_one(item, index, now))

    def _enqueue_one(self, item: NewJob, index: int, now: int) -> EnqueueResult:
        payload_json = self._checked(item, f"jobs[{index}]")
        if item.id is not None and self.knows(item.id):
            return EnqueueResult(item.id, True)
        if item.unique_key is not None:
            holder = self.jobs.holders.get(item.unique_key)
            if holder is not None:
                return EnqueueResult(holder, True)
        self._check_room(1, len(payload_json) + 256)
        job_id = item.id if item.id is not None else _new_id(self.rng)
        self._create(item, job_id, payload_json, now)
        return EnqueueResult(job_id, False)

    def _check_room(self, count: int, new_bytes: int) -> None:
        """QueueFull unless ``count`` more jobs of ``new_bytes`` fit under the caps."""
        limits = self.limits
        if len(self.jobs) + count > limits.max_queued:
            raise QueueFull(
                f"the queue holds {len(self.jobs)} jobs; {count} more would pass "
                f"the limit of {limits.max_queued}"
            )
        if self.job_bytes + self.side_bytes + new_bytes > limits.max_document_bytes:
            raise QueueFull(
                f"the queue document would grow past its limit of {limits.max_document_bytes} bytes"
            )

    def _create(self, item: NewJob, job_id: str, payload_json: bytes, now: int) -> None:
        job = Job(
            id=job_id,
            type=item.type,
            payload=item.payload,
            status="unclaimed",
            attempts=0,
            max_attempts=item.max_attempts or self.limits.default_max_attempts,
            created_at=now,
            ready_at=now + item.delay_ms,
            order=self.next_order,
            payload_json=payload_json,
            trace=item.trace or None,
            priority=item.priority,
            unique_key=item.unique_key,
            deadline_at=None if item.ttl_ms is None else now + item.ttl_ms,
        )
        self.next_order += 1
        self._add(job, now)
        self.counters["enqueued"] += 1

    def claim(
        self,
        worker_id: str,
        now: int,
        *,
        types: Sequence[str] | None = None,
        max_jobs: int = 1,
    ) -> list[ClaimedJob]:
        """Claim up to ``max_jobs`` ready jobs in (priority, ready time, enqueue order),
        skipping the types their rules block (paused, at their in-progress limit, or
        out of claims for this second)."""
        check_claim(worker_id, max_jobs)
        claimed: list[ClaimedJob] = []
        rules = self.type_rules
        blocked = partial(_type_rules.blocked, self, now=now) if rules else None
        while (
            len(claimed) < max_jobs
            and (job := self.index.pop_ready(types, now, blocked)) is not None
        ):
            if job.deadline_at is not None and job.deadline_at <= now:
                self._overdue(job, now)  # the sweep had not met it yet
                continue
            if rules and (rule := rules.get(job.type)) is not None:
                rule.take_token(now)
            job.status = "in_progress"
            job.attempts += 1
            job.worker_id = worker_id
            job.heartbeat_at = now
            job.encoded = None  # _touched, inlined: the hottest paths
            if self._changes is not None:
                changed(self._changes.jobs, job.id)
            self.index.lease(job)
            claimed.append(
                ClaimedJob(
                    job.id,
                    job.type,
                    job.payload,
                    job.attempts,
                    self.limits.job_lease_ms,
                    job.created_at,
                    job.trace,
                    job.max_attempts,
                    job.last_error,
                )
            )
        return claimed

    def heartbeat(
        self,
        job_id: str,
        worker_id: str,
        now: int,
        attempt: int | None = None,
        progress: Any = None,
    ) -> None:
        """Renew a lease, and keep the handler's ``progress`` report (any JSON, at
        most ``max_progress_bytes``) when it gives one. A cancelled job answers
        LeaseLost and is finished here."""
        progress_json = None if progress is None else self._checked_progress(progress)
        job = self._live_lease(job_id, worker_id, attempt, now)
        if progress_json is not None:
            job.progress_json = progress_json
        job.heartbeat_at = now
        job.encoded = None  # _touched, inlined: the hottest paths
        if self._changes is not None:
            changed(self._changes.jobs, job.id)
        self.index.renew(job)

    def complete(
        self,
        job_id: str,
        worker_id: str,
        now: int,
        attempt: int | None = None,
        result: Any = None,
    ) -> None:
        """Record a job's success; ``result`` (its handler's return value, any JSON)
        is kept with the finished record. A result that is not JSON or is over
        ``max_result_bytes`` is refused (BrokerProtocolError, PayloadTooLarge) and
        changes nothing."""
        result_json = None if result is None else self._checked_result(result)
        job = self._live_lease(job_id, worker_id, attempt, now)
        self._finish(job, "completed", now, result_json)

    def _checked_progress(self, progress: Any) -> bytes:
        try:
            data = encode_payload(progress)
        except (TypeError, ValueError) as exc:
            raise BrokerProtocolError(f"progress: {exc}") from None
        if len(data) > self.limits.max_progress_bytes or too_deep(data, progress):
            raise PayloadTooLarge(
                f"progress is {len(data)} bytes (or too deep), over the limit of "
                f"{self.limits.max_progress_bytes}"
            )
        return data

    def _checked_result(self, result: Any) -> bytes:
        try:
            data = encode_payload(result)
        except (TypeError, ValueError) as exc:
            raise BrokerProtocolError(f"result: {exc}") from None
        if too_deep(data, result):
            raise BrokerProtocolError("result is nested more than 64 levels deep")
        if len(data) > self.limits.max_result_bytes:
            raise PayloadTooLarge(
                f"result is {len(data)} bytes, over the limit of {self.limits.max_result_bytes}"
            )
        return data

    def fail(
        self,
        job_id: str,
        worker_id: str,
        now: int,
        *,
        error: str,
        attempt: int | None = None,
        retry_in_ms: int | None = None,
        final: bool = False,
    ) -> str:
        """Record a failed attempt; returns ``"retrying"`` or ``"dead"``."""
        if not valid_text(error):
            raise BrokerProtocolError("error must be a string")
        if retry_in_ms is not None and not _int_in(retry_in_ms, 0, self.limits.max_delay_ms):
            raise BrokerProtocolError(
                f"retryInMs must be an integer from 0 to {self.limits.max_delay_ms}"
            )
        job = self._live_lease(job_id, worker_id, attempt, now)
        self.counters["failed"] += 1
        job.last_error = error
        if final or job.attempts >= job.max_attempts:
            self._kill(job, "final" if final else "exhausted", now)
            return "dead"
        delay = retry_in_ms if retry_in_ms is not None else self.backoff_ms(job.attempts)
        self._requeue(job, now + delay, now)
        return "retrying"

    def release(self, job_id: str, worker_id: str, now: int, attempt: int | None = None) -> str:
        """Give a job back at once without counting the attempt (graceful shutdown);
        returns ``"unclaimed"``, or ``"cancelled"`` when a requested cancel finished it."""
        job = self._held(job_id, worker_id, attempt)
        job.attempts -= 1
        if self._cancel_if_requested(job, now):
            return "cancelled"
        # back to where it stood: its old ready time keeps its place in line
        self._requeue(job, job.ready_at, now)
        return "unclaimed"

    def report_each(self, worker_id: str, reports: Reports, now: int) -> ReportResults:
        """Apply an exchange's reports, each on its own, in the order heartbeats,
        completes, fails, releases: a rejected report's error (LeaseLost,
        JobNotFound, ...) is its result and changes nothing but a requested cancel it
        finished, as the single calls do."""
        return ReportResults(
            self._each(reports.heartbeat, _heartbeat, worker_id, now),
            self._each(reports.complete, _complete, worker_id, now),
            self._each(reports.fail, _fail, worker_id, now),
            self._each(reports.release, _release, worker_id, now),
        )

    def _each(
        self,
        items: Sequence[R | TrioqError],
        apply: Callable[[QueueState, R, str, int], str],
        worker_id: str,
        now: int,
    ) -> list[Outcome]:
        return _per_item(items, lambda _, item: apply(self, item, worker_id, now))

    def cancel(self, job_id: str, now: int) -> str:
        """Cancel a job; returns its status afterwards.

        A queued job is finished as ``cancelled`` at once; an in-progress job is
        marked, and its worker's next heartbeat (or complete/fail/release), or its
        lease's expiry, finishes it (see :meth:`_cancel_if_requested`); a dead job
        leaves the dead-letter list as cancelled; a finished job stays as it is.
        """
        job = self.jobs.get(job_id)
        if job is not None:
            job.cancel_requested = True
            self._touched(job)
            if job.status == "unclaimed":
                self._cancel_if_requested(job, now)
                return "cancelled"
            return "cancelling"
        dead = self.dead.get(job_id)
        if dead is not None:
            self.archive.unbury(job_id)
            self._remember(
                FinishedJob(dead.id, dead.type, "cancelled", dead.attempts, dead.created_at, now)
            )
            self.counters["cancelled"] += 1
            return "cancelled"
        finished = self.finished.get(job_id)
        if finished is not None:
            return finished.outcome
        raise JobNotFound(f"no job {job_id!r}")

    def cancel_matching(
        self, now: int, job_type: str | None = None, status: str | None = None
    ) -> dict[str, int]:
        """Cancel every queued job of ``job_type`` and ``status`` (None: any), as
        :meth:`cancel` does each; how many were cancelled now and how many marked."""
        counts = {"cancelled": 0, "cancelling": 0}
        matching = [
            job.id
            for job in self.jobs.values()
            if (job_type is None or job.type == job_type)
            and (status is None or job.status == status)
        ]
        for job_id in matching:
            counts[self.cancel(job_id, now)] += 1
        return counts

    def purge_dead(self, job_type: str | None = None) -> int:
        """Remove the dead jobs of ``job_type`` (None: all) for good: their ids are
        forgotten, so a submit with one makes a new job. How many."""
        matching = [d.id for d in self.dead.values() if job_type is None or d.type == job_type]
        for job_id in matching:
            self.archive.unbury(job_id)
        return len(matching)

    def requeue_dead(self, job_id: str, now: int) -> None:
        """Move a dead job back to the end of the queue with its attempts reset."""
        dead = self.dead.get(job_id)
        if dead is None:
            if self.knows(job_id):
                raise JobNotDead(f"job {job_id!r} is not in the dead-letter list")
            raise JobNotFound(f"no job {job_id!r}")
        if len(self.jobs) + 1 > self.limits.max_queued:
            raise QueueFull(f"the queue holds {len(self.jobs)} jobs, its limit")
        self.archive.unbury(job_id)
        job = Job(
            id=dead.id,
            type=dead.type,
            payload=dead.payload,
            status="unclaimed",
            attempts=0,
            max_attempts=dead.max_attempts,
            created_at=dead.created_at,
            ready_at=now,
            order=self.next_order,
            last_error=dead.last_error,
            trace=dead.trace,
            priority=dead.priority,
            unique_key=dead.unique_key,
        )
        self.next_order += 1
        self._add(job, now)
        self.counters["requeued"] += 1

    def expire(self, now: int) -> list[str]:
        """Return expired leases to the queue (or the dead letters); trim the
        dedup window. Returns the ids whose lease expired."""
        expired: list[str] = []
        for job in self.index.leases_due(now - self.limits.job_lease_ms):
            expired.append(job.id)
            self.counters["expired"] += 1
            if self._cancel_if_requested(job, now):
                continue
            if job.attempts >= job.max_attempts:
                job.last_error = job.last_error or "lease expired"
                self._kill(job, "expired", now)
            else:
                job.last_error = "lease expired"
                self._requeue(job, now, now)
        self.archive.trim(now - self.limits.dedup_window_ms, self.limits.dedup_cap)
        return expired

    def kill_overdue(self, now: int) -> list[str]:
        """Dead-letter the unclaimed jobs whose deadline (TTL) has passed (reason
        ``deadline``); the ids."""
        killed = []
        for job in self.index.deadlines_due(now):
            self._overdue(job, now)
            killed.append(job.id)
        return killed

    def _overdue(self, job: Job, now: int) -> None:
        job.last_error = "its deadline passed before a worker took it"
        self._kill(job, "deadline", now)

    def renew_all_leases(self, now: int) -> None:
        """Restart every in-progress lease at ``now`` (after a takeover, so that no
        lease expires because of another host's clock or the failover gap)."""
        for job_id in self.index.leases:
            job = self.jobs[job_id]
            job.heartbeat_at = now
            self._touched(job)

    def backoff_ms(self, attempts: int) -> int:
        """Retry delay after the ``attempts``-th failed attempt: exponential, jittered."""
        limits = self.limits
        base = min(limits.retry_max_ms, limits.retry_base_ms << min(30, max(0, attempts - 1)))
        jitter = 1.0 + self.rng.uniform(-limits.retry_jitter, limits.retry_jitter)
        return max(0, round(base * jitter))

    # ------------------------------------------------------------------ codec

    def encode(self) -> bytes:
        """The whole document, deterministically (see :func:`trioq.core._codec.encode`)."""
        return _codec.encode(self)

    @classmethod
    def decode(
        cls,
        data: bytes,
        *,
        limits: Limits | None = None,
        rng: random.Random | None = None,
        name: str = "queue.json",
    ) -> QueueState:
        """Parse a stored document; :class:`DocumentInvalid` if it is not one we know.

        Runs to the end in one go: on an event loop use :meth:`decode_async`."""
        return _codec.decode(cls, data, limits or Limits(), rng or random.Random(), name)

    @classmethod
    async def decode_async(
        cls,
        data: bytes,
        *,
        limits: Limits | None = None,
        rng: random.Random | None = None,
        name: str = "queue.json",
    ) -> QueueState:
        """:meth:`decode` in steps of a few milliseconds with a checkpoint between
        them (see :mod:`trioq.core._codec`)."""
        return await _codec.decode_async(
            cls, data, limits or Limits(), rng or random.Random(), name
        )

    @staticmethod
    def decode_header(data: bytes, *, name: str = "queue.json") -> tuple[int, LeaderInfo | None]:
        """``seq`` and the leader, read from the document's header only."""
        return _codec.decode_header(data, name=name)

    # ---------------------------------------------------------------- helpers

    def _checked(self, item: NewJob, where: str) -> bytes:
        """One item of an enqueue, checked against the wire schema (once: an item that
        came through the wire is sealed and passed it already) and against this
        queue's own limits, which may be tighter; returns its payload's JSON."""
        limits = self.limits
        payload_json = checked_job(item, f"{where}: ").payload_json
        assert payload_json is not None  # sealed
        if item.max_attempts is not None and item.max_attempts > limits.max_attempts_limit:
            raise BrokerProtocolError(
                f"{where}: maxAttempts must be an integer from 1 to {limits.max_attempts_limit}"
            )
        if item.unique_key is not None and not valid_text(item.unique_key):
            raise BrokerProtocolError(f"{where}: uniqueKey must be {RULES['uniqueKey']}")
        if item.delay_ms > limits.max_delay_ms:
            raise BrokerProtocolError(
                f"{where}: delayMs must be an integer from 0 to {limits.max_delay_ms}"
            )
        if len(payload_json) > limits.max_payload_bytes:
            raise PayloadTooLarge(
                f"{where}: payload is {len(payload_json)} bytes, "
                f"over the limit of {limits.max_payload_bytes}"
            )
        return payload_json

    def _held(self, job_id: str, worker_id: str, attempt: int | None) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            if self.knows(job_id):
                raise LeaseLost(f"job {job_id!r} is no longer in progress")
            raise JobNotFound(f"no job {job_id!r}")
        if job.status != "in_progress" or job.worker_id != worker_id:
            raise LeaseLost(f"job {job_id!r} is not held by worker {worker_id!r}")
        if attempt is not None and attempt != job.attempts:
            raise LeaseLost(
                f"job {job_id!r} is at attempt {job.attempts}, not {attempt} (lease lost)"
            )
        return job

    def _live_lease(self, job_id: str, worker_id: str, attempt: int | None, now: int) -> Job:
        """The job ``worker_id`` holds, unless its cancel was requested: then it is
        finished as cancelled here, and its holder hears LeaseLost."""
        job = self._held(job_id, worker_id, attempt)
        if self._cancel_if_requested(job, now):
            raise LeaseLost(f"job {job_id!r} was cancelled")
        return job

    def _cancel_if_requested(self, job: Job, now: int) -> bool:
        """The one place a requested cancel takes effect: finish ``job`` as
        cancelled if :meth:`cancel` marked it; True if it did."""
        if not job.cancel_requested:
            return False
        self._finish(job, "cancelled", now)
        return True

    def _add(self, job: Job, now: int) -> None:
        job.size = len(job.encode())
        self.job_bytes += job.size
        self.jobs[job.id] = job
        self.index.push(job, now)
        if self._changes is not None:
            added(self._changes.jobs, job.id)

    def _leave_queue(self, job: Job) -> None:
        del self.jobs[job.id]
        self.job_bytes -= job.size
        if job.status == "in_progress":
            self.index.unlease(job)
        if self._changes is not None:
            removed(self._changes.jobs, job.id)

    def _requeue(self, job: Job, ready_at: int, now: int) -> None:
        self.index.unlease(job)
        job.status = "unclaimed"
        job.worker_id = None
        job.heartbeat_at = None
        job.progress_json = None  # an attempt's progress is its own
        job.ready_at = ready_at
        self._touched(job)
        self.index.push(job, now)

    def _finish(
        self, job: Job, outcome: FinishedOutcome, now: int, result_json: bytes | None = None
    ) -> None:
        self._leave_queue(job)
        self._remember(
            FinishedJob(job.id, job.type, outcome, job.attempts, job.created_at, now, result_json)
        )
        self.counters[outcome] += 1

    def _remember(self, record: FinishedJob) -> None:
        self.archive.remember(record, self.limits.dedup_cap)

    def _kill(self, job: Job, reason: DeadReason, now: int) -> None:
        self._leave_queue(job)
        dead = DeadJob(
            id=job.id,
            type=job.type,
            payload=job.payload,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            created_at=job.created_at,
            died_at=now,
            reason=reason,
            last_error=job.last_error,
            trace=job.trace,
            priority=job.priority,
            unique_key=job.unique_key,
        )
        self.counters["dead"] += 1
        for dropped in self.archive.bury(dead, self.limits.dead_letter_cap):
            self.counters["deadDropped"] += 1
            log.warning(
                "dead-letter list full (%d): dropped the oldest entry %r (type %r, error %r)",
                self.limits.dead_letter_cap,
                dropped.id,
                dropped.type,
                dropped.last_error,
            )


# One report of an exchange applied to the state: the job's status afterwards.


def _heartbeat(state: QueueState, report: JobReport, worker_id: str, now: int) -> str:
    state.heartbeat(report.job_id, worker_id, now, report.attempt, report.progress)
    return "in_progress"


def _complete(state: QueueState, report: JobReport, worker_id: str, now: int) -> str:
    state.complete(report.job_id, worker_id, now, report.attempt, report.result)
    return "completed"


def _fail(state: QueueState, report: FailReport, worker_id: str, now: int) -> str:
    return state.fail(
        report.job_id,
        worker_id,
        now,
        error=report.error or "",
        attempt=report.attempt,
        retry_in_ms=report.retry_in_ms,
        final=bool(report.final),
    )


def _release(state: QueueState, report: JobReport, worker_id: str, now: int) -> str:
    return state.release(report.job_id, worker_id, now, report.attempt)


def check_claim(worker_id: str, max_jobs: int) -> None:
    """BrokerProtocolError unless ``worker_id`` passes the wire's rule (1-256
    characters) and ``max_jobs`` is a positive integer."""
    parse(WORKER_ID, worker_id, field="workerId")
    if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
        raise BrokerProtocolError("max must be a positive integer")


T = TypeVar("T")
U = TypeVar("U")


def _per_item(
    items: Sequence[T | TrioqError], apply: Callable[[int, T], U]
) -> list[U | TrioqError]:
    """``apply(index, item)`` for each item on its own: an item that is an error
    already, or that ``apply`` rejects with a TrioqError, has that error as its result."""
    results: list[U | TrioqError] = []
    for index, item in enumerate(items):
        if isinstance(item, TrioqError):
            results.append(item)
            continue
        try:
            results.append(apply(index, item))
        except TrioqError as exc:
            results.append(exc)
    return results


def _int_in(value: object, low: int, high: int) -> bool:
    """Whether ``value`` is an int (not a bool) from ``low`` to ``high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _new_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"
