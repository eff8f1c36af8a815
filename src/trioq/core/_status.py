"""What an engine reports about itself: its role, and a snapshot of its counters and
committed counts for metrics and health (a copy: readers never reach into it)."""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field


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


COMMIT_BUCKETS = (
    0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
    1.0, 2.0, 5.0,
)  # fmt: skip
"""Upper bounds (seconds) of the commit duration histogram's buckets."""


@dataclass(slots=True)
class Histogram:
    """Observations counted into fixed buckets (Prometheus style: each bucket counts
    the observations at or below its bound; the last one, +Inf, counts them all)."""

    bounds: tuple[float, ...] = COMMIT_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(COMMIT_BUCKETS) + 1))
    """Observations per bucket (not cumulative); the last is above every bound."""
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(bound, observations at or below it), the last bound ``inf``."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total)


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
    commit_seconds: Histogram | None = None
    """Durations of the commits that landed (apply, encode, write), since start."""
