"""trioq.Worker in virtual time: an in-process broker (trioq.testing) under MockClock.

Times are asserted exactly where the worker decides them (heartbeat cadence, local
lease deadline, timeouts, claim backoff, grace period). Where the broker decides (retry
backoff, lease expiry), stored times are whole milliseconds, so those assertions allow
one or two milliseconds.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
import re
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing
from pydantic import BaseModel

import trioq
from trioq import JobNotFound
from trioq._backoff import backoff_delay
from trioq._errors import BrokerUnreachable, TrioqError
from trioq._settings import Public, SettingsError
from trioq.client import ExchangeAnswer, Failure, Held, Outcome
from trioq.core._state import Limits
from trioq.testing import TEST_URL, TestBroker, open_test_broker
from trioq.worker._outage import WARN_EVERY
from trioq.worker._settings import WorkerSettings
from trioq.worker._worker import BACKOFF_BASE, BACKOFF_MAX, RETRY_WINDOW

Fault = Callable[[str], Awaitable[None]]

EXACT = 1e-9
MS = 0.0021  # broker-side times are stored in whole milliseconds


@pytest.fixture(autouse=True)
def no_worker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers read the environment (it wins over their arguments): none of this
    process's worker variables may leak into a test."""
    for field in WorkerSettings.model_fields.values():
        for item in field.metadata:
            if isinstance(item, Public):
                monkeypatch.delenv(item.env, raising=False)


@pytest.fixture
def thread_clock() -> trio.testing.MockClock:
    """Virtual time for tests whose handlers run in threads: with autojump at 0 the
    clock would race ahead while a thread works (the loop looks idle), so it jumps
    only after 50 ms of real idleness. Jumps still land exactly on deadlines."""
    return trio.testing.MockClock(autojump_threshold=0.05)


class RecordingClient(trioq.Client):
    """A client that records the worker's calls (virtual time) and can inject faults.

    The worker sends every report and claim in exchanges (``POST /v1/jobs/exchange``);
    this records each of their items as a call of its own, at the time the exchange
    was sent. A fault that raises for one report becomes that report's own result
    (it is not sent); one that hangs holds up the whole exchange; a claim fault
    fails the whole exchange.
    """

    def __init__(
        self, broker: TestBroker, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any
    ) -> None:
        super().__init__(TEST_URL, transport=transport or broker.transport, **kwargs)
        self.calls: list[tuple[str, float, str | None, int | None]] = []
        self.claims: list[tuple[float, int, int]] = []  # (time, max, jobs returned)
        self.exchanges: list[tuple[float, dict[str, int]]] = []  # (time, items by kind)
        self.heartbeat_fault: Fault | None = None
        self.claim_fault: Fault | None = None
        self.complete_fault: Fault | None = None

    def times(self, name: str, job_id: str | None = None) -> list[float]:
        return [t for (t, _) in self.of(name, job_id)]

    def of(self, name: str, job_id: str | None = None) -> list[tuple[float, int | None]]:
        return [
            (t, attempt)
            for (n, t, j, attempt) in self.calls
            if n == name and (job_id is None or j == job_id)
        ]

    async def exchange(
        self,
        worker_id: str,
        *,
        heartbeat: Sequence[Held] = (),
        complete: Sequence[Held] = (),
        fail: Sequence[Failure] = (),
        release: Sequence[Held] = (),
        claim: int = 0,
        **kwargs: Any,
    ) -> ExchangeAnswer:
        now = trio.current_time()
        sent = {"heartbeat": heartbeat, "complete": complete, "release": release}
        for kind, held in sent.items():
            self.calls.extend((kind, now, job.id, job.attempt) for job in held)
        self.calls.extend(("fail", now, f.job.id, f.job.attempt) for f in fail)
        if claim:
            self.calls.append(("claim", now, None, None))
        self.exchanges.append(
            (now, {k: len(v) for k, v in [*sent.items(), ("fail", fail)]} | {"claim": claim})
        )
        if claim and self.claim_fault is not None:
            await self.claim_fault("")
        injected = {
            "heartbeat": await self._faults(self.heartbeat_fault, heartbeat),
            "complete": await self._faults(self.complete_fault, complete),
        }
        answer = await super().exchange(
            worker_id,
            heartbeat=[j for j in heartbeat if j.id not in injected["heartbeat"]],
            complete=[j for j in complete if j.id not in injected["complete"]],
            fail=fail,
            release=release,
            claim=claim,
            **kwargs,
        )
        if claim:
            self.claims.append((now, claim, len(answer.jobs)))
        return dataclasses.replace(
            answer,
            heartbeat=_merge(heartbeat, injected["heartbeat"], answer.heartbeat),
            complete=_merge(complete, injected["complete"], answer.complete),
        )

    @staticmethod
    async def _faults(fault: Fault | None, held: Sequence[Held]) -> dict[str, TrioqError]:
        """The reports a fault refuses, with the error each gets instead."""
        refused: dict[str, TrioqError] = {}
        if fault is not None:
            for job in held:
                try:
                    await fault(job.id)
                except TrioqError as exc:
                    refused[job.id] = exc
        return refused


def _merge(
    sent: Sequence[Held], injected: dict[str, TrioqError], answered: list[Outcome]
) -> list[Outcome]:
    """The results of ``sent``: the injected ones, and the broker's for the others."""
    rest = iter(answered)
    return [injected[job.id] if job.id in injected else next(rest) for job in sent]


def assert_calls(
    got: list[tuple[float, int | None]], expected: list[tuple[float, int]], tolerance: float = 1e-9
) -> None:
    """Calls at exactly these (virtual) times, carrying these attempts."""
    assert [a for (_, a) in got] == [a for (_, a) in expected]
    assert [t for (t, _) in got] == pytest.approx([t for (t, _) in expected], abs=tolerance)


def no_jitter(job_lease_ms: int = 30_000) -> Limits:
    """Broker limits with deterministic retry backoff (1 s, 2 s, 4 s, ...)."""
    return Limits(job_lease_ms=job_lease_ms, retry_jitter=0.0)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, interval: float = 0.25, limit: float = 100
) -> None:
    """Poll ``check`` until it is true (bounded by ``limit`` seconds)."""
    with trio.fail_after(limit):
        while True:
            if await check():
                return
            await trio.sleep(interval)


async def status_is(client: trioq.Client, job_id: str, status: str) -> bool:
    return (await client.get(job_id))["status"] == status


async def hang(job_id: str) -> None:
    await trio.sleep_forever()


async def unreachable(job_id: str) -> None:
    raise BrokerUnreachable("injected: the broker cannot be reached")


