"""The courier: the one task of a running worker that talks to the broker about its
jobs. Job tasks hand it their reports (heartbeat, complete, fail, release) and await
each report's own result; it carries them in one ``POST /v1/jobs/exchange`` per
round, with the claim for the worker's free room riding along, and hands the jobs
it claimed to the job host (:mod:`._host`).

Scheduling (each exchange is one broker commit):

- Reports go at once while fewer than :data:`MAX_IN_FLIGHT` exchanges with reports
  are out; otherwise they wait, and all that arrived meanwhile go in the next one.
- Each exchange claims the free room, ``concurrency + prefetch - held - being
  claimed``: the broker applies the reports before the claim, so the room a finished
  job leaves is claimed in the commit that records its outcome.
- With free room and nothing to report, one long-poll claim (only a claim, with
  ``waitMs`` = the poll interval) waits at the broker, which answers it in the
  commit that enqueues a job: a job submitted to an idle worker starts one commit
  after its submit. Reports that arrive meanwhile go in their own exchange at once.

Failures:

- An exchange is never sent again as it was. If its answer is lost, or it answers
  503 ``WriteOutcomeUnknown``, or it fails otherwise: its claim is dropped (jobs it
  may have claimed return to the queue when their leases run out); its completes,
  fails and releases go again in the next exchange (one that had landed then hears
  ``LeaseLost``, and the job reads its record to settle it); its heartbeats are
  answered with the error, for the heartbeat task to retry on its own schedule. A
  whole exchange refused with a 4xx answer gives that error to every report in it.
- After a failed exchange the next one waits (0.5 s doubling to 10 s, jittered); the
  failures are logged through the worker's :class:`~._outage.Outage`.
- At a stop the courier claims nothing more, and a claim in flight gets the worker's
  last deadline for it (an abort cancels it). It carries reports until the worker
  has no job left, then the worker closes it.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .._calls import own_copy
from .._errors import BrokerUnreachable, TrioqError
from .._wire import MAX_BATCH, MAX_CLAIM
from ..client import Beat, Claimed, Client, Completion, ExchangeAnswer, Failure, Outcome
from ._outage import Outage

log = logging.getLogger("trioq.worker")

MAX_IN_FLIGHT = 2
"""Exchanges carrying reports out at once (a long-poll claim is not counted): while
one is being committed, the reports that arrive go into the next commit."""


@dataclass(eq=False, slots=True)
class Report:
    """One report of a job, on its way. Its sender awaits :meth:`wait`, then reads
    :attr:`result`: the job's status after the call, or the error for this report."""

    job: Claimed
    failure: Failure | None = None
    completion: Completion | None = None
    """A completion that carries the handler's result."""
    beat: Beat | None = None
    """A heartbeat that carries the handler's progress report."""
    result: Outcome | None = None
    withdrawn: bool = False
    """Its sender stopped waiting: if it has not gone yet, it never goes."""
    timed_out: bool = False
    """An outcome report that found no answer within the worker's ``release_timeout``
    (its lease then expires on the broker); its result is a BrokerUnreachable."""
    _waiter: trio.lowlevel.Task | None = None

    def answer(self, result: Outcome) -> None:
        """Settle the report (the first answer counts) and wake its sender."""
        if self.result is None:
            self.result = result
            waiter, self._waiter = self._waiter, None
            if waiter is not None:
                trio.lowlevel.reschedule(waiter)

    async def wait(self) -> None:
        """Until :meth:`answer` (a bare park and wake: an Event per report costs)."""
        if self.result is not None:
            await trio.lowlevel.checkpoint()
            return
        self._waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED


@dataclass(eq=False, slots=True)
class _Reports:
    """Reports by kind, in the order they were handed over."""

    heartbeat: list[Report] = field(default_factory=list)
    complete: list[Report] = field(default_factory=list)
    fail: list[Report] = field(default_factory=list)
    release: list[Report] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.heartbeat or self.complete or self.fail or self.release)

    def take(self) -> _Reports:
        """The reports that fit one exchange (those withdrawn are dropped)."""
        taken = _Reports()
        for kind in ("heartbeat", "complete", "fail", "release"):
            queued: list[Report] = getattr(self, kind)
            setattr(self, kind, queued[MAX_BATCH:])
            setattr(taken, kind, [r for r in queued[:MAX_BATCH] if not r.withdrawn])
        return taken

    def put_back(self, reports: _Reports) -> None:
        """Outcome reports of a failed exchange, first in line for the next one."""
        for kind in ("complete", "fail", "release"):
            again = [r for r in getattr(reports, kind) if not r.withdrawn]
            setattr(self, kind, again + getattr(self, kind))


Deliver = Callable[[list[Claimed], float], bool]
"""Starts claimed jobs (claimed at the given time); False if no job can start any
more (the worker has stopped)."""


