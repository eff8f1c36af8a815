"""The leader's group commit loop.

While an engine leads, :meth:`Committer.lead` waits for a mutation (or a timer),
keeps the commits' starts at least ``group_commit_interval`` apart, gathers every
queued mutation into one batch, applies the batch to the in-memory state, writes the
document once with a compare-and-set and only then answers each caller (the stages
are in :mod:`trioq.core._pending`).

The timers that make it commit with no mutation pending are computed in one place,
:meth:`Committer.next_timer`: the lease refresh (an empty commit one heartbeat
interval after the last start), and while claims wait, their deadlines and the
moment a delayed job becomes ready or a lease runs out.

A write that fails is retried (:func:`~trioq._backoff.backoff_delay`) when the store
was unreachable; a conflict or an unknown outcome is resolved by reading back and
asking :func:`~trioq.core._election.judge_stored`. After a failure the state may hold
changes that are not stored, so the next commit reloads the document first, and
reads wait for that (committed-only reads).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import trio

from .._backoff import backoff_delay
from .._errors import (
    CASConflict,
    DocumentInvalid,
    NotLeader,
    StorageUnavailable,
    TrioqError,
    WriteOutcomeUnknown,
)
from ._codec import LeaderInfo
from ._election import Fence, judge_stored
from ._pending import Mutation
from ._state import ClaimedJob, QueueState
from ._status import Histogram, Role

if TYPE_CHECKING:
    from ._engine import Engine

log = logging.getLogger("trioq.engine")


@dataclass(frozen=True, slots=True)
class NotWritten:
    """A commit whose write did not land, or whose outcome is unknown: its batch is
    answered with ``error()`` (the engine's state is already settled: reloaded,
    marked for a reload, or stepped down)."""

    error: Callable[[], TrioqError]


def _fixed(error: TrioqError) -> Callable[[], TrioqError]:
    return lambda: error


class Committer:
    """The commit side of one :class:`~trioq.core._engine.Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.version: str | None = None
        """The stored version the next write expects (ours, while leading)."""
        self.needs_reload = False
        """The state may differ from what is stored: reload before the next commit."""
        self.dirty = False
        """The state holds changes not known to be stored: reads wait."""
        self.last_start = -math.inf
        """When the last commit that wrote started (spacing, lease refresh)."""
        self.last_commit_wall = 0
        self.last_commit_seconds = 0.0
        self.commit_seconds = Histogram()
        """Durations of the commits that landed (start of the batch to its write)."""
        self.last_batch_size = 0
        self.failed_in_a_row = 0
        """Commits that could not be written since the last one that was (logged once)."""
        self.retry_rng = random.Random(engine.rng.getrandbits(64))
        """The write retries' jitter: a stream of its own (seeded from the engine's),
        so retries do not shift the ids a seeded engine generates, nor ids the waits."""

    # ------------------------------------------------------ the state it holds

    def hold(self, state: QueueState, version: str, data: bytes) -> None:
        """``state`` is what is stored at ``version`` (as ``data``)."""
        engine = self.engine
        engine.state, engine.document = state, data
        self.version = version
        self.needs_reload = False
        self.committed()

    def took_office(self, state: QueueState, version: str, data: bytes) -> None:
        """This engine just created or took over the document (its first commit)."""
        self.last_start = trio.current_time()
        self.last_commit_wall = self.engine.wall_clock()
        self.hold(state, version, data)

    def committed(self) -> None:
        """The state is what is stored again: serve the reads that waited for it."""
        self.dirty = False
        engine = self.engine
        state = engine.state
        if state is not None:
            engine.committed_stats = {**state.stats(), "dead": len(state.dead)}
            engine.committed_counters = dict(state.counters)
            engine.committed_by_type = state.counts_by_type()
        engine.book.answer_readers(state)
        landed, engine.landed = engine.landed, trio.Event()
        landed.set()

    # ----------------------------------------------------------------- the loop

    async def lead(self) -> None:
        """Commit until this engine stops leading (a graceful stop ends here too)."""
        engine, book = self.engine, self.engine.book
        engine.claim_watch.reset(trio.current_time())
        while engine.role is Role.LEADER:
            engine.claim_watch.check(engine.committed_by_type, trio.current_time())
            with trio.move_on_at(self.next_timer()):
                await book.wait_for_arrival()
            book.expire_waits(trio.current_time())
            if not self._work_due():
                continue
            start_at = self.last_start + engine.config.group_commit_interval
            if start_at > trio.current_time():
                await trio.sleep_until(start_at)
            stop = engine.stopping
            batch = book.gather()
            started = trio.current_time()
            if await self.commit(batch, release=stop):
                self.last_start = started
            if stop and engine.role is Role.LEADER:
                log.info("broker %s released its lease on %s", engine.broker_id, engine.key)
                engine.role = Role.STOPPED
                book.end_waits()  # waiting claims simply found nothing
                book.fail_all(lambda: NotLeader("the broker stopped", leader=None))
                return

    def _work_due(self) -> bool:
        book = self.engine.book
        return (
            book.queued > 0
            or self.engine.stopping
            # after a failed commit no commit comes by itself to bring the state back
            # to what is stored: reads waiting for it make the loop reload
            or (self.needs_reload and book.readers > 0)
            or self.next_timer() <= trio.current_time()
        )

    def next_timer(self) -> float:
        """Trio time at which the loop must commit without a mutation: the lease
        refresh, the next periodic job's occurrence, and while claims wait, the first
        of their deadlines, the next delayed job's ready time and the next lease
        expiry."""
        engine, book = self.engine, self.engine.book
        wake = self.last_start + engine.config.broker_heartbeat_interval
        state = engine.state
        if state is not None and (due := state.next_schedule_at()) is not None:
            wake = min(wake, trio.current_time() + max(0, due - engine.wall_clock()) / 1000)
        if book.waiting:
            wake = min(wake, book.next_deadline())
            state = engine.state
            if state is not None:
                now_t, now_w = trio.current_time(), engine.wall_clock()
                unblock = state.next_unblock_at(now_w)
                for at in (state.next_delayed_at(), state.next_lease_expiry(), unblock):
                    if at is not None:
                        wake = min(wake, now_t + max(0, at - now_w) / 1000)
        return wake

    async def final_commit(self) -> None:
        """At stop or cancellation: commit what is pending and release the lease
        (at once, interval or not)."""
        engine = self.engine
        engine.book.end_waits()
        engine.role = Role.STOPPED
        await self.commit(engine.book.gather(), release=True)
        log.info("broker %s released its lease on %s", engine.broker_id, engine.key)

    # --------------------------------------------------------------- a commit

    async def commit(self, batch: list[Mutation], *, release: bool = False) -> bool:
        """Apply ``batch``, write the document once, answer every caller.

        Returns whether a write was attempted. A batch that changed nothing (claims
        that found no job, requests that were rejected) is answered without a write,
        unless the lease is due for a refresh: idle long-polling workers and bad
        requests cost no storage writes.
        """
        engine, book = self.engine, self.engine.book
        if self.needs_reload and (failed := await self._reload()) is not None:
            self.failed_in_a_row += 1  # logged by the failure that needed the reload
            book.fail_batch(lambda _: failed.error())
            return True
        state = engine.state
        assert state is not None
        assert state.leader is not None
        started = trio.current_time()
        now = engine.wall_clock()
        self.dirty = True
        # the tally of a commit that did not land is not counted
        engine.type_events.clear()
        try:
            changed = self._apply(state, batch, now, started) or release
            lease_due = started >= self.last_start + engine.config.broker_heartbeat_interval
            if not changed and not lease_due:
                self.committed()
                book.answer_batch()
                return False
            state.seq += 1
            state.leader.lease_at = now
            state.leader.released = release
            data = engine.layout.encode(state)
        except Exception as exc:
            # a bug, not bad input: the state may be half-changed, so reload it
            log.exception("commit failed unexpectedly; reloading %s", engine.key)
            self.needs_reload = True
            error = StorageUnavailable(f"internal error: {exc!r}")
            book.fail_batch(lambda _: error)
            return True
        self.last_batch_size = len(batch)
        await self._write_and_answer(data, len(batch), now, started)
        return True

    def _apply(self, state: QueueState, batch: list[Mutation], now: int, started: float) -> bool:
        """GATHERED -> APPLIED (or WAITING); returns whether the state changed.
        Leases that ran out go back first, and every operation of the batch (submits,
        reports) is applied before any of its claims, in arrival order each: so the
        batch's claims can take the jobs it enqueued, released or expired, and a job
        submitted to a busy worker starts one commit sooner."""
        engine = self.engine
        book = engine.book
        expired = state.expire(now)
        changed = bool(expired)
        if expired and engine.observe_commit is not None:
            for job_id in expired:
                engine.note("expired", state, job_id)
                if job_id in state.dead:
                    engine.note("dead", state, job_id)
        overdue = state.kill_overdue(now)
        changed = changed or bool(overdue)
        if overdue and engine.observe_commit is not None:
            for job_id in overdue:
                engine.note("dead", state, job_id)
        state.pop_due(now)
        fired, periodic = state.fire_schedules(now)
        changed = changed or fired
        if periodic and engine.observe_commit is not None:
            for job_id in periodic:
                engine.note("enqueued", state, job_id)
        cancelled = state.counters["cancelled"]
        live: list[Mutation] = []
        for mutation in batch:
            if mutation.op is None and mutation.abandoned:
                book.drop(mutation)  # a claim: taking a job for it would strand the job
                continue
            mutation.apply_op(state, now)
            # an op that rejected itself changed nothing (QueueState's rule), so a
            # batch of rejected requests costs no write ...
            changed = changed or (mutation.op is not None and mutation.error is None)
            live.append(mutation)
        # ... except the rule's one exception: a rejected worker call (LeaseLost) that
        # finished a requested cancel
        changed = changed or state.counters["cancelled"] != cancelled
        for mutation in live:
            mutation.apply_claim(state, now)
            if mutation.may_wait(started):
                book.park(mutation)
                continue
            book.applied(mutation)
            changed = changed or bool(mutation.result)
            if mutation.claim is not None and mutation.result:
                self._note_claimed(mutation.result)

        def fulfil(waiter: Mutation) -> bool:
            assert waiter.claim is not None
            waiter.result = waiter.claim.claim(state, now) if state.unclaimed_count else []
            if waiter.result:
                self._note_claimed(waiter.result)
            return bool(waiter.result)

        return book.fulfil(fulfil) > 0 or changed

    def _note_claimed(self, jobs: list[ClaimedJob]) -> None:
        events = self.engine.type_events
        if self.engine.observe_commit is not None:
            for job in jobs:
                key = ("claimed", job.type)
                events[key] = events.get(key, 0) + 1

    async def _write_and_answer(self, data: bytes, size: int, now: int, started: float) -> None:
        engine, book = self.engine, self.engine.book
        state = engine.state
        assert state is not None
        try:
            failed = await self._write(data, state.seq)
        except BaseException:
            # cancelled mid-write: what is stored is unknown (the next commit reloads)
            self.needs_reload = True
            unknown = StorageUnavailable(
                "the broker stopped during a commit; its outcome is unknown"
            )
            book.fail_batch(lambda _: unknown, rewait=False)
            raise
        self.last_commit_seconds = trio.current_time() - started
        if failed is None:
            assert self.version is not None
            if self.failed_in_a_row:
                log.warning("commits succeed again after %d failed", self.failed_in_a_row)
                self.failed_in_a_row = 0
            self.hold(state, self.version, data)
            self.commit_seconds.observe(self.last_commit_seconds)
            self.last_commit_wall = now
            engine.metrics["commits"] += 1
            engine.metrics["mutations"] += size
            if engine.observe_commit is not None:
                engine.observe_commit(size, len(data), engine.type_events)
                engine.type_events.clear()
            book.answer_batch()
            return
        engine.metrics["failedBatches"] += 1
        book.fail_batch(lambda mutation: _error_for(mutation, failed))
        if engine.role is not Role.LEADER:
            book.fail_all(engine.not_leader)

    # ----------------------------------------------------------------- writing

    async def _write(self, data: bytes, seq: int) -> NotWritten | None:
        """Write ``data`` over our version; None if it landed."""
        engine, cfg = self.engine, self.engine.config
        assert self.version is not None
        last_error: StorageUnavailable | None = None
        for attempt in range(1, cfg.write_retries + 1):
            try:
                self.version = await engine.layout.write(data, seq, self.version)
                return None
            except CASConflict as exc:
                engine.metrics["conflicts"] += 1
                verdict = await self._resolve(data, seq, ambiguous=False)
                if verdict is not Fence.RETRY:
                    return verdict
                last_error = StorageUnavailable(f"a conflict with nothing stored: {exc}")
            except WriteOutcomeUnknown as exc:
                engine.metrics["writeErrors"] += 1
                last_error = exc
                verdict = await self._resolve(data, seq, ambiguous=True)
                if verdict is not Fence.RETRY:
                    return verdict
            except StorageUnavailable as exc:
                engine.metrics["writeErrors"] += 1
                last_error = exc
            if attempt < cfg.write_retries:
                delay = backoff_delay(
                    attempt,
                    base=cfg.write_retry_delay,
                    cap=cfg.broker_heartbeat_interval,
                    rng=self.retry_rng,
                )
                await trio.sleep(delay)
        self.needs_reload = True
        self.failed_in_a_row += 1
        if self.failed_in_a_row == 1:  # once per outage: the leader keeps committing
            log.warning(
                "commit %d failed (later failures in a row are not logged): %s", seq, last_error
            )
        return NotWritten(
            _fixed(StorageUnavailable(f"the commit could not be written: {last_error}"))
        )

    async def _resolve(
        self, data: bytes, seq: int, *, ambiguous: bool
    ) -> NotWritten | Literal[Fence.RETRY] | None:
        """After a conflict or an unknown outcome: read what is stored, judge it
        (:func:`judge_stored`), act on the verdict. None if our write landed;
        RETRY if it did not and may be written again."""
        engine = self.engine
        assert self.version is not None
        try:
            got = await engine.layout.read_back(seq, self.version)
        except StorageUnavailable as exc:
            self.needs_reload = True
            return NotWritten(_fixed(StorageUnavailable(f"commit outcome unknown: {exc}")))
        if got.data is None:
            if got.unchanged:
                # the log layout: nothing at our record's number, so the write did not
                # land (an unknown outcome, or a conflict the store made up)
                return Fence.RETRY
            self.needs_reload = True
            log.error("%s vanished from %s", engine.key, engine.storage.describe())
            return NotWritten(_fixed(StorageUnavailable(f"{engine.key} vanished")))
        same = got.data == data
        try:
            stored = None if same else engine.layout.leader_of(got.data)
            fence = judge_stored(
                stored,
                same_bytes=same,
                broker_id=engine.broker_id,
                epoch=engine.epoch,
                ambiguous=ambiguous,
                version_unchanged=got.unchanged,
            )
            # our own earlier write landed after all: adopt what is stored
            adopted = await engine.layout.adopt(got) if fence is Fence.ADOPT else None
        except DocumentInvalid as exc:
            engine.halt(exc)
            return NotWritten(engine.not_leader)
        if fence is Fence.LANDED:
            self.version = got.version
            return None
        if fence is Fence.STEP_DOWN:
            engine.step_down(stored)
            return NotWritten(engine.not_leader)
        if fence is Fence.ADOPT:
            if adopted is None:
                log.warning("an earlier commit of %s landed at seq %d; reloading", engine.key, seq)
                self.needs_reload = True
            else:
                log.warning(
                    "adopting stored %s at seq %d (ours was %d)", engine.key, adopted.state.seq, seq
                )
                self.hold(adopted.state, adopted.version, adopted.data)
            return NotWritten(
                _fixed(StorageUnavailable("commit raced with an earlier write; retry"))
            )
        return Fence.RETRY

    async def _reload(self) -> NotWritten | None:
        """Re-read the document before a commit; None if it is still ours (and is
        now the state), else what to answer the batch with."""
        engine = self.engine

        def keep(stored: LeaderInfo | None) -> bool:
            fence = judge_stored(
                stored,
                same_bytes=False,
                broker_id=engine.broker_id,
                epoch=engine.epoch,
                ambiguous=False,
                version_unchanged=False,
            )
            return fence is not Fence.STEP_DOWN

        try:
            stored, took = await engine.layout.reload(keep)
            if took is None:
                engine.step_down(stored)
                return NotWritten(engine.not_leader)
        except StorageUnavailable as exc:
            error = StorageUnavailable(f"cannot reload the queue: {exc}")
            engine.book.answer_readers(None, error)
            return NotWritten(_fixed(error))
        except DocumentInvalid as exc:
            engine.halt(exc)
            return NotWritten(engine.not_leader)
        self.hold(took.state, took.version, took.data)
        return None


def _error_for(mutation: Mutation, failed: NotWritten) -> BaseException:
    """What a mutation of a batch that was not written hears."""
    if mutation.error is not None:
        return mutation.error  # rejected input changed nothing anyway
    error = failed.error()
    if mutation.claim is not None and not isinstance(error, NotLeader):
        # a claim must not be retried blindly: its jobs may be stored as claimed
        return WriteOutcomeUnknown(f"claim outcome unknown: {error.message}")
    return error