# ---------------------------------------------------------------- heartbeats


async def test_heartbeat_cadence_carries_the_attempt(autojump_clock: trio.abc.Clock) -> None:
    started: dict[int, float] = {}

    async def long(payload: None, ctx: trioq.JobContext) -> None:
        started[ctx.attempt] = trio.current_time()
        if ctx.attempt == 1:
            await trio.sleep(7)
            raise RuntimeError("first attempt fails")
        await trio.sleep(17)

    async with open_test_broker(limits=no_jitter()) as broker, RecordingClient(broker) as client:
        worker = trioq.Worker(heartbeat_interval=5, client=client)
        worker.job("long")(long)
        job = await run_one(
            broker,
            client,
            worker,
            lambda: client.submit("long", None),
            until=lambda r: r.get("status") == "completed",
        )

    s1, s2 = started[1], started[2]
    beats = client.of("heartbeat", job)
    assert_calls(beats, [(s1 + 5, 1), (s2 + 5, 2), (s2 + 10, 2), (s2 + 15, 2)])
    assert_calls(client.of("fail", job), [(s1 + 7, 1)])
    assert_calls(client.of("complete", job), [(s2 + 17, 2)])
    # the retry waited for the broker's backoff (1 s after the first failure)
    assert s2 - (s1 + 7) == pytest.approx(1.0, abs=MS)


async def run_one(
    broker: TestBroker,
    client: RecordingClient,
    worker: trioq.Worker,
    submit: Callable[[], Awaitable[str]],
    *,
    until: Callable[[dict[str, Any]], bool],
    limit: float = 1000,
) -> str:
    """Run ``worker`` until the submitted job's record satisfies ``until``; drain."""
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        job = await submit()
        with trio.fail_after(limit):
            while True:
                try:
                    record = await client.get(job)
                except JobNotFound:
                    record = {}
                if until(record):
                    break
                await trio.sleep(0.5)
        worker.drain()
    return job


async def test_local_lease_deadline_cancels_a_job_whose_heartbeats_hang(
    autojump_clock: trio.abc.Clock,
) -> None:
    events: list[tuple[str, int, float]] = []

    async def sleeper(payload: None, ctx: trioq.JobContext) -> None:
        events.append(("start", ctx.attempt, trio.current_time()))
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            events.append(("cancelled", ctx.attempt, trio.current_time()))
            raise

    async with (
        open_test_broker(limits=no_jitter(job_lease_ms=3000)) as broker,
        RecordingClient(broker) as client,
    ):
        client.heartbeat_fault = hang
        worker = trioq.Worker(heartbeat_interval=1, client=client)
        worker.job("sleepy")(sleeper)
        job = await run_one(
            broker,
            client,
            worker,
            lambda: client.submit("sleepy", None),
            until=lambda r: r.get("status") == "dead",
        )
        dead = await client.get(job)

    # every attempt is cancelled exactly one lease (3 s) after it started, and none
    # is ever completed or failed by the worker: the broker expires each lease
    starts = [t for (e, _, t) in events if e == "start"]
    cancels = [t for (e, _, t) in events if e == "cancelled"]
    assert [a for (e, a, _) in events if e == "start"] == [1, 2, 3]
    assert cancels == pytest.approx([s + 3.0 for s in starts], abs=EXACT)
    assert client.of("complete") == []
    assert client.of("fail") == []
    assert worker.counts["lost"] == 3
    assert worker.counts["completed"] == 0
    assert dead["reason"] == "expired"
    assert dead["attempts"] == 3
    # the next attempt is claimed as soon as the broker sees the lease expire
    for cancelled, next_start in zip(cancels, starts[1:], strict=False):
        assert next_start == pytest.approx(cancelled, abs=MS)


async def test_local_lease_deadline_counts_from_the_last_renewal(
    autojump_clock: trio.abc.Clock,
) -> None:
    cancelled_at: list[float] = []
    started_at: list[float] = []

    async def sleeper(payload: None) -> None:
        started_at.append(trio.current_time())
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            cancelled_at.append(trio.current_time())
            raise

    async with open_test_broker(job_lease_ms=3000) as broker, RecordingClient(broker) as client:
        beats = 0

        async def fail_after_two(job_id: str) -> None:
            nonlocal beats
            beats += 1
            if beats > 2:
                await trio.sleep_forever()

        client.heartbeat_fault = fail_after_two
        worker = trioq.Worker(heartbeat_interval=1, client=client)
        worker.job("sleepy")(sleeper)
        await run_one(
            broker,
            client,
            worker,
            lambda: client.submit("sleepy", None, max_attempts=1),
            until=lambda r: r.get("status") == "dead",
        )

    [start] = started_at
    # renewed at +1 and +2; the third beat (+3) never answers: cancelled at +2 + 3
    assert [t for (t, _) in client.of("heartbeat")] == pytest.approx(
        [start + 1, start + 2, start + 3], abs=EXACT
    )
    assert cancelled_at == pytest.approx([start + 5], abs=EXACT)
    assert client.of("complete") == []


async def test_failing_heartbeats_are_retried_until_the_lease_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    cancelled_at: list[float] = []
    started_at: list[float] = []

    async def sleeper(payload: None) -> None:
        started_at.append(trio.current_time())
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            cancelled_at.append(trio.current_time())
            raise

    async with open_test_broker(job_lease_ms=3000) as broker, RecordingClient(broker) as client:
        client.heartbeat_fault = unreachable
        worker = trioq.Worker(heartbeat_interval=1, client=client)
        worker.job("sleepy")(sleeper)
        await run_one(
            broker,
            client,
            worker,
            lambda: client.submit("sleepy", None, max_attempts=1),
            until=lambda r: r.get("status") == "dead",
        )

    [start] = started_at
    # first beat after one interval, then retries every interval / 5 until the deadline
    expected = [start + 1 + 0.2 * i for i in range(10)]
    assert [t for (t, _) in client.of("heartbeat")] == pytest.approx(expected, abs=1e-6)
    assert cancelled_at == pytest.approx([start + 3], abs=1e-6)
    assert client.of("complete") == []
    assert client.of("fail") == []


