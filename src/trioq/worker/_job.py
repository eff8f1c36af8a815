"""One job: its nursery, holding the handler and the heartbeat that keeps its lease,
and the report of how it ended (complete, fail or release).

- The heartbeat renews the lease (carrying the attempt) at least three times per
  granted ``leaseMs``, whatever the configured interval. ``LeaseLost`` or
  ``JobNotFound`` cancels the handler, and so does the local lease deadline: a worker
  that could not renew its lease in time stops rather than run unowned.
- Reports are shielded and bounded (``release_timeout``), so a drain cannot lose them
  and a dead broker cannot hang the worker: the lease then expires on the broker.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import trio

from .._errors import JobNotFound, LeaseLost, TrioqError
from ..client import Claimed, Client
from ._handlers import Handler, Hooks, JobContext, call_handler, label, run_hooks
from ._settings import WorkerSettings

log = logging.getLogger("trioq.worker")


@dataclass(slots=True, frozen=True)
class _Outcome:
    """How a handler call ended: ``error`` is None on success."""

    error: str | None
    final: bool = False


@dataclass(eq=False)
class _Lease:
    """A job's lease as the worker sees it: renewed until ``deadline``."""

    deadline: float
    lost: str | None = None
    handler_scope: trio.CancelScope = field(default_factory=trio.CancelScope)


