"""The indexes over the queued jobs that keep every mutation O(1) or O(log n).

- Jobs queued with a ready time in the future sit in the delayed heap, keyed by
  (ready time, enqueue order); the engine wakes waiting claims at its head's time.
  When that time has come (:meth:`JobIndex.promote`, run by every claim), they move
  to the ready heaps.
- Jobs ready to claim sit in heaps keyed by (-priority, ready time, enqueue order),
  one for all types and one per type: the highest priority first, and within a
  priority the order of ready time, then enqueue order.
- Every heap deletes lazily: an entry carries the job's ``ticket`` at the time it was
  queued and is skipped once the ticket moved on. Tickets come from one counter, so
  an entry left behind by a job that is gone never matches a later job that reuses
  its id.
- In-progress jobs sit in an ordered dict in heartbeat order, so lease expiry pops
  from the front (every lease has the same length).
- Jobs are counted by type as they come and go (:class:`JobTable` counts the queued
  ones, the lease order the in-progress ones), so the counts by type cost O(types).

The index shares the state's ``jobs`` dict (read only): it tells a live entry from a
stale one by looking the job up.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from typing import NoReturn, TypeVar

from ._jobs import Job

_E = TypeVar("_E", "HeapEntry", "ReadyEntry")

HeapEntry = tuple[int, int, int, str]
"""A delayed heap's entry: (ready_at, order, ticket, job id)."""
ReadyEntry = tuple[int, int, int, int, str]
"""A ready heap's entry: (-priority, ready_at, order, ticket, job id)."""

_REBUILD_STEP = 2048
"""Entries indexed by type between two checkpoints of a load."""


def lease_order(job: Job) -> tuple[int, int]:
    """Leases that ran out together go in one canonical order: (heartbeat, enqueue
    order), the order a decoded document lists them in."""
    assert job.heartbeat_at is not None
    return (job.heartbeat_at, job.order)


