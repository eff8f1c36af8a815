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

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson
import trio

from .._backoff import backoff_delay
from .._errors import CASConflict, DocumentInvalid, StorageUnavailable, WriteOutcomeUnknown
from ..storage._protocol import Storage, Versioned
from ._changes import apply_record, encode_record, read_record_header
from ._codec import (
    FORMAT,
    LOG_FORMAT_VERSION,
    LeaderInfo,
    decode_header,
    describe_object,
    load,
)
from ._election import Sighting
from ._layout import ReadBack, Took, take_over_document
from ._log_upkeep import Upkeep
from ._state import QueueState

if TYPE_CHECKING:
    from ._engine import Engine

log = logging.getLogger("trioq.engine")
T = TypeVar("T")

SEQ_DIGITS: Final = 20
"""Digits of a record's number in its key: key order is then number order."""
_LOAD_ATTEMPTS: Final = 3
_MARKER_MAX: Final = 1024
"""Bytes beyond which an object at the queue key is not a marker."""


MARKER: Final = orjson.dumps(
    {"format": FORMAT, "formatVersion": LOG_FORMAT_VERSION, "layout": "log"}
)
"""The object at the queue key in the log layout, written once and never changed or
deleted: a format-1 broker reads an unknown ``formatVersion`` and refuses to lead,
so it never creates a fresh queue in this one's place."""


class _Gap(Exception):
    """A record a replay needs is gone: removed by garbage collection under a reader
    that fell behind (load afresh from the newest checkpoint), or lost."""


def is_marker(data: bytes, *, name: str) -> bool:
    """Whether ``data`` (the object at the queue key) is the log layout's marker
    (True) or a format-1 document (False, its header checked: a migration source);
    :class:`~trioq.DocumentInvalid` (naming ``name``) for anything else."""
    if len(data) <= _MARKER_MAX:
        try:
            raw: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            raw = None
        if (
            isinstance(raw, dict)
            and raw.get("format") == FORMAT
            and raw.get("formatVersion") == LOG_FORMAT_VERSION
            and raw.get("layout") == "log"
        ):
            return True
    decode_header(data, name=name)  # DocumentInvalid, in format 1's words, unless format 1
    return False


def check_marker(data: bytes, *, name: str) -> None:
    """:class:`~trioq.DocumentInvalid` (naming ``name``) unless ``data`` is the log
    layout's marker."""
    if not is_marker(data, name=name):
        raise DocumentInvalid(
            f"{name} holds a queue in the single-document layout (format version 1), "
            "not yet converted: a broker started with --layout log converts it when it "
            "takes over (the object is never overwritten otherwise)"
        )


def prefixes(key: str) -> tuple[str, str]:
    """The prefixes of the log records and of the checkpoints of the queue at ``key``."""
    stem = key.removesuffix(".json")
    return f"{stem}/log/", f"{stem}/checkpoint/"


async def newest_leader(storage: Storage, key: str) -> LeaderInfo | None:
    """The leader the newest record of the log-layout queue at ``key`` names, reading
    little (for a client that finds the broker through the store): the records after
    the newest checkpoint are listed and the last one's header read; with no record
    after it, the checkpoint's header. :class:`~trioq.DocumentInvalid` for an object
    that is neither."""
    log_prefix, checkpoint_prefix = prefixes(key)
    checkpoints = await storage.list_keys(checkpoint_prefix)
    after = log_prefix + checkpoints[-1][len(checkpoint_prefix) :] if checkpoints else None
    records = await storage.list_keys(log_prefix, start_after=after)
    # the newest record is never collected; the checkpoint may be, under a long
    # listing: then the records after the next one hold the answer
    for record in reversed(records):
        got = await storage.read(record)
        if got is not None:
            return read_record_header(got.data, name=describe_object(storage, record)).leader
    for checkpoint in reversed(checkpoints):
        got = await storage.read(checkpoint)
        if got is not None:
            return decode_header(got.data, name=describe_object(storage, checkpoint))[1]
    return None


