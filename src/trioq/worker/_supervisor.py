"""``python -m trioq.worker module:attr --processes N``: a supervisor of N worker
processes, each its own ``python -m trioq.worker`` (its own worker id, its own claims
and leases), restarted when it dies.

Shape::

    Supervisor.run
    ├── stop deadline         after a stop: SIGKILL for what still runs at the deadline
    └── children nursery
        └── slot k (1..N)     keeps worker process k running: its own nursery owns the
            └── run_process   process (trio.run_process via nursery.start)

- A child that exits unexpectedly (a non-zero code, or killed by a signal) is started
  again after a backoff: :data:`RESTART_BASE` seconds, doubling with each failure in
  a row up to :data:`RESTART_MAX`; a child that ran :data:`STABLE_AFTER` seconds
  before it died starts the count again. One that exits with code 0 by itself (a
  worker exits 0 only after a drain: someone signalled it) is not restarted; the
  supervisor ends when no child is left.
- Each start, exit and restart is one log line (logger ``trioq.worker.supervisor``)
  naming the child's number and pid.
- :meth:`Supervisor.stop` (the first SIGINT/SIGTERM) sends SIGTERM to every child,
  which drains as a lone worker does, and stops restarting; what still runs
  ``stop_deadline`` seconds later (the worker's shutdown grace plus
  :data:`STOP_MARGIN`) is killed. :meth:`Supervisor.abort` (a second signal) sends
  SIGTERM again: a worker's second signal stops it at once.
- The children run in their own sessions (``start_new_session``), so a terminal's
  Ctrl-C reaches the supervisor alone, which then forwards one SIGTERM: each child
  sees one signal (a drain), not two (an abort). A supervisor killed with SIGKILL
  cannot forward anything: its children drain only when signalled themselves (a
  service manager that stops the whole control group does).
"""

from __future__ import annotations

import functools
import logging
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import trio

log = logging.getLogger("trioq.worker.supervisor")

RESTART_BASE = 0.5
"""Seconds before the first restart of a child that died."""

RESTART_MAX = 30.0
"""Cap on the wait before a restart (it doubles with each failure in a row)."""

STABLE_AFTER = 60.0
"""A child that ran this many seconds before it died is restarted after
:data:`RESTART_BASE` again."""

STOP_MARGIN = 10.0
"""Seconds a stopping child gets beyond the worker's shutdown grace (its last
reports, its exit) before it is killed."""


def describe_exit(code: int) -> str:
    """``exited with code 1`` or ``was killed by SIGKILL``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


@dataclass(eq=False)
class Supervisor:
    """Keeps one worker process running per command (child ``k`` runs
    ``commands[k - 1]``) until :meth:`stop`."""

    commands: Sequence[Sequence[str]]
    stop_deadline: float
    """Seconds from a stop until the children still running are killed."""
    env: Mapping[str, str] | None = None
    """The children's environment (None: this process's)."""
    restart_base: float = RESTART_BASE
    restart_max: float = RESTART_MAX
    stable_after: float = STABLE_AFTER
    killed: int = 0
    """Children killed at the stop deadline."""
    starts: int = 0
    """Processes started, restarts included."""
    _stopping: trio.Event = field(default_factory=trio.Event)
    _running: dict[int, trio.Process] = field(default_factory=dict)

    @property
    def pids(self) -> dict[int, int]:
        """The running children's pids, by child number."""
        return {k: process.pid for k, process in self._running.items()}

    def stop(self) -> None:
        """Stop restarting, and send every child SIGTERM (it drains)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info(
            "stopping %d worker process(es): SIGTERM now, SIGKILL to any still running in %g s",
            len(self._running),
            self.stop_deadline,
        )
        self._signal_all(signal.SIGTERM)

    def abort(self) -> None:
        """Send every child SIGTERM again (a worker's second signal: it stops at
        once)."""
        self.stop()
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for process in list(self._running.values()):
            if process.returncode is None:
                process.send_signal(signum)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Run the children until every one has ended (after :meth:`stop`, or by
        itself with code 0); ``task_status.started()`` once each has been started.
        Returns 0, or 1 if a child had to be killed at the stop deadline."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._enforce_deadline)
            async with trio.open_nursery() as children:
                for k, command in enumerate(self.commands, 1):
                    await children.start(self._keep, k, list(command))
                task_status.started()
            nursery.cancel_scope.cancel(reason="every worker process has ended")
        log.info("every worker process has ended")
        return 1 if self.killed else 0

    async def _keep(
        self, k: int, command: list[str], *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Child ``k``: start it, and start it again when it dies, until a stop."""
        failures = 0
        announced = False
        async with trio.open_nursery() as nursery:  # owns child k's process
            while not self._stopping.is_set():
                process: trio.Process = await nursery.start(
                    functools.partial(
                        trio.run_process,
                        command,
                        check=False,
                        stdin=subprocess.DEVNULL,
                        env=None if self.env is None else dict(self.env),
                        start_new_session=True,
                        deliver_cancel=self._deliver_cancel,
                    )
                )
                started = trio.current_time()
                self.starts += 1
                self._running[k] = process
                log.info("worker process %d started (pid %d)", k, process.pid)
                if not announced:
                    announced = True
                    task_status.started()
                if self._stopping.is_set():  # a stop came while it was starting
                    process.send_signal(signal.SIGTERM)
                try:
                    code = await process.wait()
                finally:
                    del self._running[k]
                ran = trio.current_time() - started
                how = describe_exit(code)
                if self._stopping.is_set():
                    log.info("worker process %d (pid %d) stopped: %s", k, process.pid, how)
                    return
                if code == 0:
                    log.warning(
                        "worker process %d (pid %d) exited by itself (code 0) after %.1f s; "
                        "not restarted",
                        k,
                        process.pid,
                        ran,
                    )
                    return
                if ran >= self.stable_after:
                    failures = 0
                failures += 1
                delay = min(self.restart_base * 2 ** (failures - 1), self.restart_max)
                log.warning(
                    "worker process %d (pid %d) %s after %.1f s; restarting it in %g s",
                    k,
                    process.pid,
                    how,
                    ran,
                    delay,
                )
                with trio.move_on_after(delay):
                    await self._stopping.wait()
            if not announced:  # stopped before its first start
                task_status.started()

    async def _enforce_deadline(self) -> None:
        await self._stopping.wait()
        await trio.sleep(self.stop_deadline)
        for k, process in list(self._running.items()):
            if process.returncode is None:
                log.warning(
                    "worker process %d (pid %d) still runs %g s after the stop: killing it",
                    k,
                    process.pid,
                    self.stop_deadline,
                )
                self.killed += 1
                process.kill()

    async def _deliver_cancel(self, process: trio.Process) -> None:
        """How a child ends when the supervisor itself is cancelled: SIGTERM (a
        drain), then SIGKILL at the deadline."""
        process.send_signal(signal.SIGTERM)
        await trio.sleep(self.stop_deadline)
        process.kill()
