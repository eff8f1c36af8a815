"""How an engine comes to lead: the election at start, the standby's watch, and the
writes that create or take over the queue.

Every decision is :func:`~trioq.core._election.decide`'s; the storage I/O is the
engine's layout's (:mod:`trioq.core._layout`). A starting engine looks at what is
stored once; a standby takes the layout's cheap look every ``standby_poll_interval``
(the document's version, or the next log record) and measures staleness on its own
monotonic clock from the moment what is stored last changed. A takeover is one
conditional write that bumps the epoch and restarts every job lease; a lost race (a
conflict, or an unknown outcome whose bytes are not stored) leaves the engine where
it was, to look again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from .._backoff import backoff_delay
from .._errors import (
    BucketNotFound,
    DocumentInvalid,
    QueueNotFound,
    StorageAuthError,
    StorageUnavailable,
)
from ._election import Sighting, TakeoverRequest, Verdict, decide
from ._status import Role

if TYPE_CHECKING:
    from ._engine import Engine

log = logging.getLogger("trioq.engine")


class Campaign:
    """The election side of one :class:`~trioq.core._engine.Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sighting: Sighting | None = None
        """What this engine last saw of the document (None: look afresh)."""
        self.seen_document = False
        """Whether this engine ever saw a document at its key: a missing one then
        vanished, and is never replaced by an empty one."""
        self.request: TakeoverRequest | None = None
        self._wake = trio.Event()
        self._failing: str | None = None
        """The storage error a standby's polls keep meeting (logged once, when it
        starts; a standby with read-only credentials meets it at every poll)."""

    def request_takeover(self, expected_version: str | None) -> None:
        self.request = TakeoverRequest(expected_version)
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def won(self) -> None:
        """This engine leads the document: a takeover request is moot."""
        self.request = None
        self.seen_document = True

    def forget(self) -> None:
        """After a step-down: the next poll reads the document afresh."""
        self.sighting = None

    # ---------------------------------------------------------------- deciding

    def _decide(self, sighting: Sighting, *, starting: bool, now: float) -> Verdict:
        engine = self.engine
        request, self.request = self.request, None
        verdict = decide(
            engine.candidate,
            sighting,
            starting=starting,
            seen_before=self.seen_document,
            request=request,
            now=now,
            lease_timeout=engine.config.broker_heartbeat_timeout,
        )
        if sighting.present:
            self.seen_document = True
        return verdict

    async def elect(self) -> None:
        """At start: lead (create or take over) or stand by; QueueNotFound when
        there is no queue this engine may create."""
        engine = self.engine
        outage: _StartupOutage | None = None
        while True:
            try:
                sighting = await self._sight(None)
                if outage is not None:
                    log.info(
                        "broker %s reached storage after %.1f s", engine.broker_id, outage.waited
                    )
                    outage = None
                verdict = self._decide(sighting, starting=True, now=trio.current_time())
                if verdict is Verdict.CREATE and not await self._create():
                    continue
                if verdict is Verdict.TAKE_OVER and not await self._take_over(sighting):
                    continue
            except (BucketNotFound, StorageAuthError):
                raise  # configuration errors: waiting does not fix them
            except StorageUnavailable as exc:
                # each round starts from a fresh read, so a round cut short by the
                # store (even an ambiguous takeover write) is simply tried again
                outage = outage or _StartupOutage(engine, trio.current_time())
                await outage.wait_or_raise(exc)
                continue
            if verdict in (Verdict.CREATE, Verdict.TAKE_OVER):
                return
            if verdict is Verdict.REFUSE:
                raise self.missing()
            engine.role = Role.STANDBY
            leader = sighting.leader
            assert leader is not None
            log.info(
                "broker %s stands by; %s leads (epoch %d)",
                engine.broker_id,
                leader.url or leader.broker_id,
                leader.epoch,
            )
            return

    async def stand_by(self) -> None:
        """Watch the document until this engine leads, stops, or meets a document
        it cannot read (then ``engine.halt``)."""
        while not self.engine.stopping:
            with trio.move_on_after(self.engine.config.standby_poll_interval):
                await self._wake.wait()
            self._wake = trio.Event()
            if await self._watch():
                return

    async def _watch(self) -> bool:
        """One standby poll; True when standing by is over (this engine leads or
        stops, or the document cannot be read)."""
        engine = self.engine
        if engine.stopping:
            return True
        try:
            done = await self._poll()
        except DocumentInvalid as exc:
            engine.halt(exc)
            return True
        except StorageUnavailable as exc:
            if self._failing is None:
                log.warning(
                    "standby %s cannot use storage (it keeps standing by and polling): %s",
                    engine.broker_id,
                    exc,
                )
            self._failing = str(exc)
            return False
        if self._failing is not None:
            log.info("standby %s can use storage again", engine.broker_id)
            self._failing = None
        return done

    async def _poll(self) -> bool:
        """Look at what is stored (the layout's cheap look; the whole when it changed)
        and act on the verdict; True once this engine leads."""
        engine = self.engine
        before = self.sighting
        sighting = await self._sight(before)
        if before is not None and before.present and not sighting.present:
            log.error("%s", self.missing())
        verdict = self._decide(sighting, starting=False, now=trio.current_time())
        if verdict is Verdict.TAKE_OVER:
            return await self._take_over(sighting)
        if verdict in (Verdict.CREATE, Verdict.REFUSE):
            await self.elect()
            return engine.role is Role.LEADER
        return False

    async def _sight(self, before: Sighting | None) -> Sighting:
        """Look at what is stored (afresh without ``before``) and note what was seen."""
        layout = self.engine.layout
        sighting = await (layout.sight() if before is None else layout.poll(before))
        if sighting is not before and sighting.present:
            self.engine.leader = sighting.leader
        self.sighting = sighting
        return sighting

    def missing(self) -> QueueNotFound:
        engine = self.engine
        where = f"{engine.key} in {engine.storage.describe()}"
        if self.seen_document:
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

    # --------------------------------------------------------------- writing

    async def _create(self) -> bool:
        """Create the queue as its first leader; False if another broker created it
        first, or the outcome is unknown (the caller looks again)."""
        engine = self.engine
        took = await engine.layout.create()
        if took is None:
            return False
        engine.become_leader(took.state, took.version, took.data)
        log.info("broker %s created %s and leads (epoch 1)", engine.broker_id, engine.key)
        return True

    async def _take_over(self, sighting: Sighting) -> bool:
        """Take over from what ``sighting`` saw (stored at its version); True if we
        lead now."""
        engine = self.engine
        took = await engine.layout.take_over(sighting)
        if took is None:
            return False
        engine.metrics["takeovers"] += 1
        engine.become_leader(took.state, took.version, took.data)
        assert took.state.leader is not None
        epoch = took.state.leader.epoch
        log.warning(
            "broker %s took over %s (epoch %d -> %d)",
            engine.broker_id,
            engine.key,
            epoch - 1,
            epoch,
        )
        return True


class _StartupOutage:
    """An unreachable store met by the election at startup: waited out with backoff
    for ``startup_storage_wait`` seconds (logged once), then the error is raised."""

    def __init__(self, engine: Engine, since: float) -> None:
        self.engine = engine
        self.since = since
        self.attempts = 0

    @property
    def waited(self) -> float:
        return trio.current_time() - self.since

    async def wait_or_raise(self, error: StorageUnavailable) -> None:
        engine, limit = self.engine, self.engine.config.startup_storage_wait
        left = limit - self.waited
        if left <= 0 or engine.stopping:
            raise error
        if self.attempts == 0:
            log.warning(
                "broker %s cannot reach storage at startup, retrying for up to %.0f s: %s",
                engine.broker_id,
                limit,
                error,
            )
        self.attempts += 1
        # jitter from the module's generator: a seeded engine's ids stay as they were
        delay = backoff_delay(self.attempts, base=0.2, cap=2.0)
        await trio.sleep(min(delay, left))
