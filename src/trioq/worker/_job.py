"""One job: its nursery, holding the heartbeat that keeps its lease and (once a slot
is free) the handler, and the report of how it ended (complete, fail or release).

- A job's task starts when it is claimed. A prefetched job waits in its nursery for
  a slot (a ``CapacityLimiter`` token), its lease kept; a stop releases it unstarted.
- The heartbeat renews the lease (carrying the attempt) at least three times per
  granted ``leaseMs``, whatever the configured interval, by handing the renewal to
  the courier (:mod:`._courier`), which sends it in its next exchange. ``LeaseLost``
  or ``JobNotFound`` cancels the handler, and so does the local lease deadline: a
  worker that could not renew its lease in time stops rather than run unowned.
- Outcome reports go through the courier too, awaited shielded and bounded
  (``release_timeout``), so a drain cannot lose them and a dead broker cannot hang
  the worker: the lease then expires on the broker.

Each job event is one log line whose record carries ``event``, ``jobId``, ``type``
and ``attempt`` (:func:`trioq._logging.job_fields`): ``started`` and ``completed``
at DEBUG (a busy worker runs thousands a second), ``failed``, ``retried``,
``dead``, ``lease_lost``, ``cancelled`` and ``released`` at INFO or WARNING. The
payload is in the ``started`` line only with ``log_payloads``.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .._errors import BrokerProtocolError, JobNotFound, LeaseLost, PayloadTooLarge, TrioqError
from .._logging import job_fields
from .._tracing import JobTrace
from .._wire import encode_payload
from ..client import Claimed, Client, Failure, Outcome
from ._courier import Courier, Report
from ._handlers import Fatal, Handler, Hooks, JobContext, Retry, call_handler, label, run_hooks
from ._metrics import WorkerMetrics
from ._settings import WorkerSettings

if TYPE_CHECKING:
    from ._host import Slots

log = logging.getLogger("trioq.worker")


@dataclass(slots=True, frozen=True)
class _Outcome:
    """How a handler call ended: ``error`` is None on success, and ``value`` is
    what the handler returned."""

    error: str | None
    final: bool = False
    value: Any = None
    retry_in: float | None = None
    """Seconds before the retry the handler asked for (``trioq.Retry``)."""


_SUCCESS = _Outcome(None)


def _fields(job: Claimed, event: str, **more: Any) -> dict[str, Any]:
    """The ``extra=`` of a job event's log line."""
    return job_fields(event, job.id, job.type, job.attempt, **more)


def _raised(job: Claimed, exc: Exception) -> _Outcome:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, Retry | Fatal):  # the handler's own say: no traceback
        log.info("%s: %s", label(job), text, extra=_fields(job, "failed", error=text))
        if isinstance(exc, Fatal):
            return _Outcome(text, final=True)
        return _Outcome(text, retry_in=exc.delay)
    log.info(
        "%s raised %s", label(job), text, exc_info=exc, extra=_fields(job, "failed", error=text)
    )
    return _Outcome(text)


def _policy(handler: Handler, job: Claimed, outcome: _Outcome) -> tuple[bool, float | None]:
    """The failure's ``final`` and ``retry_in``: the handler's say (``Retry``,
    ``Fatal``), then its retry policy, then the broker's (``False``, None)."""
    final, retry_in = outcome.final, outcome.retry_in
    policy = handler.retry
    if policy is not None:
        if policy.max_attempts is not None and job.attempt >= policy.max_attempts:
            final = True
        if retry_in is None and policy.backoff is not None:
            retry_in = max(0.0, float(policy.backoff(job.attempt)))
    return final, retry_in


@dataclass(eq=False)
class _Lease:
    """A job's lease as the worker sees it: renewed until ``deadline``."""

    deadline: float
    claimed_at: float = 0.0
    """When its claim was answered (trio time): the start of the slot wait."""
    lost: str | None = None
    held: bool = True
    """Still counted in the courier's :attr:`~._courier.Courier.held`."""
    scope: trio.CancelScope | None = None
    """The job nursery's: cancelled when the lease is lost, or the handler is done."""
    finished: bool = False
    """The handler is done (or never started)."""
    beating: bool = False
    """The heartbeat task has started (so it must be cancelled to end)."""
    trace: JobTrace | None = None
    """The job's spans, when tracing is on (:mod:`trioq._tracing`)."""

    def reporting(self, what: str) -> AbstractContextManager[object]:
        """The span of an outcome report (``complete``, ``fail``), if tracing."""
        return nullcontext() if self.trace is None else self.trace.reporting(what)