@dataclass(eq=False)
class JobRunner:
    """Runs claimed jobs for one :meth:`Worker.run <trioq.Worker.run>` (whose client
    it uses); ``counts`` and ``noted_leases`` are the worker's."""

    client: Client
    worker_id: str
    settings: WorkerSettings
    handlers: dict[str, Handler]
    hooks: Hooks
    counts: dict[str, int]
    noted_leases: set[int]
    """Lease lengths whose shortened heartbeat interval was logged already."""

    async def run(self, job: Claimed, ctx: JobContext, claimed_at: float) -> None:
        """The job's nursery (handler + heartbeat), then its report."""
        handler = self.handlers.get(job.type)
        if handler is None:
            # the broker gave us a type we did not ask for: give it back untouched
            log.warning("%s: no handler for its type here; releasing it", label(job))
            await self.release(job)
            return
        # the lease runs from the claim: heartbeats cover hooks and validation too
        lease = _Lease(deadline=claimed_at + job.lease_ms / 1000)
        outcome: _Outcome | None = None
        ran = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat, job, lease, name=f"heartbeat {job.id}")
                with lease.handler_scope:
                    outcome = await self._execute(handler, job, ctx)
                # handler done (or cancelled by lease loss): stop the heartbeat
                nursery.cancel_scope.cancel(reason="handler finished")
            ran = True
        finally:
            # Cancelled here (drain grace over, or abort) arrives wrapped in an
            # exception group from the job nursery; whatever it was, a job that did
            # not run to the end goes back for someone else
            if not ran and lease.lost is None:
                await self.release(job)
        if lease.lost is not None or outcome is None:
            self.counts["lost"] += 1
            log.warning("%s cancelled: %s", label(job), lease.lost)
        elif outcome.error is None:
            await self._report_completion(job, ctx)
        else:
            await self._report_failure(job, ctx, outcome.error, final=outcome.final)

    async def _execute(self, handler: Handler, job: Claimed, ctx: JobContext) -> _Outcome:
        """Hooks, validation and the handler call (under its timeout)."""
        await run_hooks(self.hooks.claimed, job, ctx)
        try:
            payload = handler.validate(job.payload)
        except Exception as exc:
            text = f"invalid payload for {job.type!r}: {exc}"
            log.warning("%s: %s (dead-lettered)", label(job), text)
            return _Outcome(text, final=True)
        timeout = math.inf if handler.timeout is None else handler.timeout
        scope = trio.move_on_after(timeout)
        try:
            with scope:
                await call_handler(handler, payload, ctx)
        except Exception as exc:
            if not scope.cancel_called:
                text = f"{type(exc).__name__}: {exc}"
                log.info("%s raised %s", label(job), text, exc_info=exc)
                return _Outcome(text)
        if scope.cancel_called:
            # also when a sync handler (a thread cannot be interrupted) overran
            log.info("%s timed out after %g s", label(job), timeout)
            return _Outcome(f"timed out after {timeout:g} s")
        return _Outcome(None)

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
        granted = job.lease_ms / 1000
        interval = self._heartbeat_interval(granted)
        next_beat = trio.current_time() + interval
        while True:
            # wake for the next beat, or at the local lease deadline, whichever first
            with trio.move_on_at(min(next_beat, lease.deadline)):
                await trio.sleep_forever()
            now = trio.current_time()
            if now >= lease.deadline:
                lease.lost = "its lease could not be renewed in time"
                lease.handler_scope.cancel()
                return
            try:
                with trio.move_on_at(lease.deadline):
                    await self.client.heartbeat(job.id, self.worker_id, attempt=job.attempt)
                    lease.deadline = now + granted
                    next_beat = now + interval
                    continue
            except (LeaseLost, JobNotFound) as exc:
                lease.lost = f"the broker says: {exc}"
                lease.handler_scope.cancel()
                return
            except TrioqError as exc:
                log.warning("%s: heartbeat failed: %s: %s", label(job), type(exc).__name__, exc)
                next_beat = min(trio.current_time() + max(interval / 5, 0.1), lease.deadline)

    async def _report_completion(self, job: Claimed, ctx: JobContext) -> None:
        call = self.client.complete(job.id, self.worker_id, attempt=job.attempt)
        try:
            reported = await self._report(job, "completion", call)
        except (LeaseLost, JobNotFound) as exc:
            # the client retries a call whose answer was lost: the first one may
            # have landed (then the job is completed at our attempt)
            reported = await self._recorded(job, None)
            if not reported:
                log.warning("%s finished but its lease was lost: %s", label(job), exc)
        if not reported:
            # not recorded: the lease expires and the job runs again elsewhere
            self.counts["lost"] += 1
            return
        self.counts["completed"] += 1
        await run_hooks(self.hooks.completed, job, ctx)

    async def _report_failure(
        self, job: Claimed, ctx: JobContext, error: str, *, final: bool
    ) -> None:
        call = self.client.fail(job.id, self.worker_id, error, attempt=job.attempt, final=final)
        try:
            reported = await self._report(job, "failure", call)
        except (LeaseLost, JobNotFound) as exc:
            reported = await self._recorded(job, error)
            if not reported:
                log.warning("%s failed but its lease was lost: %s", label(job), exc)
        if reported:
            self.counts["failed"] += 1
            await run_hooks(self.hooks.failed, job, ctx, error)

    async def _recorded(self, job: Claimed, error: str | None) -> bool:
        """Whether the broker already holds this attempt's outcome (completed, or
        failed with ``error``): an earlier send of the same call landed but its
        answer was lost, and the client's retry then found the job gone."""
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

    async def release(self, job: Claimed) -> None:
        """Give the job back at once, for another worker (or a later claim)."""
        call = self.client.release(job.id, self.worker_id, attempt=job.attempt)
        try:
            released = await self._report(job, "release", call)
        except (LeaseLost, JobNotFound) as exc:
            log.info("%s was not ours to release any more: %s", label(job), exc)
            return
        if released:
            self.counts["released"] += 1

    async def _report(self, job: Claimed, what: str, call: Awaitable[Any]) -> bool:
        """Report a job's outcome (``what``: completion, failure, release), shielded
        and bounded. True if the broker took it; LeaseLost and JobNotFound are raised."""
        with trio.move_on_after(self.settings.release_timeout, shield=True) as scope:
            try:
                await call
            except (LeaseLost, JobNotFound):
                raise
            except TrioqError as exc:
                log.warning(
                    "%s: could not report its %s (%s: %s); its lease will expire",
                    label(job),
                    what,
                    type(exc).__name__,
                    exc,
                )
                return False
            return True
        if scope.cancelled_caught:
            log.warning(
                "%s: reporting its %s timed out after %g s; its lease will expire",
                label(job),
                what,
                self.settings.release_timeout,
            )
        return False
