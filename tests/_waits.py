"""Event-driven waits for the tests that run real processes in real time.

A test that needs the system in some state waits for a signal of that state (a line
in a log, a file appearing, a record read back from the broker or the storage) with
:func:`wait_for`, instead of sleeping a fixed time and hoping the state was reached.

The bound on such a wait is how long a broken build may hang a test, not a
behavioural requirement: it is far larger than the wait ever takes, so a loaded
machine only makes the test slower, never red. Where the requirement itself is a
time (a grace period, a lease), the test asserts it separately, generously, and
says why next to the assertion; exact timings belong in virtual time
(``trio.testing.MockClock``), as in tests/test_worker.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import trio

LIMIT = 30.0
"""Default upper bound, in seconds, on a wait for the system to reach a state."""


async def wait_for(
    check: Callable[[], Awaitable[bool] | bool],
    *,
    within: float = LIMIT,
    interval: float = 0.05,
    what: str = "",
) -> float:
    """Poll ``check()`` (plain or async) until it returns true; the seconds it took.

    Raises :class:`AssertionError` naming ``what`` (default: the check's name) if
    it is still false after ``within`` seconds.
    """
    start = trio.current_time()
    with trio.move_on_after(within):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return trio.current_time() - start
            await trio.sleep(interval)
    name = what or getattr(check, "__qualname__", repr(check))
    raise AssertionError(f"not reached within {within:g} s: {name}")