async def test_cancelled_job_gets_lease_lost_at_the_next_heartbeat(
    autojump_clock: trio.abc.Clock,
) -> None:
    started = trio.Event()
    times: dict[str, float] = {}

    async def sleeper(payload: None) -> None:
        times["start"] = trio.current_time()
        started.set()
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            times["cancelled"] = trio.current_time()
            raise

    async with (
        open_test_broker() as broker,
        RecordingClient(broker) as client,
        trio.open_nursery() as nursery,
    ):
        worker = trioq.Worker(heartbeat_interval=5, client=client)
        worker.job("sleepy")(sleeper)
        await nursery.start(worker.run)
        job = await client.submit("sleepy", None)
        await started.wait()
        await trio.sleep(2.5)
        assert await client.cancel(job) == "cancelling"
        await eventually(lambda: status_is(client, job, "cancelled"))
        worker.drain()

    assert times["cancelled"] == pytest.approx(times["start"] + 5, abs=EXACT)
    assert client.of("complete") == []
    assert client.of("fail") == []
    assert client.of("release") == []
    assert worker.counts["lost"] == 1


async def test_job_not_found_on_heartbeat_cancels_the_handler(
    autojump_clock: trio.abc.Clock,
) -> None:
    times: dict[str, float] = {}

    async def sleeper(payload: None) -> None:
        times["start"] = trio.current_time()
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            times["cancelled"] = trio.current_time()
            raise

    async def gone(job_id: str) -> None:
        raise JobNotFound(f"no job {job_id!r}")

    async with open_test_broker(job_lease_ms=10_000) as broker, RecordingClient(broker) as client:
        client.heartbeat_fault = gone
        worker = trioq.Worker(heartbeat_interval=2, client=client)
        worker.job("sleepy")(sleeper)
        await run_one(
            broker,
            client,
            worker,
            lambda: client.submit("sleepy", None, max_attempts=1),
            until=lambda r: r.get("status") == "dead",
        )

    assert times["cancelled"] == pytest.approx(times["start"] + 2, abs=EXACT)
    assert client.of("complete") == []


# --------------------------------------------------------- timeouts, retries


async def test_timeout_fails_the_attempt_then_dead_letters(
    autojump_clock: trio.abc.Clock,
) -> None:
    starts: list[float] = []
    failed: list[tuple[int, str]] = []

    async with open_test_broker(limits=no_jitter()) as broker, RecordingClient(broker) as client:
        worker = trioq.Worker(client=client)

        @worker.job("slow", timeout=2)
        async def slow(payload: None) -> None:
            starts.append(trio.current_time())
            await trio.sleep(10)

        @worker.on_failed
        def record(ctx: trioq.JobContext, error: str) -> None:
            failed.append((ctx.attempt, error))

        job = await run_one(
            broker,
            client,
            worker,
            lambda: client.submit("slow", None, max_attempts=2),
            until=lambda r: r.get("status") == "dead",
        )
        dead = await client.get(job)

    assert_calls(client.of("fail"), [(starts[0] + 2, 1), (starts[1] + 2, 2)])
    assert starts[1] == pytest.approx(starts[0] + 2 + 1, abs=MS)  # 1 s broker backoff
    assert failed == [(1, "timed out after 2 s"), (2, "timed out after 2 s")]
    assert dead["reason"] == "exhausted"
    assert dead["lastError"] == "timed out after 2 s"
    assert client.of("complete") == []


async def test_a_handlers_own_too_slow_error_is_not_a_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_broker() as broker, RecordingClient(broker) as client:
        worker = trioq.Worker(client=client)

        @worker.job("own-deadline", timeout=60)
        async def own(payload: None) -> None:
            with trio.fail_after(1):
                await trio.sleep(5)

        job = await run_one(
            broker,
            client,
            worker,
            lambda: client.submit("own-deadline", None, max_attempts=1),
            until=lambda r: r.get("status") == "dead",
        )
        dead = await client.get(job)
    assert dead["lastError"] == "TooSlowError: "


async def test_handler_error_is_retried_with_backoff_then_dead_lettered(
    autojump_clock: trio.abc.Clock,
) -> None:
    starts: list[float] = []
    hooks: list[tuple[str, int]] = []

    async with open_test_broker(limits=no_jitter()) as broker, RecordingClient(broker) as client:
        worker = trioq.Worker(client=client)

        @worker.job("boom")
        async def boom(payload: int, ctx: trioq.JobContext) -> None:
            starts.append(trio.current_time())
            raise RuntimeError(f"boom {payload} at attempt {ctx.attempt}")

        @worker.on_claimed
        async def claimed(ctx: trioq.JobContext) -> None:
            hooks.append(("claimed", ctx.attempt))

        @worker.on_failed
        async def failed(ctx: trioq.JobContext, error: str) -> None:
            hooks.append((error, ctx.attempt))

        job = await run_one(
            broker,
            client,
            worker,
            lambda: client.submit("boom", 7),
            until=lambda r: r.get("status") == "dead",
        )
        dead = await client.get(job)

    # default max attempts 3; broker backoff 1 s, then 2 s (no jitter)
    assert [b - a for a, b in itertools.pairwise(starts)] == pytest.approx([1.0, 2.0], abs=MS)
    assert hooks == [
        ("claimed", 1),
        ("RuntimeError: boom 7 at attempt 1", 1),
        ("claimed", 2),
        ("RuntimeError: boom 7 at attempt 2", 2),
        ("claimed", 3),
        ("RuntimeError: boom 7 at attempt 3", 3),
    ]
    assert dead["reason"] == "exhausted"
    assert dead["attempts"] == 3
    assert dead["lastError"] == "RuntimeError: boom 7 at attempt 3"
    assert worker.counts["failed"] == 3


