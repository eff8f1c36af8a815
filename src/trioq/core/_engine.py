"""The broker engine: election, fencing and the group commit loop.

The engine owns the queue document. Callers hand it mutations (``enqueue``,
``claim``, ...); it batches every mutation that arrives while a commit is in flight
or within the group commit interval, applies the batch to its in-memory state,
serializes the document once, writes it with a compare-and-set, and only then
answers each caller. No answer acknowledges anything that is not written.

Leadership lives in the document itself. The leader's commits carry its broker id
and epoch; a standby that sees the document's version unchanged for the broker
heartbeat timeout (on its own monotonic clock) takes over with a CAS write that
bumps the epoch, which fences the old leader: its next write fails, it re-reads,
sees a foreign epoch, fails its pending mutations with ``NotLeader`` and never
writes again until it wins an election.

The parts, one module each:

- :mod:`._pending`: every mutation and read the engine owes an answer, by stage;
- :mod:`._election`: the election and fencing decisions, free of I/O;
- :mod:`._campaign`: the I/O of coming to lead (elect, stand by, take over);
- :mod:`._commit`: the leader's group commit loop;
- :mod:`._status`: the role and the snapshot the engine reports.

Run it as a nursery task: ``await nursery.start(engine.run)``.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from .._errors import DocumentInvalid, NotLeader, TrioqError
from .._wire import ScheduleRequest, TypeRuleRequest
from ..storage._protocol import Storage
from ._campaign import Campaign
from ._claim_watch import ClaimWatch
from ._codec import LeaderInfo, describe_object, load
from ._commit import Committer
from ._config import EngineConfig
from ._election import Candidacy, Candidate
from ._layout import DocumentLayout, Layout
from ._log_layout import LogLayout
from ._pending import ClaimRequest, Mutation, Operation, PendingBook, Reader
from ._state import (
    ClaimedJob,
    EnqueueResult,
    Limits,
    NewJob,
    QueueState,
    ReportResults,
    Reports,
    check_claim,
)
from ._status import ENGINE_COUNTERS, EngineSnapshot, Role

__all__ = [
    "Candidacy",
    "Engine",
    "EngineSnapshot",
    "Exchanged",
    "Role",
    "system_wall_clock",
]

log = logging.getLogger("trioq.engine")
T = TypeVar("T")
WallClock = Callable[[], int]
"""Milliseconds since the Unix epoch; only for times stored in the document."""
CommitObserver = Callable[[int, int, dict[tuple[str, str], int]], None]
"""``observe(mutations, bytes_written, type_events)`` after a commit landed."""


def system_wall_clock() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Exchanged:
    """What an exchange did: each report's outcome, and the jobs its claim took."""

    reports: ReportResults
    jobs: list[ClaimedJob]


