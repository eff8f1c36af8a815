"""The worker's batched fast path, in virtual time against an in-process broker: one
exchange per round for every job's reports (the courier), at most two out plus one
long-poll claim, prefetch, and what a lost exchange does. Exchanges are recorded at
the transport, as the broker receives them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing

import trioq
from trioq.testing import TEST_URL, TestBroker, open_test_broker
from trioq.worker._worker import BACKOFF_BASE

EXACT = 1e-9


class Exchanges(httpx.AsyncBaseTransport):
    """Forwards to ``inner`` and records each exchange (time, body), how many were
    out at once (long-poll claims apart), and how many leases the worker held at
    each (claimed jobs whose outcome it has not handed over yet). ``spoil``
    may turn an exchange's answer (once the broker made it) into a lost one
    ("lost") or a 503 WriteOutcomeUnknown ("unknown")."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.log: list[tuple[float, dict[str, Any]]] = []
        self.out = {False: 0, True: 0}  # by "is a long poll"
        self.peak = {False: 0, True: 0}
        self.spoil: Callable[[dict[str, Any]], str | None] | None = None
        self.late: Callable[[dict[str, Any]], float] | None = None
        """Seconds an exchange's answer is held back after the broker made it (a
        reader that is frozen or starved)."""
        self.worker: trioq.Worker | None = None
        self.held: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/jobs/exchange":
            return await self.inner.handle_async_request(request)
        body = orjson.loads(request.content)
        self.log.append((trio.current_time(), body))  # (``spoil`` sees this very dict)
        if self.worker is not None and self.worker._courier is not None:
            self.held.append(self.worker._courier.held)
        poll = "waitMs" in body.get("claim", {})
        self.out[poll] += 1
        self.peak[poll] = max(self.peak[poll], self.out[poll])
        try:
            response = await self.inner.handle_async_request(request)
        finally:
            self.out[poll] -= 1
        if self.late is not None:
            await trio.sleep(self.late(body))
        how = self.spoil(body) if self.spoil is not None else None
        if how is None:
            return response
        await response.aread()
        if how == "lost":
            raise httpx.ReadError("connection dropped", request=request)
        unknown = {"_tag": "WriteOutcomeUnknown", "message": "injected"}
        return httpx.Response(503, json=unknown, request=request)

    def items(self, kind: str) -> list[tuple[float, str]]:
        """(time, job id) of every ``kind`` report sent."""
        return [(t, item["jobId"]) for (t, body) in self.log for item in body.get(kind, [])]


def worker_on(broker: TestBroker, exchanges: Exchanges, **settings: Any) -> trioq.Worker:
    worker = trioq.Worker(client=trioq.Client(TEST_URL, transport=exchanges), **settings)
    exchanges.worker = worker
    return worker


async def eventually(check: Callable[[], Awaitable[bool]], *, limit: float = 300) -> None:
    """Poll ``check`` until it is true (bounded by ``limit`` seconds)."""
    with trio.fail_after(limit):
        while True:
            if await check():
                return
            await trio.sleep(0.5)


async def run_until_idle(broker: TestBroker, worker: trioq.Worker) -> None:
    """Run ``worker`` (on its own client) until the queue is empty, then drain it."""

    async def idle() -> bool:
        return bool((await broker.client.stats())["total"] == 0)

    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await eventually(idle)
        worker.drain()


# ------------------------------------------------------------------- batching


async def test_reports_share_exchanges_two_out_at_most(autojump_clock: trio.abc.Clock) -> None:
    starts: dict[int, float] = {}
    async with open_test_broker(group_commit_interval=0.5) as broker:
        exchanges = Exchanges(broker.transport)
        worker = worker_on(broker, exchanges, concurrency=50)

        @worker.job("t")
        async def work(n: int) -> None:
            starts[n] = trio.current_time()
            await trio.sleep(n % 7 / 10)

        await broker.client.submit_many([trioq.JobSpec("t", n) for n in range(300)])
        await run_until_idle(broker, worker)
        stats = await broker.client.stats()

    assert stats["completedTotal"] == 300
    assert len(starts) == 300
    completes = exchanges.items("complete")
    assert sorted(job for (_, job) in completes) == sorted({job for (_, job) in completes})
    assert len(completes) == 300
    # reports and claims rode together: far fewer exchanges than jobs
    assert len(exchanges.log) < 300 / 5
    assert exchanges.peak == {False: 2, True: 1}
    assert max(exchanges.held) <= 50


