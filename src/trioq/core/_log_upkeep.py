"""The log layout's upkeep: checkpoints and garbage collection, off the commit path.

While an engine leads in the log layout, :meth:`Upkeep.run` (a task of the engine's
nursery) writes a **checkpoint**, the whole state as of a committed record as a
format-1 document at ``<name>/checkpoint/<seq>.json``, once ``checkpoint_commits``
commits, ``checkpoint_interval`` seconds or as many bytes of log as the last
checkpoint held (at least ``checkpoint_min_bytes``) have passed since the last one.
The state is captured at a committed moment in a few milliseconds (the records'
cached encodings) and joined in a worker thread, so no commit waits for it.

**Garbage collection** then deletes what no reader can need: every checkpoint older
than the *horizon* and every record at or below it, where the horizon is the newest
checkpoint known to have existed for ``gc_grace`` seconds. A reader that started
before the horizon checkpoint was written has finished its load by then (a load
takes seconds; the grace is 30 by default), and one that starts later loads that
checkpoint or a newer one, so it needs no record at or below it. A reader that is
slower anyway meets a gap and loads afresh from the newest checkpoint. Checkpoints
written before this engine took office count from the moment it did.

A collection runs after each checkpoint, and also when a checkpoint leaves its grace
period with no newer one written (after a burst of checkpoints, what they replaced
goes ``gc_grace`` later, not at the next checkpoint, which may be many minutes away).
A failed checkpoint or collection is logged (once in a row) and tried again with the
next commit that makes one due, or a grace period later; it never touches the commit
path.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING

import trio

from .._errors import CASConflict, StorageUnavailable
from ._codec import snapshot

if TYPE_CHECKING:
    from ._log_layout import LogLayout

log = logging.getLogger("trioq.engine")

_DELETE_PAGE = 1000
"""Record keys listed (and deleted) per round of a collection."""


class Upkeep:
    """Checkpoints and garbage collection of one :class:`LogLayout`."""

    def __init__(self, layout: LogLayout) -> None:
        self.layout = layout
        self.last_write = 0.0
        """When this engine's last commit landed (trio time; set on taking office)."""
        self.commits = 0
        """Commits since the last checkpoint."""
        self.log_bytes = 0
        """Bytes of log written since the last checkpoint."""
        self.checkpoint_bytes = 0
        """Size of the last checkpoint written (0: none yet)."""
        self.checkpointed_at = 0.0
        self.known: dict[int, float] | None = None
        """Checkpoints that exist (their seq) and since when (trio time); ``None``
        until listed after taking office."""
        self.failing = False
        self._due = trio.Event()
        self.collect_at = math.inf
        """When the oldest checkpoint still within its grace period leaves it (trio
        time): a collection is due then, commits or not, so that what a burst of
        checkpoints replaced goes within ``gc_grace`` rather than at the next one."""

    # ------------------------------------------------------- the commit path

    def took_office(self, records: int) -> None:
        """This engine leads from now, ``records`` log records after the checkpoint
        its state was loaded from: those count towards the next checkpoint (brokers
        that each lead for fewer commits than a checkpoint needs would otherwise never
        write one, and every load would replay the whole log). What it knew of
        checkpoints is stale."""
        now = trio.current_time()
        self.last_write = self.checkpointed_at = now
        self.commits, self.log_bytes = max(0, records), 0
        self.known = None
        self.collect_at = now + self.layout.engine.config.gc_grace

    def committed(self, size: int) -> None:
        """A commit of ``size`` bytes landed: count it, and wake the task when a
        checkpoint is due."""
        config = self.layout.engine.config
        now = trio.current_time()
        self.last_write = now
        self.commits += 1
        self.log_bytes += size
        if (
            self.commits >= config.checkpoint_commits
            or self.log_bytes >= max(config.checkpoint_min_bytes, self.checkpoint_bytes)
            or now - self.checkpointed_at >= config.checkpoint_interval
        ):
            self._due.set()

    # --------------------------------------------------------------- the task

    async def run(self) -> None:
        """Checkpoint and collect whenever due, while the engine leads (a task of the
        engine's nursery; it never returns)."""
        engine = self.layout.engine
        while True:
            with trio.move_on_at(self.collect_at):
                await self._due.wait()
            due = self._due.is_set()
            if due:
                self._due = trio.Event()
            if not engine.is_leader:
                self.collect_at = math.inf  # set again on taking office
                continue
            try:
                if due:
                    await self.checkpoint()
                await self.collect()
            except StorageUnavailable as exc:
                if not self.failing:
                    log.warning("checkpoint or log collection failed (retried later): %s", exc)
                self.failing = True
                # a collection due by time is tried again after a grace period, not
                # at once in a loop
                self.collect_at = trio.current_time() + engine.config.gc_grace
                continue
            if self.failing:
                log.info("checkpoints and log collection work again")
                self.failing = False

    async def checkpoint(self) -> int | None:
        """Write a checkpoint of the committed state; its seq (``None`` when the
        engine no longer leads, or that seq has one already)."""
        layout = self.layout
        engine = layout.engine
        if not engine.is_leader:
            return None
        build, seq = await engine.read(lambda state: (snapshot(state), state.seq))
        await self._list_known()
        assert self.known is not None
        if seq in self.known:
            return None
        # counted from the moment the state was captured: commits meanwhile are not in it
        commits, log_bytes, self.commits, self.log_bytes = self.commits, self.log_bytes, 0, 0
        self.checkpointed_at = trio.current_time()
        try:
            if engine.config.checkpoint_in_thread:
                data = await trio.to_thread.run_sync(build)
            else:
                data = build()
            # written already is as good: a checkpoint of a committed seq is one state
            with contextlib.suppress(CASConflict):
                await engine.storage.create(layout.checkpoint_key(seq), data)
        except BaseException:
            self.commits += commits
            self.log_bytes += log_bytes
            raise
        self.known[seq] = trio.current_time()
        self.checkpoint_bytes = len(data)
        engine.metrics["checkpoints"] += 1
        log.debug("checkpoint %d written (%d bytes)", seq, len(data))
        return seq

    async def collect(self) -> int:
        """Delete the checkpoints older than the horizon and the records at or below
        it; how many objects were deleted."""
        layout = self.layout
        config, storage = layout.engine.config, layout.engine.storage
        await self._list_known()
        assert self.known is not None
        # each side of one comparison (since + grace against now), so that the time
        # set for the next collection is strictly later than now: no busy loop
        now = trio.current_time()
        ripens = {seq: since + config.gc_grace for seq, since in self.known.items()}
        old = [seq for seq, at in ripens.items() if at <= now]
        self.collect_at = min((at for at in ripens.values() if at > now), default=math.inf)
        if not old:
            return 0
        horizon = max(old)
        deleted = 0
        for seq in sorted(self.known):
            if seq < horizon:
                await storage.delete_key(layout.checkpoint_key(seq))
                del self.known[seq]
                deleted += 1
        last = layout.log_key(horizon)
        while True:
            keys = await storage.list_keys(layout.log_prefix, limit=_DELETE_PAGE)
            doomed = [key for key in keys if key <= last]
            for key in doomed:
                await storage.delete_key(key)
            deleted += len(doomed)
            if len(doomed) < _DELETE_PAGE:
                break
        layout.engine.metrics["collected"] += deleted
        return deleted

    async def _list_known(self) -> None:
        if self.known is not None:
            return
        layout = self.layout
        keys = await layout.engine.storage.list_keys(layout.checkpoint_prefix)
        now = trio.current_time()
        self.known = {layout.seq_of(key, layout.checkpoint_prefix): now for key in keys}
