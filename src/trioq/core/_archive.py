"""Jobs that left the queue: the dead-letter list and the finished jobs kept for the
dedup window.

Both are bounded, drop their oldest entry first (ordered dicts in the order entries
arrived), and keep their encoded size up to date: they ride in every write, so the
document-size cap counts them. When their state tracks its changes, they note each
entry added or removed in its :class:`~trioq.core._changes.Changes`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

from ._changes import Changes, Log, added, changed, removed
from ._jobs import DeadJob, FinishedJob

_E = TypeVar("_E", DeadJob, FinishedJob)

DEDUP_CAP = 10_000
"""The default cap on finished jobs kept for the dedup window. Each is a line of about
120 bytes rewritten by every commit of the single-document layout, so the cap, not
the window's duration, bounds what they cost: 10,000 is about 1.2 MB a commit, and
at 10,000 completions a second it keeps about one second of finished ids
(docs/performance.md, "The dedup window")."""


class Archive:
    """The dead letters and the recently finished jobs of one queue."""

    __slots__ = ("bytes", "changes", "dead", "finished")

    def __init__(self) -> None:
        self.dead: OrderedDict[str, DeadJob] = OrderedDict()
        self.finished: OrderedDict[str, FinishedJob] = OrderedDict()
        self.bytes = 0
        """Encoded size of both lists."""
        self.changes: Changes | None = None
        """Where changes are noted: the state's, while it tracks them."""

    def bury(self, dead: DeadJob, cap: int) -> list[DeadJob]:
        """Add a dead letter; returns the oldest ones dropped to stay within ``cap``."""
        self._put(self.dead, dead, None if self.changes is None else self.changes.dead)
        dropped: list[DeadJob] = []
        while len(self.dead) > cap:
            _, oldest = self.dead.popitem(last=False)
            self.bytes -= len(oldest.encode())
            if self.changes is not None:
                removed(self.changes.dead, oldest.id)
            dropped.append(oldest)
        return dropped

    def unbury(self, job_id: str) -> DeadJob:
        dead = self.dead.pop(job_id)
        self.bytes -= len(dead.encode())
        if self.changes is not None:
            removed(self.changes.dead, job_id)
        return dead

    def remember(self, record: FinishedJob, cap: int) -> None:
        """Keep a finished job for the dedup window (at most ``cap`` of them)."""
        # not _put: every completion comes here, and untracked it must cost what it did
        if self.changes is not None:
            (changed if record.id in self.finished else added)(self.changes.finished, record.id)
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
            if self.changes is not None:
                removed(self.changes.finished, gone.id)

    # ------------------------------------------------ replay (trioq.core._changes)
    # A log record says what was added and removed; replay applies exactly that
    # (no caps, no trimming), and an op applied twice changes nothing.

    def restore_dead(self, dead: DeadJob) -> None:
        self._put(self.dead, dead, None if self.changes is None else self.changes.dead)

    def discard_dead(self, job_id: str) -> None:
        if job_id in self.dead:
            self.unbury(job_id)

    def restore_finished(self, record: FinishedJob) -> None:
        self._put(self.finished, record, None if self.changes is None else self.changes.finished)

    def forget(self, job_id: str) -> None:
        gone = self.finished.pop(job_id, None)
        if gone is not None:
            self.bytes -= len(gone.encode())
            if self.changes is not None:
                removed(self.changes.finished, job_id)

    def _put(self, into: OrderedDict[str, _E], record: _E, log: Log | None) -> None:
        """``record`` into ``into``: in place of an entry with its id, else at the end."""
        old = into.get(record.id)
        if old is not None:
            self.bytes -= len(old.encode())
        into[record.id] = record
        self.bytes += len(record.encode())
        if log is not None:
            (added if old is None else changed)(log, record.id)
