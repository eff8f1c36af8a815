"""trioq.Client's batched calls: concurrent submits coalesced into ``POST
/v1/jobs/bulk`` (each caller with its own outcome), ``submit_each`` and
``exchange``. In-process broker, virtual time; requests counted at the transport."""

from __future__ import annotations

import functools
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing

import trioq
from trioq import BrokerProtocolError, LeaseLost, PayloadTooLarge, QueueFull, TrioqError
from trioq._coalescer import BULK_BYTES, MAX_SENDERS, Coalescer
from trioq._errors import BrokerUnreachable, JobNotFound, WriteOutcomeUnknown
from trioq.broker._api import BrokerApi
from trioq.broker._http import create_app
from trioq.client import Failure
from trioq.core._state import Limits
from trioq.testing import TEST_URL, TestBroker, open_test_broker


class Counting(httpx.AsyncBaseTransport):
    """Forwards to ``inner``; records each request (path, body) and how many were
    out at once; while ``gate`` is set to an unset Event, requests wait for it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[tuple[str, Any]] = []
        self.gate: trio.Event | None = None
        self.out = 0
        self.peak = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content) if request.content else None
        self.requests.append((request.url.path, body))
        self.out += 1
        self.peak = max(self.peak, self.out)
        try:
            if self.gate is not None:
                await self.gate.wait()
            return await self.inner.handle_async_request(request)
        finally:
            self.out -= 1

    def bodies(self, path: str) -> list[Any]:
        return [body for (p, body) in self.requests if p == path]


async def submit_into(
    client: trioq.Client, results: dict[Any, Any], key: Any, *args: Any, **kwargs: Any
) -> None:
    """``client.submit(*args, **kwargs)``: its id, or the error it raised, under ``key``."""
    try:
        results[key] = await client.submit(*args, **kwargs)
    except TrioqError as exc:
        results[key] = exc


# ----------------------------------------------------------- coalesced submits


async def test_concurrent_submits_share_a_few_bulk_requests(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_broker(group_commit_interval=0.05) as broker:
        counting = Counting(broker.transport)
        async with trioq.Client(TEST_URL, transport=counting) as client:
            ids: dict[Any, Any] = {}
            async with trio.open_nursery() as nursery:
                for n in range(300):
                    nursery.start_soon(submit_into, client, ids, n, "t", n)
            jobs = (await client.jobs())["jobs"]

    bulks = counting.bodies("/v1/jobs/bulk")
    # the first two callers send at once (their own job each); the third, handed the
    # turn when a send ends, sends everything that queued meanwhile
    assert sorted(len(body["jobs"]) for body in bulks) == [1, 1, 298]
    assert counting.peak == MAX_SENDERS
    assert len(set(ids.values())) == 300
    assert {job["jobId"]: job["payload"] for job in jobs} == {ids[n]: n for n in range(300)}


async def test_a_lone_submit_goes_at_once(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_broker(group_commit_interval=0.5) as broker:
        counting = Counting(broker.transport)
        async with trioq.Client(TEST_URL, transport=counting) as client:
            await trio.sleep(1)  # an idle broker commits a lone mutation at once
            start = trio.current_time()
            job = await client.submit("t", 1, id="alone")
            # no timer: the request left at once and came back with that commit
            assert trio.current_time() == start
            assert job == "alone"
            assert counting.bodies("/v1/jobs/bulk") == [
                {"jobs": [{"type": "t", "payload": 1, "id": "alone"}]}
            ]


async def test_each_caller_gets_its_own_outcome(autojump_clock: trio.abc.Clock) -> None:
    limits = Limits(max_payload_bytes=64, max_queued=5)
    async with open_test_broker(limits=limits) as broker:
        await broker.client.submit("t", "old", id="known")
        gate = Gate(broker.transport)
        async with trioq.Client(TEST_URL, transport=gate, retry_deadline=1) as client:
            got: dict[Any, Any] = {}
            async with trio.open_nursery() as nursery:
                for name in ("first", "second"):  # both turns: held at the gate
                    nursery.start_soon(submit_into, client, got, name, "t", name)
                    await trio.testing.wait_all_tasks_blocked()
                # these queue behind the two sends, and go in one request together
                nursery.start_soon(submit_into, client, got, "big", "t", "x" * 100)
                nursery.start_soon(
                    functools.partial(submit_into, client, got, "dup", "t", "new", id="known")
                )
                for n in range(4):
                    nursery.start_soon(submit_into, client, got, n, "t", n)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(BrokerProtocolError, match="job: type must be"):
                    await client.submit("", 1)  # refused here: never queued
                gate.open.set()
    assert [len(payloads) for payloads in gate.sent[:3]] == [1, 1, 6]
    assert isinstance(got.pop("big"), PayloadTooLarge)
    assert got.pop("dup") == "known"  # an existing id is the caller's success
    assert isinstance(got.pop("first"), str)
    assert isinstance(got.pop("second"), str)
    # the queue holds 5: "known", "first", "second" and two of these; the other two
    # were refused alone (QueueFull, retried until the client's deadline)
    outcomes = sorted(type(v).__name__ for v in got.values())
    assert outcomes == ["QueueFull", "QueueFull", "str", "str"]


class Gate(httpx.AsyncBaseTransport):
    """Holds every request until ``open`` is set, then forwards it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.open = trio.Event()
        self.sent: list[list[Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append([job.get("payload") for job in orjson.loads(request.content)["jobs"]])
        await self.open.wait()
        return await self.inner.handle_async_request(request)


async def test_a_cancelled_sender_finishes_its_send_and_hands_the_turn_on(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_broker() as broker:
        gate = Gate(broker.transport)
        async with trioq.Client(TEST_URL, transport=gate) as client:
            got: dict[Any, Any] = {}
            cancelled: list[str] = []

            async def submit(name: str, scope: trio.CancelScope) -> None:
                with scope:
                    await submit_into(client, got, name, "t", name, id=name)
                if scope.cancelled_caught:
                    cancelled.append(name)

            scopes = {name: trio.CancelScope() for name in ("a", "b", "c", "d", "e")}
            async with trio.open_nursery() as nursery:
                for name, scope in scopes.items():
                    nursery.start_soon(submit, name, scope)
                    await trio.testing.wait_all_tasks_blocked()
                # a and b are sending (held at the gate); c, d, e wait their turn
                assert gate.sent == [["a"], ["b"]]
                scopes["a"].cancel()  # a sender: its send is shielded
                scopes["c"].cancel()  # a waiting caller: its job is never sent
                await trio.testing.wait_all_tasks_blocked()
                gate.open.set()
            records = {name: await _status(broker, name) for name in "abcde"}

    # a's send went through all the same (and a, which met no checkpoint after it,
    # returned its id); its turn went to d, which sent d and e
    assert cancelled == ["c"]
    assert gate.sent == [["a"], ["b"], ["d", "e"]]
    assert got == {"a": "a", "b": "b", "d": "d", "e": "e"}
    assert records == {
        "a": "unclaimed",
        "b": "unclaimed",
        "c": None,
        "d": "unclaimed",
        "e": "unclaimed",
    }


async def test_a_turn_handed_to_a_cancelled_caller_passes_to_the_next(
    autojump_clock: trio.abc.Clock,
) -> None:
    sent: list[list[str]] = []
    gates = {"a": trio.Event(), "b": trio.Event()}
    c_scope = trio.CancelScope()

    async def send(items: list[dict[str, Any]]) -> list[str | TrioqError]:
        names = [item["id"] for item in items]
        sent.append(names)
        if names[0] in gates:
            await gates[names[0]].wait()
        if names == ["a"]:
            # c is cancelled now, and handed a's turn before it runs again
            c_scope.cancel()
        return list(names)

    coalescer = Coalescer(send, bound=60)
    got: dict[str, str | TrioqError] = {}

    async def submit(name: str, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            got[name] = await coalescer.submit({"id": name}, 1)

    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c", "d"):
            nursery.start_soon(submit, name, c_scope if name == "c" else None)
            await trio.testing.wait_all_tasks_blocked()
        assert sent == [["a"], ["b"]]  # both turns taken; c and d wait
        gates["a"].set()
        await trio.testing.wait_all_tasks_blocked()
        # c could not use the turn: d got it, while b's send is still out
        assert sent == [["a"], ["b"], ["d"]]
        assert got == {"a": "a", "d": "d"}
        gates["b"].set()
    assert c_scope.cancelled_caught
    assert got == {"a": "a", "b": "b", "d": "d"}


async def _status(broker: TestBroker, job_id: str) -> str | None:
    try:
        return str((await broker.client.get(job_id))["status"])
    except JobNotFound:
        return None


# ----------------------------------------------------------------- submit_each


async def test_submit_each_reports_each_job_on_its_own(autojump_clock: trio.abc.Clock) -> None:
    limits = Limits(max_payload_bytes=64, max_queued=3)
    async with open_test_broker(limits=limits) as broker:
        client = broker.client
        await client.submit("t", 0, id="known")
        results = await client.submit_each(
            [
                trioq.JobSpec("t", 1, id="one"),
                trioq.JobSpec("t", "x" * 100),
                trioq.JobSpec("t", 2, id="known"),
                trioq.JobSpec("t", 3, id="three"),
                trioq.JobSpec("t", 4, id="four"),
                trioq.JobSpec("t", 5, id="five"),
            ]
        )
        assert await client.submit_each([]) == []
        with pytest.raises(BrokerProtocolError, match=r"jobs\[1\]: maxAttempts"):
            await client.submit_each([trioq.JobSpec("t", 1), trioq.JobSpec("t", 1, max_attempts=0)])
    assert results[0] == "one"
    assert isinstance(results[1], PayloadTooLarge)
    assert results[2:4] == ["known", "three"]
    # at the cap the later jobs are refused, each with its own QueueFull
    assert isinstance(results[4], QueueFull)
    assert isinstance(results[5], QueueFull)
    assert results[4] is not results[5]


async def test_a_request_too_large_for_the_broker_is_split(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_broker() as broker:
        # a broker that takes requests of at most 3000 bytes (each job alone fits)
        small = create_app(BrokerApi(broker.engine), max_request_bytes=3000)
        counting = Counting(httpx.ASGITransport(app=small))  # type: ignore[arg-type]
        async with trioq.Client(TEST_URL, transport=counting) as client:
            specs = [trioq.JobSpec("t", "x" * 900, id=f"j{n}") for n in range(6)]
            assert await client.submit_each(specs) == [f"j{n}" for n in range(6)]
    sizes = [len(body["jobs"]) for body in counting.bodies("/v1/jobs/bulk")]
    assert sizes[0] == 6  # refused as a whole (413): nothing enqueued, halved
    assert sum(sizes[1:]) >= 6
    assert all(n <= 3 for n in sizes[1:])


async def test_bulk_requests_stay_under_a_megabyte_of_payloads(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_broker() as broker:
        counting = Counting(broker.transport)
        async with trioq.Client(TEST_URL, transport=counting) as client:
            payload = "x" * (BULK_BYTES // 4)
            results = await client.submit_each([trioq.JobSpec("t", payload) for _ in range(6)])
    assert all(isinstance(r, str) for r in results)
    assert [len(b["jobs"]) for b in counting.bodies("/v1/jobs/bulk")] == [3, 3]


# -------------------------------------------------------------------- exchange


async def test_an_exchange_reports_each_item_and_claims_after_them(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_broker() as broker:
        client = broker.client
        await client.submit_many([trioq.JobSpec("t", n, id=f"j{n}") for n in range(4)])
        first = await client.exchange("w", claim=3, types=["t"])
        assert [job.id for job in first.jobs] == ["j0", "j1", "j2"]
        j0, j1, j2 = first.jobs
        stranger = trioq.Claimed("nope", "t", None, 1, 30_000)
        answer = await client.exchange(
            "w",
            heartbeat=[j0, stranger],
            complete=[j0],
            fail=[Failure(j1, "boom", retry_in=5)],
            release=[j2],
            claim=2,
        )
        assert answer.heartbeat[0] == "in_progress"
        assert isinstance(answer.heartbeat[1], JobNotFound)
        assert answer.complete == ["completed"]
        assert answer.fail == ["retrying"]
        assert answer.release == ["unclaimed"]
        # the release came before the claim: j2 is handed out again, with j3
        assert [(job.id, job.attempt) for job in answer.jobs] == [("j2", 1), ("j3", 1)]
        again = await client.exchange("w", complete=[j0])
        assert isinstance(again.complete[0], LeaseLost)
        assert again.jobs == []
        with pytest.raises(BrokerProtocolError, match="workerId"):
            await client.exchange("", claim=1)


class LoseAnswers(httpx.AsyncBaseTransport):
    """Delivers each request, then loses its answer (``error``), or answers 503
    WriteOutcomeUnknown instead, as when the broker's commit outcome is unknown."""

    def __init__(self, inner: httpx.AsyncBaseTransport, how: str) -> None:
        self.inner = inner
        self.how = how
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if self.how == "lost":
            raise httpx.ReadError("connection dropped", request=request)
        return httpx.Response(
            503, json={"_tag": "WriteOutcomeUnknown", "message": "unknown"}, request=request
        )


@pytest.mark.parametrize("how", ["lost", "unknown"])
async def test_an_exchange_with_a_claim_is_never_sent_twice(
    autojump_clock: trio.abc.Clock, how: str
) -> None:
    async with open_test_broker() as broker:
        await broker.client.submit("t", 1, id="j")
        lossy = LoseAnswers(broker.transport, how)
        async with trioq.Client(TEST_URL, transport=lossy) as client:
            with pytest.raises(BrokerUnreachable if how == "lost" else WriteOutcomeUnknown):
                await client.exchange("w", claim=1)
            assert lossy.sent == 1
            # the claim landed: the job waits out its lease, not claimed twice
            assert (await broker.client.get("j"))["status"] == "in_progress"
            # without a claim the same loss is retried (a report is safe to repeat)
            with pytest.raises(TrioqError):
                await client.exchange("w", heartbeat=[trioq.Claimed("j", "t", 1, 1, 1)])
            assert lossy.sent > 2
