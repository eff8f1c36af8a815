"""Test your own handlers against a real (in-process) broker.

::

    async def test_send_email():
        async with trioq.testing.open_test_broker() as broker:
            await broker.client.submit("email:send", {"to": "a@example.com"})
            await broker.run_worker_until_idle(worker)
            assert (await broker.client.stats())["completedTotal"] == 1

The broker is the real engine and HTTP app on a :class:`~trioq.MemoryStorage`,
reached through ``httpx.ASGITransport`` (no socket), so tests run under
``trio.testing.MockClock(autojump_threshold=0)`` too: stored times are derived from
trio's clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import trio

from ._api import BrokerApi
from ._client import Client
from ._config import EngineConfig
from ._engine import Engine
from ._http import create_app
from ._memory_storage import MemoryStorage
from ._state import Limits
from ._worker import Worker

TEST_URL = "http://trioq.test"
_EPOCH_MS = 1_700_000_000_000


def trio_wall_clock() -> int:
    """Stored times for tests: milliseconds derived from ``trio.current_time()``."""
    return _EPOCH_MS + int(trio.current_time() * 1000)


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
        ``timeout`` bounds the whole run (``trio.TooSlowError``). A worker can be run
        again after this returns.
        """
        self.attach(worker)
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                quiet = 0
                while quiet < idle_polls:
                    await trio.sleep(worker.settings.poll_interval)
                    state = self.engine.state
                    busy = state is not None and (len(state.jobs) > 0 or bool(worker.active))
                    quiet = 0 if busy else quiet + 1
                worker.drain()


@asynccontextmanager
async def open_test_broker(
    *,
    group_commit_interval: float = 0.0,
    job_lease_ms: int = 30_000,
    limits: Limits | None = None,
    token: str | None = None,
) -> AsyncIterator[TestBroker]:
    """Start an in-process broker; it stops (and releases its lease) on exit."""
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
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        async with Client(TEST_URL, transport=transport, token=token) as client:
            try:
                yield TestBroker(engine, storage, transport, client)
            finally:
                engine.stop()
