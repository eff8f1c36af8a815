"""Test your own handlers against a real (in-process) broker.

::

    async def test_send_email():
        async with trioq.testing.open_test_broker() as broker:
            await broker.client.submit("email:send", {"to": "a@example.com"})
            await broker.run_worker_until_idle(worker)
            assert (await broker.client.stats())["completedTotal"] == 1

The test functions are ``async``: with pytest, install pytest-trio and turn on its trio
mode (``trio_mode = true`` under ``[tool.pytest.ini_options]``), or mark each test
``@pytest.mark.trio``.

The broker is the real engine and HTTP app on a :class:`~trioq.MemoryStorage`,
reached through ``httpx.ASGITransport`` (no socket), so tests run under
``trio.testing.MockClock(autojump_threshold=0)`` too (pytest-trio's
``autojump_clock`` fixture): stored times are derived from trio's clock.

An exception raised in the ``async with open_test_broker()`` block comes out as it
is, not wrapped in an exception group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import trio

from .broker._api import BrokerApi
from .broker._http import create_app
from .client import Client
from .core._config import EngineConfig
from .core._engine import Engine
from .core._state import Limits
from .storage._memory import MemoryStorage
from .worker._worker import Worker

TEST_URL = "http://trioq.test"
"""The URL of the in-process test broker (served through ``httpx.ASGITransport``; no
socket is bound)."""
_EPOCH_MS = 1_700_000_000_000


def trio_wall_clock() -> int:
    """Stored times for tests: milliseconds derived from ``trio.current_time()``."""
    return _EPOCH_MS + int(trio.current_time() * 1000)


class UnhandledJobs(AssertionError):
    """:meth:`TestBroker.run_worker_until_idle` found queued jobs of types the worker
    has no handler for, so the queue could never become idle."""


@dataclass
class TestBroker:
    """An in-process broker: its engine, its ASGI app and a client bound to it."""

    __test__ = False  # not a pytest test class

    engine: Engine
    storage: MemoryStorage
    transport: httpx.ASGITransport
    client: Client

    def make_client(self, **kwargs: object) -> Client:
        """Another client bound to this broker (close it, or use ``async with``)."""
        return Client(TEST_URL, transport=self.transport, **kwargs)  # type: ignore[arg-type]

    def attach(self, worker: Worker) -> Worker:
        """Point ``worker`` at this broker (shares the in-process client)."""
        worker._client = self.client
        return worker

    async def run_worker_until_idle(
        self,
        worker: Worker,
        *,
        idle_polls: int = 2,
        timeout: float = 60.0,  # noqa: ASYNC109 - a safety net in (virtual) seconds
    ) -> None:
        """Run ``worker`` until no job is unclaimed or in progress, then drain it.

        Delayed jobs and retries count as pending, so a test of retry backoff runs
        until the job completes or is dead-lettered (use MockClock to skip the waits).
        A queued job of a type ``worker`` has no handler for raises
        :class:`UnhandledJobs` naming the types (after draining the worker);
        ``timeout`` bounds the whole run (``trio.TooSlowError``, saying what was still
        pending). A worker can be run again after this returns.
        """
        self.attach(worker)
        unhandled: dict[str, int] = {}
        try:
            with trio.fail_after(timeout):
                async with trio.open_nursery() as nursery:
                    await nursery.start(worker.run)
                    quiet = 0
                    while quiet < idle_polls:
                        unhandled = self._unhandled(worker)
                        if unhandled:
                            break
                        await trio.sleep(worker.settings.poll_interval)
                        state = self.engine.state
                        busy = state is not None and (len(state.jobs) > 0 or bool(worker.active))
                        quiet = 0 if busy else quiet + 1
                    worker.drain()
        except trio.TooSlowError:
            state = self.engine.state
            jobs = list(state.jobs.values()) if state is not None else []
            raise trio.TooSlowError(
                f"run_worker_until_idle: not idle after {timeout:g} s; {len(jobs)} job(s) "
                f"still queued or running, of types {sorted({job.type for job in jobs})}"
            ) from None
        if unhandled:
            types = ", ".join(
                f"{t!r} ({n} job{'s' if n != 1 else ''})" for t, n in unhandled.items()
            )
            raise UnhandledJobs(
                f"the queue holds jobs of type(s) the worker has no handler for: {types}; "
                f"it handles {sorted(worker.handlers)}"
            )

    def _unhandled(self, worker: Worker) -> dict[str, int]:
        """Queued jobs by type, for the types ``worker`` cannot take."""
        counts: dict[str, int] = {}
        state = self.engine.state
        if state is not None:
            for job in state.jobs.values():
                if job.type not in worker.handlers:
                    counts[job.type] = counts.get(job.type, 0) + 1
        return dict(sorted(counts.items()))


@asynccontextmanager
async def open_test_broker(
    *,
    group_commit_interval: float = 0.0,
    job_lease: float = 30.0,
    limits: Limits | None = None,
    token: str | None = None,
    job_lease_ms: int | None = None,
) -> AsyncIterator[TestBroker]:
    """Start an in-process broker; it stops (and releases its lease) on exit.

    Durations are seconds, as everywhere in trioq's code: ``job_lease`` is the lease
    a claimed job gets (the ``leaseMs`` the worker sees, in milliseconds).
    ``job_lease_ms`` is its older spelling, still understood. ``limits`` replaces
    both (and every other bound of the queue model).

    An exception from the block is re-raised as it is, after the broker stopped,
    rather than wrapped in the exception group of the broker's nursery.
    """
    if job_lease_ms is None:
        job_lease_ms = max(1, round(job_lease * 1000))
    storage = MemoryStorage()
    engine = Engine(
        storage,
        url=TEST_URL,
        config=EngineConfig(group_commit_interval=group_commit_interval),
        limits=limits or Limits(job_lease_ms=job_lease_ms),
        wall_clock=trio_wall_clock,
    )
    app = create_app(BrokerApi(engine), token=token)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    raised: BaseException | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        async with Client(TEST_URL, transport=transport, token=token) as client:
            try:
                yield TestBroker(engine, storage, transport, client)
            except BaseException as exc:
                # raised outside the nursery below, so the test sees it unwrapped
                raised = exc
            finally:
                engine.stop()
    if raised is not None:
        try:
            raise raised
        finally:
            raised = None  # no reference cycle through the traceback
