"""Where the queue's state is stored: the storage side of the election and the commit.

:class:`~trioq.core._campaign.Campaign` and :class:`~trioq.core._commit.Committer`
decide (with :mod:`trioq.core._election`); a :class:`Layout` does the storage I/O their
decisions name. Two layouts exist:

- :class:`DocumentLayout` (format 1, ``docs/queue-format.md``): the whole state in one
  document at the queue key, every commit a compare-and-set that rewrites it;
- :class:`~trioq.core._log_layout.LogLayout` (format 2, ``docs/log-layout.md``): a
  marker at the queue key and one numbered log record a commit, created if absent.

Versions are the layout's own: the document's stored version, or the number of the
last log record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from .._errors import CASConflict, StorageUnavailable, WriteOutcomeUnknown
from ._codec import LeaderInfo
from ._election import Sighting
from ._state import QueueState

if TYPE_CHECKING:
    from ._engine import Engine


@dataclass(frozen=True, slots=True)
class Took:
    """A state this engine now leads: stored at ``version``, its last write ``data``."""

    state: QueueState
    version: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ReadBack:
    """What is stored where a commit was written, read after its write failed."""

    data: bytes | None
    """The stored bytes; ``None`` when nothing is stored there."""
    version: str | None
    unchanged: bool
    """Whether the store is as it was before the write (then it did not land)."""


class Layout(Protocol):
    """The storage I/O of one engine's election and commits."""

    name: str

    async def sight(self) -> Sighting:
        """Look at what is stored afresh (at start, and after a step-down)."""
        ...

    async def poll(self, before: Sighting) -> Sighting:
        """A standby's cheap look: ``before`` itself when nothing changed."""
        ...

    async def stored_version(self) -> str | None:
        """What is stored now, in the versions of :meth:`poll`'s sightings, read
        without changing anything (the fast-failover probe compares two of them);
        ``None`` when nothing is stored."""
        ...

    async def create(self) -> Took | None:
        """Create the queue as its first leader; ``None`` when another broker did
        first or the outcome is unknown (the caller looks again)."""
        ...

    async def take_over(self, sighting: Sighting) -> Took | None:
        """Take over from what ``sighting`` saw, bumping the epoch and restarting
        every job lease; ``None`` when the race was lost or what is stored moved on."""
        ...

    def encode(self, state: QueueState) -> bytes:
        """The bytes of the commit that stores ``state`` (its ``seq`` and leader set)."""
        ...

    async def write(self, data: bytes, seq: int, version: str) -> str:
        """Write commit ``seq`` over ``version``; its new version. Raises what
        :meth:`~trioq.Storage.write` raises."""
        ...

    async def read_back(self, seq: int, version: str) -> ReadBack:
        """What is stored where commit ``seq`` (written over ``version``) went."""
        ...

    def leader_of(self, data: bytes) -> LeaderInfo | None:
        """The leader recorded in ``data`` (a read back), checked."""
        ...

    async def adopt(self, got: ReadBack) -> Took | None:
        """Our own earlier commit is stored instead of the one just written: the state
        it holds, or ``None`` to reload before the next commit."""
        ...

    async def reload(
        self, keep: Callable[[LeaderInfo | None], bool]
    ) -> tuple[LeaderInfo | None, Took | None]:
        """Read the stored state again: its leader, and (when ``keep(leader)``) the
        state itself. Raises :class:`~trioq.StorageUnavailable` when it vanished."""
        ...

    def document(self, state: QueueState) -> bytes:
        """The whole committed ``state`` as a format-1 document (``GET /state``)."""
        ...

    async def maintain(self) -> None:
        """Background upkeep while the engine runs (a task of its nursery; it never
        returns)."""
        ...


