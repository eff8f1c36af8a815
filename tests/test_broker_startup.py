"""A broker between binding its port and leading: what it answers, and that loading
a large queue does not stop it answering its probes."""

from __future__ import annotations

import random
import time
from pathlib import Path

import httpx
import pytest
import trio

from _broker_proc import broker_argv, subprocess_env
from _servers import free_port
from trioq import MemoryStorage, Versioned
from trioq.broker._service import Broker
from trioq.broker._settings import BrokerSettings
from trioq.core._state import LeaderInfo, Limits, NewJob, QueueState
from trioq.storage._file import FileStorage


class GatedStorage(MemoryStorage):
    """Memory storage whose first read waits for :attr:`gate`."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = trio.Event()
        self.gate = trio.Event()

    async def read(self, key: str) -> Versioned | None:
        self.entered.set()
        await self.gate.wait()
        return await super().read(key)


async def test_a_starting_broker_says_so(nursery: trio.Nursery) -> None:
    """Before it leads or knows the leader: liveness 200, readiness 503, and every
    API call a 503 ``NotLeader`` with ``leader: null`` and ``role: "starting"`` (a
    client waits and retries instead of looking for another leader)."""
    storage = GatedStorage()
    broker = Broker(BrokerSettings(port=0, storage="memory"), storage=storage)
    nursery.start_soon(broker.run)
    await storage.entered.wait()  # bound, electing
    assert broker.url is not None
    async with httpx.AsyncClient(base_url=broker.url, timeout=30) as http:
        health = await http.get("/healthz")
        assert health.status_code == 200
        assert health.json()["role"] == "starting"
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["role"] == "starting"
        submit = await http.post("/v1/jobs", json={"payload": 1})
        assert submit.status_code == 503
        body = submit.json()
        assert body["_tag"] == "NotLeader"
        assert body["leader"] is None
        assert body["role"] == "starting"
        storage.gate.set()
        await broker.engine.wait_leader()
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.post("/v1/jobs", json={"payload": 1})).status_code == 200
        assert (await http.get("/healthz")).json()["role"] == "leader"
    broker.stop()


def _large_document(jobs: int) -> bytes:
    """A format-1 document of ``jobs`` queued jobs (100-byte payloads) whose leader
    released its lease, so that a broker started on it takes over (and loads it)."""
    state = QueueState(limits=Limits(max_queued=jobs), rng=random.Random(1))
    now = int(time.time() * 1000)
    for start in range(0, jobs, 5000):
        batch = range(start, min(jobs, start + 5000))
        state.enqueue([NewJob({"data": "x" * 89}, type=f"t{i % 4}") for i in batch], now)
    state.seq = 7
    state.leader = LeaderInfo("gone", "http://127.0.0.1:9", 3, now, released=True)
    return state.encode()


@pytest.mark.slow
async def test_a_broker_loading_100k_jobs_keeps_answering_healthz(tmp_path: Path) -> None:
    """Loading runs in steps with checkpoints between them: while a broker takes
    over a 100,000-job queue, every ``/healthz`` probe (500 ms timeout, as a standby
    probes) is answered."""
    data_dir = tmp_path / "data"
    document = await trio.to_thread.run_sync(_large_document, 100_000)
    await FileStorage(data_dir).create("queue.json", document)
    port = free_port()
    args = ["--port", str(port), "--data-dir", str(data_dir), "--max-queued", "200000"]
    starting = leader = 0
    timeouts: list[float] = []
    with (tmp_path / "log").open("wb") as log:
        process = await trio.lowlevel.open_process(
            broker_argv(args), env=subprocess_env(), stdout=log, stderr=log
        )
        try:
            async with httpx.AsyncClient(timeout=0.5) as http:
                with trio.fail_after(120):
                    while leader == 0:
                        sent = trio.current_time()
                        try:
                            role = (await http.get(f"http://127.0.0.1:{port}/healthz")).json()
                        except httpx.ConnectError:  # not bound yet
                            await trio.sleep(0.02)
                            continue
                        except httpx.TimeoutException:
                            timeouts.append(trio.current_time() - sent)
                            continue
                        if role["role"] == "leader":
                            leader += 1
                        else:
                            starting += 1
                        await trio.sleep(0.02)
        finally:
            process.terminate()
            with trio.move_on_after(20):
                await process.wait()
            if process.returncode is None:
                process.kill()
    text = (tmp_path / "log").read_text()
    assert "took over" in text, text
    assert timeouts == [], text
    # the probes did overlap the load (1-2 s at 100,000 jobs): dozens answered
    assert starting >= 5, (starting, text)
