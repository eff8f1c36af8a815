"""Which job types workers ask for, so the leader can warn about jobs nobody claims.

Every claim (and exchange that claims) notes the types it asked for, or that it
takes any type. The leader checks every :data:`CHECK_EVERY` seconds: a type with
unclaimed jobs that no claim has named (and no claim for any type has come) for
:data:`WINDOW` seconds gets one warning, until a claim for it arrives again. The
window starts when the broker takes the lead, so workers have time to reconnect.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

log = logging.getLogger("trioq.broker")

WINDOW = 60.0
"""Seconds without a claim for a type that has unclaimed jobs before a warning."""

CHECK_EVERY = 10.0
"""Seconds between two checks."""

_ANY = ""
"""The key of claims for any type (no job type is empty)."""


class ClaimWatch:
    """The last time (trio clock) each type was claimed, and the warnings given."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.warned: set[str] = set()
        self.next_check = 0.0

    def reset(self, now: float) -> None:
        """Leading from ``now``: the window starts again, nothing is warned."""
        self.seen = {_ANY: now}
        self.warned.clear()
        self.next_check = now + CHECK_EVERY

    def claimed(self, types: Sequence[str] | None, now: float) -> None:
        """A claim for ``types`` (None: any type) arrived."""
        if types is None:
            self.seen[_ANY] = now
            self.warned.clear()
            return
        for job_type in types:
            self.seen[job_type] = now
            self.warned.discard(job_type)

    def check(self, by_type: Mapping[str, Mapping[str, int]], now: float) -> list[str]:
        """Warn (once) about the types waiting unclaimed; the types warned now."""
        if now < self.next_check:
            return []
        self.next_check = now + CHECK_EVERY
        if now - self.seen.get(_ANY, now) < WINDOW:
            return []  # a worker takes any type
        warned = []
        for job_type, counts in by_type.items():
            waiting = counts.get("unclaimed", 0)
            if not waiting or job_type in self.warned:
                continue
            last = max(self.seen.get(job_type, 0.0), self.seen.get(_ANY, 0.0))
            if now - last >= WINDOW:
                self.warned.add(job_type)
                warned.append(job_type)
                log.warning(
                    "%d jobs of type %r are waiting, and no worker has claimed that type "
                    "for %g s: is a worker with a handler for it running?",
                    waiting,
                    job_type,
                    WINDOW,
                )
        return warned