class Courier:
    """Carries one running worker's reports and claims (see the module docstring).

    ``capacity`` is ``concurrency + prefetch``; ``poll_wait`` the long-poll's wait;
    ``retry_deadline`` how long one exchange retries inside the client; ``backoff``
    the wait after that many failed exchanges in a row; ``report_timeout`` the bound
    on an outcome report (complete, fail, release): one still unanswered then gets
    a :class:`~trioq.BrokerUnreachable` marked ``timed_out`` (one timer here rather than a cancel scope per job).
    """

    def __init__(
        self,
        client: Client,
        worker_id: str,
        *,
        types: list[str],
        capacity: int,
        poll_wait: float,
        retry_deadline: float,
        backoff: Callable[[int], float],
        outage: Outage,
        report_timeout: float,
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.types = types
        self.capacity = capacity
        self.poll_wait = poll_wait
        self.retry_deadline = retry_deadline
        self._backoff = backoff
        self._outage = outage
        self.report_timeout = report_timeout
        # outcome reports by the time they give up (in order: one timeout for all)
        self._expiries: deque[tuple[float, Report]] = deque()
        self.held = 0
        """Jobs claimed and not yet let go (:meth:`let_go`): the room they take."""
        self._pending = _Reports()
        self._in_flight = 0
        self._polling = False
        self._claiming = 0
        self._claims: set[trio.CancelScope] = set()
        self._bound: Callable[[trio.CancelScope], None] | None = None
        self._resume_at = -math.inf
        self._failures = 0
        self._wake = trio.Event()
        self._claim_ended = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._deliver: Deliver | None = None

    # ------------------------------------------------------------ job tasks

    def heartbeat(self, job: Claimed, progress_json: bytes | None = None) -> Report:
        """Renew ``job``'s lease in the next exchange (with a progress report)."""
        report = Report(job, beat=None if progress_json is None else Beat(job, progress_json))
        self._pending.heartbeat.append(report)
        self._poke()
        return report

    def complete(self, job: Claimed, result_json: bytes | None = None) -> Report:
        """Report ``job`` completed, with its result's JSON if it has one."""
        report = Report(
            job, completion=None if result_json is None else Completion(job, result_json)
        )
        self._pending.complete.append(report)
        return self._bounded(report)

    def fail(self, job: Claimed, failure: Failure) -> Report:
        report = Report(job, failure)
        self._pending.fail.append(report)
        return self._bounded(report)

    def release(self, job: Claimed) -> Report:
        report = Report(job)
        self._pending.release.append(report)
        return self._bounded(report)

    def _bounded(self, report: Report) -> Report:
        self._expiries.append((trio.current_time() + self.report_timeout, report))
        self._poke()
        return report

    def let_go(self) -> None:
        """A job's lease is being given up (its outcome handed over, or lost): its
        room may be claimed again, in the exchange that carries its outcome."""
        self.held -= 1
        self._poke()

    def _poke(self) -> None:
        if not self._wake.is_set():
            self._wake.set()

    # ------------------------------------------------------------- the worker

    async def run(
        self, deliver: Deliver, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Carry reports and claims until :meth:`close`. Shielded: the worker's
        jobs need it through their grace period, after its caller was cancelled."""
        self._deliver = deliver
        with trio.CancelScope(shield=True) as self._scope:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    self._dispatch(nursery)
                    with trio.move_on_at(self._next_timer()):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    self._expire()

    def stop(self, bound: Callable[[trio.CancelScope], None]) -> None:
        """Claim nothing more; ``bound`` gives each claim in flight its last deadline
        (or cancels it). Reports go at once, whatever backoff was under way."""
        self._bound = bound
        self._resume_at = -math.inf
        for scope in self._claims:
            bound(scope)
        self._poke()

    async def claims_settled(self) -> None:
        """Wait until no exchange that carries a claim is out (after :meth:`stop`,
        within the deadline it gave them)."""
        while self._claims:
            self._claim_ended = trio.Event()
            await self._claim_ended.wait()

    def close(self) -> None:
        """End :meth:`run`; whatever is still out is abandoned (no job awaits it)."""
        if self._scope is not None:
            self._scope.cancel()

    # ------------------------------------------------------------- exchanges

    def _next_timer(self) -> float:
        """When the loop must wake by itself: the end of a backoff, or the first
        outcome report that may give up."""
        now = trio.current_time()
        at = self._resume_at if self._resume_at > now else math.inf
        expiries = self._expiries
        while expiries and expiries[0][1].result is not None:
            expiries.popleft()
        return min(at, expiries[0][0]) if expiries else at

    def _expire(self) -> None:
        """Give up the outcome reports that waited :attr:`report_timeout`."""
        now = trio.current_time()
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, report = expiries.popleft()
            report.withdrawn = True  # if it has not gone yet, it never goes
            report.timed_out = report.result is None
            report.answer(BrokerUnreachable(f"no answer within {self.report_timeout:g} s"))

    def _room(self) -> int:
        """Jobs to claim now: none once stopping."""
        if self._bound is not None:
            return 0
        return max(0, min(self.capacity - self.held - self._claiming, MAX_CLAIM))

    def _dispatch(self, nursery: trio.Nursery) -> None:
        """Send what may go now."""
        if trio.current_time() < self._resume_at:
            return
        while self._pending and self._in_flight < MAX_IN_FLIGHT:
            reports = self._pending.take()
            if not reports:
                continue
            room = self._room()
            self._in_flight += 1
            self._claiming += room
            nursery.start_soon(self._exchange, reports, room)
        if not self._pending and not self._polling:
            room = self._room()
            if room:
                self._polling = True
                self._claiming += room
                nursery.start_soon(self._exchange, None, room)

    async def _exchange(self, reports: _Reports | None, claim: int) -> None:
        """One exchange (``reports`` None: a long-poll claim), and its outcome."""
        scope = trio.CancelScope()
        if claim:
            self._claims.add(scope)
            if self._bound is not None:
                self._bound(scope)
        answer: ExchangeAnswer | None = None
        error: TrioqError | None = None
        # the broker's lease on a job this exchange claims starts after the send and,
        # when the exchange does not wait (it carries reports), before the answer: the
        # send time is then a safe start for the local lease, and one that stays true
        # if the answer is read late (a frozen or starved process)
        sent_at = trio.current_time()
        try:
            with scope:
                answer = await self._send(reports, claim)
        except TrioqError as exc:
            error = exc
        finally:
            if reports is None:
                self._polling = False
            else:
                self._in_flight -= 1
            self._claiming -= claim
            if claim:
                self._claims.discard(scope)
                self._claim_ended.set()
            self._poke()
        if answer is not None:
            # a long-poll's lease starts when a job came, up to its wait after the send
            self._answered(reports, answer, trio.current_time() if reports is None else sent_at)
        else:
            self._failed(reports, claim, error)

    async def _send(self, reports: _Reports | None, claim: int) -> ExchangeAnswer:
        if reports is None:
            return await self.client.exchange(
                self.worker_id,
                claim=claim,
                types=self.types,
                wait=self.poll_wait,
                retry_deadline=self.retry_deadline,
            )
        return await self.client.exchange(
            self.worker_id,
            heartbeat=[r.beat or r.job for r in reports.heartbeat],
            complete=[r.completion or r.job for r in reports.complete],
            fail=[r.failure for r in reports.fail if r.failure is not None],
            release=[r.job for r in reports.release],
            claim=claim,
            types=self.types,
            retry_deadline=self.retry_deadline,
        )

    def _answered(
        self, reports: _Reports | None, answer: ExchangeAnswer, claimed_at: float
    ) -> None:
        if self._failures:
            self._failures = 0
            self._outage.answered()
        if reports is not None:
            for sent, results in (
                (reports.heartbeat, answer.heartbeat),
                (reports.complete, answer.complete),
                (reports.fail, answer.fail),
                (reports.release, answer.release),
            ):
                for report, result in zip(sent, results, strict=True):
                    report.answer(result)
        if answer.jobs:
            self._start(answer.jobs, claimed_at)

    def _start(self, jobs: list[Claimed], claimed_at: float) -> None:
        """Hand claimed jobs to the host; if it takes no more, give them back."""
        assert self._deliver is not None
        self.held += len(jobs)
        if not self._deliver(jobs, claimed_at):
            self.held -= len(jobs)
            self._pending.release.extend(Report(job) for job in jobs)

    def _failed(self, reports: _Reports | None, claim: int, error: TrioqError | None) -> None:
        if error is None:  # given up at a stop (its bound), or cancelled by an abort
            if claim:
                log.warning(
                    "stopping: gave up a claim to %s that was still unanswered; jobs it "
                    "may have taken return to the queue when their leases run out",
                    self.client.url,
                )
            error = BrokerUnreachable("the worker stopped before the broker answered")
        else:
            self._failures += 1
            delay = self._backoff(self._failures)
            self._resume_at = trio.current_time() + delay
            if self._bound is None:
                self._outage.failed("claim" if reports is None else "exchange", error, delay)
        if reports is None:
            return
        for report in reports.heartbeat:
            report.answer(own_copy(error))
        if error.status >= 500:
            # not refused: the outcomes go again (never this exchange's claim)
            self._pending.put_back(reports)
            return
        for report in (*reports.complete, *reports.fail, *reports.release):
            report.answer(own_copy(error))
