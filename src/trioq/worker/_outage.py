"""What a worker logs while its broker keeps failing: a warning at the first failure,
then at most one every :data:`WARN_EVERY` seconds, and a line when it answers again."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import trio

from .._errors import TrioqError

log = logging.getLogger("trioq.worker")

WARN_EVERY = 30.0
"""While the broker keeps failing, the worker repeats its warning at most this often."""


@dataclass(eq=False)
class Outage:
    """The failures of one broker (``urls``: how the log names it), since it last
    answered; debug lines between the warnings."""

    urls: str
    since: float | None = None
    failures: int = 0
    warned_at: float = -math.inf

    def failed(self, what: str, exc: TrioqError, retry_in: float) -> None:
        now = trio.current_time()
        if self.since is None:
            self.since = now
        self.failures += 1
        if now - self.warned_at < WARN_EVERY:
            log.debug(
                "broker %s: %s failed again (%s: %s)", self.urls, what, type(exc).__name__, exc
            )
            return
        self.warned_at = now
        if self.failures == 1:
            log.warning(
                "broker %s: %s failed (%s: %s); retrying in %.1f s",
                self.urls,
                what,
                type(exc).__name__,
                exc,
                retry_in,
            )
        else:
            log.warning(
                "broker %s still failing after %.0f s (%d failed calls; last: %s: %s); "
                "retrying in %.1f s",
                self.urls,
                now - self.since,
                self.failures,
                type(exc).__name__,
                exc,
                retry_in,
            )

    def answered(self) -> None:
        if self.since is not None:
            log.info(
                "broker %s answers again after %.0f s", self.urls, trio.current_time() - self.since
            )
        self.since = None
        self.failures = 0
        self.warned_at = -math.inf