async def take_over_document(engine: Engine, sighting: Sighting) -> Took | None:
    """Take the format-1 document at the engine's key over from what ``sighting`` saw:
    a compare-and-set that bumps the epoch and restarts every running job's lease.
    ``None`` when what is stored moved on or another broker won the race."""
    got = await engine.storage.read(engine.key)
    if got is None or got.version != sighting.version:
        return None
    state = await engine.decode(got.data)
    now = engine.wall_clock()
    old_epoch = 0 if state.leader is None else state.leader.epoch
    state.leader = LeaderInfo(engine.broker_id, engine.url, old_epoch + 1, now)
    state.renew_all_leases(now)
    state.seq += 1
    data = state.encode()
    try:
        version = await engine.storage.write(engine.key, data, if_match=got.version)
    except CASConflict:
        return None
    except WriteOutcomeUnknown:
        check = await engine.storage.read(engine.key)
        if check is None or check.data != data:
            return None
        version = check.version
    return Took(state, version, data)


class DocumentLayout:
    """Format 1: one document, rewritten by every commit with a compare-and-set.

    A standby keeps only the header of what it saw: it polls the document's version
    (a HEAD) and reads the document when the version changed, and it decodes the
    whole document only to take over."""

    name = "document"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def sight(self, since: float | None = None) -> Sighting:
        """(``since``: when the change was first seen, if before this read.)"""
        engine = self.engine
        got = await engine.storage.read(engine.key)
        now = trio.current_time() if since is None else since
        if got is None:
            return Sighting(present=False, since=now)
        leader = engine.decode_header(got.data)
        return Sighting(present=True, version=got.version, leader=leader, since=now)

    async def poll(self, before: Sighting) -> Sighting:
        engine = self.engine
        version = await engine.storage.version(engine.key)
        if version == before.version:
            return before
        # staleness counts from the look that saw the new version
        now = trio.current_time()
        if version is None:
            return Sighting(present=False, since=now)
        return await self.sight(since=now)

    async def stored_version(self) -> str | None:
        return await self.engine.storage.version(self.engine.key)

    async def create(self) -> Took | None:
        engine = self.engine
        state = QueueState(limits=engine.limits, rng=engine.rng)
        state.seq = 1
        state.leader = LeaderInfo(engine.broker_id, engine.url, 1, engine.wall_clock())
        data = state.encode()
        try:
            version = await engine.storage.create(engine.key, data)
        except (CASConflict, WriteOutcomeUnknown):
            # another broker created it first, or we cannot tell whether our create
            # landed: look again (our own document is then taken over)
            return None
        return Took(state, version, data)

    async def take_over(self, sighting: Sighting) -> Took | None:
        return await take_over_document(self.engine, sighting)

    def encode(self, state: QueueState) -> bytes:
        return state.encode()

    async def write(self, data: bytes, seq: int, version: str) -> str:
        engine = self.engine
        return await engine.storage.write(engine.key, data, if_match=version)

    async def read_back(self, seq: int, version: str) -> ReadBack:
        engine = self.engine
        got = await engine.storage.read(engine.key)
        if got is None:
            return ReadBack(None, None, unchanged=False)
        return ReadBack(got.data, got.version, unchanged=got.version == version)

    def leader_of(self, data: bytes) -> LeaderInfo | None:
        return self.engine.decode_header(data)

    async def adopt(self, got: ReadBack) -> Took | None:
        assert got.data is not None
        assert got.version is not None
        return Took(await self.engine.decode(got.data), got.version, got.data)

    async def reload(
        self, keep: Callable[[LeaderInfo | None], bool]
    ) -> tuple[LeaderInfo | None, Took | None]:
        engine = self.engine
        got = await engine.storage.read(engine.key)
        if got is None:
            raise StorageUnavailable(f"{engine.key} vanished from {engine.storage.describe()}")
        leader = engine.decode_header(got.data)
        if not keep(leader):
            return leader, None
        return leader, Took(await engine.decode(got.data), got.version, got.data)

    def document(self, state: QueueState) -> bytes:
        data = self.engine.document
        assert data is not None  # held with the state
        return data

    async def maintain(self) -> None:
        await trio.sleep_forever()  # a commit rewrites everything: nothing to keep up
