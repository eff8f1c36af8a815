"""Engine settings with osqueue's defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class EngineConfig:
    """Timings of the broker engine, in seconds like every duration in trioq's code
    (milliseconds only at the edges: see :mod:`trioq._settings`). A broker derives it
    from its settings (``BrokerSettings.engine_config()``).

    ``group_commit_interval`` is the minimum spacing between the starts of two
    commits: an idle engine commits a new mutation at once, a busy one at most once
    per interval.
    """

    group_commit_interval: float = 0.050
    broker_heartbeat_interval: float = 3.0
    """The leader commits at least this often (an empty commit when idle)."""
    broker_heartbeat_timeout: float = 10.0
    """A standby takes over when the document has not changed for this long."""
    standby_poll_interval: float = 1.0
    """How often a standby checks the document's version (a cheap HEAD)."""
    write_retries: int = 3
    """Attempts of one commit's write when the store is unreachable."""
    write_retry_delay: float = 0.1
    startup_storage_wait: float = 30.0
    """How long the election waits out an unreachable store at startup (retrying with
    backoff, logged once) before it gives up with the storage error: a broker
    restarted during a network blip or a store's restart comes up when the store
    does, as a supervisor would otherwise make it. Missing buckets and refused
    credentials are not waited out: they are configuration errors."""
    shutdown_timeout: float = 10.0
    """Bound on the last commit (pending mutations + lease release) at stop."""
    max_pending: int = 100_000
    """Mutations waiting for a commit beyond which new ones are refused (QueueFull)."""
    layout: str = "document"
    """How the state is stored: ``"document"`` (format 1, one document rewritten by
    every commit) or ``"log"`` (format 2, one log record a commit; see
    ``docs/log-layout.md``)."""
    checkpoint_commits: int = 1000
    """Log layout: a checkpoint after this many commits since the last one ..."""
    checkpoint_interval: float = 600.0
    """... or after this many seconds ..."""
    checkpoint_min_bytes: int = 1 << 20
    """... or after as many bytes of log as the last checkpoint held, and at least
    this many (so that the log since a checkpoint never outgrows the state much)."""
    checkpoint_in_thread: bool = True
    """Join a checkpoint's bytes in a worker thread (off the event loop). Tests in
    virtual time turn it off: the clock jumps ahead while a thread runs, so what
    happens around a checkpoint would depend on the thread's speed."""
    gc_grace: float = 30.0
    """Log layout: a checkpoint must have existed this long before the records and
    checkpoints older than it are deleted; longer than any load takes."""
    freeze_loaded_state: bool = False
    """Pause the garbage collector while a document loads and ``gc.freeze()`` what
    was loaded (the broker process turns this on; a library user's process may not
    want its collector touched)."""

    def validate(self) -> None:
        """Raise ValueError on settings that cannot work together."""
        if self.startup_storage_wait < 0:
            raise ValueError("the startup storage wait must be >= 0")
        if self.group_commit_interval < 0:
            raise ValueError("group commit interval must be >= 0")
        if self.broker_heartbeat_interval <= 0:
            raise ValueError("broker heartbeat interval must be > 0")
        if self.broker_heartbeat_interval >= self.broker_heartbeat_timeout:
            raise ValueError(
                "broker heartbeat interval "
                f"({self.broker_heartbeat_interval * 1000:.0f} ms) must be shorter than the "
                f"broker heartbeat timeout ({self.broker_heartbeat_timeout * 1000:.0f} ms)"
            )
        if self.group_commit_interval >= self.broker_heartbeat_timeout:
            raise ValueError(
                "group commit interval must be shorter than the broker heartbeat timeout"
            )
        if self.standby_poll_interval <= 0:
            raise ValueError("standby poll interval must be > 0")
        if self.write_retries < 1:
            raise ValueError("write retries must be >= 1 (the first attempt counts)")
        if self.write_retry_delay < 0 or self.shutdown_timeout < 0:
            raise ValueError("write retry delay and shutdown timeout must be >= 0")
        if self.layout not in ("document", "log"):
            raise ValueError(f"layout must be 'document' or 'log', not {self.layout!r}")
        if self.checkpoint_commits < 1 or self.checkpoint_min_bytes < 1:
            raise ValueError("checkpoint commits and checkpoint bytes must be >= 1")
        if self.checkpoint_interval <= 0:
            raise ValueError("checkpoint interval must be > 0")
        if self.gc_grace < 0:
            raise ValueError("the garbage collection grace period must be >= 0")
        if self.max_pending < 1:
            raise ValueError("max pending must be >= 1")
