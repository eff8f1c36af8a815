"""The log layout (format 2, ``docs/log-layout.md``): a marker at the queue key and one
numbered log record a commit.

A commit creates ``<name>/log/<seq>.json`` (20 digits) with create-if-absent: exactly
one broker can create each number, so the create is both the commit and the fence, as
the compare-and-set of the single document is in format 1. A record holds the batch's
changes only (:mod:`trioq.core._changes`), so a commit costs the batch, not the queue.

A standby keeps the whole state in memory and follows the log: each poll reads the
next number (a GET of a missing object costs what a HEAD does) and applies what
appeared. Taking over then needs no read of the state: the standby creates the next
number with the epoch bumped and every running job's lease restarted.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson
import trio

from .._backoff import backoff_delay
from .._errors import CASConflict, DocumentInvalid, StorageUnavailable, WriteOutcomeUnknown
from ..storage._protocol import Versioned
from ._changes import apply_record, encode_record, read_record_header
from ._codec import FORMAT, LOG_FORMAT_VERSION, LeaderInfo, describe_object, header_problem
from ._election import Sighting
from ._layout import ReadBack, Took
from ._state import QueueState

if TYPE_CHECKING:
    from ._engine import Engine

log = logging.getLogger("trioq.engine")
T = TypeVar("T")

SEQ_DIGITS: Final = 20
"""Digits of a record's number in its key: key order is then number order."""


def encode_marker(checkpoint: int) -> bytes:
    """The object at the queue key in the log layout (never deleted): a format-1
    broker reads an unknown ``formatVersion`` and refuses to lead."""
    return orjson.dumps(
        {
            "format": FORMAT,
            "formatVersion": LOG_FORMAT_VERSION,
            "layout": "log",
            "checkpoint": checkpoint,
        }
    )


def check_marker(data: bytes, *, name: str) -> int:
    """The checkpoint hint of the marker ``data``; :class:`~trioq.DocumentInvalid`
    (naming ``name``) when it is not a log layout marker."""
    try:
        raw: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raw = exc
    if (
        isinstance(raw, dict)
        and raw.get("format") == FORMAT
        and raw.get("formatVersion") == LOG_FORMAT_VERSION
        and raw.get("layout") == "log"
    ):
        hint = raw.get("checkpoint")
        if not isinstance(hint, int) or isinstance(hint, bool) or hint < 0:
            raise DocumentInvalid(f"{name} is damaged: 'checkpoint' is not a non-negative integer")
        return hint
    problem = header_problem(raw, data)
    if problem is None:  # a format-1 document this trioq reads
        raise DocumentInvalid(
            f"{name} holds a queue in the single-document layout (format version 1): "
            "start this broker with --layout document (the object is never overwritten)"
        )
    raise DocumentInvalid(f"{name} {problem.text}")


