"""trioq.testing: an in-process broker for users' handler tests, under MockClock."""

from __future__ import annotations

import pytest
import trio

import trioq
from trioq.testing import UnhandledJobs, open_test_broker


async def test_worker_runs_handlers_retries_and_dead_letters(
    autojump_clock: trio.abc.Clock,
) -> None:
    worker = trioq.Worker(concurrency=5)
    sums: list[int] = []
    attempts: dict[str, int] = {}

    @worker.job("add")
    async def add(payload: dict[str, int], ctx: trioq.JobContext) -> None:
        await trio.sleep(10)
        sums.append(payload["a"] + payload["b"])

    @worker.job("bad")
    async def bad(payload: int, ctx: trioq.JobContext) -> None:
        attempts[ctx.id] = ctx.attempt
        raise RuntimeError("boom")

    async with open_test_broker() as broker:
        for i in range(5):
            await broker.client.submit("add", {"a": i, "b": 1})
        failing = await broker.client.submit("bad", 3, max_attempts=2)
        invalid = await broker.client.submit("bad", "not an int")
        started = trio.current_time()
        await broker.run_worker_until_idle(worker)

        assert sorted(sums) == [1, 2, 3, 4, 5]
        stats = await broker.client.stats()
        assert stats["completedTotal"] == 5
        assert stats["total"] == 0
        # 5 concurrent 10 s jobs finish together: one round, not five
        assert trio.current_time() - started < 30

        dead = {d["jobId"]: d for d in (await broker.client.dead())["jobs"]}
        assert dead[failing]["reason"] == "exhausted"
        assert dead[failing]["attempts"] == 2
        assert dead[failing]["lastError"] == "RuntimeError: boom"
        assert attempts[failing] == 2
        # an invalid payload never reaches the handler and is not retried
        assert dead[invalid]["reason"] == "final"
        assert dead[invalid]["attempts"] == 1
        assert "valid integer" in dead[invalid]["lastError"]
        assert invalid not in attempts


async def test_jobs_no_handler_takes_are_named_in_one_plain_exception(
    autojump_clock: trio.abc.Clock,
) -> None:
    worker = trioq.Worker()
    done: list[int] = []

    @worker.job("known")  # async: a thread would race the autojumping clock
    async def known(payload: int) -> None:
        done.append(payload)

    async def run() -> None:
        async with open_test_broker() as broker:
            await broker.client.submit("known", 1)
            await broker.client.submit("email:send", {}, delay=5)
            await broker.client.submit("email:send", {})
            await broker.client.submit("other", None)
            await broker.run_worker_until_idle(worker)

    started = trio.current_time()
    # not an exception group: pytest.raises matches only the exception itself
    with pytest.raises(UnhandledJobs) as caught:
        await run()
    assert str(caught.value) == (
        "the queue holds jobs of type(s) the worker has no handler for: "
        "'email:send' (2 jobs), 'other' (1 job); it handles ['known']"
    )
    assert trio.current_time() - started < 1  # at once, not after the 60 s timeout
    # the worker was drained and can run again
    async with open_test_broker() as broker:
        await broker.client.submit("known", 2)
        await broker.run_worker_until_idle(worker)
    assert done[-1] == 2


async def test_a_run_that_never_gets_idle_says_what_is_pending(
    autojump_clock: trio.abc.Clock,
) -> None:
    worker = trioq.Worker(shutdown_grace=1)

    @worker.job("stuck")
    async def stuck(payload: None) -> None:
        await trio.sleep_forever()

    async def run() -> None:
        async with open_test_broker() as broker:
            await broker.client.submit("stuck", None)
            await broker.run_worker_until_idle(worker, timeout=5)

    with pytest.raises(trio.TooSlowError) as caught:
        await run()
    assert str(caught.value) == (
        "run_worker_until_idle: not idle after 5 s; 1 job(s) still queued or running, "
        "of types ['stuck']"
    )


async def test_the_job_lease_is_given_in_seconds(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_broker(job_lease=2.5) as broker:
        await broker.client.submit("t", 1)
        [claimed] = await broker.client.claim("w")
        assert claimed.lease_ms == 2500
    async with open_test_broker(job_lease_ms=1500) as broker:  # the older spelling
        await broker.client.submit("t", 1)
        [claimed] = await broker.client.claim("w")
        assert claimed.lease_ms == 1500
