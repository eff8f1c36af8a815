"""What the engine owes its callers: every mutation from the moment a caller hands
it over until its answer, and every read waiting for committed state.

A :class:`Mutation` moves through these stages, only by the :class:`PendingBook`
methods on the arrows::

    caller ─submit()─▶ QUEUED ─gather()─▶ GATHERED ─applied()─▶ APPLIED ─answer_batch()─▶ ANSWERED
                                            │   │                ▲    │                      ▲ ▲ ▲
                                            │   └─park()─▶ WAITING    └──fail_batch()────────┘ │ │
                                            │                │   └─expire_waits(), end_waits()─┘ │
                                            │                └─fulfil() (joins APPLIED)          │
                                            └─drop() (an abandoned claim) ───────────────────────┘

``answer_batch()``: the batch is written (or needed no write), each mutation hears
its result or its own error. ``fail_batch()``: it was not written; each hears an
error, except a claim fulfilled from the waiting list, which goes back to WAITING
(GATHERED mutations meet it too, when the reload before a commit failed).

- QUEUED: handed over, not yet taken by the commit loop (counts against
  ``max_pending``).
- GATHERED: taken into the batch of the commit under way, not yet applied to the
  state (the commit may be reloading the document first). A commit cancelled here
  changed nothing: the last commit at stop takes these again.
- APPLIED: applied to the in-memory state; the write that makes it durable is under
  way. Its answer (the result, or the mutation's own error) is held until then.
- WAITING: a long-poll claim that found no job, until a later commit hands it one
  (it joins that commit as APPLIED) or its deadline passes (answered ``[]``). At
  most ``max_waiting`` claims wait: :meth:`PendingBook.park` answers one more at once
  with :class:`~trioq.Overloaded` (a 503 its client retries after a pause; an empty
  answer would send a well-behaved worker straight back, a busy loop). A
  mutation that carries an op as well as a claim (an exchange with reports) never
  waits: parked after its op was applied, it could be answered at its deadline,
  which writes nothing, before its op was written.
- ANSWERED: final; the caller's :meth:`Mutation.wait` returns or raises.

A caller that gives up (cancelled) marks its mutation *abandoned*: it stays where
it is, except that an abandoned claim takes no job (it would strand the job until
its lease ran out) and leaves the waiting list; an op it carries still applies.

A :class:`Reader` waits for the state to be committed again (after a batch was
applied, or after a write failed and before the reload that follows), then runs
over it.

There is one cleanup path: :meth:`PendingBook.fail_all` answers every mutation in
every stage, and every reader, with one error (a step-down, a fatal document, the
end of :meth:`Engine.run <trioq.core._engine.Engine.run>`). A graceful stop first
takes the normal transitions (the queued and gathered mutations go into the last
commit, waiting claims end empty), so ``fail_all`` then finds only late arrivals.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from .._errors import Overloaded, QueueFull, TrioqError
from ._state import QueueState

MAX_WAITING = 4096
"""Default bound on the long-poll claims parked at once (``--max-waiting-claims``)."""

OVERLOADED_RETRY_SECONDS = 1
"""The pause an :class:`~trioq.Overloaded` answer advises (its ``Retry-After``)."""

Operation = Callable[[QueueState, int], Any]
"""A mutation of the state at a (wall-clock, ms) time; raises TrioqError to reject."""


class Stage(enum.Enum):
    QUEUED = "queued"
    GATHERED = "gathered"
    APPLIED = "applied"
    WAITING = "waiting"
    ANSWERED = "answered"


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    worker_id: str
    types: Sequence[str] | None
    max_jobs: int
    deadline: float = -math.inf
    """Trio time until which the claim may wait; in the past: do not wait."""

    def claim(self, state: QueueState, now: int) -> list[Any]:
        return state.claim(self.worker_id, now, types=self.types, max_jobs=self.max_jobs)


@dataclass(eq=False)
class Mutation:
    """One change a caller asked for, and its answer: an operation, a claim, or
    both (an exchange: its reports, then its claim, in one commit)."""

    op: Operation | None
    """What to apply (``None`` for a plain claim, which is described by ``claim``)."""
    claim: ClaimRequest | None = None
    stage: Stage = Stage.QUEUED
    result: Any = None
    """The op's result; with a claim, the jobs claimed."""
    reported: Any = None
    """With both an op and a claim, the op's result."""
    error: BaseException | None = None
    abandoned: bool = False
    waited: bool = False
    """Whether it was ever parked (a fulfilled claim goes back there if its write fails)."""
    _done: trio.Event = field(default_factory=trio.Event)

    def apply(self, state: QueueState, now: int) -> None:
        """Run the operation, then the claim (:meth:`apply_op`, :meth:`apply_claim`)."""
        self.apply_op(state, now)
        self.apply_claim(state, now)

    def apply_op(self, state: QueueState, now: int) -> None:
        """Run the operation, if any; its result or the mutation's own error is kept
        for the answer (anything but a TrioqError propagates: a bug)."""
        if self.op is None:
            return
        try:
            outcome = self.op(state, now)
        except TrioqError as exc:
            self.error = exc
            return
        if self.claim is None:
            self.result = outcome
        else:
            self.reported = outcome

    def apply_claim(self, state: QueueState, now: int) -> None:
        """Run the claim, if any. An op that rejected itself leaves it untried, and an
        abandoned caller's claim takes nothing (a job taken for nobody would be
        stranded)."""
        if self.claim is None or self.error is not None:
            return
        try:
            self.result = [] if self.abandoned else self.claim.claim(state, now)
        except TrioqError as exc:
            self.error = exc

    def may_wait(self, now: float) -> bool:
        """Whether this is a plain claim (no op) that found no job and may wait past
        ``now``."""
        claim = self.claim
        return (
            claim is not None
            and self.op is None
            and not self.result
            and self.error is None
            and claim.deadline > now
        )

    async def wait(self) -> Any:
        """The answer: the result, or raise the error. A caller cancelled while
        waiting abandons the mutation."""
        try:
            await self._done.wait()
        except BaseException:
            self.abandoned = True
            raise
        if self.error is not None:
            raise self.error
        return self.result

    def _answer(self, result: Any = None, error: BaseException | None = None) -> None:
        if self.stage is not Stage.ANSWERED:
            self.stage = Stage.ANSWERED
            self.result, self.error = result, error
            self._done.set()


