"""The queue's in-memory model, its mutations, and the queue.json codec.

Every mutation costs O(1) or O(log n) in the queue depth:

- jobs live in a dict by id (insertion order = document order);
- jobs ready to claim sit in heaps keyed by (ready time, enqueue order), one for all
  types and one per type, with lazy deletion (a heap entry carries the job's
  ``ticket`` at the time it was queued and is skipped once the ticket moved on;
  tickets come from one state-wide counter, so an entry left behind by a job that
  is gone never matches a later job that reuses its id);
- in-progress jobs sit in an ordered dict in heartbeat order, so lease expiry pops
  from the front (every lease has the same length);
- dead and finished jobs sit in ordered dicts in the order they got there, so the
  bounds drop the oldest from the front.

A mutation validates everything before it changes anything: a rejected mutation
(any :class:`~trioq.TrioqError`) leaves the state as it was.

Times are integers: milliseconds since the Unix epoch, from the injected clock.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import OrderedDict
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import trio

from .._errors import (
    BrokerProtocolError,
    DocumentInvalid,
    JobNotDead,
    JobNotFound,
    LeaseLost,
    PayloadTooLarge,
    QueueFull,
)
from ._jobs import (
    DEFAULT_TYPE,
    DeadJob,
    DeadReason,
    FinishedJob,
    Job,
    valid_id,
    valid_text,
    valid_type,
)

log = logging.getLogger("trioq.state")

FORMAT = "trioq.queue"
FORMAT_VERSION = 1

_HeapEntry = tuple[int, int, int, str]  # (ready_at, order, ticket, job id)


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
    max_attempts_limit: int = 1000
    dead_letter_cap: int = 10_000
    dedup_window_ms: int = 86_400_000
    dedup_cap: int = 100_000
    retry_base_ms: int = 1000
    retry_max_ms: int = 300_000
    retry_jitter: float = 0.2
    """Retry delays vary by up to this fraction either way."""
    max_delay_ms: int = 365 * 86_400_000
    """Cap on a job's ``delay_ms`` and on a failure's ``retry_in_ms``, so stored times
    stay far inside JSON's exact-integer range."""


@dataclass(slots=True)
class LeaderInfo:
    """Who leads, as written in the document."""

    broker_id: str
    url: str
    epoch: int
    lease_at: int
    released: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "brokerId": self.broker_id,
            "url": self.url,
            "epoch": self.epoch,
            "leaseAt": self.lease_at,
            "released": self.released,
        }


@dataclass(slots=True)
class NewJob:
    """One job to enqueue."""

    payload: Any
    type: str = DEFAULT_TYPE
    id: str | None = None
    max_attempts: int | None = None
    delay_ms: int = 0


@dataclass(slots=True, frozen=True)
class EnqueueResult:
    id: str
    duplicate: bool


@dataclass(slots=True, frozen=True)
class ClaimedJob:
    """A job handed to a worker, with the attempt and lease it holds."""

    id: str
    type: str
    payload: Any
    attempt: int
    lease_ms: int


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


