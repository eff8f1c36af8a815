"""How trioq's processes stop: the first SIGINT or SIGTERM drains, the second stops
at once. One watcher for ``python -m trioq.broker`` and ``python -m trioq.worker``."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

ABORTED = 130
"""Exit code after a second signal cancelled the service (128 + SIGINT, as a shell
reports an interrupted command)."""


async def run_until_signalled(
    main: Callable[[], Awaitable[int]],
    *,
    drain: Callable[[], None],
    abort: Callable[[], None] | None = None,
    log: logging.Logger,
) -> int:
    """Run ``main()`` with SIGINT and SIGTERM watched; return its exit code.

    The first signal calls ``drain()``: a graceful stop, after which ``main`` returns
    by itself. The second calls ``abort()``, after which ``main`` also returns by
    itself (at once); without an ``abort`` it cancels ``main`` and the exit code is
    :data:`ABORTED`. An exception from ``main`` comes out as it is, not wrapped in an
    exception group.
    """
    code = ABORTED
    failure: Exception | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            stop = abort if abort is not None else nursery.cancel_scope.cancel
            nursery.start_soon(_watch, signals, drain, stop, log)
            try:
                code = await main()
            except Exception as exc:
                failure = exc  # raised below, outside the nursery's exception group
            nursery.cancel_scope.cancel()  # the watcher
    if failure is not None:
        try:
            raise failure
        finally:
            failure = None  # no reference cycle through the traceback
    return code


async def _watch(
    signals: AsyncIterator[int],
    drain: Callable[[], None],
    stop: Callable[[], None],
    log: logging.Logger,
) -> None:
    drained = False
    async for signum in signals:
        name = signal.Signals(signum).name
        if not drained:
            drained = True
            log.info("%s: draining (send it again to stop at once)", name)
            drain()
        else:
            log.warning("%s: second signal, stopping at once", name)
            stop()
