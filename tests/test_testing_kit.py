"""trioq.testing: an in-process broker for users' handler tests, under MockClock."""

from __future__ import annotations

import trio

import trioq
from trioq.testing import open_test_broker


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