class LogLayout:
    """Format 2: the marker at the queue key, one log record a commit."""

    name = "log"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.log_prefix, self.checkpoint_prefix = prefixes(engine.key)
        self.following: QueueState | None = None
        """A standby's copy of the state, at the last record it applied (``None``:
        load it afresh at the next look)."""
        self.last_record = b""
        self.legacy = False
        """What is stored is a format-1 document (converted when this engine takes
        over; until then a standby follows it as the document layout does)."""
        self.base = 0
        """The seq of the checkpoint the state was last loaded from (0: none): the
        records after it are what a new leader's first checkpoint saves a reader."""
        self.upkeep = Upkeep(self)
        self.retry_rng = random.Random(engine.broker_id)
        """The jitter of retried reads: a stream of its own (not drawn from the
        engine's, whose ids a seeded engine makes reproducible)."""

    def log_key(self, seq: int) -> str:
        return f"{self.log_prefix}{seq:0{SEQ_DIGITS}d}.json"

    def checkpoint_key(self, seq: int) -> str:
        return f"{self.checkpoint_prefix}{seq:0{SEQ_DIGITS}d}.json"

    def seq_of(self, key: str, prefix: str | None = None) -> int:
        """The number in a log record's key (or a checkpoint's, with its prefix)."""
        prefix = self.log_prefix if prefix is None else prefix
        digits = key[len(prefix) :].removesuffix(".json")
        if len(digits) != SEQ_DIGITS or not digits.isdigit() or not key.endswith(".json"):
            raise DocumentInvalid(
                f"{describe_object(self.engine.storage, key)} is not an object of this "
                f"queue's layout (its keys are {prefix}<{SEQ_DIGITS} digits>.json)"
            )
        return int(digits)

    # ---------------------------------------------------------------- reading

    async def sight(self) -> Sighting:
        engine = self.engine
        got = await self._read(engine.key)
        if got is None:
            self.following = None
            return Sighting(present=False, since=trio.current_time())
        name = describe_object(engine.storage, engine.key)
        self.legacy = not is_marker(got.data, name=name)
        if self.legacy:
            # a format-1 document: stand by on it as the document layout does, and
            # convert it when this engine takes over
            self.following = None
            leader = decode_header(got.data, name=name)[1]
            return Sighting(
                present=True, version=got.version, leader=leader, since=trio.current_time()
            )
        if self.following is not None:
            # a load cut short by the store left the records applied so far: go on
            # from there (or, when what it needs next was collected, afresh)
            try:
                await self._replay(self.following)
            except _Gap:
                self.following = None
        if self.following is None:
            self.following = await self._load_state()
        return self._sighting(self.following)

    async def poll(self, before: Sighting) -> Sighting:
        if self.legacy:
            version = await self.engine.storage.version(self.engine.key)
            return before if version == before.version else await self.sight()
        state = self.following
        if state is None or not before.present:
            return await self.sight()
        applied = await self._catch_up(state)
        if not applied and before.version == str(state.seq):
            return before
        # new records, or ones a takeover attempt caught up on: a fresh sighting (one
        # kept at the old number would make every later takeover give up at once)
        return self._sighting(state)

    async def stored_version(self) -> str | None:
        storage, state = self.engine.storage, self.following
        if self.legacy or state is None:
            return await storage.version(self.engine.key)
        # the number of the last record, as far as this standby can tell without
        # applying anything (the poll applies): its own, or a mark that the log moved
        if await storage.version(self.log_key(state.seq + 1)) is None:
            return str(state.seq)
        return f"{state.seq}+"

    def _sighting(self, state: QueueState) -> Sighting:
        return Sighting(
            present=True, version=str(state.seq), leader=state.leader, since=trio.current_time()
        )

    async def load(self) -> QueueState:
        """The stored state, loaded afresh (the newest checkpoint and the records
        after it): for readers that are not a broker (``trioq inspect``)."""
        return await self._load()

    async def _load(self) -> QueueState:
        """The state as stored, loaded afresh."""
        engine = self.engine
        got = await self._read(engine.key)
        if got is None:
            raise StorageUnavailable(f"{engine.key} vanished from {engine.storage.describe()}")
        check_marker(got.data, name=describe_object(engine.storage, engine.key))
        return await self._load_state()

    async def _load_state(self) -> QueueState:
        """The newest checkpoint and the records after it; started over (three times
        at most) when a record it needs was collected meanwhile."""
        for attempt in range(1, _LOAD_ATTEMPTS + 1):
            state = await self._newest_checkpoint()
            try:
                await self._replay(state)
            except _Gap as gap:
                if attempt == _LOAD_ATTEMPTS:
                    raise DocumentInvalid(str(gap)) from None
                log.info("%s; loading from the newest checkpoint again", gap)
                continue
            return state
        raise AssertionError("unreachable")

    async def _newest_checkpoint(self) -> QueueState:
        """The state of the newest checkpoint, or the empty state before record 1."""
        engine = self.engine
        keys = await self._retrying(lambda: engine.storage.list_keys(self.checkpoint_prefix))
        for key in reversed(keys):
            seq = self.seq_of(key, self.checkpoint_prefix)
            got = await self._read(key)
            if got is None:
                continue  # collected since the listing: an older one, or a newer one
            name = describe_object(engine.storage, key)
            state = await load(
                QueueState,
                got.data,
                limits=engine.limits,
                rng=engine.rng,
                name=name,
                freeze=engine.config.freeze_loaded_state,
            )
            if state.seq != seq:
                raise DocumentInvalid(f"{name} is damaged: its seq is {state.seq}, not {seq}")
            self.base = seq
            return state
        self.base = 0
        return QueueState(limits=engine.limits, rng=engine.rng)

    async def _replay(self, state: QueueState) -> None:
        """Apply every stored record after ``state``'s: list them, read them in order,
        then read the next number until one is missing (records created meanwhile)."""
        engine = self.engine
        keys = await self._retrying(
            lambda: engine.storage.list_keys(self.log_prefix, start_after=self.log_key(state.seq))
        )
        for key in keys:
            seq = self.seq_of(key)
            if seq != state.seq + 1:
                raise _Gap(
                    f"the log of {describe_object(engine.storage, engine.key)} has a gap: "
                    f"record {state.seq + 1} is missing before {key}"
                )
            got = await self._read(key)
            if got is None:
                raise _Gap(f"{describe_object(engine.storage, key)} vanished while it was replayed")
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
        marker = MARKER
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
        if self.legacy:
            return await self._convert(sighting)
        engine = self.engine
        state = self.following
        if state is None or str(state.seq) != sighting.version:
            return None
        # nothing may follow our last record: a record removed by garbage collection
        # under a standby that fell behind could otherwise be created again
        later = await engine.storage.list_keys(
            self.log_prefix, start_after=self.log_key(state.seq), limit=1
        )
        marker = await engine.storage.read(engine.key)
        if marker is None:
            self.following = None  # the queue vanished: look afresh
            return None
        # commits never meet the key: a takeover is where an object written over
        # the marker (by hand, or by a broker of another format) is found and refused
        check_marker(marker.data, name=describe_object(engine.storage, engine.key))
        if later:
            # behind: catch up and look again; a gap (the next record is gone, later
            # ones exist) means loading afresh
            if not await self._catch_up(state):
                self.following = None
            return None
        old_epoch = 0 if state.leader is None else state.leader.epoch
        return await self._claim_next(state, epoch=old_epoch + 1)

    async def _convert(self, sighting: Sighting) -> Took | None:
        """Take the format-1 document over (a compare-and-set that bumps the epoch, as
        the document layout does), copy it as the checkpoint of its seq, then replace
        it with the marker (a compare-and-set over our own write). A crash or a failed
        step leaves a format-1 document this engine leads (converted again at the
        next takeover: this broker's own lease is taken over at once at its start)
        or the marker; a lost race leaves the document to its new leader."""
        engine, storage = self.engine, self.engine.storage
        took = await take_over_document(engine, sighting)
        if took is None:
            return None
        state, version, data = took.state, took.version, took.data
        # one that exists holds the same state: our write above made this seq
        with contextlib.suppress(CASConflict):
            await self._retrying(lambda: storage.create(self.checkpoint_key(state.seq), data))
        try:
            await storage.write(engine.key, MARKER, if_match=version)
        except CASConflict:
            return None  # another broker took the document over meanwhile
        except WriteOutcomeUnknown:
            check = await storage.read(engine.key)
            if check is None or check.data != MARKER:
                return None
        self.legacy = False
        self.base = state.seq
        log.warning(
            "broker %s converted %s to the log layout at seq %d (epoch %d)",
            engine.broker_id,
            engine.key,
            state.seq,
            0 if state.leader is None else state.leader.epoch,
        )
        state.track_changes()
        self.last_record = data
        self.upkeep.took_office(state.seq - self.base)
        return Took(state, str(state.seq), data)

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
        self.upkeep.took_office(state.seq - self.base)
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
        engine = self.engine
        if trio.current_time() - self.upkeep.last_write > engine.config.broker_heartbeat_timeout:
            # silent for longer than a lease: another broker may have led since, and
            # collected the records up to and past this number, so that a create of
            # it would succeed. Look past our last record first.
            later = await engine.storage.list_keys(
                self.log_prefix, start_after=self.log_key(seq - 1), limit=1
            )
            if later:
                raise CASConflict(
                    f"the log went past record {seq - 1} while this leader was silent"
                )
        await engine.storage.create(self.log_key(seq), data)
        self.last_record = data
        self.upkeep.committed(len(data))
        return str(seq)

    async def read_back(self, seq: int, version: str) -> ReadBack:
        storage = self.engine.storage
        got = await storage.read(self.log_key(seq))
        if got is None:
            # nothing at our number: our write did not land, unless the log went past
            # it (and collected it): then the record after it says who leads
            later = await storage.list_keys(self.log_prefix, start_after=self.log_key(seq), limit=1)
            if later and (got := await storage.read(later[0])) is not None:
                return ReadBack(got.data, str(self.seq_of(later[0])), unchanged=False)
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
        self.upkeep.took_office(state.seq - self.base)
        return state.leader, Took(state, str(state.seq), self.last_record)

    def document(self, state: QueueState) -> bytes:
        return state.encode()

    async def maintain(self) -> None:
        await self.upkeep.run()
