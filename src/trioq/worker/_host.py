"""The job host: the shielded nursery that holds every job the worker holds (one job
nursery each, :class:`~._job.JobRunner`), the slots that bound how many handlers run
(:class:`Slots`), and the grace jobs get at a stop."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import partial

import trio

from ..client import Claimed
from ._handlers import JobContext
from ._job import JobRunner

log = logging.getLogger("trioq.worker")


class Slots:
    """The concurrency slots: a ``trio.CapacityLimiter`` whose tokens the job tasks
    borrow around their handlers, and the prefetched jobs waiting for one, which a
    stop sends back at once."""

    def __init__(self, concurrency: int) -> None:
        self.limiter = trio.CapacityLimiter(concurrency)
        self.closed = False
        """Stopping: jobs that have no slot yet never get one."""

    async def acquire(self, borrower: object) -> bool:
        """Take a slot for ``borrower`` (waiting for one); False once stopping."""
        if self.closed:
            return False
        try:
            self.limiter.acquire_on_behalf_of_nowait(borrower)
            return True  # the common case: no checkpoint
        except trio.WouldBlock:
            pass
        await self.limiter.acquire_on_behalf_of(borrower)
        if self._stopped():  # woken by close()
            self.limiter.release_on_behalf_of(borrower)
            return False
        return True

    def _stopped(self) -> bool:
        return self.closed

    def release(self, borrower: object) -> None:
        self.limiter.release_on_behalf_of(borrower)

    def close(self) -> None:
        """Stop handing out slots: every job still waiting for one stops waiting
        (unbounded tokens wake them all; each sees :attr:`closed` and gives its
        token back), so no wait needs a cancel scope of its own."""
        if not self.closed:
            self.closed = True
            self.limiter.total_tokens = math.inf


@dataclass(eq=False)
class JobHost:
    """A worker's jobs: the courier :meth:`start`\\ s each one it claims."""

    active: dict[str, JobContext] = field(default_factory=dict)
    """The jobs held now (running, or prefetched and waiting for a slot), by id."""
    slots: Slots = field(default_factory=lambda: Slots(1))
    _idle: trio.Event = field(default_factory=trio.Event)
    _done: trio.Event = field(default_factory=trio.Event)
    _scope: trio.CancelScope | None = None
    _nursery: trio.Nursery | None = None

    async def serve(self, abort: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        """Hold the jobs until :meth:`drain` (or :meth:`cancel`) ends them. Shielded:
        the caller's cancellation stops claiming, but jobs get their grace period.
        (Set :attr:`slots` for the run first.)"""
        self._done = trio.Event()
        try:
            with trio.CancelScope(shield=True) as self._scope:
                if abort.is_set():
                    self._scope.cancel()
                async with trio.open_nursery() as self._nursery:
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._scope = self._nursery = None
            self._done.set()

    def stop(self) -> None:
        """Start no more handlers: jobs waiting for a slot are released at once."""
        self.slots.close()

    def cancel(self) -> None:
        """Cancel every job now (each is released)."""
        self.stop()
        if self._scope is not None:
            self._scope.cancel()

    async def drain(self, grace_over: float, abort: trio.Event) -> None:
        """Let running jobs finish until ``grace_over`` (or ``abort``), then cancel
        what still runs, and wait until every job task has ended (their releases
        are bounded)."""
        self.stop()
        if self.active:
            log.info(
                "draining: %d job(s) running, %.0f s grace left",
                len(self.active),
                max(0.0, grace_over - trio.current_time()),
            )
        with trio.move_on_at(grace_over):
            while self.active and not abort.is_set():
                await self._idle.wait()
        self.cancel()
        await self._done.wait()

    def start(self, runner: JobRunner, claimed: list[Claimed], claimed_at: float) -> bool:
        """Start a job task for each claimed job; False if the host has closed."""
        nursery = self._nursery
        if nursery is None:
            return False
        counts = runner.counts
        for job in claimed:
            counts["claimed"] += 1
            ctx = JobContext(
                job.id,
                job.type,
                job.attempt,
                runner.worker_id,
                job.lease_ms,
                job.max_attempts,
                job.last_error,
                partial(runner.report_progress, job),
            )
            self.active[job.id] = ctx
            nursery.start_soon(self._run, runner, job, ctx, claimed_at, name=f"trioq job {job.id}")
        if claimed and self._idle.is_set():
            self._idle = trio.Event()
        return True

    async def _run(
        self, runner: JobRunner, job: Claimed, ctx: JobContext, claimed_at: float
    ) -> None:
        try:
            await runner.run(job, ctx, claimed_at)
        finally:
            # a later attempt of the same job may have been claimed meanwhile (a sync
            # handler runs on after its lease is lost): remove only our own entry
            if self.active.get(job.id) is ctx:
                del self.active[job.id]
            if not self.active:
                self._idle.set()
