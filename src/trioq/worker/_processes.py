"""The process pool of ``run="process"`` handlers (``trio-parallel``).

A handler registered with ``@worker.job(..., run="process")`` is a plain (sync)
function that runs in a child process of a pool the worker owns for the length of
:meth:`Worker.run <trioq.Worker.run>`:

- The parent validates the payload (its annotation, as for any handler) and sends
  the child only the validated payload and, if the handler asks for one, a copy of
  its :class:`~._handlers.JobContext`: both pickled, with the function itself
  pickled *by reference* (its module and name), so the child imports the handler's
  module and calls the function found there.
- ``trio_parallel``'s ``run_sync(..., kill_on_cancel=True)``: when the job's scope
  is cancelled (its lease is lost, its ``timeout`` ran out, the drain grace is over,
  an abort) the child is killed (SIGKILL) and reaped before the job task goes on, so
  CPU work never outlives its lease. A fresh child replaces it for the next job.
- Children are started by ``spawn`` (a fresh interpreter that imports the handler's
  module: about a second each) and reused, at most :attr:`ProcessPool.size` at once
  (a ``trio.CapacityLimiter``); an idle one exits after :data:`IDLE_TIMEOUT`. The
  worker starts as many as it can use (:meth:`ProcessPool.warm`) when it starts, so
  that only a job claimed in its first second or so waits for a process to start,
  which its ``timeout`` counts. The pool closes when ``run`` ends, after every job
  has.
- What the function raises comes back as the same exception (pickled, with its
  traceback), so the job fails with the same text as an inline handler's. A child
  that dies by itself (``os._exit``, a crash) fails the job with
  ``BrokenWorkerProcessError``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import pickle
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

log = logging.getLogger("trioq.worker")

IDLE_TIMEOUT = 600.0
"""Seconds an idle pool process waits for its next job before it exits."""

CLOSE_GRACE = 10.0
"""Seconds the closing pool waits for its idle processes to exit before it kills
them."""


def default_size() -> int:
    """The pool size when none is set: the machine's CPU count."""
    return os.cpu_count() or 1


def check_by_reference(job_type: str, fn: Callable[..., Any]) -> None:
    """Refuse (ValueError) a function a pool process could not import by name: a
    lambda, a nested function or closure, anything that is not a plain function."""
    where = f"handler for {job_type!r} (run='process')"
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise ValueError(
            f"{where}: {fn.__qualname__} is async; a process runs a plain (sync) function "
            "(drop run='process' to run it on the event loop)"
        )
    if not inspect.isfunction(fn):
        raise ValueError(
            f"{where}: {fn!r} is not a plain function defined at a module's top level "
            "(a process imports it by name)"
        )
    qualname = fn.__qualname__
    if "<lambda>" in qualname or "<locals>" in qualname or fn.__closure__:
        raise ValueError(
            f"{where}: {qualname} is a lambda, a nested function or a closure; a process "
            "imports its function by name: define it at the top level of a module"
        )


def check_picklable(job_type: str, fn: Callable[..., Any]) -> None:
    """Refuse (ValueError) a function whose module attribute is not the function
    itself (decorated again, or replaced after registration): checked once the
    module is imported, at the worker's start."""
    try:
        pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ValueError(
            f"handler for {job_type!r} (run='process'): {fn.__module__}.{fn.__qualname__} "
            f"cannot be sent to a process by name ({exc}); register the function that "
            "the module's attribute holds (put @worker.job(...) outermost)"
        ) from None


class ProcessPool:
    """A worker's pool of processes for ``run="process"`` handlers: open (by
    :meth:`open`) only while the worker runs."""

    def __init__(self) -> None:
        self._context: Any = None
        self._limiter: trio.CapacityLimiter | None = None

    @property
    def size(self) -> int | None:
        """Processes at most at once while open (None while closed)."""
        return None if self._limiter is None else int(self._limiter.total_tokens)

    @asynccontextmanager
    async def open(self, size: int) -> AsyncIterator[None]:
        """Hold the pool open, at most ``size`` processes at once. Closing waits for
        the jobs that run in it (the worker has ended them all by then) and stops its
        idle processes (at most :data:`CLOSE_GRACE` seconds, then kills them: logged,
        not raised)."""
        # imported here: ``import trioq`` stays free of multiprocessing
        import trio_parallel  # type: ignore[import-untyped]

        closing = False
        try:
            async with trio_parallel.open_worker_context(
                idle_timeout=IDLE_TIMEOUT, grace_period=CLOSE_GRACE
            ) as context:
                self._context = context
                self._limiter = trio.CapacityLimiter(size)
                try:
                    yield
                finally:
                    self._context = None
                    self._limiter = None
                closing = True
        except trio_parallel.BrokenWorkerError as exc:
            if not closing:
                raise
            # an idle process that did not exit in time (killed) or exited badly: the
            # worker's own stop was clean, so this is worth a line, not a failure
            log.warning("process pool: not every process exited cleanly: %s", exc)

    async def warm(self, count: int) -> None:
        """Start ``count`` processes (at most the pool's size) and keep them idle in
        the pool, ready for jobs; logged once they are. A process that fails to
        start is logged (the jobs then fail with the same error), not raised."""
        count = min(count, self.size or 0)
        started = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(self.run, _ready, {})
        except Exception as exc:
            log.warning("process pool: could not start a process: %r", exc)
            return
        log.info(
            "process pool ready: %d process(es) started in %.1f s",
            count,
            trio.current_time() - started,
        )

    async def run(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """``fn(**kwargs)`` in a pool process; its result, or what it raised. A
        cancellation kills the process."""
        context = self._context
        if context is None:
            raise RuntimeError("the process pool runs only while the worker runs")
        return await context.run_sync(
            functools.partial(fn, **kwargs), kill_on_cancel=True, limiter=self._limiter
        )


def _ready() -> None:
    """What :meth:`ProcessPool.warm` runs: nothing, in a started process."""