class Engine:
    """Leads (or stands by for) one queue document on a :class:`~trioq.Storage`.

    Parameters:
        storage: where ``key`` lives.
        key: the document's key (``queue.json``).
        broker_id: this broker's id in the document (random by default). A broker
            that restarts with the same id takes its old lease over at once.
        url, exclusive_url, create: how the engine stands for election (see
            :class:`~trioq.core._election.Candidacy`). ``create`` says whether the
            first election may create the document when none is stored: a broker
            passes ``False`` unless the location is provably new or the operator
            asked for a new queue (``--create``). Once this engine has seen the
            document, a missing one is never created again, whatever ``create``.
        candidacy: instead of those three, for a server that learns its address
            only once it is bound: called once, when :meth:`run` starts.
        config: timings (:class:`EngineConfig`).
        limits: caps and lease lengths (:class:`~trioq.core._state.Limits`).
        wall_clock: milliseconds since the epoch for stored times (tests inject one
            derived from ``trio.current_time()``).
        rng: randomness for ids and retry jitter.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        key: str = "queue.json",
        broker_id: str | None = None,
        url: str = "",
        config: EngineConfig | None = None,
        limits: Limits | None = None,
        wall_clock: WallClock = system_wall_clock,
        rng: random.Random | None = None,
        exclusive_url: bool = False,
        create: bool = True,
        candidacy: Callable[[], Candidacy] | None = None,
    ) -> None:
        self.storage = storage
        self.key = key
        self.broker_id = broker_id or uuid.uuid4().hex[:16]
        if candidacy is not None and (url or exclusive_url or not create):
            raise ValueError("pass either candidacy or url/exclusive_url/create, not both")
        self._candidacy = Candidacy(url, exclusive_url, create)
        self._candidacy_source = candidacy
        self.config = config or EngineConfig()
        self.config.validate()
        self.limits = limits or Limits()
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self.role = Role.STARTING
        self.state: QueueState | None = None
        """The leader's applied state: ahead of what is stored while a commit is in
        flight or after one failed; read it through :meth:`read`."""
        self.document: bytes | None = None
        """The bytes of this engine's last commit (the document, or a log record)."""
        self.leader: LeaderInfo | None = None
        """The leader as last seen in the document (ours when leading)."""
        self.metrics: dict[str, int] = dict.fromkeys(ENGINE_COUNTERS, 0)
        self.claim_watch = ClaimWatch()
        """Which types workers claim: the leader warns about types nobody does."""
        self.landed = trio.Event()
        """Set (and replaced) each time the state is what is stored again: a reader
        waiting for a change (a job's result) waits for it, then reads."""
        self.committed_stats: dict[str, int] = {}
        """Counts of the last committed state (``QueueState.stats`` plus ``dead``),
        for metrics and ``/v1/stats``; empty until this engine first leads."""
        self.committed_counters: dict[str, int] = {}
        """The document's counters as last committed."""
        self.committed_by_type: dict[str, dict[str, int]] = {}
        """``QueueState.counts_by_type`` as last committed (``byType`` of ``/v1/stats``)."""
        self.observe_commit: CommitObserver | None = None
        """Called after each commit that landed (the broker's metrics); while it is
        None the engine tallies nothing by type."""
        self.type_events: dict[tuple[str, str], int] = {}
        """``(event, job type) -> count`` of the batch being committed (events:
        enqueued, claimed, completed, failed, expired, dead), handed to
        :attr:`observe_commit` once the commit lands, dropped if it does not."""
        self.book = PendingBook(self.config.max_pending, owner=f"broker {self.broker_id}")
        """Every mutation and read this engine owes an answer (see :mod:`._pending`)."""
        self.layout: Layout = (
            LogLayout(self) if self.config.layout == "log" else DocumentLayout(self)
        )
        """Where the state is stored (``config.layout``): see :mod:`._layout`."""
        self._campaign = Campaign(self)
        self._committer = Committer(self)
        self._stop_requested = False
        self._fatal: BaseException | None = None
        self._became_leader = trio.Event()

    # ------------------------------------------------------------ public reads

    @property
    def url(self) -> str:
        """The URL clients should dial for this broker (written into the document)."""
        return self._candidacy.url

    @property
    def candidate(self) -> Candidate:
        """Who this engine is in an election (its id, URL and creation policy)."""
        return Candidate(self.broker_id, self._candidacy)

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    @property
    def epoch(self) -> int:
        return 0 if self.leader is None else self.leader.epoch

    @property
    def leader_url(self) -> str | None:
        """The URL of the broker that leads, if known (``None`` while nobody does)."""
        if self.leader is None or self.leader.released:
            return None
        return self.leader.url or None

    @property
    def observed_version(self) -> str | None:
        """The document version a standby saw last (for the fast-failover probe)."""
        sighting = self._campaign.sighting
        return None if sighting is None else sighting.version

    async def stored_version(self) -> str | None:
        """The stored version as the layout counts it (the document's, or the number
        of the last log record), for the fast-failover probe: unchanged between two
        failed probes means nobody commits."""
        return await self.layout.stored_version()

    @property
    def last_commit_seconds(self) -> float:
        return self._committer.last_commit_seconds

    @property
    def last_batch_size(self) -> int:
        return self._committer.last_batch_size

    @property
    def lease_age_ms(self) -> int | None:
        """Milliseconds (on :attr:`wall_clock`) since this leader last renewed its
        lease in storage (its last commit that landed, or its takeover); None unless
        it leads."""
        if not self.is_leader:
            return None
        return max(0, self.wall_clock() - self._committer.last_commit_wall)

    def note(self, event: str, state: QueueState, job_id: str) -> None:
        """Count ``event`` for ``job_id``'s type in :attr:`type_events` (only while
        someone observes commits: O(1), a dict lookup)."""
        if self.observe_commit is None:
            return
        record = state.lookup(job_id)
        if record is not None:
            key = (event, record.type)
            self.type_events[key] = self.type_events.get(key, 0) + 1

    def snapshot(self) -> EngineSnapshot:
        """A copy of the engine's counters and committed counts."""
        leading = self.is_leader
        return EngineSnapshot(
            broker_id=self.broker_id,
            role=self.role,
            epoch=self.epoch,
            counters=dict(self.metrics),
            last_commit_seconds=self.last_commit_seconds,
            last_batch_size=self.last_batch_size,
            queue=dict(self.committed_stats) if leading and self.committed_stats else None,
            queue_counters=dict(self.committed_counters) if leading else None,
            document_bytes=len(self.document) if leading and self.document else 0,
            pending=self.book.unanswered,
            waiting_claims=len(self.book.waiting),
            commit_seconds=self._committer.commit_seconds.copy(),
        )

    def not_leader(self) -> NotLeader:
        leader = None if self.is_leader else self.leader_url
        return NotLeader(
            f"broker {self.broker_id} is {self.role.value}, not the leader",
            leader=leader,
            role=self.role.value,
        )

    async def stored_document(self) -> bytes:
        """The committed state as a format-1 document (``GET /state``)."""
        return await self.read(self.layout.document)

    async def read(self, fn: Callable[[QueueState], T]) -> T:
        """``fn(state)`` over the last committed state, never over a batch that is
        being written or whose write failed: while one is, the read waits for the
        commit (or the reload that follows a failed one) and runs at that moment.
        ``fn`` must not change the state."""
        if self.role is not Role.LEADER or self.state is None:
            raise self.not_leader()
        if not self._committer.dirty:
            return fn(self.state)
        return await self.book.read(Reader(fn))  # type: ignore[no-any-return]

    # -------------------------------------------------------------- mutations

    async def enqueue(self, items: Sequence[NewJob]) -> list[EnqueueResult]:
        """Enqueue a batch (validated as a whole); answered once it is durable."""
        items = list(items)

        def op(state: QueueState, now: int) -> list[EnqueueResult]:
            results = state.enqueue(items, now)
            self._note_enqueued(state, results)
            return results

        return await self._submit(op)  # type: ignore[no-any-return]

    async def enqueue_each(
        self, items: Sequence[NewJob | TrioqError]
    ) -> list[EnqueueResult | TrioqError]:
        """Enqueue each item on its own (``POST /v1/jobs/bulk``): the result of each,
        in order, is its EnqueueResult or its own error (an item that is an error
        already stays so). One mutation for all; answered once it is durable."""
        items = list(items)

        def op(state: QueueState, now: int) -> list[EnqueueResult | TrioqError]:
            results = state.enqueue_each(items, now)
            self._note_enqueued(state, results)
            return results

        return await self._submit(op)  # type: ignore[no-any-return]

    def _note_enqueued(
        self, state: QueueState, results: Sequence[EnqueueResult | TrioqError]
    ) -> None:
        if self.observe_commit is None:
            return
        for result in results:
            if isinstance(result, EnqueueResult) and not result.duplicate:
                self.note("enqueued", state, result.id)

    async def claim(
        self,
        worker_id: str,
        *,
        types: Sequence[str] | None = None,
        max_jobs: int = 1,
        wait: float = 0.0,
    ) -> list[ClaimedJob]:
        """Claim up to ``max_jobs`` jobs; with ``wait`` (seconds), wait that long for
        one to become available. The claim is answered after its commit."""
        types = None if types is None else list(types)
        self.claim_watch.claimed(types, trio.current_time())
        request = ClaimRequest(worker_id, types, max_jobs)
        if wait > 0:
            request = ClaimRequest(worker_id, types, max_jobs, trio.current_time() + wait)
        return await self._submit(None, claim=request)  # type: ignore[no-any-return]

    async def exchange(
        self,
        worker_id: str,
        reports: Reports,
        *,
        types: Sequence[str] | None = None,
        max_jobs: int = 0,
        wait: float = 0.0,
    ) -> Exchanged:
        """A worker's round trip (``POST /v1/jobs/exchange``) in one mutation: its
        reports, each on its own, then a claim of up to ``max_jobs`` jobs (0: none).

        ``wait`` is honoured only without reports: a claim parked after its reports
        were applied could be answered at its deadline, which writes nothing, before
        they were written. A failed commit of an exchange with a claim answers
        WriteOutcomeUnknown (its jobs may be stored as claimed), as a claim's does.
        """
        if max_jobs:
            # checked before anything applies: a claim refused after the reports
            # were applied would answer an error for a commit that carries them
            check_claim(worker_id, max_jobs)
        if not reports:
            if not max_jobs:
                if not self.is_leader:
                    raise self.not_leader()
                return Exchanged(ReportResults(), [])
            jobs = await self.claim(worker_id, types=types, max_jobs=max_jobs, wait=wait)
            return Exchanged(ReportResults(), jobs)

        def op(state: QueueState, now: int) -> ReportResults:
            results = state.report_each(worker_id, reports, now)
            if self.observe_commit is not None:
                self._note_reports(state, reports, results)
            return results

        if not max_jobs:
            return Exchanged(await self._submit(op), [])
        claim = ClaimRequest(worker_id, None if types is None else list(types), max_jobs)
        self.claim_watch.claimed(claim.types, trio.current_time())
        mutation = Mutation(op, claim)
        jobs = await self._hand_over(mutation)
        return Exchanged(mutation.reported, jobs)

    def _note_reports(self, state: QueueState, reports: Reports, results: ReportResults) -> None:
        """Tally an exchange's completions and failures that were accepted."""
        for item, outcome in zip(reports.complete, results.complete, strict=True):
            if isinstance(outcome, str) and not isinstance(item, TrioqError):
                self.note("completed", state, item.job_id)
        for fail, outcome in zip(reports.fail, results.fail, strict=True):
            if isinstance(outcome, str) and not isinstance(fail, TrioqError):
                self._note_failed(state, fail.job_id, outcome)

    def _note_failed(self, state: QueueState, job_id: str, outcome: str) -> None:
        self.note("failed", state, job_id)
        if outcome == "dead":
            self.note("dead", state, job_id)

    async def heartbeat(self, job_id: str, worker_id: str, *, attempt: int | None = None) -> None:
        await self._submit(lambda s, now: s.heartbeat(job_id, worker_id, now, attempt))

    async def complete(
        self, job_id: str, worker_id: str, *, attempt: int | None = None, result: Any = None
    ) -> None:
        def op(s: QueueState, now: int) -> None:
            s.complete(job_id, worker_id, now, attempt, result)
            self.note("completed", s, job_id)

        await self._submit(op)

    async def fail(
        self,
        job_id: str,
        worker_id: str,
        *,
        error: str,
        attempt: int | None = None,
        retry_in_ms: int | None = None,
        final: bool = False,
    ) -> str:
        """Record a failed attempt; ``"retrying"`` or ``"dead"``."""

        def op(s: QueueState, now: int) -> str:
            outcome = s.fail(
                job_id,
                worker_id,
                now,
                error=error,
                attempt=attempt,
                retry_in_ms=retry_in_ms,
                final=final,
            )
            if self.observe_commit is not None:
                self._note_failed(s, job_id, outcome)
            return outcome

        return await self._submit(op)  # type: ignore[no-any-return]

    async def release(self, job_id: str, worker_id: str, *, attempt: int | None = None) -> str:
        """Give a job back; ``"unclaimed"``, or ``"cancelled"`` if a cancel finished it."""
        return await self._submit(lambda s, now: s.release(job_id, worker_id, now, attempt))  # type: ignore[no-any-return]

    async def cancel(self, job_id: str) -> str:
        def op(state: QueueState, now: int) -> str:
            status = state.cancel(job_id, now)
            if status in ("cancelled", "cancelling"):
                self.note("cancelled", state, job_id)
            return status

        return await self._submit(op)  # type: ignore[no-any-return]

    async def requeue_dead(self, job_id: str) -> None:
        def op(state: QueueState, now: int) -> None:
            state.requeue_dead(job_id, now)
            self.note("requeued", state, job_id)

        await self._submit(op)

    async def cancel_matching(self, job_type: str | None, status: str | None) -> dict[str, int]:
        def op(state: QueueState, now: int) -> dict[str, int]:
            return state.cancel_matching(now, job_type, status)

        return await self._submit(op)  # type: ignore[no-any-return]

    async def purge_dead(self, job_type: str | None) -> int:
        return await self._submit(lambda s, now: s.purge_dead(job_type))  # type: ignore[no-any-return]

    async def put_schedule(self, name: str, request: ScheduleRequest) -> dict[str, Any]:
        """Create or replace a periodic job; its stored form once committed."""
        return await self._submit(lambda s, now: s.put_schedule(name, request, now).view())  # type: ignore[no-any-return]

    async def delete_schedule(self, name: str) -> None:
        await self._submit(lambda s, now: s.delete_schedule(name))

    async def put_type_rule(self, request: TypeRuleRequest) -> dict[str, Any]:
        """Pause, resume or limit a job type; its rule once committed."""
        return await self._submit(lambda s, now: s.put_type_rule(request).to_json())  # type: ignore[no-any-return]

    async def _submit(self, op: Operation | None, *, claim: ClaimRequest | None = None) -> Any:
        return await self._hand_over(Mutation(op, claim))

    async def _hand_over(self, mutation: Mutation) -> Any:
        # check and submit without a checkpoint in between: a step-down answers
        # every pending mutation after changing the role, so none is left unanswered
        if self.role is not Role.LEADER:
            raise self.not_leader()
        self.book.submit(mutation)
        return await mutation.wait()

    # ------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: trio.TaskStatus[Role] = trio.TASK_STATUS_IGNORED) -> None:
        """Elect, then lead or stand by until :meth:`stop` or cancellation.

        ``task_status.started(role)`` fires once the engine leads or stands by. A
        graceful stop commits what is pending and releases the lease in a last
        commit, so a standby can take over at once.
        """
        if self._candidacy_source is not None:
            self._candidacy = self._candidacy_source()
        try:
            await self._campaign.elect()
            task_status.started(self.role)
            await self._serve()
        except DocumentInvalid as exc:
            # met in a storage call (a damaged file) rather than in decoding: never
            # write again, not even the last commit that would release the lease
            self.halt(exc)
            raise
        finally:
            with trio.move_on_after(self.config.shutdown_timeout, shield=True):
                if self.role is Role.LEADER:
                    await self._committer.final_commit()
            self.role = Role.STOPPED
            self.book.fail_all(lambda: NotLeader("the broker stopped", leader=None))

    async def _serve(self) -> None:
        """Lead or stand by until stopped, with the layout's upkeep (checkpoints) in a
        task beside; an error of the loop comes out as itself, not in a group."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.layout.maintain)
                while not self._stop_requested:
                    if self.role is Role.LEADER:
                        await self._committer.lead()
                    else:
                        await self._campaign.stand_by()
                    if self._fatal is not None:
                        raise self._fatal
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1 and not isinstance(
                group.exceptions[0], BaseExceptionGroup
            ):
                raise group.exceptions[0] from None
            raise

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop_requested

    def stop(self) -> None:
        """Ask for a graceful stop: commit what is pending, release the lease, return."""
        self._stop_requested = True
        self._campaign.wake()
        self.book.poke()

    def request_takeover(self, expected_version: str | None = None) -> None:
        """Ask a standby to take over now (fast failover), provided the document is
        still at ``expected_version`` (or unconditionally with ``None``)."""
        self._campaign.request_takeover(expected_version)

    async def wait_leader(self) -> None:
        """Wait until this engine leads."""
        while self.role is not Role.LEADER:
            await self._became_leader.wait()

    # ------------------------------------------------- transitions of the role

    def become_leader(self, state: QueueState, version: str, data: bytes) -> None:
        """This engine created or took over the document (``data`` at ``version``)."""
        self.leader = state.leader
        self.role = Role.LEADER
        self._campaign.won()
        self._committer.took_office(state, version, data)
        self._became_leader.set()
        self._became_leader = trio.Event()

    def step_down(self, leader: LeaderInfo | None, *, quiet: bool = False) -> None:
        """Another broker (``leader``, if known) holds the document: answer every
        pending mutation with NotLeader and stand by (``quiet``: without the log
        line, when the caller reports why)."""
        if self.role is not Role.LEADER:
            return
        self.metrics["stepDowns"] += 1
        if not quiet:
            log.warning(
                "broker %s lost leadership of %s to %s",
                self.broker_id,
                self.key,
                None if leader is None else (leader.url or leader.broker_id),
            )
        self.leader = leader
        self.role = Role.STANDBY
        self._campaign.forget()
        self.book.fail_all(self.not_leader)

    def halt(self, error: DocumentInvalid) -> None:
        """The document cannot be read: never overwrite it; :meth:`run` ends with
        ``error`` (after stepping down, if leading). Nothing is logged here: the
        error, which names the object and what is wrong, is the one line to read,
        and whoever runs the engine reports it (the broker's ``main`` prints it)."""
        self._fatal = error
        self.step_down(None, quiet=True)

    # --------------------------------------------------------------- decoding

    async def decode(self, data: bytes) -> QueueState:
        """Decode a stored document in steps, with checkpoints between them (see
        :func:`~trioq.core._codec.load`)."""
        return await load(
            QueueState,
            data,
            limits=self.limits,
            rng=self.rng,
            name=self._name(),
            freeze=self.config.freeze_loaded_state,
        )

    def decode_header(self, data: bytes) -> LeaderInfo | None:
        """The leader stored in ``data``'s header (DocumentInvalid if unreadable)."""
        return QueueState.decode_header(data, name=self._name())[1]

    def _name(self) -> str:
        return describe_object(self.storage, self.key)