@dataclass(slots=True)
class QueueState:
    """The whole queue: document header, jobs, dead letters, finished ids, counters."""

    limits: Limits = field(default_factory=Limits)
    seq: int = 0
    leader: LeaderInfo | None = None
    next_order: int = 1
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))
    jobs: dict[str, Job] = field(default_factory=dict)
    dead: OrderedDict[str, DeadJob] = field(default_factory=OrderedDict)
    finished: OrderedDict[str, FinishedJob] = field(default_factory=OrderedDict)
    rng: random.Random = field(default_factory=random.Random)
    # indexes
    _ready: list[_HeapEntry] = field(default_factory=list)
    _ready_by_type: dict[str, list[_HeapEntry]] = field(default_factory=dict)
    _leases: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # jobs queued with a ready time in the future, to wake waiting claims on time
    _delayed: list[_HeapEntry] = field(default_factory=list)
    _heap_entries: int = 0
    _tickets: int = 0
    unclaimed_count: int = 0
    _job_bytes: int = 0
    # encoded size of the dead-letter and finished lists: they ride in every write too
    _side_bytes: int = 0

    # ------------------------------------------------------------------ reads

    @property
    def in_progress_count(self) -> int:
        return len(self._leases)

    @property
    def side_bytes(self) -> int:
        """Encoded size of the dead-letter and finished lists (counted by the size cap)."""
        return self._side_bytes

    @property
    def approx_bytes(self) -> int:
        """Encoded size of the queued jobs as of the last :meth:`encode` (jobs that
        entered since count with their size when they entered)."""
        return self._job_bytes

    def stats(self) -> dict[str, int]:
        """osqueue's stats fields (without ``brokerAddress``)."""
        return {
            "total": len(self.jobs),
            "unclaimed": self.unclaimed_count,
            "inProgress": self.in_progress_count,
            "completedTotal": self.counters["completed"],
        }

    def lookup(self, job_id: str) -> Job | DeadJob | FinishedJob | None:
        return self.jobs.get(job_id) or self.dead.get(job_id) or self.finished.get(job_id)

    def knows(self, job_id: str) -> bool:
        return job_id in self.jobs or job_id in self.dead or job_id in self.finished

    def next_ready_at(self) -> int | None:
        """When the earliest unclaimed job becomes (or became) claimable."""
        head = self._valid_head(self._ready)
        return None if head is None else head[0]

    def next_delayed_at(self) -> int | None:
        """The earliest future ready time among queued jobs (delays and retries)
        that has not yet been passed by :meth:`pop_due`."""
        head = self._valid_head(self._delayed)
        return None if head is None else head[0]

    def pop_due(self, now: int) -> int:
        """Forget delayed entries whose time has come; returns how many became ready."""
        count = 0
        while (head := self._valid_head(self._delayed)) is not None and head[0] <= now:
            heapq.heappop(self._delayed)
            self._heap_entries -= 1
            count += 1
        return count

    def next_lease_expiry(self) -> int | None:
        for job_id in self._leases:
            hb = self.jobs[job_id].heartbeat_at
            assert hb is not None
            return hb + self.limits.job_lease_ms
        return None

    # -------------------------------------------------------------- mutations

    def enqueue(self, items: Sequence[NewJob], now: int) -> list[EnqueueResult]:
        """Enqueue a batch, validated as a whole: one bad item rejects them all."""
        limits = self.limits
        prepared: list[tuple[NewJob, str, bytes]] = []
        seen: set[str] = set()
        results: list[EnqueueResult] = []
        new_bytes = 0
        for index, item in enumerate(items):
            where = f"jobs[{index}]" if len(items) > 1 else "job"
            if item.id is not None and not valid_id(item.id):
                raise BrokerProtocolError(
                    f"{where}: id must be 1-128 characters of A-Z a-z 0-9 . _ : - (got {item.id!r})"
                )
            if not valid_type(item.type):
                raise BrokerProtocolError(f"{where}: type must be 1-128 printable characters")
            max_attempts = item.max_attempts
            if max_attempts is not None and not (
                isinstance(max_attempts, int)
                and not isinstance(max_attempts, bool)
                and 1 <= max_attempts <= limits.max_attempts_limit
            ):
                raise BrokerProtocolError(
                    f"{where}: maxAttempts must be an integer from 1 to {limits.max_attempts_limit}"
                )
            if not _int_in(item.delay_ms, 0, limits.max_delay_ms):
                raise BrokerProtocolError(
                    f"{where}: delayMs must be an integer from 0 to {limits.max_delay_ms}"
                )
            try:
                encoded_payload = orjson.dumps(item.payload)
            except TypeError as exc:
                raise BrokerProtocolError(f"{where}: payload is not JSON: {exc}") from exc
            if len(encoded_payload) > limits.max_payload_bytes:
                raise PayloadTooLarge(
                    f"{where}: payload is {len(encoded_payload)} bytes, "
                    f"over the limit of {limits.max_payload_bytes}"
                )
            job_id = item.id if item.id is not None else _new_id(self.rng)
            if job_id in seen or self.knows(job_id):
                results.append(EnqueueResult(job_id, True))
                continue
            seen.add(job_id)
            results.append(EnqueueResult(job_id, False))
            prepared.append((item, job_id, encoded_payload))
            new_bytes += len(encoded_payload) + 256
        if len(self.jobs) + len(prepared) > limits.max_queued:
            raise QueueFull(
                f"the queue holds {len(self.jobs)} jobs; {len(prepared)} more would pass "
                f"the limit of {limits.max_queued}"
            )
        if self._job_bytes + self._side_bytes + new_bytes > limits.max_document_bytes:
            raise QueueFull(
                f"the queue document would grow past its limit of {limits.max_document_bytes} bytes"
            )
        for item, job_id, payload_json in prepared:
            job = Job(
                id=job_id,
                type=item.type,
                payload=item.payload,
                status="unclaimed",
                attempts=0,
                max_attempts=item.max_attempts or limits.default_max_attempts,
                created_at=now,
                ready_at=now + item.delay_ms,
                order=self.next_order,
                payload_json=payload_json,
            )
            self.next_order += 1
            self._add(job, now)
            self.counters["enqueued"] += 1
        return results

    def claim(
        self,
        worker_id: str,
        now: int,
        *,
        types: Sequence[str] | None = None,
        max_jobs: int = 1,
    ) -> list[ClaimedJob]:
        """Claim up to ``max_jobs`` ready jobs in (ready time, enqueue order)."""
        if not worker_id or not valid_text(worker_id):
            raise BrokerProtocolError("workerId must be a non-empty string")
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise BrokerProtocolError("max must be a positive integer")
        claimed: list[ClaimedJob] = []
        heaps: list[list[_HeapEntry]]
        if types is None:
            heaps = [self._ready]
        else:
            heaps = [h for t in dict.fromkeys(types) if (h := self._ready_by_type.get(t))]
        while len(claimed) < max_jobs:
            best: list[_HeapEntry] | None = None
            best_head: _HeapEntry | None = None
            for heap in heaps:
                head = self._valid_head(heap)
                if head is not None and head[0] <= now and (best_head is None or head < best_head):
                    best, best_head = heap, head
            if best is None or best_head is None:
                break
            heapq.heappop(best)
            self._heap_entries -= 1
            job = self.jobs[best_head[3]]
            self._mark_claimed(job, worker_id, now)
            claimed.append(
                ClaimedJob(job.id, job.type, job.payload, job.attempts, self.limits.job_lease_ms)
            )
        return claimed

    def heartbeat(self, job_id: str, worker_id: str, now: int, attempt: int | None = None) -> None:
        """Renew a lease. A cancelled job answers LeaseLost and is finished here."""
        job = self._held(job_id, worker_id, attempt)
        if job.cancel_requested:
            self._finish(job, "cancelled", now)
            self.counters["cancelled"] += 1
            raise LeaseLost(f"job {job_id!r} was cancelled")
        job.heartbeat_at = now
        job.encoded = None
        self._leases.move_to_end(job_id)

    def complete(self, job_id: str, worker_id: str, now: int, attempt: int | None = None) -> None:
        job = self._held(job_id, worker_id, attempt)
        if job.cancel_requested:
            self._finish(job, "cancelled", now)
            self.counters["cancelled"] += 1
            raise LeaseLost(f"job {job_id!r} was cancelled")
        self._finish(job, "completed", now)
        self.counters["completed"] += 1

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
        job = self._held(job_id, worker_id, attempt)
        if job.cancel_requested:
            self._finish(job, "cancelled", now)
            self.counters["cancelled"] += 1
            raise LeaseLost(f"job {job_id!r} was cancelled")
        self.counters["failed"] += 1
        job.last_error = error
        if final or job.attempts >= job.max_attempts:
            self._kill(job, "final" if final else "exhausted", now)
            return "dead"
        delay = retry_in_ms if retry_in_ms is not None else self.backoff_ms(job.attempts)
        self._requeue(job, now + delay, now)
        return "retrying"

    def release(self, job_id: str, worker_id: str, now: int, attempt: int | None = None) -> None:
        """Give a job back at once without counting the attempt (graceful shutdown)."""
        job = self._held(job_id, worker_id, attempt)
        job.attempts -= 1
        if job.cancel_requested:
            self._finish(job, "cancelled", now)
            self.counters["cancelled"] += 1
            return
        # back to where it stood: its old ready time keeps its place in line
        self._requeue(job, job.ready_at, now)

    def cancel(self, job_id: str, now: int) -> str:
        """Cancel a job; returns its status afterwards.

        A queued job is finished as ``cancelled`` at once; an in-progress job is
        marked, and its worker's next heartbeat (or complete/fail) gets LeaseLost;
        a dead job leaves the dead-letter list as cancelled; a finished job stays
        as it is.
        """
        job = self.jobs.get(job_id)
        if job is not None:
            if job.status == "unclaimed":
                self._finish(job, "cancelled", now)
                self.counters["cancelled"] += 1
                return "cancelled"
            job.cancel_requested = True
            job.encoded = None
            return "cancelling"
        dead = self.dead.get(job_id)
        if dead is not None:
            self._forget_dead(job_id)
            self._remember(
                FinishedJob(dead.id, dead.type, "cancelled", dead.attempts, dead.created_at, now)
            )
            self.counters["cancelled"] += 1
            return "cancelled"
        finished = self.finished.get(job_id)
        if finished is not None:
            return finished.outcome
        raise JobNotFound(f"no job {job_id!r}")

    def requeue_dead(self, job_id: str, now: int) -> None:
        """Move a dead job back to the end of the queue with its attempts reset."""
        dead = self.dead.get(job_id)
        if dead is None:
            if self.knows(job_id):
                raise JobNotDead(f"job {job_id!r} is not in the dead-letter list")
            raise JobNotFound(f"no job {job_id!r}")
        if len(self.jobs) + 1 > self.limits.max_queued:
            raise QueueFull(f"the queue holds {len(self.jobs)} jobs, its limit")
        self._forget_dead(job_id)
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
        )
        self.next_order += 1
        self._add(job, now)
        self.counters["requeued"] += 1

    def expire(self, now: int) -> list[str]:
        """Return expired leases to the queue (or the dead letters); trim the
        dedup window. Returns the ids whose lease expired."""
        deadline = now - self.limits.job_lease_ms
        due: list[Job] = []
        for job_id in self._leases:
            job = self.jobs[job_id]
            assert job.heartbeat_at is not None
            if job.heartbeat_at > deadline:
                break
            due.append(job)
        # Leases that ran out together go in one canonical order, the order a
        # decoded document lists them in: (heartbeat, enqueue order).
        due.sort(key=_lease_order)
        expired: list[str] = []
        for job in due:
            expired.append(job.id)
            self.counters["expired"] += 1
            if job.cancel_requested:
                self._finish(job, "cancelled", now)
                self.counters["cancelled"] += 1
            elif job.attempts >= job.max_attempts:
                job.last_error = job.last_error or "lease expired"
                self._kill(job, "expired", now)
            else:
                job.last_error = "lease expired"
                self._requeue(job, now, now)
        horizon = now - self.limits.dedup_window_ms
        while self.finished:
            first = next(iter(self.finished.values()))
            if first.finished_at > horizon and len(self.finished) <= self.limits.dedup_cap:
                break
            _, gone = self.finished.popitem(last=False)
            self._side_bytes -= len(gone.encode())
        return expired

    def renew_all_leases(self, now: int) -> None:
        """Restart every in-progress lease at ``now`` (after a takeover, so that no
        lease expires because of another host's clock or the failover gap)."""
        for job_id in self._leases:
            job = self.jobs[job_id]
            job.heartbeat_at = now
            job.encoded = None

    def backoff_ms(self, attempts: int) -> int:
        """Retry delay after the ``attempts``-th failed attempt: exponential, jittered."""
        limits = self.limits
        base = min(limits.retry_max_ms, limits.retry_base_ms << min(30, max(0, attempts - 1)))
        jitter = 1.0 + self.rng.uniform(-limits.retry_jitter, limits.retry_jitter)
        return max(0, round(base * jitter))

    # ---------------------------------------------------------------- helpers

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

    def _add(self, job: Job, now: int) -> None:
        job.size = len(job.encode())
        self._job_bytes += job.size
        self.jobs[job.id] = job
        self._push_ready(job, now)

    def _push_ready(self, job: Job, now: int) -> None:
        self._tickets += 1
        job.ticket = self._tickets
        entry = (job.ready_at, job.order, job.ticket, job.id)
        heapq.heappush(self._ready, entry)
        heapq.heappush(self._ready_by_type.setdefault(job.type, []), entry)
        self._heap_entries += 2
        if job.ready_at > now:
            # only a job that is not ready yet needs a wake-up at its ready time
            heapq.heappush(self._delayed, entry)
            self._heap_entries += 1
        self.unclaimed_count += 1
        if self._heap_entries > 6 * self.unclaimed_count + 4096:
            self._rebuild_heaps()

    def _valid_head(self, heap: list[_HeapEntry]) -> _HeapEntry | None:
        jobs = self.jobs
        while heap:
            head = heap[0]
            job = jobs.get(head[3])
            if job is not None and job.status == "unclaimed" and job.ticket == head[2]:
                return head
            heapq.heappop(heap)
            self._heap_entries -= 1
        return None

    def _rebuild_heaps(self) -> None:
        """Drop stale heap entries (O(n), amortized over the pushes that made them)."""
        ready: list[_HeapEntry] = []
        by_type: dict[str, list[_HeapEntry]] = {}
        for job in self.jobs.values():
            if job.status == "unclaimed":
                entry = (job.ready_at, job.order, job.ticket, job.id)
                ready.append(entry)
                by_type.setdefault(job.type, []).append(entry)
        delayed = [e for e in self._delayed if self._is_valid(e)]
        heapq.heapify(ready)
        heapq.heapify(delayed)
        for heap in by_type.values():
            heapq.heapify(heap)
        self._ready, self._ready_by_type, self._delayed = ready, by_type, delayed
        self._heap_entries = 2 * len(ready) + len(delayed)

    def _is_valid(self, entry: _HeapEntry) -> bool:
        job = self.jobs.get(entry[3])
        return job is not None and job.status == "unclaimed" and job.ticket == entry[2]

    def _mark_claimed(self, job: Job, worker_id: str, now: int) -> None:
        job.status = "in_progress"
        job.attempts += 1
        job.worker_id = worker_id
        job.heartbeat_at = now
        job.encoded = None
        self.unclaimed_count -= 1
        self._leases[job.id] = None

    def _leave_queue(self, job: Job) -> None:
        del self.jobs[job.id]
        self._job_bytes -= job.size
        if job.status == "unclaimed":
            self.unclaimed_count -= 1
        else:
            del self._leases[job.id]

    def _requeue(self, job: Job, ready_at: int, now: int) -> None:
        del self._leases[job.id]
        job.status = "unclaimed"
        job.worker_id = None
        job.heartbeat_at = None
        job.ready_at = ready_at
        job.encoded = None
        self._push_ready(job, now)

    def _finish(self, job: Job, outcome: str, now: int) -> None:
        self._leave_queue(job)
        assert outcome in ("completed", "cancelled")
        self._remember(
            FinishedJob(
                job.id,
                job.type,
                "completed" if outcome == "completed" else "cancelled",
                job.attempts,
                job.created_at,
                now,
            )
        )

    def _remember(self, record: FinishedJob) -> None:
        self.finished[record.id] = record
        self._side_bytes += len(record.encode())
        if len(self.finished) > self.limits.dedup_cap:
            _, gone = self.finished.popitem(last=False)
            self._side_bytes -= len(gone.encode())

    def _forget_dead(self, job_id: str) -> None:
        self._side_bytes -= len(self.dead.pop(job_id).encode())

    def _kill(self, job: Job, reason: DeadReason, now: int) -> None:
        self._leave_queue(job)
        dead = self.dead[job.id] = DeadJob(
            id=job.id,
            type=job.type,
            payload=job.payload,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            created_at=job.created_at,
            died_at=now,
            reason=reason,
            last_error=job.last_error,
        )
        self._side_bytes += len(dead.encode())
        self.counters["dead"] += 1
        while len(self.dead) > self.limits.dead_letter_cap:
            dropped_id, dropped = self.dead.popitem(last=False)
            self._side_bytes -= len(dropped.encode())
            self.counters["deadDropped"] += 1
            log.warning(
                "dead-letter list full (%d): dropped the oldest entry %r (type %r, error %r)",
                self.limits.dead_letter_cap,
                dropped_id,
                dropped.type,
                dropped.last_error,
            )

    # ------------------------------------------------------------------ codec

    def encode(self) -> bytes:
        """The whole document, deterministically: the same state gives the same bytes.

        Also brings each job's ``size`` (and :attr:`approx_bytes`) up to date with the
        bytes written, as :meth:`decode` measures them: a decoded document enforces
        the size cap exactly as the state that wrote it.
        """
        jobs: list[bytes] = []
        total = 0
        for job in self.jobs.values():
            data = job.encode()
            job.size = len(data)
            total += job.size
            jobs.append(data)
        self._job_bytes = total
        header = {
            "format": FORMAT,
            "formatVersion": FORMAT_VERSION,
            "seq": self.seq,
            "leader": None if self.leader is None else self.leader.to_json(),
            "nextOrder": self.next_order,
            "counters": self.counters,
            "jobs": _array(jobs),
            "dead": _array(d.encode() for d in self.dead.values()),
            "finished": _array(f.encode() for f in self.finished.values()),
        }
        return orjson.dumps(header)

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
        steps = _decode_steps(cls, data, limits, rng, name)
        reply: object = None
        try:
            while True:
                request = steps.send(reply)
                reply = None if request is None else _parse(request)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    @classmethod
    async def decode_async(
        cls,
        data: bytes,
        *,
        limits: Limits | None = None,
        rng: random.Random | None = None,
        name: str = "queue.json",
    ) -> QueueState:
        """:meth:`decode` in steps of a few milliseconds, with a checkpoint between
        them, so that a leader loading 100,000 jobs keeps answering its probes.

        A document in the layout :meth:`encode` writes (one record a line) is parsed
        record by record on the loop; any other valid document (an older writer's, or
        edited by hand) is parsed whole in a thread first, since ``orjson.loads`` of
        a large document holds the GIL for its whole duration.
        """
        steps = _decode_steps(cls, data, limits, rng, name)
        reply: object = None
        try:
            while True:
                request = steps.send(reply)
                if request is None:
                    await trio.lowlevel.checkpoint()
                    reply = None
                else:
                    reply = await trio.to_thread.run_sync(_parse, request)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    @staticmethod
    def decode_header(data: bytes, *, name: str = "queue.json") -> tuple[int, LeaderInfo | None]:
        """``seq`` and the leader, read from the document's header only.

        The header fields are written before ``jobs``, so this parses a few hundred
        bytes whatever the queue's depth (a standby reads the leader this way every
        time the document changes). Checks the format like :meth:`decode`.
        """
        # inside a JSON string a quote is escaped, so the first ',"jobs":' is the key
        cut = data.find(b',"jobs":')
        raw = _load_checked(data[:cut] + b"}" if cut > 0 else data, name)
        try:
            return _nonneg(raw["seq"]), _leader_from(raw.get("leader"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DocumentInvalid(f"{name} is damaged: {exc!r}") from exc

    def iter_jobs(self) -> Iterator[Job]:
        return iter(self.jobs.values())


def _load_checked(data: bytes, name: str) -> dict[str, Any]:
    return _checked_header(_parse(data), name)


def _leader_from(leader: Any) -> LeaderInfo | None:
    if leader is None:
        return None
    return LeaderInfo(
        broker_id=str(leader["brokerId"]),
        url=str(leader["url"]),
        epoch=_nonneg(leader["epoch"]),
        lease_at=_nonneg(leader["leaseAt"]),
        released=bool(leader.get("released", False)),
    )


def _array(parts: Iterable[bytes]) -> list[orjson.Fragment]:
    """A JSON array of encoded items, for ``orjson.dumps``: one fragment holding the
    items joined by commas, in a list (an empty fragment makes ``[]``). Each item is
    copied once by the join; bracketing the joined bytes would copy them all again."""
    return [orjson.Fragment(b",".join(parts))]


def _lease_order(job: Job) -> tuple[int, int]:
    assert job.heartbeat_at is not None
    return (job.heartbeat_at, job.order)


def _int_in(value: object, low: int, high: int) -> bool:
    """Whether ``value`` is an int (not a bool) from ``low`` to ``high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _nonneg(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def _new_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


# ---------------------------------------------------------------- decoding

_DECODE_STEP = 256
"""Records decoded between two checkpoints (about a millisecond of work)."""

_JOB_KEYS = tuple(Job("", "", None, "unclaimed", 0, 0, 0, 0, 0).to_json().keys())
_SCAN_WINDOW = 1 << 20
_JOBS_KEY = b',"jobs":['
_TAIL_KEYS = (b',"dead":[', b',"finished":[')


def _parse(data: bytes) -> object:
    """``orjson.loads``, with the error returned rather than raised (for the driver)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return exc


def _split_records(
    data: bytes,
) -> Generator[None, object, tuple[bytes, list[tuple[int, int]]] | None]:
    """The header and the spans of the three record arrays, when ``data`` has the
    layout :meth:`QueueState.encode` writes: compact JSON whose arrays hold one
    record a line (each record ends in a newline, which JSON never has unescaped
    inside a value, so a newline followed by ``,`` or ``]`` ends a record).
    ``None`` for any other layout. Scans a megabyte between two checkpoints."""
    cut = data.find(_JOBS_KEY)
    if cut <= 0:
        return None
    spans: list[tuple[int, int]] = []
    pos = cut + len(_JOBS_KEY)
    for following in (*_TAIL_KEYS, None):
        if data.startswith(b"]", pos):
            spans.append((pos, pos))
            pos += 1
        else:
            end = -1
            for window in range(pos, len(data), _SCAN_WINDOW):
                end = data.find(b"\n]", window, window + _SCAN_WINDOW + 1)
                if end >= 0:
                    break
                yield None
            if end < 0:
                return None
            spans.append((pos, end))
            pos = end + 2
        if following is not None:
            if not data.startswith(following, pos):
                return None
            pos += len(following)
    if data[pos:].strip() != b"}":
        return None
    return data[:cut] + b"}", spans


def _records(data: bytes, span: tuple[int, int]) -> Iterator[bytes]:
    """Each record's bytes (without its newline) in ``data[span[0]:span[1]]``."""
    pos, end = span
    while pos < end:
        stop = data.find(b"\n,", pos, end)
        if stop < 0:
            stop = end
        yield data[pos:stop]
        pos = stop + 2


def _decode_steps(
    cls: type[QueueState],
    data: bytes,
    limits: Limits | None,
    rng: random.Random | None,
    name: str,
) -> Generator[bytes | None, object, QueueState]:
    """The decoder, as steps: it yields ``None`` where its driver may checkpoint,
    or bytes it wants parsed whole (the driver sends back ``orjson.loads`` of them,
    or the ``JSONDecodeError``)."""
    layout = yield from _split_records(data)
    raw_records: list[Iterable[object]]
    if layout is None:
        parsed = yield data
        if isinstance(parsed, orjson.JSONDecodeError):
            raise DocumentInvalid(f"{name} is not valid JSON: {parsed}")
        raw = _checked_header(parsed, name)
        try:
            raw_records = [list(raw["jobs"]), list(raw["dead"]), list(raw["finished"])]
        except (KeyError, TypeError) as exc:
            raise DocumentInvalid(f"{name} is damaged: {exc!r}") from exc
    else:
        header, spans = layout
        raw = _checked_header(_parse(header), name)
        raw_records = [_records(data, span) for span in spans]
    state = cls(limits=limits or Limits(), rng=rng or random.Random())
    try:
        state.seq = _nonneg(raw["seq"])
        state.leader = _leader_from(raw.get("leader"))
        state.next_order = _nonneg(raw["nextOrder"])
        counters = raw["counters"]
        for name_ in COUNTER_NAMES:
            state.counters[name_] = _nonneg(counters.get(name_, 0))
        ready: list[_HeapEntry] = []
        leases: list[Job] = []
        for count, item in enumerate(raw_records[0], 1):
            job, state_bytes = _record(Job, item, _JOB_KEYS)
            if job.id in state.jobs:
                raise ValueError(f"job {job.id!r} appears twice")
            state.jobs[job.id] = job
            job.encoded = state_bytes
            job.size = len(job.encode())
            state._job_bytes += job.size
            if job.status == "unclaimed":
                state.unclaimed_count += 1
                state._tickets += 1
                job.ticket = state._tickets
                ready.append((job.ready_at, job.order, job.ticket, job.id))
            else:
                if job.heartbeat_at is None or job.worker_id is None:
                    raise ValueError(f"in-progress job {job.id!r} has no worker/heartbeat")
                leases.append(job)
            if count % _DECODE_STEP == 0:
                yield None
        for count, item in enumerate(raw_records[1], 1):
            dead, encoded = _record(DeadJob, item, None)
            dead.encoded = encoded
            state.dead[dead.id] = dead
            state._side_bytes += len(dead.encode())
            if count % _DECODE_STEP == 0:
                yield None
        for count, item in enumerate(raw_records[2], 1):
            fin, encoded = _record(FinishedJob, item, None)
            fin.encoded = encoded
            state.finished[fin.id] = fin
            state._side_bytes += len(fin.encode())
            if count % _DECODE_STEP == 0:
                yield None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DocumentInvalid(f"{name} is damaged: {exc!r}") from exc
    leases.sort(key=_lease_order)
    yield None
    state._leases = OrderedDict.fromkeys(j.id for j in leases)
    # a sorted list is a heap; the document is nearly in (ready time, order) order,
    # which timsort takes in about one pass
    ready.sort()
    yield None
    by_type: dict[str, list[_HeapEntry]] = {}
    for count, entry in enumerate(ready, 1):
        by_type.setdefault(state.jobs[entry[3]].type, []).append(entry)
        if count % (8 * _DECODE_STEP) == 0:
            yield None
    state._ready, state._ready_by_type, state._delayed = ready, by_type, list(ready)
    state._heap_entries = 3 * len(ready)
    return state


_R = TypeVar("_R", Job, DeadJob, FinishedJob)


def _record(
    kind: type[_R], item: object, canonical_keys: tuple[str, ...] | None
) -> tuple[_R, bytes | None]:
    """A record from its stored form (bytes from the line layout, or an already
    parsed value), and its encoding when the stored bytes are exactly what
    ``encode()`` would write again (our own writer's), so the first commit after a
    load re-encodes nothing."""
    if isinstance(item, bytes):
        raw = orjson.loads(item)
        if not isinstance(raw, dict):
            raise ValueError(f"expected a record, got {item[:80]!r}")
        record = kind.from_json(raw)
        keys = canonical_keys or tuple(record.to_json().keys())
        if tuple(raw.keys()) == keys:
            return record, item + b"\n"
        return record, None
    if not isinstance(item, dict):
        raise ValueError(f"expected a record, got {item!r}")
    return kind.from_json(item), None


def _checked_header(raw: object, name: str) -> dict[str, Any]:
    if isinstance(raw, orjson.JSONDecodeError):
        raise DocumentInvalid(f"{name} is not valid JSON: {raw}")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DocumentInvalid(f"{name} is not a trioq queue document (no format {FORMAT!r})")
    version = raw.get("formatVersion")
    if version != FORMAT_VERSION:
        raise DocumentInvalid(
            f"{name} has format version {version!r}; this trioq reads version "
            f"{FORMAT_VERSION} only and will not overwrite it"
        )
    return raw