class LogLayout:
    """Format 2: the marker at the queue key, one log record a commit."""

    name = "log"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        stem = engine.key.removesuffix(".json")
        self.log_prefix = f"{stem}/log/"
        self.checkpoint_prefix = f"{stem}/checkpoint/"
        self.following: QueueState | None = None
        """A standby's copy of the state, at the last record it applied (``None``:
        load it afresh at the next look)."""
        self.last_record = b""
        self.retry_rng = random.Random(engine.broker_id)
        """The jitter of retried reads: a stream of its own (not drawn from the
        engine's, whose ids a seeded engine makes reproducible)."""

    def log_key(self, seq: int) -> str:
        return f"{self.log_prefix}{seq:0{SEQ_DIGITS}d}.json"

    def _seq_of(self, key: str) -> int:
        digits = key[len(self.log_prefix) :].removesuffix(".json")
        if len(digits) != SEQ_DIGITS or not digits.isdigit() or not key.endswith(".json"):
            raise DocumentInvalid(
                f"{describe_object(self.engine.storage, key)} is not a log record of this "
                f"queue (its records are {self.log_prefix}<{SEQ_DIGITS} digits>.json)"
            )
        return int(digits)

    # ---------------------------------------------------------------- reading

    async def sight(self) -> Sighting:
        engine = self.engine
        got = await self._read(engine.key)
        if got is None:
            self.following = None
            return Sighting(present=False, since=trio.current_time())
        check_marker(got.data, name=describe_object(engine.storage, engine.key))
        if self.following is None:
            self.following = QueueState(limits=engine.limits, rng=engine.rng)
        # a load cut short by the store leaves the records applied so far: the next
        # look goes on from there
        await self._replay(self.following)
        return self._sighting(self.following)

    async def poll(self, before: Sighting) -> Sighting:
        state = self.following
        if state is None or not before.present:
            return await self.sight()
        applied = await self._catch_up(state)
        if not applied and before.version == str(state.seq):
            return before
        # new records, or ones a takeover attempt caught up on: a fresh sighting (one
        # kept at the old number would make every later takeover give up at once)
        return self._sighting(state)

    def _sighting(self, state: QueueState) -> Sighting:
        return Sighting(
            present=True, version=str(state.seq), leader=state.leader, since=trio.current_time()
        )

    async def _load(self) -> QueueState:
        """The state as stored, loaded afresh."""
        engine = self.engine
        got = await self._read(engine.key)
        if got is None:
            raise StorageUnavailable(f"{engine.key} vanished from {engine.storage.describe()}")
        check_marker(got.data, name=describe_object(engine.storage, engine.key))
        state = QueueState(limits=engine.limits, rng=engine.rng)
        await self._replay(state)
        return state

    async def _replay(self, state: QueueState) -> None:
        """Apply every stored record after ``state``'s: list them, read them in order,
        then read the next number until one is missing (records created meanwhile)."""
        engine = self.engine
        keys = await self._retrying(
            lambda: engine.storage.list_keys(self.log_prefix, start_after=self.log_key(state.seq))
        )
        for key in keys:
            seq = self._seq_of(key)
            if seq != state.seq + 1:
                raise DocumentInvalid(
                    f"the log of {describe_object(engine.storage, engine.key)} has a gap: "
                    f"record {state.seq + 1} is missing before {key}"
                )
            got = await self._read(key)
            if got is None:
                raise DocumentInvalid(
                    f"{describe_object(engine.storage, key)} vanished while it was replayed"
                )
            self._apply(state, got.data, seq)
        await self._catch_up(state)

    async def _catch_up(self, state: QueueState) -> bool:
        """Apply the records that follow ``state``; whether there were any."""
        applied = False
        while (got := await self._read(self.log_key(state.seq + 1))) is not None:
            self._apply(state, got.data, state.seq + 1)
            applied = True
        return applied

    def _apply(self, state: QueueState, data: bytes, seq: int) -> None:
        key = self.log_key(seq)
        apply_record(state, data, name=describe_object(self.engine.storage, key), seq=seq)
        self.last_record = data

    async def _read(self, key: str) -> Versioned | None:
        return await self._retrying(lambda: self.engine.storage.read(key))

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, tried again (``write_retries`` attempts in all, with backoff)
        while the store is unreachable: a load reads many objects, and one failed read
        must not cost the whole load."""
        config = self.engine.config
        for attempt in range(1, config.write_retries + 1):
            try:
                return await call()
            except StorageUnavailable:
                if attempt == config.write_retries:
                    raise
            await trio.sleep(
                backoff_delay(
                    attempt,
                    base=config.write_retry_delay,
                    cap=config.broker_heartbeat_interval,
                    rng=self.retry_rng,
                )
            )
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- election

    async def create(self) -> Took | None:
        engine = self.engine
        marker = encode_marker(0)
        try:
            await engine.storage.create(engine.key, marker)
        except CASConflict:
            return None
        except WriteOutcomeUnknown:
            got = await engine.storage.read(engine.key)
            if got is None or got.data != marker:
                return None
        state = QueueState(limits=engine.limits, rng=engine.rng)
        return await self._claim_next(state, epoch=1)

    async def take_over(self, sighting: Sighting) -> Took | None:
        engine = self.engine
        state = self.following
        if state is None or str(state.seq) != sighting.version:
            return None
        # nothing may follow our last record: a record removed by garbage collection
        # under a standby that fell behind could otherwise be created again
        later = await engine.storage.list_keys(
            self.log_prefix, start_after=self.log_key(state.seq), limit=1
        )
        if await engine.storage.version(engine.key) is None:
            self.following = None  # the queue vanished: look afresh
            return None
        if later:
            # behind: catch up and look again; a gap (the next record is gone, later
            # ones exist) means loading afresh
            if not await self._catch_up(state):
                self.following = None
            return None
        old_epoch = 0 if state.leader is None else state.leader.epoch
        return await self._claim_next(state, epoch=old_epoch + 1)

    async def _claim_next(self, state: QueueState, *, epoch: int) -> Took | None:
        """Create the record after ``state``'s as the leader of ``epoch``, restarting
        every running job's lease; the state then is the leader's."""
        engine = self.engine
        # whatever the outcome, this copy is no longer the stored state's (the leases
        # are renewed in it): a lost race loads afresh
        self.following = None
        now = engine.wall_clock()
        state.track_changes()
        state.leader = LeaderInfo(engine.broker_id, engine.url, epoch, now)
        state.renew_all_leases(now)
        state.seq += 1
        data = self.encode(state)
        key = self.log_key(state.seq)
        try:
            await engine.storage.create(key, data)
        except CASConflict:
            return None
        except WriteOutcomeUnknown:
            got = await engine.storage.read(key)
            if got is None or got.data != data:
                return None
        self.last_record = data
        return Took(state, str(state.seq), data)

    # ----------------------------------------------------------------- commits

    def encode(self, state: QueueState) -> bytes:
        leader = state.leader
        assert leader is not None
        return encode_record(
            state,
            state.take_changes(),
            seq=state.seq,
            epoch=leader.epoch,
            broker_id=leader.broker_id,
            url=leader.url,
            lease_at=leader.lease_at,
            released=leader.released,
        )

    async def write(self, data: bytes, seq: int, version: str) -> str:
        assert seq == int(version) + 1, (seq, version)
        await self.engine.storage.create(self.log_key(seq), data)
        self.last_record = data
        return str(seq)

    async def read_back(self, seq: int, version: str) -> ReadBack:
        got = await self.engine.storage.read(self.log_key(seq))
        if got is None:
            return ReadBack(None, None, unchanged=True)
        return ReadBack(got.data, str(seq), unchanged=False)

    def leader_of(self, data: bytes) -> LeaderInfo | None:
        return read_record_header(data, name="a log record").leader

    async def adopt(self, got: ReadBack) -> Took | None:
        return None  # the state holds another batch than the stored record: reload

    async def reload(
        self, keep: Callable[[LeaderInfo | None], bool]
    ) -> tuple[LeaderInfo | None, Took | None]:
        state = await self._load()
        if not keep(state.leader):
            return state.leader, None
        state.track_changes()
        return state.leader, Took(state, str(state.seq), self.last_record)

    def document(self, state: QueueState) -> bytes:
        return state.encode()