async def test_a_job_submitted_to_an_idle_worker_starts_with_the_commit_of_its_submit(
    autojump_clock: trio.abc.Clock,
) -> None:
    started: list[float] = []
    async with open_test_broker(group_commit_interval=0.5) as broker:
        exchanges = Exchanges(broker.transport)
        worker = worker_on(broker, exchanges, poll_interval=10)

        @worker.job("t")
        async def work(payload: None) -> None:
            started.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await trio.sleep(3)  # the long-poll claim waits at the broker
            await broker.client.submit("t", None)
            submitted = trio.current_time()
            await trio.sleep(1)
            worker.drain()
    # the commit that made the job durable also answered the waiting claim
    assert started == pytest.approx([submitted], abs=EXACT)
    polls = [body for (_, body) in exchanges.log if "waitMs" in body.get("claim", {})]
    assert polls[0]["claim"] == {"max": 1, "types": ["t"], "waitMs": 10_000}


async def test_a_lost_lease_cancels_its_handler_through_the_shared_exchange(
    autojump_clock: trio.abc.Clock,
) -> None:
    times: dict[str, float] = {}

    async def work(payload: str) -> None:
        times[f"{payload} started"] = trio.current_time()
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            times[f"{payload} cancelled"] = trio.current_time()
            raise

    async with open_test_broker(job_lease=3) as broker:
        exchanges = Exchanges(broker.transport)
        worker = worker_on(broker, exchanges, concurrency=2)
        worker.job("t")(work)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            [doomed, kept] = await broker.client.submit_many(
                [trioq.JobSpec("t", "doomed"), trioq.JobSpec("t", "kept")]
            )
            await trio.sleep(0.5)
            assert await broker.client.cancel(doomed) == "cancelling"

            async def kept_completed() -> bool:
                return bool((await broker.client.get(kept))["status"] == "completed")

            await eventually(kept_completed)
            worker.drain()
        assert (await broker.client.get(doomed))["status"] == "cancelled"

    start = times["doomed started"]
    # both leases were renewed in one exchange, a second (a third of 3 s) after the
    # claim: the broker refused the cancelled job's alone, and its handler stopped
    beat_at = next(t for (t, b) in exchanges.log if len(b.get("heartbeat", [])) == 2)
    assert beat_at == pytest.approx(start + 1, abs=EXACT)
    assert times["doomed cancelled"] == pytest.approx(start + 1, abs=EXACT)
    assert "kept cancelled" not in times
    assert (worker.counts["lost"], worker.counts["completed"]) == (1, 1)


async def test_a_job_whose_claim_is_read_after_its_lease_ran_out_is_not_started(
    autojump_clock: trio.abc.Clock,
) -> None:
    starts: list[tuple[str, int]] = []
    async with open_test_broker(job_lease=3) as broker:
        exchanges = Exchanges(broker.transport)
        worker = worker_on(broker, exchanges, concurrency=1)

        @worker.job("t")
        async def work(payload: str, ctx: trioq.JobContext) -> None:
            starts.append((payload, ctx.attempt))
            await trio.sleep(0.1)

        # the exchange that completes "first" claims "second"; its answer is read 4 s
        # late, past the 3 s lease: the broker may have given "second" to another
        # worker meanwhile, so this one must not start it
        late = [4.0]
        exchanges.late = lambda body: late.pop() if body.get("complete") and late else 0.0
        await broker.client.submit_many([trioq.JobSpec("t", "first"), trioq.JobSpec("t", "second")])
        await run_until_idle(broker, worker)
        second = await broker.client.get(next(job for (_, job) in exchanges.items("release")))
    assert second["status"] == "completed"
    # attempt 1 of "second" was claimed late and given back unstarted; it ran once
    assert starts == [("first", 1), ("second", 2)]
    assert worker.counts["lost"] == 1


# --------------------------------------------------------------------- prefetch


