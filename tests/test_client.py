"""trioq.Client: the API against an in-process broker, retries, leader following,
error mapping by ``_tag``. Virtual time (MockClock) throughout: no socket is opened."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import re
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import trio
from pydantic import BaseModel

import trioq
import trioq.client
from trioq import (
    BrokerProtocolError,
    JobNotFound,
    LeaseLost,
    MemoryStorage,
    NotLeader,
    PayloadTooLarge,
    QueueFull,
    StorageUnavailable,
    TrioqError,
    Unauthorized,
    WriteOutcomeUnknown,
)
from trioq._errors import ERRORS_BY_TAG, BrokerUnreachable
from trioq.broker._api import BrokerApi
from trioq.broker._http import create_app
from trioq.core._config import EngineConfig
from trioq.core._engine import Engine, Role
from trioq.core._state import Limits
from trioq.testing import TEST_URL, open_test_broker, trio_wall_clock

EXACT = 1e-9


class FullJitter(random.Random):
    """Retry waits at the top of their jitter range: base * 2**attempt, capped."""

    def random(self) -> float:
        return 1.0


# ------------------------------------------------------------- the API


class Resize(BaseModel):
    image: str
    width: int


@dataclasses.dataclass
class Point:
    x: int
    y: int


async def test_submit_get_and_client_side_ids(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_broker() as broker:
        client = broker.client
        generated = await client.submit("resize", Resize(image="a.png", width=10))
        assert len(generated) == 32
        assert int(generated, 16) >= 0  # hex
        record = await client.get(generated)
        assert record["status"] == "unclaimed"
        assert record["type"] == "resize"
        assert record["payload"] == {"image": "a.png", "width": 10}

        # a client-supplied id makes a submit idempotent: a retry creates nothing new
        assert await client.submit("point", Point(1, 2), id="order-17") == "order-17"
        assert await client.submit("point", Point(9, 9), id="order-17") == "order-17"
        assert (await client.get("order-17"))["payload"] == {"x": 1, "y": 2}
        assert (await client.stats())["total"] == 2

        ids = await client.submit_many(
            [
                trioq.JobSpec("a", 1, id="batch-1"),
                trioq.JobSpec("b", [2], max_attempts=7),
                trioq.JobSpec("c", None, delay=5),
            ]
        )
        assert ids[0] == "batch-1"
        assert len(set(ids)) == 3
        assert (await client.get(ids[1]))["maxAttempts"] == 7
        assert await client.submit_many([]) == []
        stats = await client.stats()
        assert (stats["total"], stats["unclaimed"], stats["inProgress"]) == (5, 5, 0)
        assert stats["brokerAddress"] == TEST_URL


async def test_a_batch_is_validated_as_a_whole(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_broker() as broker:
        with pytest.raises(BrokerProtocolError):
            await broker.client.submit_many(
                [trioq.JobSpec("ok", 1), trioq.JobSpec("bad", 2, id="not a valid id!")]
            )
        assert (await broker.client.stats())["total"] == 0
        with pytest.raises(ValueError, match="delay"):
            await broker.client.submit("x", 1, delay=-1)


async def test_claim_heartbeat_complete_fail_release(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_broker(job_lease_ms=20_000) as broker:
        client = broker.client
        a, b, c = await client.submit_many(
            [trioq.JobSpec("t", i, max_attempts=2) for i in range(3)]
        )
        jobs = await client.claim("w1", types=["t"], max=2)
        assert [(j.id, j.type, j.payload, j.attempt, j.lease_ms) for j in jobs] == [
            (a, "t", 0, 1, 20_000),
            (b, "t", 1, 1, 20_000),
        ]
        await client.heartbeat(a, "w1", attempt=1)
        await client.complete(a, "w1", attempt=1)
        assert (await client.get(a))["status"] == "completed"

        # a stale attempt or another worker gets LeaseLost
        with pytest.raises(LeaseLost):
            await client.heartbeat(b, "w1", attempt=2)
        with pytest.raises(LeaseLost):
            await client.complete(b, "w2")
        await client.release(b, "w1", attempt=1)
        assert (await client.get(b))["attempts"] == 0

        [again] = await client.claim("w2", max=1)
        assert again.id == b
        assert await client.fail(b, "w2", "boom", attempt=1, retry_in=0) == "retrying"
        # in order of (ready time, enqueue order): no virtual time has passed, so b's
        # retry (retry_in=0) is ready at c's ready time, and b was enqueued first
        rest = await client.claim("w2", types=["t"], max=5)
        assert [(j.id, j.attempt) for j in rest] == [(b, 2), (c, 1)]
        assert await client.fail(b, "w2", "boom again", attempt=2) == "dead"
        assert await client.fail(c, "w2", "bad input", final=True) == "dead"
        dead = {d["jobId"]: d for d in (await client.dead())["jobs"]}
        assert (dead[b]["reason"], dead[b]["lastError"]) == ("exhausted", "boom again")
        assert (dead[c]["reason"], dead[c]["attempts"]) == ("final", 1)

        await client.requeue(c)
        assert (await client.get(c))["status"] == "unclaimed"
        assert await client.cancel(c) == "cancelled"
        assert (await client.get(c))["status"] == "cancelled"
        with pytest.raises(JobNotFound):
            await client.get("never-submitted")


async def test_jobs_are_listed_in_pages(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_broker() as broker:
        ids = await broker.client.submit_many([trioq.JobSpec("t", i) for i in range(5)])
        first = await broker.client.jobs(limit=2)
        assert [j["jobId"] for j in first["jobs"]] == ids[:2]
        second = await broker.client.jobs(limit=10, cursor=first["nextCursor"])
        assert [j["jobId"] for j in second["jobs"]] == ids[2:]
        assert second["nextCursor"] is None


async def test_long_poll_claims_and_delays_in_virtual_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_broker() as broker, trio.open_nursery() as nursery:
        client = broker.client
        start = trio.current_time()
        assert await client.claim("w", wait=5) == []
        assert trio.current_time() - start == pytest.approx(5, abs=EXACT)

        async def submit_at(t: float) -> None:
            await trio.sleep_until(t)
            await client.submit("t", "late")

        start = trio.current_time()
        nursery.start_soon(submit_at, start + 2)
        [job] = await client.claim("w", wait=10, max=3)
        assert job.payload == "late"
        assert trio.current_time() - start == pytest.approx(2, abs=EXACT)

        start = trio.current_time()
        await client.submit("t", "delayed", delay=3)
        [job] = await client.claim("w", wait=10)
        assert job.payload == "delayed"
        assert trio.current_time() - start == pytest.approx(3, abs=0.0021)  # whole ms


async def test_from_storage_finds_the_leader(autojump_clock: trio.abc.Clock) -> None:
    async with (
        open_test_broker() as broker,
        await trioq.Client.from_storage(broker.storage, transport=broker.transport) as client,
    ):
        assert client.url == TEST_URL
        assert (await client.stats())["total"] == 0
    with pytest.raises(NotLeader, match="no broker has started"):
        await trioq.Client.from_storage(MemoryStorage())


def test_urls_are_parsed_and_checked() -> None:
    client = trioq.Client(" http://a.test:1/, http://b.test:2 ,")
    assert client.urls == ["http://a.test:1", "http://b.test:2"]
    assert client.url == "http://a.test:1"
    assert trioq.Client(["https://c.test"]).urls == ["https://c.test"]
    with pytest.raises(ValueError, match="must start with http"):
        trioq.Client("localhost:8080")
    with pytest.raises(ValueError, match="must start with http"):
        trioq.Client("http://ok.test,ftp://no.test")


# ---------------------------------------------------------- error mapping


def answer(status: int, body: Any) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=orjson.dumps(body))

    return handler


@pytest.mark.parametrize("tag", sorted(ERRORS_BY_TAG))
async def test_error_bodies_come_back_as_the_matching_exception(
    autojump_clock: trio.abc.Clock, tag: str
) -> None:
    body = {"_tag": tag, "message": f"a {tag} happened", "leader": "http://leader.test"}
    transport = httpx.MockTransport(answer(409, body))
    async with trioq.Client("http://x.test", transport=transport) as client:
        with pytest.raises(TrioqError) as caught:
            await client.get("job-1")
    assert type(caught.value) is ERRORS_BY_TAG[tag]
    assert caught.value.message == f"a {tag} happened"
    if isinstance(caught.value, NotLeader):
        assert caught.value.leader == "http://leader.test"


async def test_unknown_tags_and_non_json_errors(autojump_clock: trio.abc.Clock) -> None:
    async with trioq.Client(
        "http://x.test", transport=httpx.MockTransport(answer(500, {"_tag": "Nope"}))
    ) as client:
        with pytest.raises(TrioqError) as caught:
            await client.stats()
        assert type(caught.value) is TrioqError

    def html(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>")

    async with trioq.Client("http://x.test", transport=httpx.MockTransport(html)) as client:
        with pytest.raises(TrioqError, match=r"HTTP 502 from http://x.test/v1/stats"):
            await client.stats()


async def test_a_real_broker_answers_map_to_exceptions(autojump_clock: trio.abc.Clock) -> None:
    limits = Limits(max_payload_bytes=64)
    async with open_test_broker(token="s3cret", limits=limits) as broker:
        client = broker.client
        with pytest.raises(JobNotFound):
            await client.get("nope")
        with pytest.raises(BrokerProtocolError):
            await client.get("not valid!")
        with pytest.raises(PayloadTooLarge):
            await client.submit("big", "x" * 100)
        job = await client.submit("t", 1)
        with pytest.raises(LeaseLost):
            await client.complete(job, "someone")
        async with broker.make_client() as anonymous:
            with pytest.raises(Unauthorized):
                await anonymous.stats()
        async with broker.make_client(token="wrong") as wrong:
            with pytest.raises(Unauthorized):
                await wrong.submit("t", 2)


# ----------------------------------------------------------------- retries


class Scripted:
    """A MockTransport handler playing a script of answers, recording request times."""

    def __init__(self, *script: httpx.Response | type[Exception] | Exception) -> None:
        self.script = list(script)
        self.requests: list[tuple[float, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((trio.current_time(), request.url.path))
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, httpx.Response):
            return step
        if isinstance(step, type):
            raise step("scripted failure", request=request)  # type: ignore[call-arg]
        raise step

    @property
    def times(self) -> list[float]:
        return [t for (t, _) in self.requests]


def unavailable() -> httpx.Response:
    return httpx.Response(503, json={"_tag": "StorageUnavailable", "message": "store down"})


def ok(body: Any) -> httpx.Response:
    return httpx.Response(200, json=body)


async def test_503_is_retried_with_exponential_backoff(autojump_clock: trio.abc.Clock) -> None:
    script = Scripted(
        unavailable(), unavailable(), unavailable(), ok({"results": [{"jobId": "j"}]})
    )
    async with trioq.Client(
        "http://x.test", transport=httpx.MockTransport(script), rng=FullJitter()
    ) as client:
        start = trio.current_time()
        assert await client.submit("t", 1, id="j") == "j"
    # waits of 0.1, 0.2, 0.4 s (backoff_base 0.05 doubling, at full jitter)
    assert [t - start for t in script.times] == pytest.approx([0, 0.1, 0.3, 0.7], abs=EXACT)


async def test_jitter_keeps_waits_between_half_and_all(autojump_clock: trio.abc.Clock) -> None:
    script = Scripted(*[unavailable()] * 6, ok({"status": "ok"}))
    async with trioq.Client(
        "http://x.test", transport=httpx.MockTransport(script), rng=random.Random(7)
    ) as client:
        await client.stats()
    waits = [b - a for a, b in zip(script.times, script.times[1:], strict=False)]
    for n, wait in enumerate(waits, start=1):
        full = min(2.0, 0.05 * 2**n)
        assert full / 2 <= wait <= full


async def test_retries_stop_at_the_overall_deadline(autojump_clock: trio.abc.Clock) -> None:
    full = httpx.Response(503, json={"_tag": "QueueFull", "message": "full"})
    script = Scripted(full)
    async with trioq.Client(
        "http://x.test",
        transport=httpx.MockTransport(script),
        rng=FullJitter(),
        retry_deadline=5.0,
        backoff_max=2.0,
    ) as client:
        start = trio.current_time()
        with pytest.raises(QueueFull):
            await client.submit("t", 1)
        elapsed = trio.current_time() - start
    assert elapsed == pytest.approx(5.0, abs=EXACT)
    # 0.1, 0.2, 0.4, 0.8, 1.6, then capped: the last wait is cut to the deadline
    assert [t - start for t in script.times] == pytest.approx(
        [0, 0.1, 0.3, 0.7, 1.5, 3.1, 5.0], abs=EXACT
    )


async def test_connection_errors_are_retried_then_raise_unreachable(
    autojump_clock: trio.abc.Clock,
) -> None:
    script = Scripted(httpx.ConnectError, httpx.ConnectTimeout, ok({"status": "ok"}))
    async with trioq.Client("http://x.test", transport=httpx.MockTransport(script)) as client:
        assert (await client.stats())["status"] == "ok"
    assert len(script.requests) == 3

    down = Scripted(httpx.ConnectError)
    async with trioq.Client(
        "http://down.test", transport=httpx.MockTransport(down), retry_deadline=3
    ) as client:
        start = trio.current_time()
        with pytest.raises(BrokerUnreachable, match=r"down\.test"):
            await client.stats()
        assert trio.current_time() - start == pytest.approx(3, abs=EXACT)


@pytest.mark.parametrize("error", [httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError])
async def test_a_claim_whose_answer_is_lost_is_never_repeated(
    autojump_clock: trio.abc.Clock, error: type[Exception]
) -> None:
    script = Scripted(error, ok({"jobs": []}))
    async with trioq.Client("http://x.test", transport=httpx.MockTransport(script)) as client:
        with pytest.raises(BrokerUnreachable, match="lease runs out"):
            await client.claim("w", max=5, wait=1)
        assert len(script.requests) == 1
        # the same failure on an idempotent call is retried
        script.script = [error, ok({"status": "ok"})]
        await client.stats()
        assert len(script.requests) == 3


async def test_a_claim_that_provably_claimed_nothing_is_retried(
    autojump_clock: trio.abc.Clock,
) -> None:
    job = {"jobId": "j", "type": "t", "payload": 1, "attempt": 1, "leaseMs": 30_000}
    script = Scripted(httpx.ConnectError, unavailable(), ok({"jobs": [job]}))
    async with trioq.Client("http://x.test", transport=httpx.MockTransport(script)) as client:
        [claimed] = await client.claim("w", max=5)
    assert claimed == trioq.Claimed("j", "t", 1, 1, 30_000)
    assert len(script.requests) == 3


async def test_a_claim_whose_commit_outcome_is_unknown_is_not_repeated(
    autojump_clock: trio.abc.Clock,
) -> None:
    unknown = httpx.Response(503, json={"_tag": "WriteOutcomeUnknown", "message": "?"})
    script = Scripted(unknown, ok({"jobs": []}))
    async with trioq.Client("http://x.test", transport=httpx.MockTransport(script)) as client:
        with pytest.raises(WriteOutcomeUnknown):
            await client.claim("w", max=5)
        assert len(script.requests) == 1
        script.script = [unknown, ok({"status": "ok"})]
        await client.stats()  # an idempotent read is retried
        assert len(script.requests) == 3


async def test_client_errors_are_not_retried(autojump_clock: trio.abc.Clock) -> None:
    script = Scripted(httpx.Response(404, json={"_tag": "JobNotFound", "message": "no"}))
    async with trioq.Client("http://x.test", transport=httpx.MockTransport(script)) as client:
        with pytest.raises(JobNotFound):
            await client.get("j")
    assert len(script.requests) == 1


# ------------------------------------------------- two brokers, one document


class Router(httpx.AsyncBaseTransport):
    """Routes requests by host to in-process brokers; a host in ``down`` refuses."""

    def __init__(self, routes: dict[str, httpx.AsyncBaseTransport]) -> None:
        self.routes = routes
        self.down: set[str] = set()
        self.log: list[tuple[float, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.log.append((trio.current_time(), host))
        if host in self.down or host not in self.routes:
            raise httpx.ConnectError(f"connection to {host} refused", request=request)
        return await self.routes[host].handle_async_request(request)

    def hosts(self) -> list[str]:
        return [h for (_, h) in self.log]


def make_engine(storage: MemoryStorage, name: str) -> Engine:
    return Engine(
        storage,
        broker_id=name,
        url=f"http://{name}.test",
        config=EngineConfig(group_commit_interval=0.0),
        wall_clock=trio_wall_clock,
    )


async def two_brokers(
    nursery: trio.Nursery,
) -> tuple[Engine, Engine, Router]:
    storage = MemoryStorage()
    a, b = make_engine(storage, "a"), make_engine(storage, "b")
    assert await nursery.start(a.run) is Role.LEADER
    assert await nursery.start(b.run) is Role.STANDBY
    router = Router(
        {
            "a.test": httpx.ASGITransport(app=create_app(BrokerApi(a))),  # type: ignore[arg-type]
            "b.test": httpx.ASGITransport(app=create_app(BrokerApi(b))),  # type: ignore[arg-type]
        }
    )
    return a, b, router


async def test_not_leader_is_followed_to_the_leader(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        a, b, router = await two_brokers(nursery)
        async with trioq.Client("http://b.test", transport=router) as client:
            start = trio.current_time()
            job = await client.submit("t", 1)
            assert trio.current_time() == start  # dialled the leader at once
            assert client.url == "http://a.test"
            assert router.hosts() == ["b.test", "a.test"]
            assert a.state is not None
            assert job in a.state.jobs
        a.stop()
        b.stop()


async def test_the_client_follows_a_leader_change(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        a, b, router = await two_brokers(nursery)
        async with trioq.Client("http://a.test,http://b.test", transport=router) as client:
            first = await client.submit("t", 1)
            a.stop()  # graceful: the last commit releases the lease, b takes over
            start = trio.current_time()
            second = await client.submit("t", 2)
            # b takes over at its next poll (<= ~1.1 s); the client's jittered backoff
            # (up to 1.6 s a step by then) decides when it asks again
            assert trio.current_time() - start < 4
            assert client.url == "http://b.test"
            assert b.is_leader
            assert (await client.get(first))["status"] == "unclaimed"
            assert (await client.get(second))["status"] == "unclaimed"
        b.stop()


async def test_the_client_rotates_past_a_crashed_leader(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        a, b, router = await two_brokers(nursery)
        async with trioq.Client("http://a.test,http://b.test", transport=router) as client:
            job = await client.submit("t", 1)
            router.down.add("a.test")  # the leader stops answering ...
            b.request_takeover()  # ... and the standby's probe takes over
            [claimed] = await client.claim("w", max=1)
            assert claimed.id == job
            assert client.url == "http://b.test"
            assert "a.test" in router.hosts()[1:]
        a.stop()
        b.stop()


async def test_a_standby_without_a_known_leader_is_retried(
    autojump_clock: trio.abc.Clock,
) -> None:
    script = Scripted(
        httpx.Response(503, json={"_tag": "NotLeader", "message": "standby", "leader": None}),
        ok({"status": "ok"}),
    )
    async with trioq.Client(
        "http://x.test", transport=httpx.MockTransport(script), rng=FullJitter()
    ) as client:
        start = trio.current_time()
        await client.stats()
    assert [t - start for t in script.times] == pytest.approx([0, 0.1], abs=EXACT)


async def test_storage_unavailable_is_a_retryable_503(autojump_clock: trio.abc.Clock) -> None:
    script = Scripted(unavailable(), ok({"status": "ok"}))
    async with trioq.Client("http://x.test", transport=httpx.MockTransport(script)) as client:
        await client.stats()
    assert len(script.requests) == 2
    assert issubclass(ERRORS_BY_TAG["StorageUnavailable"], StorageUnavailable)


# ------------------------------------------------------- a starting broker


def starting() -> httpx.Response:
    return httpx.Response(
        503,
        json={
            "_tag": "NotLeader",
            "message": "broker a is starting, not the leader",
            "leader": None,
            "role": "starting",
        },
    )


async def test_not_leader_bodies_carry_the_brokers_role(autojump_clock: trio.abc.Clock) -> None:
    standby = {"_tag": "NotLeader", "message": "m", "leader": "http://l.test", "role": "standby"}
    async with trioq.Client(
        "http://x.test", transport=httpx.MockTransport(answer(409, standby))
    ) as client:
        with pytest.raises(NotLeader) as caught:
            await client.get("j")
    assert (caught.value.role, caught.value.leader, caught.value.starting) == (
        "standby",
        "http://l.test",
        False,
    )
    # a body from a broker that does not send the role (older, or osqueue)
    old = {"_tag": "NotLeader", "message": "m", "leader": None}
    async with trioq.Client("http://x.test", transport=httpx.MockTransport(answer(409, old))) as c:
        with pytest.raises(NotLeader) as caught:
            await c.get("j")
    assert (caught.value.role, caught.value.starting) == (None, False)


async def test_a_starting_broker_is_asked_again_shortly_and_not_left(
    autojump_clock: trio.abc.Clock,
) -> None:
    a = Scripted(*[starting()] * 6, ok({"status": "ok", "from": "a"}))
    b = Scripted(ok({"status": "ok", "from": "b"}))

    def route(request: httpx.Request) -> httpx.Response:
        return (a if request.url.host == "a.test" else b)(request)

    async with trioq.Client(
        "http://a.test,http://b.test", transport=httpx.MockTransport(route), rng=FullJitter()
    ) as client:
        start = trio.current_time()
        assert (await client.stats())["from"] == "a"
        assert client.url == "http://a.test"
    assert b.requests == []  # not a leader change: no other URL was dialled
    # short waits: 0.1 s doubling, capped at 0.5 s (a 503 otherwise backs off to 2 s)
    assert [t - start for t in a.times] == pytest.approx(
        [0, 0.1, 0.3, 0.7, 1.2, 1.7, 2.2], abs=EXACT
    )


async def test_a_client_waits_for_an_in_process_broker_that_is_still_electing(
    autojump_clock: trio.abc.Clock,
) -> None:
    engine = make_engine(MemoryStorage(), "a")
    transport = httpx.ASGITransport(app=create_app(BrokerApi(engine)))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        async with trioq.Client("http://a.test", transport=transport, retry_deadline=0) as client:
            with pytest.raises(NotLeader) as caught:
                await client.stats()
            assert caught.value.starting
            assert caught.value.role == "starting"
        async with trioq.Client("http://a.test", transport=transport) as client:

            async def elect_later() -> None:
                await trio.sleep(0.3)
                await nursery.start(engine.run)

            nursery.start_soon(elect_later)
            start = trio.current_time()
            assert (await client.stats())["total"] == 0
            assert trio.current_time() - start < 1.0
        engine.stop()


# ---------------------------------------------------------- a dead broker


async def test_a_dead_broker_is_retried_at_debug_level_and_the_error_says_what_was_tried(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    down = Scripted(httpx.ConnectError)
    with caplog.at_level(logging.DEBUG, logger="trioq.client"):
        async with trioq.Client(
            "http://a.test,http://b.test", transport=httpx.MockTransport(down), retry_deadline=3
        ) as client:
            with pytest.raises(BrokerUnreachable) as caught:
                await client.submit("t", 1)
    attempts = len(down.requests)
    assert attempts > 3
    message = str(caught.value)
    assert message.startswith("cannot reach broker http://")
    assert message.endswith(
        f"(gave up POST /v1/jobs/bulk after {attempts} attempts in 3.0 s to "
        "http://a.test, http://b.test)"
    )
    retries = [r for r in caplog.records if r.name == "trioq.client"]
    assert len(retries) == attempts - 1  # one line per retry, none for the last failure
    assert {r.levelno for r in retries} == {logging.DEBUG}
    assert "POST http://a.test/v1/jobs/bulk failed (attempt 1): BrokerUnreachable" in (
        retries[0].getMessage()
    )


# ----------------------------------------------------------------- payloads


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (math.nan, "nan at $ (JSON has no NaN or Infinity"),
        ({"a": [1, math.inf]}, "inf at $['a'][1]"),
        ([-math.inf], "-inf at $[0]"),
        (2**70, f"{2**70} at $ is outside -2**63 .. 2**64-1"),
        ({"n": 2**64}, f"{2**64} at $['n'] is outside"),
        ({"n": -(2**63) - 1}, f"{-(2**63) - 1} at $['n'] is outside"),
        (Point(1, 2**65), f"{2**65} at $['y'] is outside"),
        ("\ud800", "surrogates not allowed"),
    ],
)
async def test_payloads_that_would_change_are_refused(
    autojump_clock: trio.abc.Clock, payload: Any, needle: str
) -> None:
    script = Scripted(ok({"jobIds": ["j"]}))
    async with trioq.Client("http://x.test", transport=httpx.MockTransport(script)) as client:
        with pytest.raises(ValueError, match=re.escape(needle)):
            await client.submit("t", payload)
    assert script.requests == []  # refused before anything was sent


class Measure(BaseModel):
    value: float


async def test_a_model_with_nan_is_refused_and_other_types_are_type_errors(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with trioq.Client("http://x.test", transport=httpx.MockTransport(ok)) as client:
        with pytest.raises(ValueError, match=r"nan at \$\['value'\]"):
            await client.submit("t", Measure(value=math.nan))
        with pytest.raises(TypeError, match="cannot be encoded as JSON"):
            await client.submit("t", {1, 2})
        with pytest.raises(TypeError, match="Dict key must be str"):
            await client.submit("t", {1: "a"})


async def test_json_values_round_trip_exactly(autojump_clock: trio.abc.Clock) -> None:
    edge = {
        "ints": [2**64 - 1, -(2**63), 0, -1],
        "floats": [0.1, -0.0, 1e308, 5e-324, 1.5],
        "null": None,
        "nested": {"nullable": [None, "null", "nan"], "deep": [[[True, False]]]},
        "text": "é ✓ \u2028 \x00",
    }
    async with open_test_broker() as broker:
        job = await broker.client.submit("t", edge)
        [claimed] = await broker.client.claim("w")
    assert claimed.id == job
    assert claimed.payload == edge
    assert orjson.dumps(claimed.payload) == orjson.dumps(edge)
    assert trioq.client.to_json_value(edge) == edge
