"""Progress reports: ``await ctx.progress(value)`` reaches the broker with a heartbeat
and shows in the job's record while it runs; a new attempt starts without one; a
report the broker refuses raises in the handler (virtual time, in-process broker)."""

from __future__ import annotations

import pytest
import trio

import trioq
from trioq._wire import NewJob
from trioq.core._state import Limits, QueueState
from trioq.testing import open_test_broker


async def test_progress_shows_while_the_job_runs(autojump_clock: trio.abc.Clock) -> None:
    worker = trioq.Worker()
    reported = trio.Event()
    release = trio.Event()
    refused: list[str] = []

    @worker.job("import")
    async def run_import(payload: int, ctx: trioq.JobContext) -> None:
        await ctx.progress({"done": 10, "of": payload})
        with pytest.raises(ValueError, match="progress is not JSON"):
            await ctx.progress({1, 2})
        try:
            await ctx.progress("x" * 100)
        except ValueError as exc:
            refused.append(str(exc))
        await ctx.progress({"done": 50, "of": payload})
        reported.set()
        await release.wait()
        if ctx.attempt == 1:
            raise RuntimeError("once")

    async with open_test_broker(limits=Limits(max_progress_bytes=64)) as broker:
        client = broker.client
        job_id = await client.submit("import", 100)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(broker.run_worker_until_idle, worker)
            await reported.wait()
            record = await client.get(job_id)
            assert (record["status"], record["progress"]) == (
                "in_progress",
                {"done": 50, "of": 100},
            )
            release.set()  # attempt 1 fails; attempt 2 reports again and completes
        assert (await client.get(job_id))["attempts"] == 2
        assert refused
        assert "over the limit of 64" in refused[0]


async def test_a_context_without_a_worker_cannot_report() -> None:
    ctx = trioq.JobContext("j", "t", 1, "w", 30_000)
    with pytest.raises(RuntimeError, match="cannot report progress"):
        await ctx.progress(1)


def test_a_retry_starts_without_the_previous_attempts_progress() -> None:
    state = QueueState()
    state.enqueue([NewJob(1, id="j")], 1000)
    state.claim("w", 1000)
    state.heartbeat("j", "w", 1100, progress={"step": 3})
    assert b'"progress":{"step":3}' in state.jobs["j"].encode()
    state.fail("j", "w", 1200, error="x", retry_in_ms=0)
    assert state.jobs["j"].progress_json is None
