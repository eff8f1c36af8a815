"""The WebSocket JSON-RPC endpoint (``/v1/ws``) of a real broker (in-process,
hypercorn on a free port): every method, the error replies, pipelining, standby,
size limits and what a graceful stop does to an open socket.

No test sleeps to let a state arrive: the broker runs in the test's own trio run,
so "every task is blocked" (:func:`trio.testing.wait_all_tasks_blocked`) says that a
long-poll claim waits at the engine. Real time appears only as generous timeouts
(:data:`REPLY_TIMEOUT`); the one ``trio.sleep`` left spreads bytes over a
handshake's progress on purpose."""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, aconnect_ws

import trioq.broker._connections
from _broker_proc import InProcessBroker, start_in_process
from trioq.broker._settings import BrokerSettings

_ids = itertools.count(1)

REPLY_TIMEOUT = 20.0
"""Seconds a reply may take before the test fails: only a hang reaches it."""


def settings(directory: Path, **overrides: Any) -> BrokerSettings:
    return BrokerSettings(port=0, data_dir=str(directory), group_commit_interval_ms=0, **overrides)


@pytest.fixture
async def broker(nursery: trio.Nursery, tmp_path: Path) -> InProcessBroker:
    return await start_in_process(
        nursery, settings(tmp_path, max_payload_bytes=1024, max_request_bytes=16 * 1024)
    )


@pytest.fixture
async def ws(broker: InProcessBroker) -> AsyncIterator[AsyncWebSocketSession]:
    async with (
        httpx.AsyncClient(verify=False) as client,
        aconnect_ws(f"{broker.url}/v1/ws", client) as session,
    ):
        yield session


