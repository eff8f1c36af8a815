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

Run it as a nursery task: ``await nursery.start(engine.run)``.
"""

from __future__ import annotations

import enum
import gc
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from .._errors import (
    CASConflict,
    DocumentInvalid,
    NotLeader,
    QueueFull,
    QueueNotFound,
    StorageUnavailable,
    TrioqError,
    WriteOutcomeUnknown,
)
from ..storage._protocol import Storage
from ._config import EngineConfig
from ._state import ClaimedJob, EnqueueResult, LeaderInfo, Limits, NewJob, QueueState

log = logging.getLogger("trioq.engine")

T = TypeVar("T")
WallClock = Callable[[], int]
"""Milliseconds since the Unix epoch; only for times stored in the document."""


def system_wall_clock() -> int:
    return int(time.time() * 1000)


class Role(enum.Enum):
    STARTING = "starting"
    LEADER = "leader"
    STANDBY = "standby"
    STOPPED = "stopped"


@dataclass(eq=False)
class _Pending:
    """One mutation waiting for its commit, and the caller's answer."""

    op: Callable[[QueueState, int], Any] | None
    claim: _ClaimRequest | None = None
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    abandoned: bool = False

    def answer(self, result: Any = None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


@dataclass(slots=True)
class _ClaimRequest:
    worker_id: str
    types: Sequence[str] | None
    max_jobs: int
    deadline: float  # trio time; <= now means "do not wait"


_STOP = _Pending(op=None)


@dataclass(eq=False)
class _Reader:
    """A read waiting for the state to be committed again (see :meth:`Engine.read`)."""

    fn: Callable[[QueueState], Any]
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None

    def answer(self, state: QueueState | None, error: BaseException | None = None) -> None:
        if self.done.is_set():
            return
        if error is None and state is not None:
            try:
                self.result = self.fn(state)
            except Exception as exc:  # the read's own error (JobNotFound, ...)
                error = exc
        self.error = error
        self.done.set()


def _unchanged(state: QueueState, now: int) -> None:
    """A mutation that changes nothing: it makes the commit loop reload the state."""


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """What an engine reports about itself at one moment (for metrics and health):
    a copy, so a reader never reaches into the engine."""

    broker_id: str
    role: Role
    epoch: int
    counters: dict[str, int]
    """Engine events since start: commits, mutations, conflicts, writeErrors,
    failedBatches, takeovers, stepDowns."""
    last_commit_seconds: float
    last_batch_size: int
    queue: dict[str, int] | None
    """Counts of the last committed state (total, unclaimed, inProgress,
    completedTotal, dead) while leading, else None."""
    queue_counters: dict[str, int] | None
    """The document's counters as last committed, while leading."""
    document_bytes: int
    """Size of the last committed document (0 when not leading)."""


class Engine:
    """Leads (or stands by for) one queue document on a :class:`~trioq.Storage`.

    Parameters:
        storage: where ``key`` lives.
        key: the document's key (``queue.json``).
        broker_id: this broker's id in the document (random by default). A broker
            that restarts with the same id takes its old lease over at once.
        url: the URL clients should dial for this broker (written into the document).
        config: timings (:class:`EngineConfig`).
        limits: caps and lease lengths (:class:`~trioq.core._state.Limits`).
        wall_clock: milliseconds since the epoch for stored times (tests inject one
            derived from ``trio.current_time()``).
        rng: randomness for ids and retry jitter.
        exclusive_url: see the attribute.
        create: whether the first election may create the document when none is
            stored. A broker passes ``False`` unless the location is provably new or
            the operator asked for a new queue (``--create``): a deleted object or a
            wrong prefix must not turn into an empty queue. Once this engine has seen
            the document, a missing one is never created again, whatever ``create``.
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
    ) -> None:
        self.storage = storage
        self.key = key
        self.exclusive_url = exclusive_url
        self.create = create
        """Whether ``url`` can belong to no other live broker (we bound it ourselves):
        a document led from it was led by an earlier life of this broker, which a
        restart may take over at once instead of waiting out the lease."""
        self.broker_id = broker_id or uuid.uuid4().hex[:16]
        self.url = url
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
        """The last document this engine committed."""
        self.leader: LeaderInfo | None = None
        """The leader as last seen in the document (ours when leading)."""
        self.metrics: dict[str, int] = dict.fromkeys(
            (
                "commits",
                "mutations",
                "conflicts",
                "writeErrors",
                "failedBatches",
                "takeovers",
                "stepDowns",
            ),
            0,
        )
        self.last_commit_seconds = 0.0
        self.last_batch_size = 0
        self._version: str | None = None
        self._needs_reload = False
        self._fatal: BaseException | None = None
        self._send, self._recv = trio.open_memory_channel[_Pending](math.inf)
        self._waiting: list[_Pending] = []
        self._pending_count = 0
        self._last_start = -math.inf  # last commit that wrote: spacing and lease refresh
        self._last_commit_wall = 0
        self._stop_requested = False
        self._wake_standby = trio.Event()
        self._takeover_request: tuple[str | None] | None = None
        self._inflight: list[_Pending] = []
        self._gathered: list[_Pending] = []
        self._observed_version: str | None = None
        self._became_leader = trio.Event()
        self._seen_document = False
        # the state holds changes not known to be stored (a batch applied and not
        # yet written, or a write that failed and awaits a reload); reads wait
        self._dirty = False
        self._readers: list[_Reader] = []
        self._reload_asked = False
        self.committed_stats: dict[str, int] = {}
        """Counts of the last committed state (``QueueState.stats`` plus ``dead``),
        for metrics and ``/v1/stats``; empty until this engine first leads."""
        self.committed_counters: dict[str, int] = {}
        """The document's counters as last committed."""

    # ------------------------------------------------------------ public reads

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
        )

    @property
    def observed_version(self) -> str | None:
        """The document version a standby saw last (for the fast-failover probe)."""
        return self._observed_version

    def not_leader(self) -> NotLeader:
        leader = None if self.is_leader else self.leader_url
        return NotLeader(
            f"broker {self.broker_id} is {self.role.value}, not the leader",
            leader=leader,
            role=self.role.value,
        )

    async def read(self, fn: Callable[[QueueState], T]) -> T:
        """``fn(state)`` over the last committed state, never over a batch that is
        being written or whose write failed: while one is, the read waits for the
        commit (or the reload that follows a failed one) and runs at that moment.
        ``fn`` must not change the state."""
        if self.role is not Role.LEADER or self.state is None:
            raise self.not_leader()
        if not self._dirty:
            return fn(self.state)
        reader = _Reader(fn)
        self._readers.append(reader)
        self._ask_reload()
        try:
            await reader.done.wait()
        finally:
            if reader in self._readers:
                self._readers.remove(reader)
        if reader.error is not None:
            raise reader.error
        return reader.result  # type: ignore[no-any-return]

    def _ask_reload(self) -> None:
        """After a failed commit no commit comes by itself to bring the state back to
        what is stored: with reads waiting, an empty mutation makes the loop reload."""
        if self._needs_reload and self._readers and not self._reload_asked:
            self._reload_asked = True
            self._pending_count += 1
            self._send.send_nowait(_Pending(op=_unchanged))

    def _committed(self) -> None:
        """The state is what is stored again: serve the reads that waited for it."""
        self._dirty = False
        state = self.state
        if state is not None:
            self.committed_stats = {**state.stats(), "dead": len(state.dead)}
            self.committed_counters = dict(state.counters)
        readers, self._readers = self._readers, []
        for reader in readers:
            reader.answer(state)

    # -------------------------------------------------------------- mutations

    async def enqueue(self, items: Sequence[NewJob]) -> list[EnqueueResult]:
        """Enqueue a batch (validated as a whole); answered once it is durable."""
        items = list(items)
        return await self._submit(lambda state, now: state.enqueue(items, now))  # type: ignore[no-any-return]

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
        deadline = trio.current_time() + wait if wait > 0 else -math.inf
        types = None if types is None else list(types)
        request = _ClaimRequest(worker_id, types, max_jobs, deadline)
        return await self._submit(None, claim=request)  # type: ignore[no-any-return]

    async def heartbeat(self, job_id: str, worker_id: str, *, attempt: int | None = None) -> None:
        await self._submit(lambda s, now: s.heartbeat(job_id, worker_id, now, attempt))

    async def complete(self, job_id: str, worker_id: str, *, attempt: int | None = None) -> None:
        await self._submit(lambda s, now: s.complete(job_id, worker_id, now, attempt))

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
        return await self._submit(  # type: ignore[no-any-return]
            lambda s, now: s.fail(
                job_id,
                worker_id,
                now,
                error=error,
                attempt=attempt,
                retry_in_ms=retry_in_ms,
                final=final,
            )
        )

    async def release(self, job_id: str, worker_id: str, *, attempt: int | None = None) -> None:
        await self._submit(lambda s, now: s.release(job_id, worker_id, now, attempt))

    async def cancel(self, job_id: str) -> str:
        return await self._submit(lambda s, now: s.cancel(job_id, now))  # type: ignore[no-any-return]

    async def requeue_dead(self, job_id: str) -> None:
        await self._submit(lambda s, now: s.requeue_dead(job_id, now))

    async def _submit(
        self, op: Callable[[QueueState, int], Any] | None, *, claim: _ClaimRequest | None = None
    ) -> Any:
        # check and send without a checkpoint in between: a step-down drains the
        # channel after changing the role, so nothing sent here is left unanswered
        if self.role is not Role.LEADER:
            raise self.not_leader()
        if self._pending_count >= self.config.max_pending:
            raise QueueFull(f"broker {self.broker_id} has {self._pending_count} mutations pending")
        pending = _Pending(op=op, claim=claim)
        self._pending_count += 1
        self._send.send_nowait(pending)
        try:
            await pending.done.wait()
        except BaseException:
            pending.abandoned = True
            raise
        if pending.error is not None:
            raise pending.error
        return pending.result

    # ------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: trio.TaskStatus[Role] = trio.TASK_STATUS_IGNORED) -> None:
        """Elect, then lead or stand by until :meth:`stop` or cancellation.

        ``task_status.started(role)`` fires once the engine leads or stands by. A
        graceful stop commits what is pending and releases the lease in a last
        commit, so a standby can take over at once.
        """
        try:
            await self._elect()
            task_status.started(self.role)
            while not self._stop_requested:
                if self.role is Role.LEADER:
                    await self._lead()
                else:
                    await self._stand_by()
                if self._fatal is not None:
                    raise self._fatal
        finally:
            with trio.move_on_after(self.config.shutdown_timeout, shield=True):
                if self.role is Role.LEADER:
                    await self._final_commit()
            self.role = Role.STOPPED
            self._fail_all(lambda: NotLeader("the broker stopped", leader=None))

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop_requested

    def stop(self) -> None:
        """Ask for a graceful stop: commit what is pending, release the lease, return."""
        self._stop_requested = True
        self._wake_standby.set()
        if self.role is Role.LEADER:
            self._send.send_nowait(_STOP)

    def request_takeover(self, expected_version: str | None = None) -> None:
        """Ask a standby to take over now (fast failover), provided the document is
        still at ``expected_version`` (or unconditionally with ``None``)."""
        self._takeover_request = (expected_version,)
        self._wake_standby.set()

    async def wait_leader(self) -> None:
        """Wait until this engine leads."""
        while self.role is not Role.LEADER:
            await self._became_leader.wait()

    # -------------------------------------------------------------- election

    async def _elect(self) -> None:
        while True:
            got = await self.storage.read(self.key)
            if got is None:
                if not self.create or self._seen_document:
                    raise self._missing()
                state = QueueState(limits=self.limits, rng=self.rng)
                state.seq = 1
                now = self.wall_clock()
                state.leader = LeaderInfo(self.broker_id, self.url, 1, now)
                data = state.encode()
                try:
                    version = await self.storage.create(self.key, data)
                except (CASConflict, WriteOutcomeUnknown):
                    # another broker created it first, or we cannot tell whether our
                    # create landed: look again (our own document is taken over)
                    continue
                self._become_leader(state, version, data)
                log.info("broker %s created %s and leads (epoch 1)", self.broker_id, self.key)
                return
            _, leader = self._decode_header(got.data)
            self._seen_document = True
            self.leader = leader
            self._observed_version = got.version
            if (
                leader is None
                or leader.released
                or leader.broker_id == self.broker_id
                or (self.exclusive_url and bool(self.url) and leader.url == self.url)
            ):
                if await self._take_over(got.version):
                    return
                continue
            self.role = Role.STANDBY
            log.info(
                "broker %s stands by; %s leads (epoch %d)",
                self.broker_id,
                leader.url or leader.broker_id,
                leader.epoch,
            )
            return

    def _missing(self) -> QueueNotFound:
        where = f"{self.key} in {self.storage.describe()}"
        if self._seen_document:
            return QueueNotFound(
                f"{where} vanished after this broker had seen it; refusing to create an "
                "empty queue in its place (restore the object, or start a broker with "
                "--create on a location meant to be new)"
            )
        return QueueNotFound(
            f"no queue at {where}; refusing to create one (a deleted object or a wrong "
            "--bucket/--prefix/--data-dir would lose every job silently): start one "
            "broker with --create to make a new queue there"
        )

    async def _decode(self, data: bytes) -> QueueState:
        """Decode in steps of about a millisecond with checkpoints between them.

        With ``config.freeze_loaded_state`` the collector is paused meanwhile and
        what was loaded is moved out of its reach (``gc.freeze``): at 100,000 jobs
        each full collection the loading would trigger stalls the loop for tens of
        milliseconds, and every later full collection would scan the records again.
        """
        freeze = self.config.freeze_loaded_state and gc.isenabled()
        if freeze:
            gc.disable()
        try:
            return await QueueState.decode_async(
                data,
                limits=self.limits,
                rng=self.rng,
                name=f"{self.key} in {self.storage.describe()}",
            )
        finally:
            if freeze:
                gc.freeze()
                gc.enable()

    def _decode_header(self, data: bytes) -> tuple[int, LeaderInfo | None]:
        return QueueState.decode_header(data, name=f"{self.key} in {self.storage.describe()}")

    async def _take_over(self, expected_version: str) -> bool:
        """CAS the document from ``expected_version`` to one we lead; True if we do."""
        got = await self.storage.read(self.key)
        if got is None or got.version != expected_version:
            return False
        state = await self._decode(got.data)
        now = self.wall_clock()
        old_epoch = 0 if state.leader is None else state.leader.epoch
        state.leader = LeaderInfo(self.broker_id, self.url, old_epoch + 1, now)
        state.renew_all_leases(now)
        state.seq += 1
        data = state.encode()
        try:
            version = await self.storage.write(self.key, data, if_match=got.version)
        except CASConflict:
            return False
        except WriteOutcomeUnknown:
            check = await self.storage.read(self.key)
            if check is None or check.data != data:
                return False
            version = check.version
        self.metrics["takeovers"] += 1
        self._become_leader(state, version, data)
        log.warning(
            "broker %s took over %s (epoch %d -> %d)",
            self.broker_id,
            self.key,
            old_epoch,
            old_epoch + 1,
        )
        return True

    def _become_leader(self, state: QueueState, version: str, data: bytes) -> None:
        self.state = state
        self.leader = state.leader
        self._version = version
        self.document = data
        self._needs_reload = False
        self._last_start = trio.current_time()
        self._last_commit_wall = self.wall_clock()
        self._waiting = []
        self._takeover_request = None
        self._seen_document = True
        self.role = Role.LEADER
        self._committed()
        self._became_leader.set()
        self._became_leader = trio.Event()

    async def _stand_by(self) -> None:
        """Watch the document until we take over, the leader releases, or stop."""
        cfg = self.config
        last_version = self._observed_version
        changed_at = trio.current_time()
        # whether the leader released the document at last_version; kept until the
        # version changes, so a takeover that failed on a storage error is retried
        # at the next poll instead of after the lease timeout
        released = False
        while not self._stop_requested:
            with trio.move_on_after(cfg.standby_poll_interval):
                await self._wake_standby.wait()
            self._wake_standby = trio.Event()
            if self.stopping:
                return
            try:
                version = await self.storage.version(self.key)
                now = trio.current_time()
                if version is None:
                    if self._seen_document:
                        if last_version is not None:
                            log.error("%s", self._missing())
                        last_version = None
                        continue
                    await self._elect()
                    if self.role is Role.LEADER:
                        return
                    continue
                if version != last_version:
                    last_version = version
                    changed_at = now
                    released = False
                    got = await self.storage.read(self.key)
                    if got is not None:
                        _, self.leader = self._decode_header(got.data)
                        last_version = got.version
                        released = self.leader is None or self.leader.released
                self._observed_version = last_version
                request, self._takeover_request = self._takeover_request, None
                forced = request is not None and request[0] in (None, last_version)
                stale = now - changed_at >= cfg.broker_heartbeat_timeout
                if (released or forced or stale) and await self._take_over(last_version):
                    return
            except DocumentInvalid as exc:
                self._fatal = exc
                return
            except StorageUnavailable as exc:
                log.warning("standby %s cannot reach storage: %s", self.broker_id, exc)

    # ----------------------------------------------------------- commit loop

    async def _lead(self) -> None:
        cfg = self.config
        while self.role is Role.LEADER:
            # received but not yet committed: if we are cancelled before the commit
            # starts, the last commit (_final_commit) takes these
            batch: list[_Pending] = []
            self._gathered = batch
            with trio.move_on_at(self._next_wakeup()):
                batch.append(await self._recv.receive())
            self._answer_expired_waiters()
            if not batch and not self._timer_due():
                continue
            start_at = self._last_start + cfg.group_commit_interval
            if start_at > trio.current_time():
                await trio.sleep_until(start_at)
            batch += self._drain()
            stop = False
            if _STOP in batch:
                stop = True
                batch = [p for p in batch if p is not _STOP]
            self._pending_count -= len(batch)
            self._gathered = []
            started = trio.current_time()
            if await self._commit(batch, release=stop):
                self._last_start = started
            self._ask_reload()
            if stop and self.role is Role.LEADER:
                log.info("broker %s released its lease on %s", self.broker_id, self.key)
                self.role = Role.STOPPED
                # waiting claims simply found nothing; later arrivals go elsewhere
                for pending in self._waiting:
                    pending.answer([])
                self._waiting = []
                self._fail_all(lambda: NotLeader("the broker stopped", leader=None))
                return

    def _next_wakeup(self) -> float:
        cfg = self.config
        wake = self._last_start + cfg.broker_heartbeat_interval
        if self._waiting:
            wake = min(wake, min(p.claim.deadline for p in self._waiting if p.claim))
            state = self.state
            if state is not None:
                now_t = trio.current_time()
                now_w = self.wall_clock()
                for at in (state.next_delayed_at(), state.next_lease_expiry()):
                    if at is not None:
                        wake = min(wake, now_t + max(0, at - now_w) / 1000)
        return wake

    def _timer_due(self) -> bool:
        now_t = trio.current_time()
        if now_t >= self._last_start + self.config.broker_heartbeat_interval:
            return True
        if self._waiting and self.state is not None:
            now_w = self.wall_clock()
            for at in (self.state.next_delayed_at(), self.state.next_lease_expiry()):
                if at is not None and at <= now_w:
                    return True
        return False

    def _answer_expired_waiters(self) -> None:
        now_t = trio.current_time()
        keep: list[_Pending] = []
        for pending in self._waiting:
            assert pending.claim is not None
            if pending.abandoned:
                continue
            if pending.claim.deadline <= now_t:
                pending.answer([])
            else:
                keep.append(pending)
        self._waiting = keep

    async def _commit(self, batch: list[_Pending], *, release: bool = False) -> bool:
        """Apply ``batch``, write the document once, answer every caller.

        Returns whether a write was attempted. A batch that changed nothing (only
        claims that found no job) is answered without a write, unless the lease is
        due for a refresh: idle long-polling workers cost no storage writes.
        """
        self._inflight = batch
        if self._needs_reload and not await self._reload(batch):
            return True
        state = self.state
        assert state is not None
        assert state.leader is not None
        started = trio.current_time()
        now = self.wall_clock()
        answered: list[_Pending] = []
        newly_waiting: list[_Pending] = []
        self._dirty = True
        try:
            # leases that ran out go back first, so this batch's claims can take them
            expired = state.expire(now)
            state.pop_due(now)
            for pending in batch:
                try:
                    if pending.claim is not None:
                        if pending.abandoned:
                            # its caller is gone: taking a job for it would strand
                            # the job until its lease ran out
                            continue
                        request = pending.claim
                        jobs = state.claim(
                            request.worker_id, now, types=request.types, max_jobs=request.max_jobs
                        )
                        if not jobs and request.deadline > started:
                            newly_waiting.append(pending)
                            continue
                        pending.result = jobs
                    else:
                        assert pending.op is not None
                        pending.result = pending.op(state, now)
                except TrioqError as exc:
                    pending.error = exc
                answered.append(pending)
            fulfilled = self._fulfil_waiters(state, now, newly_waiting)
        except Exception as exc:
            # a bug, not bad input: the state may be half-changed, so reload it
            log.exception("mutation failed unexpectedly; reloading %s", self.key)
            self._needs_reload = True
            for pending in batch:
                pending.answer(error=StorageUnavailable(f"internal error: {exc!r}"))
            return True
        changed = (
            release
            or bool(expired)
            or bool(fulfilled)
            or any(p.claim is None or p.result for p in answered)
        )
        lease_due = started >= self._last_start + self.config.broker_heartbeat_interval
        if not changed and not lease_due:
            self._committed()
            for pending in answered:
                pending.answer(pending.result, pending.error)
            self._inflight = []
            return False
        self._inflight = answered + fulfilled
        state.seq += 1
        state.leader.lease_at = now
        state.leader.released = release
        try:
            data = state.encode()
        except Exception as exc:  # a value the validators let through: reload, go on
            log.exception("cannot encode %s; reloading it", self.key)
            self._needs_reload = True
            for pending in answered + fulfilled:
                pending.answer(error=StorageUnavailable(f"internal error: {exc!r}"))
            self._inflight = []
            return True
        self.last_batch_size = len(batch)
        outcome = await self._write(data, state.seq)
        self.last_commit_seconds = trio.current_time() - started
        if outcome is None:
            self.document = data
            self._committed()
            self._last_commit_wall = now
            self.metrics["commits"] += 1
            self.metrics["mutations"] += len(batch)
            for pending in answered + fulfilled:
                pending.answer(pending.result, pending.error)
            return True
        # not written: nothing in this batch happened
        self.metrics["failedBatches"] += 1
        self._waiting.extend(p for p in fulfilled if not p.abandoned)
        for pending in answered:
            if pending.error is not None and not isinstance(pending.error, NotLeader):
                pending.answer(error=pending.error)  # rejected input changed nothing anyway
            elif pending.claim is not None and not isinstance(error := outcome(), NotLeader):
                # a claim must not be retried blindly: its jobs may be stored as claimed
                pending.answer(error=WriteOutcomeUnknown(f"claim outcome unknown: {error.message}"))
            else:
                pending.answer(error=outcome())
        if self.role is not Role.LEADER:
            self._fail_all(self.not_leader)
        return True

    def _fulfil_waiters(
        self, state: QueueState, now: int, newly_waiting: list[_Pending]
    ) -> list[_Pending]:
        fulfilled: list[_Pending] = []
        still: list[_Pending] = []
        for pending in self._waiting + newly_waiting:
            if pending.abandoned:
                continue
            request = pending.claim
            assert request is not None
            jobs = (
                state.claim(request.worker_id, now, types=request.types, max_jobs=request.max_jobs)
                if state.unclaimed_count
                else []
            )
            if jobs:
                pending.result = jobs
                fulfilled.append(pending)
            else:
                still.append(pending)
        self._waiting = still
        return fulfilled

    async def _write(self, data: bytes, seq: int) -> Callable[[], TrioqError] | None:
        """Write ``data`` over our version. None if it landed; else a factory of
        the error to answer the batch with (and the engine's state is settled:
        reloaded, marked for reload, or stepped down)."""
        cfg = self.config
        assert self._version is not None
        last_error: StorageUnavailable | None = None
        for attempt in range(cfg.write_retries):
            try:
                self._version = await self.storage.write(self.key, data, if_match=self._version)
                return None
            except CASConflict:
                self.metrics["conflicts"] += 1
                return await self._resolve(data, seq, ambiguous=False)
            except WriteOutcomeUnknown as exc:
                self.metrics["writeErrors"] += 1
                last_error = exc
                verdict = await self._resolve(data, seq, ambiguous=True)
                if verdict is not _RETRY:
                    return verdict
            except StorageUnavailable as exc:
                self.metrics["writeErrors"] += 1
                last_error = exc
            except BaseException:
                # cancelled mid-write: we cannot know what is stored
                self._needs_reload = True
                raise
            if attempt + 1 < cfg.write_retries:
                await trio.sleep(cfg.write_retry_delay * 2**attempt)
        self._needs_reload = True
        error = last_error
        log.warning("commit %d failed: %s", seq, error)
        return lambda: StorageUnavailable(f"the commit could not be written: {error}")

    async def _resolve(
        self, data: bytes, seq: int, *, ambiguous: bool
    ) -> Callable[[], TrioqError] | None:
        """After a conflict or an unknown outcome: read what is stored and decide.

        Returns None (our write landed), ``_RETRY`` (an unknown-outcome write that
        did not land; safe to write again), or an error factory.
        """
        try:
            got = await self.storage.read(self.key)
        except StorageUnavailable as exc:
            self._needs_reload = True
            reason = f"commit outcome unknown: {exc}"
            return lambda: StorageUnavailable(reason)
        if got is None:
            self._needs_reload = True
            log.error("%s vanished from %s", self.key, self.storage.describe())
            return lambda: StorageUnavailable(f"{self.key} vanished")
        if got.data == data:
            self._version = got.version
            return None
        try:
            stored = await self._decode(got.data)
        except DocumentInvalid as exc:
            self._fatal = exc
            self._step_down(None)
            return self.not_leader
        mine = self.state.leader if self.state is not None else None
        theirs = stored.leader
        if (
            mine is None
            or theirs is None
            or theirs.epoch != mine.epoch
            or theirs.broker_id != mine.broker_id
        ):
            self._step_down(theirs)
            return self.not_leader
        if ambiguous and got.version == self._version:
            return _RETRY
        # our own earlier write landed after all: adopt what is stored
        log.warning("adopting stored %s at seq %d (ours was %d)", self.key, stored.seq, seq)
        self.state = stored
        self._version = got.version
        self.document = got.data
        self._needs_reload = False
        self._committed()
        return lambda: StorageUnavailable("commit raced with an earlier write; retry")

    async def _reload(self, batch: list[_Pending]) -> bool:
        """Re-read the document before a commit; False if the batch was answered."""
        self._reload_asked = False
        try:
            got = await self.storage.read(self.key)
            if got is None:
                raise StorageUnavailable(f"{self.key} vanished from {self.storage.describe()}")
            stored = await self._decode(got.data)
        except StorageUnavailable as exc:
            error = StorageUnavailable(f"cannot reload the queue: {exc}")
            for pending in batch:
                pending.answer(error=error)
            readers, self._readers = self._readers, []
            for reader in readers:
                reader.answer(None, error)
            return False
        except DocumentInvalid as exc:
            self._fatal = exc
            self._step_down(None)
            for pending in batch:
                pending.answer(error=self.not_leader())
            return False
        theirs = stored.leader
        if theirs is None or theirs.broker_id != self.broker_id or theirs.epoch != self.epoch:
            self._step_down(theirs)
            for pending in batch:
                pending.answer(error=self.not_leader())
            return False
        self.state = stored
        self._version = got.version
        self.document = got.data
        self._needs_reload = False
        self._committed()
        return True

    def _step_down(self, leader: LeaderInfo | None) -> None:
        if self.role is not Role.LEADER:
            return
        self.metrics["stepDowns"] += 1
        log.warning(
            "broker %s lost leadership of %s to %s",
            self.broker_id,
            self.key,
            None if leader is None else (leader.url or leader.broker_id),
        )
        self.leader = leader
        self.role = Role.STANDBY
        self._observed_version = None
        self._fail_all(self.not_leader)

    def _fail_all(self, error: Callable[[], TrioqError]) -> None:
        """Answer every waiting claim and every queued mutation with ``error()``."""
        for pending in self._inflight:
            pending.answer(error=error())
        self._inflight = []
        for pending in self._gathered:
            if pending is not _STOP:
                self._pending_count -= 1
                pending.answer(error=error())
        self._gathered = []
        for pending in self._waiting:
            pending.answer(error=error())
        self._waiting = []
        readers, self._readers = self._readers, []
        for reader in readers:
            reader.answer(None, error())
        for pending in self._drain():
            if pending is not _STOP:
                self._pending_count -= 1
                pending.answer(error=error())

    def _drain(self) -> list[_Pending]:
        """Every mutation waiting in the channel now (no checkpoint: atomic)."""
        items: list[_Pending] = []
        while True:
            try:
                items.append(self._recv.receive_nowait())
            except trio.WouldBlock:
                return items

    async def _final_commit(self) -> None:
        """At stop (or cancellation): commit what is pending and release the lease."""
        # a commit cancelled before it finished: what it wrote is unknown (the next
        # commit reloads), and its callers must hear so
        for pending in self._inflight:
            pending.answer(
                error=StorageUnavailable(
                    "the broker stopped during a commit; its outcome is unknown"
                )
            )
        self._inflight = []
        batch = [p for p in self._gathered if p is not _STOP]
        self._gathered = []
        self._pending_count -= len(batch)
        drained = [p for p in self._drain() if p is not _STOP]
        self._pending_count -= len(drained)
        batch += drained
        for pending in self._waiting:
            pending.answer([])
        self._waiting = []
        self.role = Role.STOPPED
        await self._commit(batch, release=True)
        log.info("broker %s released its lease on %s", self.broker_id, self.key)


def _retry_marker() -> TrioqError:
    raise AssertionError("_RETRY is a marker, never answered")


_RETRY: Callable[[], TrioqError] = _retry_marker