@dataclass(eq=False)
class Reader:
    """A read waiting for the state to be committed again."""

    fn: Callable[[QueueState], Any]
    result: Any = None
    error: BaseException | None = None
    _done: trio.Event = field(default_factory=trio.Event)

    def _answer(self, state: QueueState | None, error: BaseException | None = None) -> None:
        if self._done.is_set():
            return
        if error is None and state is not None:
            try:
                self.result = self.fn(state)
            except Exception as exc:  # the read's own error (JobNotFound, ...)
                error = exc
        self.error = error
        self._done.set()


class PendingBook:
    """Every unanswered mutation and waiting read of one engine, by stage."""

    def __init__(
        self, max_pending: int, *, owner: str = "the engine", max_waiting: int = MAX_WAITING
    ) -> None:
        self.max_pending = max_pending
        self.owner = owner
        self.max_waiting = max_waiting
        """How many claims may wait at once (see :meth:`park`)."""
        self._queued: deque[Mutation] = deque()
        self._batch: list[Mutation] = []  # GATHERED or APPLIED: the commit under way
        self._waiting: list[Mutation] = []
        self._readers: list[Reader] = []
        self._wake = trio.Event()

    # ------------------------------------------------------------------ callers

    def submit(self, mutation: Mutation) -> None:
        """QUEUED: hand ``mutation`` to the commit loop (QueueFull past the bound)."""
        if len(self._queued) >= self.max_pending:
            raise QueueFull(f"{self.owner} has {len(self._queued)} mutations pending")
        self._queued.append(mutation)
        self._wake.set()

    async def read(self, reader: Reader) -> Any:
        """Wait until ``reader`` was answered, and return its result."""
        self._readers.append(reader)
        self._wake.set()
        try:
            await reader._done.wait()
        finally:
            if reader in self._readers:
                self._readers.remove(reader)
        if reader.error is not None:
            raise reader.error
        return reader.result

    def answer_readers(self, state: QueueState | None, error: BaseException | None = None) -> None:
        """The state is committed again (or cannot be reloaded: ``error``)."""
        readers, self._readers = self._readers, []
        for reader in readers:
            reader._answer(state, error)

    # ----------------------------------------------------------- the commit loop

    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def unanswered(self) -> int:
        """Mutations handed over and not yet answered, waiting claims aside."""
        return len(self._queued) + len(self._batch)

    @property
    def readers(self) -> int:
        return len(self._readers)

    @property
    def waiting(self) -> Sequence[Mutation]:
        return self._waiting

    def poke(self) -> None:
        """Wake the commit loop (a stop, a read that needs a reload)."""
        self._wake.set()

    async def wait_for_arrival(self) -> None:
        """Until something was submitted, or :meth:`poke` called, since the last
        return from here."""
        await self._wake.wait()
        self._wake = trio.Event()

    def gather(self) -> list[Mutation]:
        """QUEUED -> GATHERED: take every queued mutation (and a gathered batch a
        cancelled commit left behind) into the next commit's batch."""
        batch = [m for m in self._batch if m.stage is Stage.GATHERED]
        assert not any(m.stage is Stage.APPLIED for m in self._batch), "a batch in flight"
        batch += self._queued
        self._queued.clear()
        for mutation in batch:
            mutation.stage = Stage.GATHERED
        self._batch = batch
        return batch

    def applied(self, mutation: Mutation) -> None:
        """GATHERED -> APPLIED (after :meth:`Mutation.apply`)."""
        mutation.stage = Stage.APPLIED

    def park(self, mutation: Mutation) -> None:
        """GATHERED -> WAITING: a claim that found nothing waits for a later commit;
        GATHERED -> ANSWERED with :class:`~trioq.Overloaded` when ``max_waiting``
        claims wait already (it took no job: nothing is lost by answering it now).

        A refused claim that waited before (its fulfilling write failed) is not
        refused: :meth:`fail_batch` puts those back without coming here.
        """
        if len(self._waiting) >= self.max_waiting:
            mutation._answer(
                error=Overloaded(
                    f"{self.owner} has {len(self._waiting)} long-poll claims waiting, its "
                    f"limit: retry in {OVERLOADED_RETRY_SECONDS} s"
                )
            )
            return
        mutation.stage = Stage.WAITING
        mutation.waited = True
        self._waiting.append(mutation)

    def drop(self, mutation: Mutation) -> None:
        """GATHERED -> ANSWERED: an abandoned claim takes no job (nobody hears it)."""
        mutation._answer([])

    def fulfil(self, claim: Callable[[Mutation], bool]) -> int:
        """WAITING -> APPLIED for each waiting claim ``claim(m)`` gave jobs to (it
        joins the batch); abandoned ones leave. Returns how many were fulfilled."""
        count = 0
        still: list[Mutation] = []
        for mutation in self._waiting:
            if mutation.abandoned:
                continue
            if claim(mutation):
                mutation.stage = Stage.APPLIED
                self._batch.append(mutation)
                count += 1
            else:
                still.append(mutation)
        self._waiting = still
        return count

    def answer_batch(self) -> None:
        """APPLIED -> ANSWERED: the batch is written (or needed no write)."""
        for mutation in self._batch:
            if mutation.stage is Stage.APPLIED:
                mutation._answer(mutation.result, mutation.error)
        self._batch = []

    def fail_batch(
        self, error_for: Callable[[Mutation], BaseException], *, rewait: bool = True
    ) -> None:
        """APPLIED or GATHERED -> ANSWERED with ``error_for(m)``: the batch was not
        written. With ``rewait``, a claim fulfilled from the waiting list waits
        again instead (not when the write was abandoned: its jobs may be stored as
        claimed, so its caller must hear that the outcome is unknown)."""
        for mutation in self._batch:
            if mutation.stage not in (Stage.APPLIED, Stage.GATHERED):
                continue  # parked or dropped while the batch was applied
            if rewait and mutation.waited and not mutation.abandoned:
                mutation.stage = Stage.WAITING
                mutation.result = None
                self._waiting.append(mutation)
            else:
                mutation._answer(error=error_for(mutation))
        self._batch = []

    def next_deadline(self) -> float:
        """The earliest deadline of a waiting claim (``inf`` when none waits)."""
        return min((m.claim.deadline for m in self._waiting if m.claim), default=math.inf)

    def expire_waits(self, now: float) -> None:
        """WAITING -> ANSWERED ``[]`` for the claims whose deadline passed."""
        keep: list[Mutation] = []
        for mutation in self._waiting:
            assert mutation.claim is not None
            if mutation.claim.deadline <= now:
                mutation._answer([])
            elif not mutation.abandoned:
                keep.append(mutation)
        self._waiting = keep

    def end_waits(self) -> None:
        """WAITING -> ANSWERED ``[]`` for every waiting claim (a graceful stop: they
        simply found nothing)."""
        self.expire_waits(math.inf)

    # -------------------------------------------------------- the one cleanup

    def fail_all(self, error: Callable[[], TrioqError]) -> None:
        """Answer every mutation in every stage, and every reader, with ``error()``."""
        everything = [*self._batch, *self._waiting, *self._queued]
        self._batch, self._waiting = [], []
        self._queued.clear()
        for mutation in everything:
            mutation._answer(error=error())
        self.answer_readers(None, error())
