"""Job results: a handler's return value is kept with its finished job, read back with
``Client.result`` (a long poll) and shown by ``GET /v1/jobs/{id}``; a dead or
cancelled job raises ``JobFailed``; a result the broker cannot keep fails the job
with a clear error. In virtual time on an in-process broker, and across a failover
between two broker processes on SeaweedFS."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import trio
from pydantic import BaseModel

import trioq
from _broker_proc import wait_until
from _servers import S3Server
from test_broker_failover import is_ready, start_pair
from trioq.core._state import Limits
from trioq.testing import TEST_URL, open_test_broker


class Report(BaseModel):
    rows: int
    title: str


def make_worker() -> trioq.Worker:
    worker = trioq.Worker(concurrency=4)

    @worker.job("sum")
    async def add(payload: list[int]) -> dict[str, int]:
        return {"sum": sum(payload)}

    @worker.job("report")
    def build(payload: str) -> Report:  # a thread: sync handlers return values too
        return Report(rows=3, title=payload)

    @worker.job("nothing")
    async def nothing(payload: int) -> None:
        pass

    @worker.job("boom")
    async def boom(payload: int) -> None:
        raise RuntimeError(f"boom {payload}")

    @worker.job("big")
    async def big(payload: int) -> str:
        return "x" * payload

    @worker.job("odd")
    async def odd(payload: int) -> object:
        return {1, 2}  # a set: not JSON

    return worker


async def test_results_come_back_and_failures_raise(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_broker(limits=Limits(max_result_bytes=1000)) as broker:
        client = broker.client
        ids = {
            name: await client.submit(name, payload, max_attempts=1)
            for name, payload in [
                ("sum", [1, 2, 3]),
                ("report", "q4"),
                ("nothing", 0),
                ("boom", 7),
                ("big", 5000),
                ("odd", 0),
            ]
        }
        await broker.run_worker_until_idle(make_worker())
        assert await client.result(ids["sum"]) == {"sum": 6}
        assert await client.result(ids["report"]) == {"rows": 3, "title": "q4"}
        assert await client.result(ids["nothing"]) is None
        record = await client.get(ids["sum"])
        assert (record["status"], record["result"]) == ("completed", {"sum": 6})
        assert "result" not in await client.get(ids["nothing"])
        with pytest.raises(trioq.JobFailed, match="RuntimeError: boom 7") as failed:
            await client.result(ids["boom"])
        assert (failed.value.job_status, failed.value.reason) == ("dead", "exhausted")
        # results the broker cannot keep: the job fails at once, saying why
        with pytest.raises(trioq.JobFailed, match="over the limit of 1000") as too_big:
            await client.result(ids["big"])
        assert too_big.value.reason == "final"
        with pytest.raises(trioq.JobFailed, match="its result cannot be stored"):
            await client.result(ids["odd"])


async def test_result_waits_for_the_job_without_polling_and_times_out(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_broker() as broker:
        client = broker.client
        job_id = await client.submit("sum", [4, 5])
        requests = 0

        async def count(request: httpx.Request) -> None:
            nonlocal requests
            requests += "/result" in request.url.path

        client._http.event_hooks["request"].append(count)  # type: ignore[arg-type]
        with pytest.raises(TimeoutError, match="still unclaimed after 75 s"):
            await client.result(job_id, timeout=75)
        assert requests == 3  # long polls of 30 + 30 + 15 s: no busy loop
        async with trio.open_nursery() as nursery:
            got: list[tuple[object, float]] = []
            completed: list[float] = []

            async def wait_for_it() -> None:
                result = await client.result(job_id)
                got.append((result, trio.current_time()))

            nursery.start_soon(wait_for_it)
            await trio.sleep(10)
            worker = make_worker()
            worker.on_completed(lambda job: completed.append(trio.current_time()))
            await broker.run_worker_until_idle(worker)
        [(result, answered_at)] = got
        assert result == {"sum": 9}
        # answered when the completion committed, not at the end of a 30 s poll
        assert answered_at - completed[0] < 0.5
        # a cancelled job raises too, and an unknown one is JobNotFound
        other = await client.submit("sum", [1], delay=60)
        await client.cancel(other)
        with pytest.raises(trioq.JobFailed, match="cancelled"):
            await client.result(other)
        with pytest.raises(trioq.JobNotFound):
            await client.result("no-such-job")
        answer = await client._http.get(f"{TEST_URL}/v1/jobs/{job_id}/result?waitMs=99999")
        assert answer.status_code == 400


async def test_a_result_survives_a_leader_kill(
    seaweedfs: S3Server, seaweedfs_bucket: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack, httpx.AsyncClient() as http:
        a, b = await start_pair(stack, seaweedfs, seaweedfs_bucket, tmp_path)
        async with trioq.Client([a.url, b.url], retry_deadline=30) as client:
            job_id = await client.submit("t", 1)
            [claimed] = await client.claim("w")
            await client.complete(claimed.id, "w", attempt=claimed.attempt, result={"ok": [1]})
            assert await client.result(job_id) == {"ok": [1]}
            a.kill()
            await wait_until(lambda: is_ready(http, b.url), within=15, what="the standby leads")
            assert await client.result(job_id, timeout=10) == {"ok": [1]}
            assert (await client.get(job_id))["result"] == {"ok": [1]}
