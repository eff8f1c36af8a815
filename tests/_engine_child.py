"""A child process for tests/test_engine_failover.py: an Engine on FileStorage, for real.

Run as ``python _engine_child.py DIRECTORY BROKER_ID HEARTBEAT_MS TIMEOUT_MS``.

The child runs an :class:`~trioq.core._engine.Engine` on ``trioq.FileStorage(DIRECTORY)``
with broker id BROKER_ID, a 10 ms group commit interval, the given broker heartbeat
interval and timeout, and a 50 ms standby poll. It prints, one per line, flushed:

- ``role leader EPOCH`` or ``role standby`` once the engine has been elected;
- ``acked ID`` after each enqueue of job ID was acknowledged (ids are
  ``BROKER_ID-0``, ``BROKER_ID-1``, ...; two producers enqueue them, one job at a
  time, as long as the engine leads);
- ``failed ID TAG`` when an enqueue was answered with an error (TAG is its ``_tag``);
- ``frozen`` after the ``freeze`` command took effect;
- ``stopped`` after a graceful stop (SIGTERM) released the lease.

Commands on stdin, one per line:

- ``freeze``: every storage call the engine makes from now on waits (calls already
  under way finish), like a process paused between two requests; the engine still
  believes it leads;
- ``thaw``: let the waiting calls go on.

SIGTERM stops the engine gracefully (pending mutations committed, lease released)
and exits 0. The parent ends the child with SIGKILL to simulate a crash.
"""

from __future__ import annotations

import os
import signal
import sys

import trio

import trioq
from trioq import Storage, Versioned
from trioq.core._config import EngineConfig
from trioq.core._engine import Engine, Role
from trioq.core._state import NewJob

PRODUCERS = 2
PRODUCER_PAUSE = 0.005


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Freezable:
    """A storage wrapper whose calls can be held at the door (see ``freeze``)."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.open = trio.Event()
        self.open.set()

    def describe(self) -> str:
        return self.inner.describe()

    async def _door(self) -> None:
        await self.open.wait()

    async def read(self, key: str) -> Versioned | None:
        await self._door()
        return await self.inner.read(key)

    async def version(self, key: str) -> str | None:
        await self._door()
        return await self.inner.version(key)

    async def write(self, key: str, data: bytes, *, if_match: str) -> str:
        await self._door()
        return await self.inner.write(key, data, if_match=if_match)

    async def create(self, key: str, data: bytes) -> str:
        await self._door()
        return await self.inner.create(key, data)

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        await self._door()
        return await self.inner.list_keys(prefix, start_after=start_after, limit=limit)

    async def delete_key(self, key: str) -> None:
        await self._door()
        await self.inner.delete_key(key)


async def produce(engine: Engine, broker_id: str, counter: list[int]) -> None:
    while True:
        await engine.wait_leader()
        job_id = f"{broker_id}-{counter[0]}"
        counter[0] += 1
        try:
            await engine.enqueue([NewJob(payload={"n": job_id}, id=job_id)])
        except trioq.TrioqError as exc:
            say(f"failed {job_id} {exc.tag}")
        else:
            say(f"acked {job_id}")
        await trio.sleep(PRODUCER_PAUSE)


async def commands(storage: Freezable) -> None:
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line == b"freeze":
                storage.open = trio.Event()
                say("frozen")
            elif line == b"thaw":
                storage.open.set()


async def main(
    directory: str, broker_id: str, heartbeat_ms: int, timeout_ms: int, layout: str
) -> None:
    storage = Freezable(trioq.FileStorage(directory))
    config = EngineConfig(
        group_commit_interval=0.010,
        broker_heartbeat_interval=heartbeat_ms / 1000,
        broker_heartbeat_timeout=timeout_ms / 1000,
        standby_poll_interval=0.050,
        layout=layout,
    )
    engine = Engine(storage, broker_id=broker_id, url=f"http://{broker_id}", config=config)
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            ran = trio.Event()

            async def run_engine(*, task_status: trio.TaskStatus[Role]) -> None:
                try:
                    await engine.run(task_status=task_status)
                finally:
                    ran.set()

            role = await nursery.start(run_engine)
            say(f"role leader {engine.epoch}" if role is Role.LEADER else "role standby")
            counter = [0]
            for _ in range(PRODUCERS):
                nursery.start_soon(produce, engine, broker_id, counter)
            nursery.start_soon(commands, storage)
            async for _ in signals:
                engine.stop()
                break
            await ran.wait()  # the last commit released the lease
            nursery.cancel_scope.cancel()
    say("stopped")


if __name__ == "__main__":
    directory, broker_id, heartbeat_ms, timeout_ms, layout = sys.argv[1:]
    trio.run(main, directory, broker_id, int(heartbeat_ms), int(timeout_ms), layout)
