"""A rolling upgrade from the single-document layout to the log layout, with real
broker processes on one data directory and a worker's calls in between (the steps of
docs/log-layout.md, "Migration and upgrades")."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

from _broker_proc import BrokerProcess, broker_process, subprocess_env
from _waits import wait_for
from trioq.storage._file import FileStorage

MARKER = b'{"format":"trioq.queue","formatVersion":2,"layout":"log"}'


async def health(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{url}/healthz")
        body: dict[str, Any] = answer.json()
        return body


async def leads(broker: BrokerProcess) -> None:
    """Wait until ``broker`` answers as the leader."""

    async def leading() -> bool:
        return (await health(broker.url))["role"] == "leader"

    await wait_for(leading, what=f"{broker.url} leads")


async def submit(url: str, job_id: str) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(f"{url}/v1/jobs", json={"id": job_id, "payload": job_id})
        assert answer.status_code == 200, answer.text


async def claim_and_complete(url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        claimed = (await http.post(f"{url}/v1/jobs/claim", json={"workerId": "w"})).json()
        done = await http.post(
            f"{url}/v1/jobs/{claimed['jobId']}/complete",
            json={"workerId": "w", "attempt": claimed["attempt"]},
        )
        assert done.status_code in (200, 204), done.text
        job_id: str = claimed["jobId"]
        return job_id


async def stats(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        body: dict[str, Any] = (await http.get(f"{url}/v1/stats")).json()
        return body


async def test_a_rolling_upgrade_to_the_log_layout_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    base = ["--data-dir", str(data), "--port", "0", "--broker-heartbeat-timeout-ms", "3000"]
    base += ["--broker-heartbeat-interval-ms", "500"]
    old_args = [*base, "--layout", "document"]
    new_args = [*base, "--layout", "log"]
    async with broker_process(old_args, log_path=tmp_path / "a1.log") as a:
        await leads(a)
        for n in range(5):
            await submit(a.url, f"before-{n}")
        first = await claim_and_complete(a.url)
        # 1. a standby on the new layout stands by on the format-1 document
        async with broker_process(new_args, log_path=tmp_path / "b.log") as b:
            assert (await health(b.url))["role"] == "standby"
            await submit(a.url, "during")
            # 2. the old leader stops gracefully: the new standby converts and leads
            a.terminate()
            assert await a.wait(within=30) == 0, a.log()
            await leads(b)
            marker = await FileStorage(data).read("queue.json")
            assert marker is not None
            assert marker.data == MARKER
            assert "converted queue.json to the log layout" in b.log()
            counts = await stats(b.url)
            assert counts["completedTotal"] == 1
            assert counts["unclaimed"] == 5  # four "before", one "during"
            # 3. a broker still on the old layout refuses the converted queue, writes
            # nothing, and says what to do
            with trio.fail_after(60):
                refused = await trio.run_process(
                    [sys.executable, "-m", "trioq.broker", *old_args],
                    env=subprocess_env(None),
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            assert refused.returncode == 1
            assert b"--layout log" in refused.stderr
            assert (await FileStorage(data).read("queue.json")) == marker
            # 4. restarted on the new layout, it stands by and takes over in turn
            async with broker_process(new_args, log_path=tmp_path / "a2.log") as a2:
                assert (await health(a2.url))["role"] == "standby"
                await submit(b.url, "after")
                b.terminate()
                assert await b.wait(within=30) == 0, b.log()
                await leads(a2)
                done = {first} | {await claim_and_complete(a2.url) for _ in range(6)}
                assert done == {f"before-{n}" for n in range(5)} | {"during", "after"}
                counts = await stats(a2.url)
                assert (counts["completedTotal"], counts["unclaimed"]) == (7, 0)
    # the stored state, read without a broker, agrees
    state = await FileStorage(data).read("queue.json")
    assert state is not None
    assert orjson.loads(state.data)["formatVersion"] == 2
