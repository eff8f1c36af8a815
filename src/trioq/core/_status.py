"""What an engine reports about itself: its role, and a snapshot of its counters and
committed counts for metrics and health (a copy: readers never reach into it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    """An engine's (and its broker's) role; its value is what ``/healthz`` and
    ``NotLeader`` bodies say."""

    STARTING = "starting"
    LEADER = "leader"
    STANDBY = "standby"
    STOPPED = "stopped"


ENGINE_COUNTERS = (
    "commits",
    "mutations",
    "conflicts",
    "writeErrors",
    "failedBatches",
    "takeovers",
    "stepDowns",
    "checkpoints",
    "collected",
)
"""The keys of ``Engine.metrics`` (and :attr:`EngineSnapshot.counters`)."""


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """What an engine reports about itself at one moment (for metrics and health):
    a copy, so a reader never reaches into the engine."""

    broker_id: str
    role: Role
    epoch: int
    counters: dict[str, int]
    """Engine events since start: commits, mutations, conflicts, writeErrors,
    failedBatches, takeovers, stepDowns, checkpoints and collected (objects deleted
    by the log layout's garbage collection)."""
    last_commit_seconds: float
    last_batch_size: int
    queue: dict[str, int] | None
    """Counts of the last committed state (total, unclaimed, inProgress,
    completedTotal, dead) while leading, else None."""
    queue_counters: dict[str, int] | None
    """The document's counters as last committed, while leading."""
    document_bytes: int
    """Size of the last committed document (0 when not leading)."""
    pending: int = 0
    """Mutations handed to the engine and not yet answered (waiting for a commit)."""
    waiting_claims: int = 0
    """Long-poll claims parked until a job is available for them."""