class JobTable(dict[str, Job]):
    """The state's ``jobs`` dict, counting its jobs by type and noting which job
    holds each uniqueness key, as jobs are stored, replaced and deleted (``[]=``,
    ``del``, ``pop``; the other ways to change a dict raise rather than let the
    counts drift)."""

    __slots__ = ("by_type", "holders", "key_counts")

    def __init__(self) -> None:
        super().__init__()
        self.by_type: dict[str, int] = {}
        """Queued jobs (unclaimed or in progress) of each type that has one."""
        self.holders: dict[str, str] = {}
        """The queued job holding each uniqueness key: the first in table order of
        those with it (one, but for a dead job requeued while another held its key)."""
        self.key_counts: dict[str, int] = {}
        """Queued jobs with each uniqueness key."""

    def __setitem__(self, job_id: str, job: Job) -> None:
        old = self.get(job_id)
        if old is not None and old.type == job.type and old.unique_key == job.unique_key:
            super().__setitem__(job_id, job)  # replaced in place: same counts and holder
            return
        if old is not None:
            self._forget(old)
        super().__setitem__(job_id, job)
        self.by_type[job.type] = self.by_type.get(job.type, 0) + 1
        key = job.unique_key
        if key is not None:
            self.holders.setdefault(key, job_id)
            self.key_counts[key] = self.key_counts.get(key, 0) + 1

    def __delitem__(self, job_id: str) -> None:
        job = self[job_id]
        super().__delitem__(job_id)
        self._forget(job)

    def pop(self, job_id: str, default: Job | None = None) -> Job | None:  # type: ignore[override]
        job = super().pop(job_id, None)
        if job is None:
            return default
        self._forget(job)
        return job

    def _forget(self, job: Job) -> None:
        left = self.by_type[job.type] - 1
        if left:
            self.by_type[job.type] = left
        else:
            del self.by_type[job.type]  # the counts hold only types with jobs
        key = job.unique_key
        if key is None:
            return
        left = self.key_counts[key] - 1
        if not left:
            del self.key_counts[key]
            del self.holders[key]
        else:
            self.key_counts[key] = left
            if self.holders[key] == job.id:
                # the rare second job with the key (see holders) takes it over: the
                # first in table order, as a decode of the stored state finds it
                self.holders[key] = next(
                    j.id for j in self.values() if j.unique_key == key and j is not job
                )

    def _unsupported(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("JobTable counts jobs by type: use [] =, del or pop")

    update = setdefault = popitem = clear = __ior__ = _unsupported

    def __reduce__(self) -> tuple[object, ...]:
        # a copy or pickle stores each job again, counting it (the default would
        # restore the counts and then count every job a second time)
        return (_job_table, (list(self.items()),))


def _job_table(items: list[tuple[str, Job]]) -> JobTable:
    table = JobTable()
    for job_id, job in items:
        table[job_id] = job
    return table


class JobIndex:
    """Ready heaps, the delayed heap and the lease order over one ``jobs`` dict."""

    __slots__ = (
        "_entries",
        "_jobs",
        "_tickets",
        "by_type",
        "deadlines",
        "delayed",
        "leased_by_type",
        "leases",
        "ready",
    )

    def __init__(self, jobs: JobTable) -> None:
        self._jobs = jobs
        self.ready: list[ReadyEntry] = []
        self.by_type: dict[str, list[ReadyEntry]] = {}
        self.delayed: list[HeapEntry] = []
        self.deadlines: list[tuple[int, int, str]] = []
        """(deadline, order, id) of the unclaimed jobs with a TTL, lazily deleted."""
        self.leases: OrderedDict[str, str] = OrderedDict()
        """In-progress job ids in lease order, each with its job's type."""
        self.leased_by_type: dict[str, int] = {}
        """In-progress jobs of each type that has one."""
        self._entries = 0  # heap entries, live or stale
        self._tickets = 0

    @property
    def unclaimed_count(self) -> int:
        return len(self._jobs) - len(self.leases)

    def counts_by_type(self) -> dict[str, dict[str, int]]:
        """``{type: {"unclaimed": n, "inProgress": n}}`` for each type with queued
        jobs, sorted by type; O(types)."""
        leased = self.leased_by_type
        return {
            job_type: {
                "unclaimed": total - leased.get(job_type, 0),
                "inProgress": leased.get(job_type, 0),
            }
            for job_type, total in sorted(self._jobs.by_type.items())
        }

    # ------------------------------------------------------------ the ready queue

    def push(self, job: Job, now: int) -> None:
        """Queue an unclaimed ``job`` at its ready time (a new ticket): ready now, or
        delayed until then."""
        self._tickets += 1
        job.ticket = self._tickets
        if job.deadline_at is not None:
            heapq.heappush(self.deadlines, (job.deadline_at, job.order, job.id))
            if len(self.deadlines) > 2 * self.unclaimed_count + 4096:
                self._rebuild_deadlines()
        if job.ready_at > now:
            heapq.heappush(self.delayed, (job.ready_at, job.order, job.ticket, job.id))
            self._entries += 1
        else:
            entry = (-job.priority, job.ready_at, job.order, job.ticket, job.id)
            heapq.heappush(self.ready, entry)
            heapq.heappush(self.by_type.setdefault(job.type, []), entry)
            self._entries += 2
        if self._entries > 6 * self.unclaimed_count + 4096:
            self._rebuild()

    def pop_ready(
        self,
        types: Sequence[str] | None,
        now: int,
        blocked: Callable[[str], bool] | None = None,
    ) -> Job | None:
        """Take the first job of ``types`` (all when ``None``) that is ready at
        ``now``, in (-priority, ready time, enqueue order), skipping the types
        ``blocked`` says no to (per-type rules: then the per-type heaps are compared,
        O(types)); None when there is none."""
        self.promote(now)
        if blocked is not None:
            names = self.by_type if types is None else dict.fromkeys(types)
            heaps = [h for t in names if (h := self.by_type.get(t)) and not blocked(t)]
        elif types is None:
            heaps = [self.ready]
        else:
            heaps = [h for t in dict.fromkeys(types) if (h := self.by_type.get(t))]
        best: list[ReadyEntry] | None = None
        best_head: ReadyEntry | None = None
        for heap in heaps:
            head = self._valid_head(heap)
            if head is not None and (best_head is None or head < best_head):
                best, best_head = heap, head
        if best is None or best_head is None:
            return None
        heapq.heappop(best)
        self._entries -= 1
        return self._jobs[best_head[4]]

    def deadlines_due(self, now: int) -> list[Job]:
        """The unclaimed jobs whose deadline is at or before ``now``, taken off the
        deadline heap."""
        due: list[Job] = []
        heap, jobs = self.deadlines, self._jobs
        while heap and heap[0][0] <= now:
            deadline, _, job_id = heapq.heappop(heap)
            job = jobs.get(job_id)
            if job is not None and job.status == "unclaimed" and job.deadline_at == deadline:
                due.append(job)
        return due

    def _rebuild_deadlines(self) -> None:
        entries = [
            (job.deadline_at, job.order, job.id)
            for job in self._jobs.values()
            if job.status == "unclaimed" and job.deadline_at is not None
        ]
        heapq.heapify(entries)
        self.deadlines = entries

    def next_ready_at(self) -> int | None:
        """The earliest ready time of an unclaimed job (O(n): for tests and tools)."""
        times = [j.ready_at for j in self._jobs.values() if j.status == "unclaimed"]
        return min(times) if times else None

    def next_delayed_at(self) -> int | None:
        head = self._valid_head(self.delayed)
        return None if head is None else head[0]

    def pop_due(self, now: int) -> int:
        """Move the delayed jobs whose time has come to the ready heaps; returns how
        many became ready."""
        return self.promote(now)

    def promote(self, now: int) -> int:
        """:meth:`pop_due`: many at once (a load's) are heapified, not pushed."""
        delayed, jobs = self.delayed, self._jobs
        due: list[ReadyEntry] = []
        while (head := self._valid_head(delayed)) is not None and head[0] <= now:
            heapq.heappop(delayed)
            job = jobs[head[3]]
            due.append((-job.priority, head[0], head[1], head[2], head[3]))
        if not due:
            return 0
        self._entries += len(due)  # one entry out, two in, each
        if len(due) > 64 and len(due) * 4 > len(self.ready):
            self.ready.extend(due)
            heapq.heapify(self.ready)
            grown: set[str] = set()
            for entry in due:
                job_type = jobs[entry[4]].type
                self.by_type.setdefault(job_type, []).append(entry)
                grown.add(job_type)
            for job_type in grown:
                heapq.heapify(self.by_type[job_type])
        else:
            for entry in due:
                heapq.heappush(self.ready, entry)
                heapq.heappush(self.by_type.setdefault(jobs[entry[4]].type, []), entry)
        return len(due)

    # ------------------------------------------------------------------- leases

    def lease(self, job: Job) -> None:
        """``job`` was claimed: its lease ends last."""
        if job.id not in self.leases:
            self.leased_by_type[job.type] = self.leased_by_type.get(job.type, 0) + 1
        self.leases[job.id] = job.type

    def renew(self, job: Job) -> None:
        """``job``'s lease was renewed: it now ends last."""
        self.leases.move_to_end(job.id)

    def unlease(self, job: Job) -> None:
        self._unlease_type(self.leases.pop(job.id))

    def discard_lease(self, job_id: str) -> None:
        """Forget ``job_id``'s lease if it has one (a replayed record may drop or
        replace a job whose lease the same record has not entered yet)."""
        job_type = self.leases.pop(job_id, None)
        if job_type is not None:
            self._unlease_type(job_type)

    def _unlease_type(self, job_type: str) -> None:
        left = self.leased_by_type[job_type] - 1
        if left:
            self.leased_by_type[job_type] = left
        else:
            del self.leased_by_type[job_type]

    def first_lease(self) -> Job | None:
        for job_id in self.leases:
            return self._jobs[job_id]
        return None

    def leases_due(self, deadline: int) -> list[Job]:
        """In-progress jobs whose last heartbeat is at or before ``deadline``, in
        :func:`lease_order`."""
        due: list[Job] = []
        for job_id in self.leases:
            job = self._jobs[job_id]
            assert job.heartbeat_at is not None
            if job.heartbeat_at > deadline:
                break
            due.append(job)
        due.sort(key=lease_order)
        return due

    # -------------------------------------------------------------------- load

    def load(self, unclaimed: list[Job], in_progress: list[Job]) -> Generator[None, object, None]:
        """Index a decoded document's jobs (``unclaimed`` in document order), as
        steps: yields where its driver may checkpoint."""
        in_progress.sort(key=lease_order)
        yield None
        self.leases = OrderedDict((j.id, j.type) for j in in_progress)
        leased_by_type: dict[str, int] = {}
        for job in in_progress:
            leased_by_type[job.type] = leased_by_type.get(job.type, 0) + 1
        self.leased_by_type = leased_by_type
        delayed: list[HeapEntry] = []
        for count, job in enumerate(unclaimed, 1):
            self._tickets += 1
            job.ticket = self._tickets
            delayed.append((job.ready_at, job.order, job.ticket, job.id))
            if count % _REBUILD_STEP == 0:
                yield None
        # a sorted list is a heap; the document is nearly in (ready time, order)
        # order, which timsort takes in about one pass. Every job enters as delayed
        # (a load has no clock): the first claim or pop_due promotes the due ones
        delayed.sort()
        self.ready, self.by_type, self.delayed = [], {}, delayed
        self._entries = len(delayed)
        self._rebuild_deadlines()

    # ----------------------------------------------------------------- helpers

    def _valid_head(self, heap: list[_E]) -> _E | None:
        while heap:
            head = heap[0]
            if self._is_live(head):
                return head
            heapq.heappop(heap)
            self._entries -= 1
        return None

    def _is_live(self, entry: HeapEntry | ReadyEntry) -> bool:
        """An entry of either heap, for the job as it stands now (its last two
        fields are the ticket and the id)."""
        job = self._jobs.get(entry[-1])
        return job is not None and job.status == "unclaimed" and job.ticket == entry[-2]

    def _rebuild(self) -> None:
        """Drop stale heap entries (O(n), amortized over the pushes that made them)."""
        delayed = [e for e in self.delayed if self._is_live(e)]
        waiting = {e[3] for e in delayed}
        ready: list[ReadyEntry] = []
        by_type: dict[str, list[ReadyEntry]] = {}
        for job in self._jobs.values():
            if job.status == "unclaimed" and job.id not in waiting:
                entry = (-job.priority, job.ready_at, job.order, job.ticket, job.id)
                ready.append(entry)
                by_type.setdefault(job.type, []).append(entry)
        heapq.heapify(ready)
        heapq.heapify(delayed)
        for heap in by_type.values():
            heapq.heapify(heap)
        self.ready, self.by_type, self.delayed = ready, by_type, delayed
        self._entries = 2 * len(ready) + len(delayed)