class LoseFirstAnswer(httpx.AsyncBaseTransport):
    """Delivers each request, but loses the answer to the first exchange that carries
    a ``kind`` report (as when a connection drops after the broker committed)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, kind: str) -> None:
        self.inner = inner
        self.kind = kind
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = orjson.loads(request.content) if request.content else {}
        if request.url.path == "/v1/jobs/exchange" and body.get(self.kind) and not self.lost:
            self.lost += 1
            await response.aread()
            raise httpx.ReadError("connection dropped", request=request)
        return response


@pytest.mark.parametrize("call", ["complete", "fail"])
async def test_an_outcome_whose_answer_was_lost_is_not_misreported(
    autojump_clock: trio.abc.Clock, call: str
) -> None:
    hooks: list[str] = []
    async with open_test_broker() as broker:
        transport = LoseFirstAnswer(broker.transport, call)
        async with RecordingClient(broker, transport=transport) as client:
            worker = trioq.Worker(client=client)

            @worker.job("t")
            async def handler(payload: str) -> None:
                if payload == "fail":
                    raise ValueError("no")

            worker.on_completed(lambda ctx: hooks.append("completed"))
            worker.on_failed(lambda ctx, error: hooks.append(f"failed: {error}"))
            job = await run_one(
                broker,
                client,
                worker,
                lambda: client.submit("t", call, max_attempts=1),
                until=lambda r: r.get("status") in ("completed", "dead"),
            )
            record = await client.get(job)
    # the report went again in the next exchange, the broker said the job was gone,
    # and the worker found its own outcome recorded instead of reporting a lost lease
    assert transport.lost == 1
    assert len(client.of(call)) == 2
    assert worker.counts["lost"] == 0
    if call == "complete":
        assert record["status"] == "completed"
        assert hooks == ["completed"]
        assert worker.counts["completed"] == 1
    else:
        assert record["status"] == "dead"
        assert hooks == ["failed: ValueError: no"]
        assert worker.counts["failed"] == 1


async def test_an_unrecorded_completion_is_not_counted_and_the_job_runs_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    attempts: list[int] = []
    hooks: list[int] = []
    async with open_test_broker(job_lease_ms=5000) as broker, RecordingClient(broker) as client:
        tries = 0

        async def broker_gone_once(job_id: str) -> None:
            nonlocal tries
            tries += 1
            if tries == 1:
                raise BrokerUnreachable("injected")

        client.complete_fault = broker_gone_once
        worker = trioq.Worker(client=client, heartbeat_interval=1)

        @worker.job("t")
        async def handler(payload: None, ctx: trioq.JobContext) -> None:
            attempts.append(ctx.attempt)

        worker.on_completed(lambda ctx: hooks.append(ctx.attempt))
        await run_one(
            broker,
            client,
            worker,
            lambda: client.submit("t", None),
            until=lambda r: r.get("status") == "completed",
        )
    assert attempts == [1, 2]  # the first completion never reached the broker
    assert hooks == [2]
    assert worker.counts["completed"] == 1
    assert worker.counts["lost"] == 1


# --------------------------------------------------------- payload validation


class Resize(BaseModel):
    image: str
    width: int


async def test_payloads_are_validated_from_the_annotation(
    autojump_clock: trio.abc.Clock,
) -> None:
    got: list[Any] = []
    worker = trioq.Worker(concurrency=3)

    @worker.job("model")
    async def model(job: Resize, ctx: trioq.JobContext) -> None:
        got.append(job)

    @worker.job("int")
    async def plain(n: int) -> None:
        got.append(n)

    @worker.job("mapping")
    async def mapping(payload: dict[str, int]) -> None:
        got.append(payload)

    @worker.job("anything")
    async def anything(payload) -> None:  # type: ignore[no-untyped-def]
        got.append(payload)

    async with open_test_broker() as broker:
        client = broker.client
        await client.submit("model", Resize(image="a.png", width=100))
        await client.submit("int", "42")  # lax mode: a numeric string is an int
        await client.submit("mapping", {"a": 1})
        await client.submit("anything", [1, "x"])
        invalid = {
            await client.submit("model", {"image": "b.png", "width": "wide"}): "width",
            await client.submit("int", "forty-two"): "valid integer",
            await client.submit("mapping", {"a": "b"}): "valid integer",
        }
        await broker.run_worker_until_idle(worker)
        dead = {d["jobId"]: d for d in (await client.dead())["jobs"]}

    assert Resize(image="a.png", width=100) in got
    assert isinstance(next(g for g in got if isinstance(g, Resize)), Resize)
    assert 42 in got
    assert {"a": 1} in got
    assert [1, "x"] in got
    assert len(got) == 4
    assert set(dead) == set(invalid)
    for job_id, needle in invalid.items():
        assert dead[job_id]["reason"] == "final"  # dead-lettered at once, not retried
        assert dead[job_id]["attempts"] == 1
        assert dead[job_id]["lastError"].startswith("invalid payload for ")
        assert needle in dead[job_id]["lastError"]


async def test_job_context_hooks_and_sync_handlers(thread_clock: trio.testing.MockClock) -> None:
    seen: list[trioq.JobContext] = []
    threads: list[int] = []
    hooks: list[str] = []
    worker = trioq.Worker(worker_id="w-1")

    @worker.job("ctx")
    async def with_ctx(payload: str, ctx: trioq.JobContext) -> None:
        seen.append(ctx)

    @worker.job("sync")
    def sync(payload: str) -> None:
        threads.append(threading.get_ident())

    @worker.job("no-payload")
    async def only_ctx(ctx: trioq.JobContext) -> None:
        seen.append(ctx)

    worker.on_claimed(lambda ctx: hooks.append(f"claimed {ctx.type}"))
    worker.on_completed(lambda ctx: hooks.append(f"completed {ctx.type}"))

    async with open_test_broker(job_lease_ms=12_000) as broker:
        ctx_job = await broker.client.submit("ctx", "x")
        await broker.client.submit("sync", "y")
        await broker.client.submit("no-payload", None)
        await broker.run_worker_until_idle(worker)
        assert (await broker.client.stats())["completedTotal"] == 3

    first = seen[0]
    assert (first.id, first.type, first.attempt, first.worker_id, first.lease_ms) == (
        ctx_job,
        "ctx",
        1,
        "w-1",
        12_000,
    )
    assert threads
    assert threads[0] != threading.get_ident()
    assert sorted(hooks) == sorted(
        f"{e} {t}" for e in ("claimed", "completed") for t in ("ctx", "sync", "no-payload")
    )


async def test_a_blocking_sync_handler_does_not_stop_the_heartbeats(
    thread_clock: trio.testing.MockClock,
) -> None:
    release = threading.Event()

    async with (
        open_test_broker(job_lease_ms=3000) as broker,
        RecordingClient(broker) as client,
        trio.open_nursery() as nursery,
    ):
        worker = trioq.Worker(heartbeat_interval=1, client=client)

        @worker.job("blocking")
        def blocking(payload: None) -> None:
            assert release.wait(timeout=30)

        await nursery.start(worker.run)
        job = await client.submit("blocking", None)

        async def four_beats() -> bool:
            return len(client.of("heartbeat", job)) >= 4

        await eventually(four_beats)
        release.set()
        await eventually(lambda: status_is(client, job, "completed"))
        worker.drain()
    # four renewals while the thread blocked: the lease (3 s) was kept past 4 s
    assert worker.counts["completed"] == 1
    assert worker.counts["lost"] == 0


async def test_a_sync_handler_past_its_lease_and_its_next_attempt_on_the_same_worker(
    thread_clock: trio.testing.MockClock,
) -> None:
    first_may_return = threading.Event()
    async with open_test_broker(job_lease_ms=3000) as broker, RecordingClient(broker) as client:
        beats = 0

        async def first_beat_hangs(job_id: str) -> None:
            nonlocal beats
            beats += 1
            if beats == 1:
                await trio.sleep_forever()

        client.heartbeat_fault = first_beat_hangs
        worker = trioq.Worker(concurrency=2, heartbeat_interval=1, client=client)

        @worker.job("blocking")
        def blocking(payload: None, ctx: trioq.JobContext) -> None:
            if ctx.attempt == 1:
                # runs on in its thread after the lease is lost and cancelled
                assert first_may_return.wait(timeout=30)
            else:
                first_may_return.set()

        job = await run_one(
            broker,
            client,
            worker,
            lambda: client.submit("blocking", None),
            until=lambda r: r.get("status") == "completed",
        )
        assert worker.active == {}
    # (no exact times here: the clock autojumps while a thread runs)
    assert [attempt for (_, attempt) in client.of("complete", job)] == [2]
    assert worker.counts["lost"] == 1
    assert worker.counts["completed"] == 1


# ---------------------------------------------------------------- concurrency


async def test_full_concurrency_in_one_claim_from_empty(autojump_clock: trio.abc.Clock) -> None:
    starts: list[float] = []

    async with (
        open_test_broker() as broker,
        RecordingClient(broker) as client,
        trio.open_nursery() as nursery,
    ):
        worker = trioq.Worker(concurrency=5, poll_interval=1.0, client=client)

        @worker.job("work")
        async def work(payload: int) -> None:
            starts.append(trio.current_time())
            await trio.sleep(10)

        await nursery.start(worker.run)
        await trio.sleep(0.3)  # the worker's long-poll claim is waiting
        submitted = trio.current_time()
        await client.submit_many([trioq.JobSpec("work", i) for i in range(5)])
        await trio.sleep(1)
        running = len(worker.active)
        worker.drain()

    assert running == 5
    # all five start at the instant of the submit, handed out by one claim (max=5)
    assert starts == pytest.approx([submitted] * 5, abs=EXACT)
    assert [(m, n) for (_, m, n) in client.claims if n] == [(5, 5)]


async def test_concurrency_is_bounded_and_slots_refill(autojump_clock: trio.abc.Clock) -> None:
    running = 0
    peak = 0
    finishes: list[float] = []

    async with open_test_broker() as broker:
        worker = trioq.Worker(concurrency=5)

        @worker.job("work")
        async def work(payload: int) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await trio.sleep(10)
            running -= 1
            finishes.append(trio.current_time())

        await broker.client.submit_many([trioq.JobSpec("work", i) for i in range(12)])
        started = trio.current_time()
        await broker.run_worker_until_idle(worker)

    assert peak == 5
    assert len(finishes) == 12
    # three rounds of 10 s: 5, 5, 2, each round starting the moment slots free up
    assert sorted(finishes) == pytest.approx(
        [started + 10] * 5 + [started + 20] * 5 + [started + 30] * 2, abs=EXACT
    )


async def test_claim_errors_back_off(thread_clock: trio.testing.MockClock) -> None:
    async with (
        open_test_broker() as broker,
        RecordingClient(broker) as client,
        trio.open_nursery() as nursery,
    ):
        client.claim_fault = unreachable
        worker = trioq.Worker(client=client)
        worker._rng = random.Random(7)  # the jitter, made repeatable
        worker.job("x")(lambda payload: None)
        await nursery.start(worker.run)
        started = trio.current_time()
        await trio.sleep(40)
        worker.drain()
    times = [t - started for (t, _) in client.of("claim")]
    # 0.5 s doubling up to 10 s, each wait jittered down by up to half
    rng = random.Random(7)
    waits = [backoff_delay(n, base=BACKOFF_BASE, cap=BACKOFF_MAX, rng=rng) for n in range(1, 20)]
    nominal = [0.5, 1, 2, 4, 8] + [10] * 14
    assert all(n / 2 <= w < n for w, n in zip(waits, nominal, strict=True))
    expected = list(itertools.accumulate(waits, initial=0.0))
    assert times == pytest.approx([t for t in expected if t < 40], abs=EXACT)


# -------------------------------------------------------------- shutdown


async def test_drain_lets_running_jobs_finish_and_claims_nothing_more(
    autojump_clock: trio.abc.Clock,
) -> None:
    times: dict[str, float] = {}
    async with open_test_broker() as broker, RecordingClient(broker) as client:
        worker = trioq.Worker(shutdown_grace=30, client=client)

        @worker.job("work")
        async def work(payload: int) -> None:
            times.setdefault("start", trio.current_time())
            await trio.sleep(10)

        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            first, second = await client.submit_many(
                [trioq.JobSpec("work", 1), trioq.JobSpec("work", 2)]
            )
            await trio.sleep(1)
            worker.drain()
        times["returned"] = trio.current_time()
        assert (await client.get(first))["status"] == "completed"
        assert (await client.get(second))["status"] == "unclaimed"

    assert times["returned"] == pytest.approx(times["start"] + 10, abs=EXACT)
    assert len(client.of("claim")) == 1


async def test_jobs_past_the_grace_period_are_released_for_another_worker(
    autojump_clock: trio.abc.Clock,
) -> None:
    starts: list[tuple[str, float, int]] = []

    async def forever(payload: None, ctx: trioq.JobContext) -> None:
        starts.append((ctx.worker_id, trio.current_time(), ctx.attempt))
        await trio.sleep(1000)

    async with open_test_broker() as broker, RecordingClient(broker) as client:
        first = trioq.Worker(worker_id="first", shutdown_grace=30, client=client)
        first.job("forever")(forever)
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            job = await client.submit("forever", None)
            await trio.sleep(1)
            first.drain()
        returned = trio.current_time()
        record = await client.get(job)
        assert record["status"] == "unclaimed"
        assert record["attempts"] == 0  # a release does not count the attempt

        second = trioq.Worker(worker_id="second", client=client)
        second.job("forever")(forever)
        async with trio.open_nursery() as nursery:
            await nursery.start(second.run)
            await trio.sleep(0.5)
            second.abort()

    (_, started, _) = starts[0]
    assert returned == pytest.approx(started + 31, abs=EXACT)  # drained at +1, 30 s grace
    assert_calls(client.of("release", job)[:1], [(started + 31, 1)])
    assert client.of("complete") == []
    # the other worker takes it at once (no lease timeout to wait for), same attempt
    assert starts[1][0] == "second"
    assert starts[1][1] == pytest.approx(returned, abs=EXACT)
    assert starts[1][2] == 1


async def test_cancelling_the_enclosing_scope_drains_with_grace(
    autojump_clock: trio.abc.Clock,
) -> None:
    times: dict[str, float] = {}
    async with open_test_broker() as broker, RecordingClient(broker) as client:
        worker = trioq.Worker(shutdown_grace=30, client=client)

        @worker.job("work")
        async def work(payload: None) -> None:
            times["start"] = trio.current_time()
            await trio.sleep(10)

        with trio.CancelScope() as outer:
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                job = await client.submit("work", None)
                await trio.sleep(2)
                outer.cancel()
        times["returned"] = trio.current_time()
        assert (await client.get(job))["status"] == "completed"

    assert times["returned"] == pytest.approx(times["start"] + 10, abs=EXACT)
    assert_calls(client.of("complete"), [(times["start"] + 10, 1)])


async def test_abort_cancels_and_releases_at_once(autojump_clock: trio.abc.Clock) -> None:
    times: dict[str, float] = {}
    async with open_test_broker() as broker, RecordingClient(broker) as client:
        worker = trioq.Worker(shutdown_grace=30, client=client)

        @worker.job("work")
        async def work(payload: None) -> None:
            times["start"] = trio.current_time()
            await trio.sleep(100)

        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            job = await client.submit("work", None)
            await trio.sleep(1)
            worker.drain()
            await trio.sleep(1)
            worker.abort()
        times["returned"] = trio.current_time()
        assert (await client.get(job))["status"] == "unclaimed"

    assert times["returned"] == pytest.approx(times["start"] + 2, abs=EXACT)
    assert_calls(client.of("release", job), [(times["start"] + 2, 1)])


@pytest.mark.parametrize("how", ["drain", "cancel"])
async def test_jobs_claimed_while_stopping_are_given_back(
    thread_clock: trio.testing.MockClock, how: str
) -> None:
    ran: list[str] = []
    async with open_test_broker() as broker, RecordingClient(broker) as client:
        worker = trioq.Worker(poll_interval=1.0, client=client)
        worker.job("work")(lambda payload: ran.append(payload))
        with trio.CancelScope() as outer:
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                await trio.sleep(0.2)  # a long-poll claim is in flight
                if how == "drain":
                    worker.drain()
                else:
                    outer.cancel()
                # the claim is neither cancelled nor abandoned: it takes this job
                nursery.start_soon(_submit_later, client, 0.3)
        returned = trio.current_time()
        [record] = (await client.jobs())["jobs"]

    assert ran == []
    assert record["status"] == "unclaimed"
    assert record["attempts"] == 0
    assert [t for (t, _) in client.of("release")] == pytest.approx([0.5], abs=0.01)
    assert returned == pytest.approx(0.5, abs=0.01)
    assert len(client.of("claim")) == 1


async def _submit_later(client: trioq.Client, delay: float) -> None:
    with trio.CancelScope(shield=True):
        await trio.sleep(delay)
        await client.submit("work", "late")


async def test_a_worker_runs_again_after_a_drain(thread_clock: trio.testing.MockClock) -> None:
    done: list[int] = []
    worker = trioq.Worker()
    worker.job("n")(lambda n: done.append(n))
    async with open_test_broker() as broker:
        await broker.client.submit("n", 1)
        await broker.run_worker_until_idle(worker)
        await broker.client.submit("n", 2)
        await broker.run_worker_until_idle(worker)
    assert done == [1, 2]


# ------------------------------------------------------------ registration


def test_registration_errors() -> None:
    worker = trioq.Worker()

    @worker.job("a")
    async def a(payload: int) -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        worker.job("a")(a)
    with pytest.raises(TypeError, match="neither the payload nor annotated JobContext"):

        @worker.job("b")
        async def b(payload: int, extra: str) -> None: ...


async def test_run_refuses_without_handlers_or_with_zero_concurrency() -> None:
    with pytest.raises(ValueError, match="no handlers"):
        await trioq.Worker().run()
    # settings are checked when given, not when the worker runs
    with pytest.raises(ValueError, match="concurrency must be >= 1, not 0"):
        trioq.Worker(concurrency=0)


def test_environment_wins_over_constructor_arguments() -> None:
    worker = trioq.Worker(concurrency=3, poll_interval=0.25, broker_url="http://a:1")
    worker.apply_environment({"TRIOQ_CONCURRENCY": "4", "TRIOQ_HEARTBEAT_INTERVAL_MS": "750"})
    s = worker.settings
    assert (s.concurrency, s.poll_interval, s.heartbeat_interval) == (4, 0.25, 0.75)
    assert s.broker_url == "http://a:1"
    assert s.shutdown_grace == 30.0  # the default
    with pytest.raises(ValueError, match="TRIOQ_CONCURRENCY"):
        worker.apply_environment({"TRIOQ_CONCURRENCY": "many"})
    assert not math.isnan(s.poll_interval)


# ------------------------------------------------- heartbeats against the lease


async def test_heartbeats_renew_at_least_three_times_per_granted_lease(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    starts: dict[str, float] = {}

    async def work(payload: int, ctx: trioq.JobContext) -> None:
        starts[ctx.id] = trio.current_time()
        await trio.sleep(9.5)

    async with (
        open_test_broker(job_lease_ms=3000) as broker,
        RecordingClient(broker) as client,
        trio.open_nursery() as nursery,
    ):
        # the configured interval (5 s) is longer than the 3 s lease the broker grants
        worker = trioq.Worker(concurrency=2, heartbeat_interval=5, client=client)
        worker.job("work")(work)
        with caplog.at_level(logging.INFO, logger="trioq.worker"):
            await nursery.start(worker.run)
            jobs = await client.submit_many([trioq.JobSpec("work", 1), trioq.JobSpec("work", 2)])

            async def all_completed() -> bool:
                return all([await status_is(client, job, "completed") for job in jobs])

            await eventually(all_completed)
            worker.drain()

    for job in jobs:
        # every second (a third of the lease), from the claim to the end of the handler
        start = starts[job]
        assert client.times("heartbeat", job) == pytest.approx(
            [start + i for i in range(1, 10)], abs=EXACT
        )
    assert (worker.counts["completed"], worker.counts["lost"]) == (2, 0)
    noted = [r.getMessage() for r in caplog.records if "ms leases" in r.getMessage()]
    assert noted == [
        "the broker grants 3000 ms leases: heartbeats every 1 s instead of the configured "
        "5 s (at least three per lease)"
    ]


# --------------------------------------------------------- stopping: bounds


async def test_a_stop_awaits_a_claim_in_flight_one_commit_interval_plus_a_second(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    times: dict[str, float] = {}

    async def forever(payload: None) -> None:
        times["start"] = trio.current_time()
        try:
            await trio.sleep(1000)
        except trio.Cancelled:
            times["cancelled"] = trio.current_time()
            raise

    # the broker's interval (0.5 s, learned at start) bounds the wait, not the
    # worker's stand-in setting
    async with (
        open_test_broker(group_commit_interval=0.5) as broker,
        RecordingClient(broker) as client,
    ):

        async def second_claim_unanswered(_: str) -> None:
            if len(client.of("claim")) >= 2:
                try:
                    await trio.sleep_forever()
                finally:
                    times["claim given up"] = trio.current_time()

        client.claim_fault = second_claim_unanswered
        worker = trioq.Worker(
            concurrency=2, shutdown_grace=5, group_commit_interval=9, client=client
        )
        worker.job("forever")(forever)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            job = await client.submit("forever", None)
            await trio.sleep(1)  # the job runs; a claim for the free slot is in flight
            assert len(client.of("claim")) == 2
            times["drain"] = trio.current_time()
            worker.drain()
        times["returned"] = trio.current_time()
        assert (await client.get(job))["status"] == "unclaimed"  # released for another

    drain = times["drain"]
    assert times["claim given up"] == pytest.approx(drain + 0.5 + 1, abs=EXACT)
    # the grace counts from the drain, not from the end of the claim
    assert times["cancelled"] == pytest.approx(drain + 5, abs=EXACT)
    assert times["returned"] == pytest.approx(drain + 5, abs=EXACT)
    assert any("gave up a claim" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("how", "grace", "bound"),
    [("drain", 30.0, 1.5), ("cancel", 30.0, 1.5), ("drain", 0.25, 0.25), ("abort", 30.0, 0.0)],
)
async def test_an_idle_worker_stops_within_a_commit_interval_plus_a_second(
    autojump_clock: trio.abc.Clock, how: str, grace: float, bound: float
) -> None:
    async with (
        open_test_broker(group_commit_interval=0.5) as broker,
        RecordingClient(broker) as client,
    ):
        worker = trioq.Worker(
            poll_interval=10, shutdown_grace=grace, group_commit_interval=9, client=client
        )
        worker.job("x")(lambda payload: None)
        with trio.CancelScope() as outer:
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                await trio.sleep(2)  # a long-poll claim (10 s) waits at the broker
                stopped = trio.current_time()
                if how == "drain":
                    worker.drain()
                elif how == "abort":
                    worker.abort()
                else:
                    outer.cancel()
        returned = trio.current_time()
        # the claim given up took nothing with it: a job submitted now waits for a worker
        job = await client.submit("x", None)
        assert (await client.get(job))["status"] == "unclaimed"
    assert returned - stopped == pytest.approx(bound, abs=EXACT)
    assert len(client.of("claim")) == 1


# ------------------------------------------------------ a broker that is down


class Switch(httpx.AsyncBaseTransport):
    """The in-process broker, or a refused connection while ``down``."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.down = False
        self.refused: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            self.refused.append(trio.current_time())
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)


