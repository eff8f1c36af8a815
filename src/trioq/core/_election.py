"""Election and fencing decisions, free of I/O.

The engine gathers what it knows (the stored leader header, its own identity, what
it saw of the document and when, its monotonic clock), asks one of these functions
what to do, and then does the I/O the verdict names. Nothing here reads, writes,
sleeps or looks at a clock, so ``tests/test_election.py`` runs the tables below
exhaustively without storage (the h11 shape: observations in, decisions out).

Election: :func:`decide`, at start (``starting=True``) and at each standby poll.

=========================================  ==================  ==================
what is stored                             starting            standing by
=========================================  ==================  ==================
nothing, never seen here, may create       CREATE              CREATE
nothing, never seen here, may not create   REFUSE              REFUSE
nothing, but this engine saw it before     REFUSE              STAND_BY (waits)
no leader, or the leader released it       TAKE_OVER           TAKE_OVER
led under this engine's broker id          TAKE_OVER           (as below)
led from this engine's exclusive URL       TAKE_OVER           (as below)
a takeover was requested for this version  (as below)          TAKE_OVER
unchanged for the lease timeout            (as below)          TAKE_OVER
any other leader                           STAND_BY            STAND_BY
=========================================  ==================  ==================

Only a starting engine treats its own broker id or exclusive URL as an earlier life
of itself: a standby that stepped down met another broker under that id, and taking
over at once would start a tug of war. A forced takeover names the version it
expects (the one the fast-failover probe saw unchanged), or none for "whatever is
stored"; staleness is measured on the engine's own monotonic clock from the moment
it first saw the current version, never from the stored (wall-clock) lease time.

Fencing: :func:`judge_stored`, after a conditional write failed (a conflict, or an
outcome that is unknown) and before a commit that follows a failure (a reload).

============================================  ==========
what is stored                                verdict
============================================  ==========
exactly the bytes this write carried          LANDED
another broker, another epoch, or no leader   STEP_DOWN
ours; outcome unknown; version unchanged      RETRY
ours otherwise                                ADOPT
============================================  ==========

ADOPT means an earlier write of this leader landed after all: it takes what is
stored and answers the batch with a retryable error, never re-applying it over the
stored state. The engine handles what the table cannot see: a read that fails
(outcome unknown: reload before the next commit), a vanished document (the same),
and a damaged one (stop: never overwrite what it cannot read).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._codec import LeaderInfo


@dataclass(frozen=True, slots=True)
class Candidacy:
    """How an engine stands for election, as known once its server is bound."""

    url: str = ""
    """The URL clients dial for this broker (written into the document)."""
    exclusive_url: bool = False
    """Whether ``url`` can belong to no other live broker (the broker bound it
    itself): a document led from it was led by an earlier life of this broker."""
    create: bool = True
    """Whether the election may create the document when none is stored and this
    engine never saw one."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """Who asks: this engine's identity and creation policy."""

    broker_id: str
    candidacy: Candidacy = Candidacy()


@dataclass(frozen=True, slots=True)
class Sighting:
    """What the engine last saw of the stored document."""

    present: bool
    version: str | None = None
    leader: LeaderInfo | None = None
    """The leader header stored at ``version`` (``None``: no leader recorded)."""
    since: float = 0.0
    """Monotonic time at which this engine first saw ``version``."""


@dataclass(frozen=True, slots=True)
class TakeoverRequest:
    """Take over now, provided the document is still at ``expected_version``
    (any version when ``None``)."""

    expected_version: str | None = None

    def matches(self, version: str | None) -> bool:
        return self.expected_version is None or self.expected_version == version


class Verdict(enum.Enum):
    CREATE = "create"
    TAKE_OVER = "take over"
    STAND_BY = "stand by"
    REFUSE = "refuse"
    """No queue, and this engine may not create one (``QueueNotFound``)."""


def decide(
    me: Candidate,
    sighting: Sighting,
    *,
    starting: bool,
    seen_before: bool,
    request: TakeoverRequest | None,
    now: float,
    lease_timeout: float,
) -> Verdict:
    """What to do about the stored document (see the election table above).

    ``seen_before``: whether this engine ever saw a document at this key (then a
    missing one vanished, and is never replaced by an empty one); ``request``: a
    takeover asked for since the last decision; ``now``: monotonic time.
    """
    if not sighting.present:
        if seen_before:
            return Verdict.REFUSE if starting else Verdict.STAND_BY
        return Verdict.CREATE if me.candidacy.create else Verdict.REFUSE
    leader = sighting.leader
    if leader is None or leader.released:
        return Verdict.TAKE_OVER
    if starting:
        if earlier_life(me, leader):
            return Verdict.TAKE_OVER
        return Verdict.STAND_BY
    if request is not None and request.matches(sighting.version):
        return Verdict.TAKE_OVER
    if now - sighting.since >= lease_timeout:
        return Verdict.TAKE_OVER
    return Verdict.STAND_BY


def earlier_life(me: Candidate, leader: LeaderInfo) -> bool:
    """Whether ``leader`` is this broker before a restart: the same broker id, or
    the URL this broker bound itself."""
    if leader.broker_id == me.broker_id:
        return True
    url = me.candidacy.url
    return me.candidacy.exclusive_url and bool(url) and leader.url == url


def is_ours(stored: LeaderInfo | None, broker_id: str, epoch: int) -> bool:
    """Whether the stored leader is still this leader: same broker, same epoch."""
    return stored is not None and stored.broker_id == broker_id and stored.epoch == epoch


class Fence(enum.Enum):
    LANDED = "landed"
    """The stored bytes are the ones this write carried: it landed."""
    RETRY = "retry"
    """The outcome was unknown and nothing changed since: it did not land."""
    ADOPT = "adopt"
    """Still this leader's document, but not this write: adopt what is stored."""
    STEP_DOWN = "step down"
    """Another leader (or none) holds the document: this engine is fenced."""


def judge_stored(
    stored: LeaderInfo | None,
    *,
    same_bytes: bool,
    broker_id: str,
    epoch: int,
    ambiguous: bool,
    version_unchanged: bool,
) -> Fence:
    """After a failed conditional write, or at a reload (``same_bytes`` and
    ``ambiguous`` false): what the stored document means for this leader."""
    if same_bytes:
        return Fence.LANDED
    if not is_ours(stored, broker_id, epoch):
        return Fence.STEP_DOWN
    if ambiguous and version_unchanged:
        return Fence.RETRY
    return Fence.ADOPT
