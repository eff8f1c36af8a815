"""One log line per storage write outage (shared by the file, S3 and GCS backends)."""

from __future__ import annotations

import logging
import time

from .._errors import StorageUnavailable

log = logging.getLogger("trioq.storage")


class WriteOutage:
    """Logs a run of failing writes once, when it starts, and once when a write
    succeeds again: a full disk or a read-only store fails every commit (and the
    leader commits at least every heartbeat), and one line per failure would bury
    the cause. Used by the file, S3 and GCS backends, each for its own writes."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.failures = 0
        self.since = 0.0

    def failed(self, error: StorageUnavailable) -> None:
        if self.failures == 0:
            self.since = time.monotonic()
            log.error(
                "%s: writes fail: %s. Commits answer StorageUnavailable (nothing "
                "acknowledged is lost) until the store takes writes again",
                self.where,
                error.message,
            )
        self.failures += 1

    def succeeded(self) -> None:
        if self.failures:
            log.warning(
                "%s: writes succeed again after %d failed in %.1f s",
                self.where,
                self.failures,
                time.monotonic() - self.since,
            )
            self.failures = 0