@dataclass(eq=False)
class JobRunner:
    """Runs claimed jobs for one :meth:`Worker.run <trioq.Worker.run>`: their
    reports go through ``courier``, and ``client`` reads a job back when a report's
    fate is unclear; ``counts`` and ``noted_leases`` are the worker's."""

    client: Client
    courier: Courier
    slots: Slots
    worker_id: str
    settings: WorkerSettings
    handlers: dict[str, Handler]
    hooks: Hooks
    counts: dict[str, int]
    noted_leases: set[int]
    """Lease lengths whose shortened heartbeat interval was logged already."""
    metrics: WorkerMetrics

    async def run(self, job: Claimed, ctx: JobContext, claimed_at: float) -> None:
        """The job's nursery (heartbeat, and the handler once a slot is free), then
        its report."""
        # the lease runs from the claim: heartbeats cover the wait for a slot too
        lease = _Lease(
            deadline=claimed_at + job.lease_ms / 1000,
            claimed_at=claimed_at,
            trace=JobTrace.start(job.id, job.type, job.attempt, job.trace),
        )
        try:
            await self._run(job, ctx, lease)
        finally:
            self._let_go(lease)
        # a cancellation that came while a report was awaited (see _hand_over)
        await trio.lowlevel.checkpoint_if_cancelled()

    async def _run(self, job: Claimed, ctx: JobContext, lease: _Lease) -> None:
        handler = self.handlers.get(job.type)
        if handler is None:
            # the broker gave us a type we did not ask for: give it back untouched
            log.warning(
                "%s: no handler for its type here; releasing it",
                label(job),
                extra=_fields(job, "released"),
            )
            await self._release(job, lease)
            return
        if trio.current_time() >= lease.deadline:
            # its claim's answer came (or was read) after the lease ran out: the broker
            # may have given the job to another worker already, so running it here
            # would run it twice at once
            self.counts["lost"] += 1
            log.warning(
                "%s not started: its lease ran out before its claim was read",
                label(job),
                extra=_fields(job, "lease_lost"),
            )
            lease.lost = "its lease ran out before it started"
            await self._release(job, lease)  # sooner for someone else, if still ours
            return
        outcome: _Outcome | None = None
        ran = False
        try:
            async with trio.open_nursery() as nursery:
                lease.scope = nursery.cancel_scope
                nursery.start_soon(self._heartbeat, job, lease, name=f"heartbeat {job.id}")
                # a lost lease cancels this nursery: the heartbeat is ending anyway
                outcome = await self._in_slot(handler, job, ctx, lease)
                lease.finished = True
                if lease.beating:  # else it will see `finished` when it first runs
                    nursery.cancel_scope.cancel(reason="handler finished")
            ran = True
        finally:
            # Cancelled here (drain grace over, or abort) arrives wrapped in an
            # exception group from the job nursery; whatever it was, a job that did
            # not run to the end goes back for someone else
            if not ran and lease.lost is None:
                await self._release(job, lease)
        if lease.lost is not None:
            self.counts["lost"] += 1
            log.warning(
                "%s cancelled: %s", label(job), lease.lost, extra=_fields(job, "lease_lost")
            )
        elif outcome is None:
            # prefetched, and the worker stopped before a slot came free
            await self._release(job, lease)
        elif outcome.error is None:
            await self._report_completion(job, ctx, lease, outcome.value)
        else:
            final, retry_in = _policy(handler, job, outcome)
            await self._report_failure(
                job, ctx, lease, outcome.error, final=final, retry_in=retry_in
            )

    async def _in_slot(
        self, handler: Handler, job: Claimed, ctx: JobContext, lease: _Lease
    ) -> _Outcome | None:
        """The handler's run, in a slot once one is free; None if the worker stopped
        first (a prefetched job). Timed for the metrics: the wait from the claim,
        and the run by outcome (``cancelled`` if it did not end by itself)."""
        borrower = trio.lowlevel.current_task()
        if not await self.slots.acquire(borrower):
            return None
        started = trio.current_time()
        # submit to start, from the broker's clock to ours: first attempts only (a
        # retry's would count its earlier attempts), a requested delay included
        queue_wait = (
            time.time() - job.created_at / 1000
            if job.created_at is not None and job.attempt == 1
            else None
        )
        self.metrics.started(job.type, started - lease.claimed_at, queue_wait)
        if log.isEnabledFor(logging.DEBUG):
            more = {"payload": job.payload} if self.settings.log_payloads else {}
            log.debug(
                "%s started%s",
                label(job),
                f" with payload {job.payload!r}" if more else "",
                extra=_fields(job, "started", **more),
            )
        outcome: _Outcome | None = None
        try:
            if lease.trace is None:
                outcome = await self._execute(handler, job, ctx)
            else:
                with lease.trace.running(queue_wait) as span:
                    outcome = await self._execute(handler, job, ctx)
                    if outcome.error is not None:
                        JobTrace.failed(span, outcome.error)
            return outcome
        finally:
            self.slots.release(borrower)
            if outcome is None:
                kind = "cancelled"
            elif outcome.error is None:
                kind = "completed"
            else:
                kind = "dead" if outcome.final else "failed"
            self.metrics.ended(job.type, kind, trio.current_time() - started)

    def _let_go(self, lease: _Lease) -> None:
        """The job's room may be claimed again (once per job)."""
        if lease.held:
            lease.held = False
            self.courier.let_go()

    async def _execute(self, handler: Handler, job: Claimed, ctx: JobContext) -> _Outcome:
        """Hooks, validation and the handler call (under its timeout, if it has one)."""
        if self.hooks.claimed:
            await run_hooks(self.hooks.claimed, job, ctx)
        try:
            payload = handler.validate(job.payload)
        except Exception as exc:
            text = f"invalid payload for {job.type!r}: {exc}"
            log.warning(
                "%s: %s (dead-lettered)", label(job), text, extra=_fields(job, "failed", error=text)
            )
            return _Outcome(text, final=True)
        if handler.timeout is None:  # no cancel scope then: one per job costs
            try:
                value = await call_handler(handler, payload, ctx)
            except Exception as exc:
                return _raised(job, exc)
            return _SUCCESS if value is None else _Outcome(None, value=value)
        timeout = handler.timeout
        scope = trio.move_on_after(timeout)
        value = None
        try:
            with scope:
                value = await call_handler(handler, payload, ctx)
        except Exception as exc:
            if not scope.cancel_called:
                return _raised(job, exc)
        if scope.cancel_called:
            # also when a sync handler (a thread cannot be interrupted) overran
            text = f"timed out after {timeout:g} s"
            log.info("%s %s", label(job), text, extra=_fields(job, "failed", error=text))
            return _Outcome(text)
        return _SUCCESS if value is None else _Outcome(None, value=value)

    async def report_progress(self, job: Claimed, value: Any) -> None:
        """:meth:`JobContext.progress`: a heartbeat carrying ``value``, sent now."""
        try:
            progress_json = encode_payload(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"progress is not JSON: {exc}") from None
        report = self.courier.heartbeat(job, progress_json)
        try:
            with trio.move_on_after(self.settings.release_timeout):
                await report.wait()
        finally:
            report.withdrawn = report.result is None
        if isinstance(report.result, PayloadTooLarge | BrokerProtocolError):
            raise ValueError(f"the broker refused the progress report: {report.result}")
        # LeaseLost and outages: the heartbeat task acts on them

    def _heartbeat_interval(self, lease: float) -> float:
        """The configured interval, shortened to renew at least three times per lease."""
        configured = self.settings.heartbeat_interval
        interval = min(configured, lease / 3)
        lease_ms = round(lease * 1000)
        if interval < configured and lease_ms not in self.noted_leases:
            self.noted_leases.add(lease_ms)
            log.info(
                "the broker grants %d ms leases: heartbeats every %g s instead of the "
                "configured %g s (at least three per lease)",
                lease_ms,
                interval,
                configured,
            )
        return interval

    async def _heartbeat(self, job: Claimed, lease: _Lease) -> None:
        if lease.finished:
            return  # a short job, done before its heartbeat first ran
        lease.beating = True
        granted = job.lease_ms / 1000
        interval = self._heartbeat_interval(granted)
        next_beat = trio.current_time() + interval
        while True:
            # wake for the next beat, or at the local lease deadline, whichever first
            await trio.sleep_until(min(next_beat, lease.deadline))
            now = trio.current_time()
            if now >= lease.deadline:
                self._lose(lease, "its lease could not be renewed in time")
                return
            report = self.courier.heartbeat(job)
            try:
                with trio.move_on_at(lease.deadline):
                    await report.wait()
            finally:
                # not answered in time (or the job ended): if it has not gone, it never goes
                report.withdrawn = report.result is None
            result = report.result
            if isinstance(result, str):
                lease.deadline = now + granted
                next_beat = now + interval
            elif isinstance(result, LeaseLost | JobNotFound):
                self._lose(lease, f"the broker says: {result}")
                return
            elif result is not None:
                log.warning(
                    "%s: heartbeat failed: %s: %s", label(job), type(result).__name__, result
                )
                next_beat = min(trio.current_time() + max(interval / 5, 0.1), lease.deadline)

    @staticmethod
    def _lose(lease: _Lease, why: str) -> None:
        lease.lost = why
        assert lease.scope is not None
        lease.scope.cancel(reason=f"lease lost: {why}")

    async def _report_completion(
        self, job: Claimed, ctx: JobContext, lease: _Lease, value: Any = None
    ) -> None:
        result_json = None
        if value is not None:
            try:
                result_json = encode_payload(value)
            except (TypeError, ValueError) as exc:
                # the same return value would fail again: no retry
                text = f"its result cannot be stored: {exc}"
                log.warning("%s: %s", label(job), text, extra=_fields(job, "failed", error=text))
                await self._report_failure(job, ctx, lease, text, final=True)
                return
        self._let_go(lease)
        with lease.reporting("complete"):
            report = self.courier.complete(job, result_json)
            result = await self._hand_over(job, "completion", report)
        if isinstance(result, PayloadTooLarge | BrokerProtocolError):
            # the broker refused the result (over --max-result-bytes, too deep)
            text = f"its result was refused: {result}"
            log.warning("%s: %s", label(job), text, extra=_fields(job, "failed", error=text))
            await self._report_failure(job, ctx, lease, text, final=True)
            return
        reported = isinstance(result, str)
        if isinstance(result, LeaseLost | JobNotFound):
            # sent again after an exchange whose answer was lost: the first send may
            # have landed (then the job is completed at our attempt)
            reported = await self._recorded(job, None)
            if not reported:
                log.warning(
                    "%s finished but its lease was lost: %s",
                    label(job),
                    result,
                    extra=_fields(job, "lease_lost"),
                )
        if not reported:
            # not recorded: the lease expires and the job runs again elsewhere
            self.counts["lost"] += 1
            return
        self.counts["completed"] += 1
        if log.isEnabledFor(logging.DEBUG):  # the fields cost a dict per job
            log.debug("%s completed", label(job), extra=_fields(job, "completed"))
        await run_hooks(self.hooks.completed, job, ctx)

    async def _report_failure(
        self,
        job: Claimed,
        ctx: JobContext,
        lease: _Lease,
        error: str,
        *,
        final: bool,
        retry_in: float | None = None,
    ) -> None:
        self._let_go(lease)
        failure = Failure(job, error, retry_in=retry_in, final=final)
        with lease.reporting("fail"):
            result = await self._hand_over(job, "failure", self.courier.fail(job, failure))
        reported = isinstance(result, str)
        if isinstance(result, LeaseLost | JobNotFound):
            reported = await self._recorded(job, error)
            if not reported:
                log.warning(
                    "%s failed but its lease was lost: %s",
                    label(job),
                    result,
                    extra=_fields(job, "lease_lost"),
                )
        if reported:
            self.counts["failed"] += 1
            # the broker's answer says what became of it ("retrying" or "dead")
            event = "dead" if result == "dead" else "retried"
            log.info(
                "%s %s",
                label(job),
                "dead-lettered" if event == "dead" else "will be retried",
                extra=_fields(job, event, error=error[:200]),
            )
            await run_hooks(self.hooks.failed, job, ctx, error)

    async def _recorded(self, job: Claimed, error: str | None) -> bool:
        """Whether the broker already holds this attempt's outcome (completed, or
        failed with ``error``): an earlier send of the same report landed but its
        answer was lost, and the next send then found the job gone."""
        with trio.move_on_after(self.settings.release_timeout, shield=True):
            try:
                record = await self.client.get(job.id)
            except TrioqError:
                return False
            if record.get("attempts") != job.attempt:
                return False
            if error is None:
                return record.get("status") == "completed"
            last = record.get("lastError")
            return (
                record.get("status") in ("unclaimed", "dead")
                and isinstance(last, str)
                and last.startswith(error[:1000])
            )
        return False

    async def _release(self, job: Claimed, lease: _Lease) -> None:
        """Give the job back at once, for another worker (or a later claim)."""
        self._let_go(lease)
        result = await self._hand_over(job, "release", self.courier.release(job))
        if isinstance(result, LeaseLost | JobNotFound):
            log.info("%s was not ours to release any more: %s", label(job), result)
        elif result is not None:
            self.counts["released"] += 1
            log.info("%s released", label(job), extra=_fields(job, "released"))

    async def _hand_over(self, job: Claimed, what: str, report: Report) -> Outcome | None:
        """Await a report of the job's outcome (``what``: completion, failure,
        release): the job's status after it, ``LeaseLost`` or ``JobNotFound``, or
        None when it was not reported (logged here). Bounded by the courier
        (``release_timeout``), and never cut short by a cancellation."""
        try:
            await report.wait()
        except trio.Cancelled:
            # the grace ran out or an abort came just now: the report still goes. The
            # cancellation stays in force: the job task's next checkpoint raises it
            with trio.CancelScope(shield=True):
                await report.wait()
        result = report.result
        if report.timed_out:
            log.warning(
                "%s: reporting its %s timed out after %g s; its lease will expire",
                label(job),
                what,
                self.settings.release_timeout,
            )
            return None
        if what == "completion" and isinstance(result, PayloadTooLarge | BrokerProtocolError):
            return result  # a refused result: the caller fails the job instead
        if not isinstance(result, str | LeaseLost | JobNotFound):
            log.warning(
                "%s: could not report its %s (%s: %s); its lease will expire",
                label(job),
                what,
                type(result).__name__,
                result,
            )
            return None
        return result