class VirtualLog(logging.Handler):
    """Records (virtual time, level, message) of each log record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[float, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((trio.current_time(), record.levelno, record.getMessage()))

    def at(self, level: int) -> list[tuple[float, str]]:
        return [(t, m) for (t, lv, m) in self.lines if lv == level]


@pytest.fixture
def worker_log() -> Iterator[VirtualLog]:
    handler = VirtualLog()
    logger = logging.getLogger("trioq.worker")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_run_starts_once_the_broker_answers_and_warns_at_a_bounded_rate(
    autojump_clock: trio.abc.Clock, worker_log: VirtualLog
) -> None:
    async with open_test_broker() as broker:
        switch = Switch(broker.transport)
        switch.down = True
        async with trioq.Client(TEST_URL, transport=switch) as client, trio.open_nursery() as n:
            worker = trioq.Worker(client=client)
            worker.job("x")(lambda payload: None)

            async def broker_up_at(t: float) -> None:
                await trio.sleep_until(t)
                switch.down = False

            n.start_soon(broker_up_at, 100.0)
            await n.start(worker.run)
            started = trio.current_time()
            worker.drain()

    assert 100 <= started <= 100 + BACKOFF_MAX + RETRY_WINDOW
    # the outage's warnings (the drain may log that it gave up a claim, too)
    warnings = [(t, m) for (t, m) in worker_log.at(logging.WARNING) if m.startswith("broker ")]
    # the first after the first failed attempts (the probe's retries in the client) ...
    first_at, first = warnings[0]
    assert first_at == pytest.approx(RETRY_WINDOW, abs=EXACT)
    assert first.startswith(f"broker {TEST_URL}: probe failed (BrokerUnreachable: cannot reach")
    # ... then at most one every WARN_EVERY seconds
    times = [t for (t, _) in warnings]
    assert all(b - a >= WARN_EVERY for a, b in itertools.pairwise(times))
    assert 3 <= len(warnings) <= 1 + 100 // WARN_EVERY
    assert "still failing after" in warnings[1][1]
    [(_, back)] = worker_log.at(logging.INFO)
    assert back.startswith(f"broker {TEST_URL} answers again after")


async def test_a_worker_whose_broker_goes_away_warns_and_stops_promptly(
    autojump_clock: trio.abc.Clock, worker_log: VirtualLog
) -> None:
    async with open_test_broker() as broker:
        switch = Switch(broker.transport)
        async with trioq.Client(TEST_URL, transport=switch) as client:
            worker = trioq.Worker(group_commit_interval=0.0, client=client)
            worker.job("x")(lambda payload: None)
            with trio.CancelScope() as outer:
                async with trio.open_nursery() as nursery:
                    await nursery.start(worker.run)
                    switch.down = True
                    # 17 s on, a claim is being retried inside the client
                    await trio.sleep(17)
                    cancelled_at = trio.current_time()
                    outer.cancel()
            returned = trio.current_time()

    # the first claim refused is retried in the client; when that fails, the warning
    [(warned_at, warning)] = worker_log.at(logging.WARNING)[:1]
    assert warned_at == pytest.approx(switch.refused[0] + RETRY_WINDOW, abs=EXACT)
    assert warning.startswith(f"broker {TEST_URL}: claim failed (BrokerUnreachable: ")
    assert "attempts in 2.0 s to http://trioq.test" in warning
    # a claim in flight is given up one commit interval (here 0) plus one second on
    assert returned - cancelled_at <= 1.0 + EXACT


async def test_a_wrong_token_raises_from_start(autojump_clock: trio.abc.Clock) -> None:
    async with (
        open_test_broker(token="right") as broker,
        broker.make_client(token="wrong") as client,
        trio.open_nursery() as nursery,
    ):
        worker = trioq.Worker(client=client)
        worker.job("x")(lambda payload: None)
        with pytest.raises(trioq.Unauthorized):
            await nursery.start(worker.run)


async def test_a_drain_before_the_broker_answered_ends_the_wait(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_broker() as broker:
        switch = Switch(broker.transport)
        switch.down = True
        async with trioq.Client(TEST_URL, transport=switch) as client:
            worker = trioq.Worker(client=client)
            worker.job("x")(lambda payload: None)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.run)
                await trio.sleep(5)
                worker.drain()
                drained = trio.current_time()
            assert trio.current_time() == pytest.approx(drained, abs=EXACT)


# ------------------------------------------------------------- job log lines


async def test_every_job_log_line_names_the_job_its_type_and_attempt(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_test_broker(job_lease_ms=3000) as broker, RecordingClient(broker) as client:
        worker = trioq.Worker(heartbeat_interval=1, client=client)

        @worker.job("report")
        async def report(payload: str) -> None:
            await trio.sleep(1.5)  # one heartbeat (which fails for "beat")
            if payload == "raise":
                raise RuntimeError("no")

        @worker.on_claimed
        def broken_hook(ctx: trioq.JobContext) -> None:
            raise KeyError("hook")

        async def outcome_fault(job_id: str) -> None:
            record = await client.get(job_id)
            if record["payload"] == "hang":
                # "reporting ... timed out" (5 s); the exchange then goes on, as one
                # does when the client's timeout ends it, with the claim it carries
                await trio.sleep(30)
            if record["payload"] == "unreachable":
                raise BrokerUnreachable("injected")  # "could not report ..."

        async def heartbeat_fault(job_id: str) -> None:
            if (await client.get(job_id))["payload"] == "beat":
                raise BrokerUnreachable("injected heartbeat failure")

        client.complete_fault = outcome_fault
        client.heartbeat_fault = heartbeat_fault
        with caplog.at_level(logging.INFO, logger="trioq.worker"):
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                ids = {
                    payload: await client.submit("report", payload, max_attempts=1)
                    for payload in ("hang", "unreachable", "beat", "raise")
                }
                ids["invalid"] = await client.submit("report", 42, max_attempts=1)

                async def all_finished() -> bool:
                    records = [await client.get(job_id) for job_id in ids.values()]
                    return all(r["status"] in ("completed", "dead") for r in records)

                await eventually(all_finished)
                worker.drain()

    by_job = {job_id: f"job {job_id} (report, attempt 1)" for job_id in ids.values()}
    lines = [r.getMessage() for r in caplog.records if r.name == "trioq.worker"]
    about_jobs = [line for line in lines if "job" in line and not line.startswith("draining")]
    for line in about_jobs:
        assert any(line.startswith(label) for label in by_job.values()), line
    for needle, payload in [
        ("reporting its completion timed out after 5 s; its lease will expire", "hang"),
        ("could not report its completion (BrokerUnreachable: injected)", "unreachable"),
        ("heartbeat failed: BrokerUnreachable: injected heartbeat failure", "beat"),
        ("raised RuntimeError: no", "raise"),
        ("invalid payload for 'report'", "invalid"),
        ("hook", "raise"),
    ]:
        assert any(line.startswith(by_job[ids[payload]]) and needle in line for line in lines), (
            needle,
            lines,
        )


# ---------------------------------------------------------- registration (more)


async def _handler(payload: None) -> None: ...


@pytest.mark.parametrize(
    ("register", "error", "message"),
    [
        (lambda w: w.job(_handler), TypeError, "@worker.job needs the job type"),
        (lambda w: w.job(42), TypeError, "must be a string, not int"),
        (lambda w: w.job(""), ValueError, "job type '' is not 1-128 printable characters"),
        (lambda w: w.job("x" * 129), ValueError, "is not 1-128 printable characters"),
        (lambda w: w.job("a\nb"), ValueError, "is not 1-128 printable characters"),
        (lambda w: w.job("t", timeout=-1), ValueError, "timeout must be > 0 seconds"),
        (lambda w: w.job("t", timeout=0), ValueError, "timeout must be > 0 seconds"),
        (lambda w: w.job("t", timeout=math.nan), ValueError, "timeout must be > 0 seconds"),
        (lambda w: w.job("t", timeout="60"), TypeError, "timeout must be seconds"),
    ],
)
def test_registration_mistakes_fail_at_decoration(
    register: Callable[[trioq.Worker], Any], error: type[Exception], message: str
) -> None:
    worker = trioq.Worker()
    with pytest.raises(error, match=re.escape(message)):
        register(worker)
    assert worker.handlers == {}


def test_a_bare_decorator_leaves_the_function_alone() -> None:
    worker = trioq.Worker()
    with pytest.raises(TypeError, match=re.escape("write @worker.job('some:type') above")):

        @worker.job  # type: ignore[arg-type]
        async def handler(payload: None) -> None: ...

    worker.job("t", timeout=2.5)(_handler)
    assert worker.handlers["t"].timeout == 2.5


# ----------------------------------------------------------------- settings


async def test_an_embedded_worker_reads_the_environment_over_its_arguments(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule of the command line holds embedded too (without the flags)."""
    monkeypatch.setenv("TRIOQ_CONCURRENCY", "7")
    monkeypatch.setenv("GROUP_COMMIT_INTERVAL_MS", "250")
    worker = trioq.Worker(concurrency=2, poll_interval=0.5)
    peak = running = 0

    @worker.job("x")
    async def x(payload: int) -> None:
        nonlocal peak, running
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1

    assert (worker.settings.concurrency, worker.settings.poll_interval) == (7, 0.5)
    assert worker.settings.group_commit_interval == 0.25
    async with open_test_broker() as broker:
        await broker.client.submit_many([trioq.JobSpec("x", n) for n in range(10)])
        await broker.run_worker_until_idle(worker)
    assert peak == 7
    # the environment changed since: read it again
    monkeypatch.delenv("TRIOQ_CONCURRENCY")
    monkeypatch.setenv("TRIOQ_POLL_INTERVAL_MS", "100")
    worker.apply_environment()
    assert (worker.settings.concurrency, worker.settings.poll_interval) == (2, 0.1)


def test_a_bad_variable_fails_the_worker_s_construction_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRIOQ_HEARTBEAT_INTERVAL_MS", "0")
    with pytest.raises(SettingsError) as raised:
        trioq.Worker(heartbeat_interval=5)
    assert str(raised.value) == "TRIOQ_HEARTBEAT_INTERVAL_MS must be positive, not 0"