async def call(ws: AsyncWebSocketSession, method: str, params: Any = None) -> dict[str, Any]:
    """Send one request and return its reply (the only one in flight)."""
    request_id = next(_ids)
    message: dict[str, Any] = {"id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    await ws.send_json(message)
    with trio.fail_after(REPLY_TIMEOUT):
        reply: dict[str, Any] = await ws.receive_json()
    assert reply["id"] == request_id
    return reply


async def ok(ws: AsyncWebSocketSession, method: str, params: Any = None) -> Any:
    reply = await call(ws, method, params)
    assert reply["ok"] is True, reply
    assert set(reply) == {"id", "ok", "result"}
    return reply["result"]


async def error(ws: AsyncWebSocketSession, method: str, params: Any, tag: str) -> dict[str, Any]:
    reply = await call(ws, method, params)
    assert reply["ok"] is False, reply
    assert set(reply) == {"id", "ok", "error"}
    assert reply["error"]["_tag"] == tag, reply
    assert isinstance(reply["error"]["message"], str)
    body: dict[str, Any] = reply["error"]
    return body


async def raw_reply(ws: AsyncWebSocketSession, data: str | bytes) -> dict[str, Any]:
    if isinstance(data, bytes):
        await ws.send_bytes(data)
    else:
        await ws.send_text(data)
    with trio.fail_after(REPLY_TIMEOUT):
        reply: dict[str, Any] = await ws.receive_json()
    return reply


# ---------------------------------------------------------------- happy path


async def test_every_method(broker: InProcessBroker, ws: AsyncWebSocketSession) -> None:
    assert await ok(ws, "getStats") == {
        "total": 0,
        "unclaimed": 0,
        "inProgress": 0,
        "completedTotal": 0,
        "brokerAddress": broker.url,
        "groupCommitIntervalMs": 0,
        "byType": {},
    }
    assert await ok(ws, "submitJob", {"payload": {"n": 1}, "type": "t", "id": "a"}) == {
        "jobId": "a"
    }
    assert await ok(ws, "submitJob", {"payload": 1, "id": "a"}) == {
        "jobId": "a",
        "duplicate": True,
    }
    batch = await ok(ws, "submitJobs", {"jobs": [{"payload": 2, "id": "b"}, {"payload": 3}]})
    assert batch["jobIds"][0] == "b"
    assert batch["duplicates"] == []

    claimed = await ok(ws, "claimJob", {"workerId": "w1"})
    assert isinstance(claimed.pop("createdAt"), int)  # when it was submitted (ms)
    assert claimed.pop("maxAttempts") == 3
    assert claimed == {
        "jobId": "a",
        "type": "t",
        "payload": {"n": 1},
        "attempt": 1,
        "leaseMs": 30_000,
    }
    assert await ok(ws, "heartbeat", {"jobId": "a", "workerId": "w1"}) is None
    assert await ok(ws, "heartbeat", {"jobId": "a", "workerId": "w1", "attempt": 1}) is None
    assert await ok(ws, "completeJob", {"jobId": "a", "workerId": "w1"}) is None
    assert (await ok(ws, "getJob", {"jobId": "a"}))["status"] == "completed"

    many = await ok(ws, "claimJobs", {"workerId": "w2", "max": 5})
    assert [j["jobId"] for j in many["jobs"]] == batch["jobIds"]
    assert await ok(ws, "claimJobs", {"workerId": "w2"}) == {"jobs": []}
    assert await ok(ws, "claimJob", {"workerId": "w2"}) == {}

    failed = await ok(ws, "failJob", {"jobId": "b", "workerId": "w2", "error": "x", "final": True})
    assert failed == {"jobId": "b", "status": "dead"}
    dead = await ok(ws, "listDead", {"limit": 10})
    assert [d["jobId"] for d in dead["jobs"]] == ["b"]
    assert await ok(ws, "requeueDead", {"jobId": "b"}) == {"jobId": "b", "status": "unclaimed"}

    other = batch["jobIds"][1]
    assert await ok(ws, "releaseJob", {"jobId": other, "workerId": "w2", "attempt": 1}) is None
    assert await ok(ws, "cancelJob", {"jobId": other}) == {"jobId": other, "status": "cancelled"}

    listing = await ok(ws, "listJobs", {"limit": 1})
    assert listing["total"] == 1
    assert [j["jobId"] for j in listing["jobs"]] == ["b"]
    assert listing["nextCursor"] is None
    assert (await ok(ws, "listJobs"))["brokerAddress"] == broker.url
    assert (await ok(ws, "getStats"))["completedTotal"] == 1


async def test_submit_bulk_and_exchange(ws: AsyncWebSocketSession) -> None:
    """The per-item twins answer as their REST routes do (``test_bulk_api.py``)."""
    results = await ok(
        ws,
        "submitBulk",
        {
            "jobs": [
                {"payload": 1, "id": "a", "type": "t"},
                {"payload": "x" * 2000, "id": "big"},  # over this broker's 1024 bytes
                {"payload": 2, "id": "a"},
                {"payload": 3, "maxAttempts": 0},
                {"payload": 4, "id": "b", "type": "t"},
            ]
        },
    )
    assert results == {
        "results": [
            {"jobId": "a"},
            {
                "jobId": "big",
                "error": {
                    "_tag": "PayloadTooLarge",
                    "message": "jobs[1]: payload is 2002 bytes, over the limit of 1024",
                },
            },
            {"jobId": "a", "duplicate": True},
            {
                "jobId": None,
                "error": {
                    "_tag": "BrokerProtocolError",
                    "message": "jobs[3]: maxAttempts must be an integer from 1 to 1000",
                },
            },
            {"jobId": "b"},
        ]
    }
    first = await ok(ws, "exchange", {"workerId": "w1", "claim": {"types": ["t"], "max": 1}})
    assert isinstance(first["jobs"][0].pop("createdAt"), int)
    assert first["jobs"][0].pop("maxAttempts") == 3
    assert first == {
        "heartbeat": [],
        "complete": [],
        "fail": [],
        "release": [],
        "jobs": [{"jobId": "a", "type": "t", "payload": 1, "attempt": 1, "leaseMs": 30_000}],
    }
    second = await ok(
        ws,
        "exchange",
        {
            "workerId": "w1",
            "heartbeat": [{"jobId": "a", "attempt": 1}],
            "complete": [{"jobId": "a", "attempt": 1}, {"jobId": "a", "attempt": 0}],
            "claim": {"types": ["t"], "max": 5, "waitMs": 30_000},  # has reports: no wait
        },
    )
    assert second["heartbeat"] == [{"jobId": "a", "status": "in_progress"}]
    assert second["complete"] == [
        {"jobId": "a", "status": "completed"},
        {
            "jobId": "a",
            "error": {
                "_tag": "BrokerProtocolError",
                "message": "complete[1]: attempt must be an integer from 1 to 1000000",
            },
        },
    ]
    assert [j["jobId"] for j in second["jobs"]] == ["b"]
    assert (await ok(ws, "getJob", {"jobId": "a"}))["status"] == "completed"
    # the request as a whole is refused as its REST twin's is
    await error(ws, "submitBulk", {"jobs": []}, "BrokerProtocolError")
    await error(ws, "exchange", {"workerId": "w1", "fail": [5]}, "BrokerProtocolError")
    await error(ws, "exchange", {"complete": []}, "BrokerProtocolError")


async def test_request_ids_are_echoed(ws: AsyncWebSocketSession) -> None:
    for request_id in ("abc", 0, -5, 1.5, None):
        reply = await raw_reply(ws, orjson.dumps({"id": request_id, "method": "getStats"}))
        assert reply["id"] == request_id
        assert reply["ok"] is True


async def test_pipelined_calls_answer_out_of_order(
    broker: InProcessBroker, ws: AsyncWebSocketSession
) -> None:
    """A long-poll claim does not hold up the calls sent after it on the same
    socket, and it is answered when a job arrives (from another connection)."""
    await ws.send_json(
        {"id": "poll", "method": "claimJob", "params": {"workerId": "w", "waitMs": 30_000}}
    )
    await ws.send_json({"id": "stats", "method": "getStats", "params": {}})
    with trio.fail_after(REPLY_TIMEOUT):
        first = await ws.receive_json()
    assert first["id"] == "stats"
    async with httpx.AsyncClient(base_url=broker.url, verify=False) as http:
        job_id = (await http.post("/v1/jobs", json={"payload": "late"})).json()["jobId"]
    with trio.fail_after(REPLY_TIMEOUT):
        second = await ws.receive_json()
    assert second["id"] == "poll"
    assert second["result"]["jobId"] == job_id


async def test_many_connections_and_calls_in_flight(broker: InProcessBroker) -> None:
    async def producer(n: int) -> None:
        async with (
            httpx.AsyncClient(verify=False) as client,
            aconnect_ws(f"{broker.url}/v1/ws", client) as session,
        ):
            for i in range(20):
                await session.send_json(
                    {"id": i, "method": "submitJob", "params": {"payload": i, "id": f"p{n}-{i}"}}
                )
            replies = [await session.receive_json() for _ in range(20)]
            assert sorted(r["id"] for r in replies) == list(range(20))
            assert all(r["ok"] for r in replies)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(producer, n)
    async with httpx.AsyncClient(base_url=broker.url, verify=False) as http:
        assert (await http.get("/v1/stats")).json()["total"] == 100


# -------------------------------------------------------------------- errors


async def test_malformed_messages(ws: AsyncWebSocketSession) -> None:
    cases: list[str | bytes] = [
        "junk",
        b"\xff\xfe",
        "",
        "[1, 2]",
        '"text"',
        "42",
        "null",
        '{"id": 1, "method": "getStats", "params": NaN}',
        "[" * 3000 + "]" * 3000,
        '{"id": 1, "method": "getStats"',
    ]
    for data in cases:
        reply = await raw_reply(ws, data)
        assert reply["ok"] is False, data
        assert reply["error"]["_tag"] == "BrokerProtocolError", data
        assert reply["id"] is None
    # the connection is still good
    assert (await ok(ws, "getStats"))["total"] == 0


async def test_bad_envelopes(ws: AsyncWebSocketSession) -> None:
    for message in (
        {"id": 1},
        {"id": 2, "method": "nope"},
        {"id": 3, "method": 5},
        {"id": 4, "method": None},
        {"id": 5, "method": ["getStats"]},
        {"id": 6, "method": "getStats", "params": [1]},
        {"id": 7, "method": "getStats", "params": "x"},
        {"id": 8, "method": "getStats", "params": 0},
        {"id": 9, "method": "getStats", "params": False},
        {"id": 10, "method": "__init__"},
    ):
        reply = await raw_reply(ws, orjson.dumps(message))
        assert reply == {
            "id": message["id"],
            "ok": False,
            "error": reply["error"],
        }, message
        assert reply["error"]["_tag"] == "BrokerProtocolError", message
    # an id that is not a scalar is not echoed
    for bad_id in ([1], {"a": 1}, True):
        reply = await raw_reply(ws, orjson.dumps({"id": bad_id, "method": "getStats"}))
        assert reply["id"] is None
        assert reply["error"]["_tag"] == "BrokerProtocolError"
    deep = '{"id": ' + "[" * 1000 + "]" * 1000 + ', "method": "getStats"}'
    reply = await raw_reply(ws, deep)
    assert reply["id"] is None
    assert reply["ok"] is False


async def test_invalid_params(ws: AsyncWebSocketSession) -> None:
    await ok(ws, "submitJob", {"payload": 1, "id": "j"})
    await ok(ws, "claimJob", {"workerId": "w"})
    cases: list[tuple[str, dict[str, Any]]] = [
        ("submitJob", {}),
        ("submitJob", {"payload": 1, "maxAttempts": True}),
        ("submitJob", {"payload": 1, "id": "bad id"}),
        ("submitJob", {"payload": 1, "delayMs": -1}),
        ("submitJobs", {"jobs": [{"payload": 1}, {"type": 1}]}),
        ("submitJobs", {}),
        ("claimJob", {}),
        ("claimJob", {"workerId": 1}),
        ("claimJob", {"workerId": "w", "waitMs": 10**12}),
        ("claimJobs", {"workerId": "w", "max": 0}),
        ("claimJobs", {"workerId": "w", "max": "3"}),
        ("heartbeat", {"workerId": "w"}),
        ("heartbeat", {"jobId": 5, "workerId": "w"}),
        ("heartbeat", {"jobId": "j", "workerId": "w", "attempt": 0}),
        ("completeJob", {"jobId": "j"}),
        ("failJob", {"jobId": "j", "workerId": "w", "error": 1}),
        ("failJob", {"jobId": "j", "workerId": "w", "retryInMs": -5}),
        ("releaseJob", {"jobId": "j", "workerId": ""}),
        ("cancelJob", {}),
        ("getJob", {"jobId": "../x"}),
        ("getJob", {"jobId": None}),
        ("listJobs", {"limit": 0}),
        ("listJobs", {"limit": True}),
        ("listJobs", {"limit": 1.5}),
        ("listJobs", {"cursor": "abc"}),
        ("listDead", {"limit": 5000}),
        ("requeueDead", {"jobId": ""}),
    ]
    for method, params in cases:
        await error(ws, method, params, "BrokerProtocolError")
    # nothing changed: the one job is still held by w at attempt 1
    record = await ok(ws, "getJob", {"jobId": "j"})
    assert (record["status"], record["workerId"], record["attempts"]) == ("in_progress", "w", 1)
    assert (await ok(ws, "getStats"))["total"] == 1


async def test_domain_errors(ws: AsyncWebSocketSession) -> None:
    await error(ws, "getJob", {"jobId": "missing"}, "JobNotFound")
    await error(ws, "cancelJob", {"jobId": "missing"}, "JobNotFound")
    await error(ws, "requeueDead", {"jobId": "missing"}, "JobNotFound")
    await error(ws, "completeJob", {"jobId": "missing", "workerId": "w"}, "JobNotFound")
    await ok(ws, "submitJob", {"payload": 1, "id": "j"})
    await ok(ws, "claimJob", {"workerId": "w"})
    await error(ws, "heartbeat", {"jobId": "j", "workerId": "other"}, "LeaseLost")
    await error(ws, "completeJob", {"jobId": "j", "workerId": "w", "attempt": 9}, "LeaseLost")
    await error(ws, "submitJob", {"payload": "x" * 2000}, "PayloadTooLarge")
    deep: Any = 0
    for _ in range(70):
        deep = [deep]
    await error(ws, "submitJob", {"payload": deep}, "BrokerProtocolError")
    assert (await ok(ws, "getStats"))["total"] == 1


async def test_integers_beyond_64_bits_are_refused(ws: AsyncWebSocketSession) -> None:
    """orjson would read them as floats: refused, naming the problem; the 64-bit
    edges round-trip exactly."""
    for literal in (
        "123456789012345678901234567890",
        "18446744073709551616",
        "-9223372036854775809",
    ):
        for message in (
            f'{{"id": 1, "method": "submitJob", "params": {{"payload": {literal}}}}}',
            f'{{"id": 2, "method": "submitJobs", "params": {{"jobs": [{{"payload": [{literal}]}}]}}}}',
            f'{{"id": {literal}, "method": "getStats"}}',
        ):
            reply = await raw_reply(ws, message)
            assert reply["ok"] is False, message
            assert reply["id"] is None  # the message as a whole is refused
            assert reply["error"]["_tag"] == "BrokerProtocolError"
            assert literal in reply["error"]["message"]
    for literal in ("18446744073709551615", "-9223372036854775808"):
        message = f'{{"id": 3, "method": "submitJob", "params": {{"payload": {literal}}}}}'
        job_id = (await raw_reply(ws, message))["result"]["jobId"]
        record = await ok(ws, "getJob", {"jobId": job_id})
        assert str(record["payload"]) == literal
    for literal in ("NaN", "Infinity", "-Infinity", "1e400"):
        message = f'{{"id": 4, "method": "submitJob", "params": {{"payload": {literal}}}}}'
        reply = await raw_reply(ws, message)
        assert reply["error"]["_tag"] == "BrokerProtocolError", literal
    assert (await ok(ws, "getStats"))["total"] == 2


UPGRADE = (
    b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


async def raw_exchange(url: str, data: bytes) -> tuple[bytes, bytes]:
    """Send ``data`` on a fresh connection (in one write) and read the answer: its
    head (status line and headers, lower case) and its body (by Content-Length)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    answer = b""
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(data)
        with trio.fail_after(20):
            while b"\r\n\r\n" not in answer:
                chunk = await stream.receive_some(65536)
                assert chunk, answer
                answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            head = head.lower()
            length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            while len(body) < length:
                chunk = await stream.receive_some(65536)
                assert chunk, answer
                body += chunk
    return head, body


@pytest.mark.parametrize("token", [None, "t0ken"])
async def test_bytes_behind_a_handshake_are_refused_and_break_nothing(
    nursery: trio.Nursery, tmp_path: Path, token: str | None
) -> None:
    """Bytes that arrive with a handshake (a body, or a frame sent before the answer)
    make hypercorn refuse it (400) while the app answers it too: unguarded, the two
    answers collide in h11 and the exception takes the whole server down. The
    broker refuses them and stays up."""
    broker = await start_in_process(nursery, settings(tmp_path, token=token))
    frame = b"\x81\x85abcd" + bytes(c ^ k for c, k in zip(b"hello", b"abcda", strict=True))
    for headers in (b"", b"Authorization: Bearer t0ken\r\n"):
        for framing, extra in (
            (b"Content-Length: 5\r\n", b"hello"),
            (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
            (b"", frame),  # a client that does not wait for the 101
            (b"", b"garbage"),
        ):
            head, _ = await raw_exchange(broker.url, UPGRADE + headers + framing + b"\r\n" + extra)
            assert head.startswith(b"http/1.1 400"), head
            assert b"\r\nconnection: close" in head
    headers = {"Authorization": "Bearer t0ken"} if token else {}
    async with (
        httpx.AsyncClient(headers=headers, verify=False) as client,
        aconnect_ws(f"{broker.url}/v1/ws", client) as session,
    ):
        assert (await ok(session, "getStats"))["total"] == 0


async def test_bytes_racing_handshake_answers_break_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The same, with the bytes sent at seeded random moments while the broker
    answers the handshake (accepts it, or refuses it 401): whichever answer comes
    first, the other is dropped, and the broker stays up."""
    broker = await start_in_process(nursery, settings(tmp_path, token="t0ken"))
    host, port = broker.url.removeprefix("http://").rsplit(":", 1)
    rng = random.Random(5)

    async def handshake(headers: bytes, extra: bytes, delay: float) -> None:
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(UPGRADE + headers + b"\r\n")
            await trio.sleep(delay)  # spreads the bytes over the answer's progress
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(extra)
                with trio.fail_after(REPLY_TIMEOUT):
                    await stream.receive_some(65536)

    async with trio.open_nursery() as clients:
        for _ in range(200):
            headers = rng.choice([b"", b"Authorization: Bearer t0ken\r\n"])
            extra = rng.choice([b"\x81\x05hello", b"garbage", b"\r\n"])
            clients.start_soon(handshake, headers, extra, rng.choice([0, 0, 1e-4, 1e-3, 1e-2]))
    async with (
        httpx.AsyncClient(headers={"Authorization": "Bearer t0ken"}, verify=False) as client,
        aconnect_ws(f"{broker.url}/v1/ws", client) as session,
    ):
        assert (await ok(session, "getStats"))["total"] == 0


async def test_a_handshake_whose_body_never_comes_is_refused(
    broker: InProcessBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trioq.broker._connections, "DRAIN_SECONDS", 0.5)
    head, body = await raw_exchange(broker.url, UPGRADE + b"Content-Length: 5\r\n\r\n")
    assert head.startswith(b"http/1.1 400"), head
    assert b"\r\nconnection: close" in head
    assert orjson.loads(body)["_tag"] == "BrokerProtocolError"


async def test_message_over_the_request_limit(broker: InProcessBroker) -> None:
    """A message over the limit is refused; it never reaches the queue."""
    async with (
        httpx.AsyncClient(verify=False) as client,
        aconnect_ws(f"{broker.url}/v1/ws", client) as session,
    ):
        big = orjson.dumps({"id": 1, "method": "submitJob", "params": {"payload": "x" * 20_000}})
        await session.send_bytes(big)
        # the server refuses it at the protocol level: close 1009, message too big
        with trio.fail_after(REPLY_TIMEOUT), pytest.raises(WebSocketDisconnect) as closed:
            await session.receive_json()
        assert closed.value.code == 1009
    async with httpx.AsyncClient(base_url=broker.url, verify=False) as http:
        assert (await http.get("/v1/stats")).json()["total"] == 0


async def test_standby_answers_not_leader(nursery: trio.Nursery, tmp_path: Path) -> None:
    leader = await start_in_process(nursery, settings(tmp_path))
    standby = await start_in_process(nursery, settings(tmp_path))
    async with (
        httpx.AsyncClient(verify=False) as client,
        aconnect_ws(f"{standby.url}/v1/ws", client) as session,
    ):
        for method, params in (
            ("getStats", {}),
            ("listJobs", {}),
            ("listDead", {}),
            ("getJob", {"jobId": "a"}),
            ("submitJob", {"payload": 1}),
            ("submitJobs", {"jobs": [{"payload": 1}]}),
            ("claimJob", {"workerId": "w"}),
            ("claimJobs", {"workerId": "w", "max": 3, "waitMs": 1000}),
            ("heartbeat", {"jobId": "a", "workerId": "w"}),
            ("completeJob", {"jobId": "a", "workerId": "w"}),
            ("failJob", {"jobId": "a", "workerId": "w", "error": "x"}),
            ("releaseJob", {"jobId": "a", "workerId": "w"}),
            ("cancelJob", {"jobId": "a"}),
            ("requeueDead", {"jobId": "a"}),
        ):
            body = await error(session, method, params, "NotLeader")
            assert body["leader"] == leader.url


async def test_graceful_stop_closes_open_sockets(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Stopping the broker answers the calls in flight and closes the socket
    (going away), instead of waiting out the grace period for the client."""
    broker = await start_in_process(nursery, settings(tmp_path, shutdown_grace_s=30))
    async with (
        httpx.AsyncClient(verify=False) as client,
        aconnect_ws(f"{broker.url}/v1/ws", client) as session,
    ):
        await session.send_json(
            {"id": 1, "method": "claimJob", "params": {"workerId": "w", "waitMs": 60_000}}
        )
        # every task blocked: the claim waits at the engine
        await trio.testing.wait_all_tasks_blocked(cushion=0.02)
        broker.broker.stop()
        # far less than the claim's 60 s wait and the 30 s grace: only a hang reaches it
        with trio.fail_after(REPLY_TIMEOUT):
            reply = await session.receive_json()
            assert reply["id"] == 1  # answered (empty, or NotLeader: the broker stopped)
            with pytest.raises(WebSocketDisconnect) as closed:
                await session.receive_json()
        assert closed.value.code == 1001
