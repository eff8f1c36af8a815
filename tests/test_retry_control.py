"""Retry control in the handler's hands: ``trioq.Retry(delay=)``, ``trioq.Fatal``, a
per-handler ``max_attempts`` and ``backoff``, and the context's ``max_attempts`` and
``last_error`` (in virtual time, on an in-process broker)."""

from __future__ import annotations

import itertools

import pytest
import trio

import trioq
from trioq.testing import open_test_broker


async def test_retry_with_a_delay_then_success_sees_the_previous_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    worker = trioq.Worker()
    seen: list[tuple[int, int | None, str | None, float]] = []

    @worker.job("flaky")
    async def flaky(payload: int, ctx: trioq.JobContext) -> str:
        seen.append((ctx.attempt, ctx.max_attempts, ctx.last_error, trio.current_time()))
        if ctx.attempt == 1:
            raise trioq.Retry("the mail server said 421", delay=40)
        return "sent"

    async with open_test_broker() as broker:
        job_id = await broker.client.submit("flaky", 1, max_attempts=4)
        await broker.run_worker_until_idle(worker)
        assert await broker.client.result(job_id) == "sent"
    (first, total, no_error, t1), (second, total2, error, t2) = seen
    assert (first, total, no_error) == (1, 4, None)
    assert (second, total2, error) == (2, 4, "Retry: the mail server said 421")
    assert 40 <= t2 - t1 < 45  # the handler's delay, not the broker's 1 s backoff


async def test_fatal_dead_letters_at_once(autojump_clock: trio.abc.Clock) -> None:
    worker = trioq.Worker()
    calls = 0

    @worker.job("charge")
    async def charge(payload: dict[str, str]) -> None:
        nonlocal calls
        calls += 1
        raise trioq.Fatal(f"card {payload['card']} was declined")

    async with open_test_broker() as broker:
        job_id = await broker.client.submit("charge", {"card": "x1"}, max_attempts=5)
        await broker.run_worker_until_idle(worker)
        with pytest.raises(trioq.JobFailed, match="card x1 was declined") as failed:
            await broker.client.result(job_id)
    assert (calls, failed.value.reason) == (1, "final")


async def test_a_handler_policy_caps_attempts_and_sets_the_backoff(
    autojump_clock: trio.abc.Clock,
) -> None:
    worker = trioq.Worker()
    starts: list[float] = []

    @worker.job("sync", max_attempts=3, backoff=5)
    async def sync(payload: int) -> None:
        starts.append(trio.current_time())
        raise RuntimeError("upstream down")

    async with open_test_broker() as broker:
        job_id = await broker.client.submit("sync", 1, max_attempts=10)
        await broker.run_worker_until_idle(worker)
        with pytest.raises(trioq.JobFailed, match="upstream down") as failed:
            await broker.client.result(job_id)
        record = await broker.client.get(job_id)
    assert len(starts) == 3  # the handler's cap, not the job's 10
    assert (failed.value.reason, record["attempts"]) == ("final", 3)
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert 5 <= gaps[0] < 6
    assert 10 <= gaps[1] < 11  # doubling


def test_bad_policies_fail_at_decoration() -> None:
    worker = trioq.Worker()
    with pytest.raises(ValueError, match="max_attempts must be an integer >= 1"):
        worker.job("a", max_attempts=0)
    with pytest.raises(TypeError, match="backoff must be seconds"):
        worker.job("a", backoff="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delay must be >= 0"):
        trioq.Retry(delay=-1)