async def test_prefetched_jobs_wait_for_a_slot_with_their_leases_kept(
    autojump_clock: trio.abc.Clock,
) -> None:
    running = peak = 0
    starts: dict[str, float] = {}

    async def work(payload: int, ctx: trioq.JobContext) -> None:
        nonlocal running, peak
        starts[ctx.id] = trio.current_time()
        running += 1
        peak = max(peak, running)
        await trio.sleep(10)
        running -= 1

    async with open_test_broker(job_lease=3) as broker:
        exchanges = Exchanges(broker.transport)
        worker = worker_on(broker, exchanges, concurrency=2, prefetch=3)
        worker.job("t")(work)
        ids = await broker.client.submit_many([trioq.JobSpec("t", n) for n in range(8)])
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await trio.sleep(5)
            held_at_5 = len(worker.active)

            async def idle() -> bool:
                return bool((await broker.client.stats())["total"] == 0)

            await eventually(idle)
            worker.drain()
        records = [await broker.client.get(job) for job in ids]

    assert held_at_5 == 5  # two running, three prefetched
    assert peak == 2
    assert max(exchanges.held) <= 5
    # every job ran once: the leases of the waiting ones (3 s) were renewed meanwhile
    assert [(r["status"], r["attempts"]) for r in records] == [("completed", 1)] * 8
    beats = exchanges.items("heartbeat")
    last = max(starts, key=lambda job: starts[job])
    assert starts[last] >= 30
    waiting = [t for (t, job) in beats if job == last and t < starts[last]]
    assert len(waiting) >= 9


async def test_a_drain_releases_prefetched_jobs_at_once(autojump_clock: trio.abc.Clock) -> None:
    times: dict[str, float] = {}
    async with open_test_broker() as broker:
        exchanges = Exchanges(broker.transport)
        worker = worker_on(broker, exchanges, concurrency=1, prefetch=3, shutdown_grace=30)

        @worker.job("t")
        async def work(payload: int) -> None:
            times.setdefault("start", trio.current_time())
            await trio.sleep(10)

        ids = await broker.client.submit_many([trioq.JobSpec("t", n) for n in range(4)])
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await trio.sleep(1)
            assert len(worker.active) == 4
            drained = trio.current_time()
            worker.drain()
        returned = trio.current_time()
        records = [await broker.client.get(job) for job in ids]

    # the three waiting for the slot went back in one exchange, at the drain
    [(released_at, body)] = [(t, b) for (t, b) in exchanges.log if b.get("release")]
    assert released_at == pytest.approx(drained, abs=EXACT)
    released = {item["jobId"] for item in body["release"]}
    assert len(released) == 3
    by_id = dict(zip(ids, records, strict=True))
    assert [(by_id[j]["status"], by_id[j]["attempts"]) for j in released] == [("unclaimed", 0)] * 3
    # the running one had its grace, and finished
    [running] = set(ids) - released
    assert by_id[running]["status"] == "completed"
    assert returned == pytest.approx(times["start"] + 10, abs=EXACT)
    assert worker.counts["released"] == 3


# ------------------------------------------------------------- a lost exchange


@pytest.mark.parametrize("how", ["lost", "unknown"])
async def test_the_claim_of_a_lost_exchange_is_never_sent_again(
    autojump_clock: trio.abc.Clock, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[tuple[str, int]] = []
    async with open_test_broker(job_lease=5) as broker:
        exchanges = Exchanges(broker.transport)
        spoiled: list[dict[str, Any]] = []

        def spoil_first_claim(body: dict[str, Any]) -> str | None:
            if "claim" in body and not spoiled:
                spoiled.append(body)
                return how
            return None

        exchanges.spoil = spoil_first_claim
        worker = worker_on(broker, exchanges, concurrency=2)

        @worker.job("t")
        async def work(payload: str, ctx: trioq.JobContext) -> None:
            attempts.append((payload, ctx.attempt))

        await broker.client.submit_many([trioq.JobSpec("t", "a"), trioq.JobSpec("t", "b")])
        with caplog.at_level(logging.WARNING, logger="trioq.worker"):
            await run_until_idle(broker, worker)

    # the broker took both jobs in the spoiled exchange; the worker never saw them,
    # did not send it again (its next claim, a new one, came after the backoff), and
    # ran them once their leases ran out (5 s)
    [lost] = spoiled
    assert lost["claim"]["max"] == 2
    sent = [body is lost for (_, body) in exchanges.log].index(True)
    (lost_at, _), (next_at, _) = exchanges.log[sent : sent + 2]
    assert next_at - lost_at >= BACKOFF_BASE / 2
    assert sorted(attempts) == [("a", 2), ("b", 2)]
    reclaimed = [t for (t, body) in exchanges.log if body.get("complete")]
    assert min(reclaimed) >= 5
    assert any("claim failed" in r.getMessage() for r in caplog.records)
