"""End-to-end broker benchmark: a broker subprocess, load from this process.

The load goes over the broker's WebSocket JSON-RPC API (many calls in flight on a few
connections): an httpx request costs the load generator more CPU than the broker
spends on it, and both share this machine's two cores. For the HTTP stack's own
ceiling, point ``wrk`` at a broker (``docs/performance.md``).

    python benchmarks/bench_broker.py [--quick] [--storage file|memory]

Prints two tables:

1. Writes per second against the group commit interval, under a constant submit load
   (osqueue was measured here at 260-340 writes/s whatever the interval), with the
   broker's own CAS conflicts (osqueue: 15-41 % of its writes).
2. Jobs per second (submit + claim + complete) against queue depth (osqueue slowed
   from 679 to 105 jobs/s as its queue grew).

Numbers are from one run on a shared machine: compare rows within a run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import trio
from httpx_ws import AsyncWebSocketSession, aconnect_ws

import trioq

READY = re.compile(r"listening on (\S+) as (\w+)")


@contextmanager
def broker_process(storage: str, data_dir: str, *extra: str) -> Iterator[str]:
    cmd = [
        sys.executable,
        "-m",
        "trioq.broker",
        "--port",
        "0",
        "--storage",
        storage,
        "--data-dir",
        data_dir,
        "--max-queued",
        "1000000",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        url = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            match = READY.search(line)
            if match:
                url = match.group(1)
                break
        if url is None:
            raise RuntimeError("broker did not start")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Rpc:
    """JSON-RPC over one WebSocket, many calls in flight."""

    def __init__(self, ws: AsyncWebSocketSession) -> None:
        self.ws = ws
        self.ids = itertools.count()
        self.waiting: dict[int, tuple[trio.Event, list[Any]]] = {}

    async def read(self) -> None:
        while True:
            message = orjson.loads(await self.ws.receive_text())
            event, slot = self.waiting.pop(message["id"])
            slot.append(message)
            event.set()

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        call_id = next(self.ids)
        event, slot = trio.Event(), []
        self.waiting[call_id] = (event, slot)
        await self.ws.send_text(
            orjson.dumps({"id": call_id, "method": method, "params": params}).decode()
        )
        await event.wait()
        reply = slot[0]
        if not reply["ok"]:
            raise RuntimeError(reply["error"])
        return reply["result"]


async def metric(client: httpx.AsyncClient, url: str, name: str) -> float:
    text = (await client.get(f"{url}/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def interval_row(storage: str, interval_ms: int, seconds: float, in_flight: int) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        broker_process(storage, tmp, "--group-commit-interval-ms", str(interval_ms)) as url,
    ):
        submitted = 0
        async with httpx.AsyncClient() as raw, aconnect_ws(f"{url}/v1/ws", raw) as ws:
            rpc = Rpc(ws)
            commits0 = await metric(raw, url, "trioq_commits_total")
            started = time.monotonic()

            async def produce() -> None:
                nonlocal submitted
                while time.monotonic() - started < seconds:
                    await rpc.call("submitJob", {"type": "bench", "payload": {"n": submitted}})
                    submitted += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(rpc.read)
                async with trio.open_nursery() as producers:
                    for _ in range(in_flight):
                        producers.start_soon(produce)
                nursery.cancel_scope.cancel()
            elapsed = time.monotonic() - started
            commits = await metric(raw, url, "trioq_commits_total") - commits0
            conflicts = await metric(raw, url, "trioq_commit_conflicts_total")
        print(
            f"| {interval_ms:>6} ms | {in_flight:>9} | {submitted / elapsed:>9.0f} | "
            f"{commits / elapsed:>8.1f} | {commits / elapsed * 60:>10.0f} | "
            f"{submitted / max(commits, 1):>10.1f} | {conflicts:>9.0f} |"
        )


async def depth_row(storage: str, depth: int, seconds: float, workers: int) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        broker_process(storage, tmp, "--group-commit-interval-ms", "50") as url,
    ):
        async with trioq.Client(url, timeout=60) as client:
            for start in range(0, depth, 5000):
                await client.submit_many(
                    [
                        trioq.JobSpec("backlog", {"pad": "x" * 80}, delay=3600)
                        for _ in range(min(5000, depth - start))
                    ]
                )
        done = 0
        async with httpx.AsyncClient() as raw, aconnect_ws(f"{url}/v1/ws", raw) as ws:
            rpc = Rpc(ws)
            started = time.monotonic()

            async def work(index: int) -> None:
                nonlocal done
                worker_id = f"bench-{index}"
                while time.monotonic() - started < seconds:
                    await rpc.call("submitJob", {"type": "hot", "payload": {"i": index}})
                    claimed = await rpc.call(
                        "claimJobs", {"workerId": worker_id, "types": ["hot"], "max": 1}
                    )
                    for job in claimed["jobs"]:
                        await rpc.call(
                            "completeJob",
                            {
                                "jobId": job["jobId"],
                                "workerId": worker_id,
                                "attempt": job["attempt"],
                            },
                        )
                        done += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(rpc.read)
                async with trio.open_nursery() as pool:
                    for i in range(workers):
                        pool.start_soon(work, i)
                nursery.cancel_scope.cancel()
            elapsed = time.monotonic() - started
            size = len((await raw.get(f"{url}/state")).content)
        print(f"| {depth:>7} | {size / 1e6:>8.1f} MB | {workers:>7} | {done / elapsed:>8.0f} |")


async def main(quick: bool, storage: str) -> None:
    seconds = 3.0 if quick else 8.0
    print(
        f"trioq {trioq.__version__}, storage={storage}, {os.cpu_count()} CPUs, {seconds:.0f} s/row\n"
    )
    print("| interval | in flight | submits/s | writes/s | writes/min | jobs/write | conflicts |")
    print("|---|---|---|---|---|---|---|")
    for interval in (50, 500, 2000):
        await interval_row(storage, interval, max(seconds, 6.0 if interval == 2000 else 0), 64)
    print("\n| depth | document | workers | jobs/s |")
    print("|---|---|---|---|")
    depths = (0, 10_000) if quick else (0, 10_000, 50_000, 100_000)
    for depth in depths:
        await depth_row(storage, depth, seconds, 60)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--storage", default="file", choices=["file", "memory"])
    args = parser.parse_args()
    trio.run(main, args.quick, args.storage)
