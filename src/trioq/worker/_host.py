"""The job host: the shielded nursery that holds every running job (one job nursery
each, :class:`~._job.JobRunner`), the ``CapacityLimiter`` whose tokens are their slots,
and the grace they get at a stop."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from ..client import Claimed
from ._handlers import JobContext
from ._job import JobRunner

log = logging.getLogger("trioq.worker")


@dataclass(eq=False)
class Slot:
    """A borrower of one CapacityLimiter token (handed from the claim loop to a job)."""

    job_id: str | None = None


@dataclass(eq=False)
class JobHost:
    """A worker's running jobs. The claim loop borrows :attr:`limiter` tokens for
    the slots it claims for, and :meth:`start` hands each to the job that uses it."""

    active: dict[str, JobContext] = field(default_factory=dict)
    """The jobs running now, by id."""
    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    _idle: trio.Event = field(default_factory=trio.Event)
    _scope: trio.CancelScope | None = None
    _nursery: trio.Nursery | None = None

    async def serve(
        self, concurrency: int, abort: trio.Event, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Hold the jobs until :meth:`drain` (or :meth:`cancel`) ends them. Shielded:
        the caller's cancellation stops claiming, but jobs get their grace period."""
        self.limiter = trio.CapacityLimiter(concurrency)
        try:
            with trio.CancelScope(shield=True) as self._scope:
                if abort.is_set():
                    self._scope.cancel()
                async with trio.open_nursery() as self._nursery:
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._scope = self._nursery = None

    def cancel(self) -> None:
        """Cancel every running job now (each is released)."""
        if self._scope is not None:
            self._scope.cancel()

    async def drain(self, grace_over: float, abort: trio.Event) -> None:
        """Let running jobs finish until ``grace_over`` (or ``abort``), then cancel
        what still runs."""
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

    def start(
        self, runner: JobRunner, claimed: list[Claimed], slots: list[Slot], claimed_at: float
    ) -> None:
        """Hand one token to each claimed job and start it; give the rest back."""
        assert self._nursery is not None
        for job, slot in zip(claimed, slots, strict=False):
            slot.job_id = job.id
            runner.counts["claimed"] += 1
            self.active[job.id] = JobContext(
                job.id, job.type, job.attempt, runner.worker_id, job.lease_ms
            )
            if self._idle.is_set():
                self._idle = trio.Event()
            self._nursery.start_soon(
                self._run, runner, job, slot, claimed_at, name=f"trioq job {job.id}"
            )
        for slot in slots[len(claimed) :]:
            self.limiter.release_on_behalf_of(slot)

    async def _run(self, runner: JobRunner, job: Claimed, slot: Slot, claimed_at: float) -> None:
        ctx = self.active[job.id]
        try:
            await runner.run(job, ctx, claimed_at)
        finally:
            # a later attempt of the same job may have been claimed meanwhile (a sync
            # handler runs on after its lease is lost): remove only our own entry
            if self.active.get(job.id) is ctx:
                del self.active[job.id]
            self.limiter.release_on_behalf_of(slot)
            if not self.active:
                self._idle.set()
