"""Jobs that left the queue: the dead-letter list and the finished jobs kept for the
dedup window.

Both are bounded, drop their oldest entry first (ordered dicts in the order entries
arrived), and keep their encoded size up to date: they ride in every write, so the
document-size cap counts them.
"""

from __future__ import annotations

from collections import OrderedDict

from ._jobs import DeadJob, FinishedJob

DEDUP_CAP = 10_000
"""The default cap on finished jobs kept for the dedup window. Each is a line of about
120 bytes rewritten by every commit of the single-document layout, so the cap, not
the window's duration, bounds what they cost: 10,000 is about 1.2 MB a commit, and
at 10,000 completions a second it keeps about one second of finished ids
(docs/performance.md, "The dedup window")."""


class Archive:
    """The dead letters and the recently finished jobs of one queue."""

    __slots__ = ("bytes", "dead", "finished")

    def __init__(self) -> None:
        self.dead: OrderedDict[str, DeadJob] = OrderedDict()
        self.finished: OrderedDict[str, FinishedJob] = OrderedDict()
        self.bytes = 0
        """Encoded size of both lists."""

    def bury(self, dead: DeadJob, cap: int) -> list[DeadJob]:
        """Add a dead letter; returns the oldest ones dropped to stay within ``cap``."""
        self.dead[dead.id] = dead
        self.bytes += len(dead.encode())
        dropped: list[DeadJob] = []
        while len(self.dead) > cap:
            _, oldest = self.dead.popitem(last=False)
            self.bytes -= len(oldest.encode())
            dropped.append(oldest)
        return dropped

    def unbury(self, job_id: str) -> DeadJob:
        dead = self.dead.pop(job_id)
        self.bytes -= len(dead.encode())
        return dead

    def remember(self, record: FinishedJob, cap: int) -> None:
        """Keep a finished job for the dedup window (at most ``cap`` of them)."""
        self.finished[record.id] = record
        self.bytes += len(record.encode())
        self.trim(horizon=None, cap=cap)

    def trim(self, horizon: int | None, cap: int) -> None:
        """Forget finished jobs that finished at or before ``horizon``, and the
        oldest beyond ``cap``."""
        while self.finished:
            first = next(iter(self.finished.values()))
            recent = horizon is None or first.finished_at > horizon
            if recent and len(self.finished) <= cap:
                break
            _, gone = self.finished.popitem(last=False)
            self.bytes -= len(gone.encode())
