"""Keep-alive connections stay usable after the broker answers before it has read
a request's body: 413s, other 4xx with bodies, rejected WebSocket handshakes.

Real brokers (hypercorn on a free port) and real sockets. The clients are httpx's
pooled ``httpx.Client`` (in a worker thread, so that it writes its request while the
broker's loop runs, as a separate process would) and raw sockets. Client timeouts
are generous: they only turn a hang into a failure, nothing waits for them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import trio

import trioq.broker._connections
from _broker_proc import InProcessBroker, start_in_process
from trioq.broker._settings import BrokerSettings

LIMIT = 64 * 1024
"""The brokers' --max-request-bytes."""

TOKEN = "keep-alive-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIENT_TIMEOUT = 20.0
"""Seconds a client waits for an answer: only a hang reaches it."""

T = TypeVar("T")


def settings(directory: Path, **overrides: Any) -> BrokerSettings:
    return BrokerSettings(
        port=0,
        data_dir=str(directory),
        group_commit_interval_ms=0,
        max_request_bytes=LIMIT,
        max_payload_bytes=LIMIT // 2,
        token=TOKEN,
        **overrides,
    )


@pytest.fixture
async def broker(nursery: trio.Nursery, tmp_path: Path) -> InProcessBroker:
    return await start_in_process(nursery, settings(tmp_path))


async def in_thread(fn: Callable[[], T]) -> T:
    """Run a blocking client in a worker thread while the broker serves."""
    return await trio.to_thread.run_sync(fn)


def record_port(response: httpx.Response) -> None:
    """A response hook: note the client-side port of the connection that carries
    ``response`` (while it is open: a closed one no longer has it)."""
    stream = response.extensions["network_stream"]
    response.extensions["client_port"] = stream.get_extra_info("client_addr")[1]


def oversized(size: int) -> bytes:
    return orjson.dumps({"payload": "z" * size})


def chunks(data: bytes, size: int = 8192) -> Iterator[bytes]:
    """``data`` as a chunked body (no Content-Length), in several writes."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def assert_tag(response: httpx.Response, status: int, tag: str) -> None:
    assert response.status_code == status, (response.request.url, response.text)
    assert response.json()["_tag"] == tag, response.text


# ------------------------------------------------------------------------ 413


async def test_oversized_posts_then_reads_on_one_client(broker: InProcessBroker) -> None:
    """20 rounds of (oversized POST, GET /v1/stats) on one keep-alive client: every
    request is answered. A body up to twice the limit is read and dropped, so the
    connection is kept; a bigger one is answered with ``Connection: close`` and the
    next request goes out on a new connection."""

    def rounds() -> None:
        with httpx.Client(
            base_url=broker.url,
            headers=AUTH,
            timeout=CLIENT_TIMEOUT,
            event_hooks={"response": [record_port]},
        ) as client:
            for n in range(20):
                far = n % 2 == 1
                body = oversized((8 if far else 1) * LIMIT + n)
                content: bytes | Iterator[bytes] = chunks(body) if n % 4 == 2 else body
                rejected = client.post("/v1/jobs", content=content)
                assert_tag(rejected, 413, "PayloadTooLarge")
                stats = client.get("/v1/stats")
                assert stats.status_code == 200, stats.text
                assert stats.json()["total"] == 0
                closes = rejected.headers.get("connection", "").lower() == "close"
                assert closes == far, (n, rejected.headers)
                same_connection = (
                    stats.extensions["client_port"] == rejected.extensions["client_port"]
                )
                assert same_connection != far, n

    await in_thread(rounds)


async def test_a_stalled_body_is_answered_and_the_connection_closed(
    broker: InProcessBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that stops sending its body mid-way gets its answer once the broker
    stops waiting for the rest, with ``Connection: close``, and the broker closes
    its end: the connection is not left open for a request that never comes."""
    monkeypatch.setattr(trioq.broker._connections, "DRAIN_SECONDS", 0.5)
    host, port = broker.url.removeprefix("http://").rsplit(":", 1)
    # routes that answer without reading the body: no route, wrong method, a read
    for method, path, status in (
        ("POST", "/nothing", 404),
        ("POST", "/healthz", 405),
        ("GET", "/v1/stats", 200),
    ):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                f"Authorization: Bearer {TOKEN}\r\n\r\n"
            )
            await stream.send_all(head.encode() + b'{"workerId": ')
            answer = b""
            with trio.fail_after(CLIENT_TIMEOUT):
                while chunk := await stream.receive_some(65536):
                    answer += chunk
        head_part, _, body = answer.partition(b"\r\n\r\n")
        assert head_part.startswith(f"HTTP/1.1 {status}".encode()), answer
        assert b"\r\nconnection: close" in head_part.lower(), answer
        assert orjson.loads(body)  # the whole answer came before the close


async def test_connections_that_end_with_the_answer_are_closed(broker: InProcessBroker) -> None:
    """A request that asks to close its connection (``Connection: close``, or
    HTTP/1.0) is answered, then the broker closes its end."""
    host, port = broker.url.removeprefix("http://").rsplit(":", 1)
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    for request, status in (
        (b"GET /v1/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth, b"200"),
        (b"GET /v1/stats HTTP/1.0\r\n" + auth, b"200"),
        (b"POST /nothing HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n" + auth, b"404"),
        (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n", b"401"),
    ):
        body = b'{"payload": 1}'
        data = request + b"Content-Length: %d\r\n\r\n" % len(body) + body
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(data)
            answer = b""
            with trio.fail_after(CLIENT_TIMEOUT):
                while chunk := await stream.receive_some(65536):
                    answer += chunk
        assert answer.split(b" ", 2)[1] == status, answer
        assert orjson.loads(answer.partition(b"\r\n\r\n")[2])


# --------------------------------------------------- many bad requests, one client

# (method, path, body, expected status, expected tag); the body of every request
# is padded with whitespace to a random size.
_BAD: list[tuple[str, str, bytes, int, str]] = [
    ("POST", "/v1/jobs", b'{"payload": ', 400, "BrokerProtocolError"),
    ("POST", "/v1/jobs", b'{"type": "no payload"}', 400, "BrokerProtocolError"),
    (
        "POST",
        "/v1/jobs",
        b'{"payload": 123456789012345678901234567890}',
        400,
        "BrokerProtocolError",
    ),
    ("POST", "/v1/jobs/claim", b'{"workerId": ""}', 400, "BrokerProtocolError"),
    ("POST", "/v1/jobs/bad%20id/complete", b'{"workerId": "w"}', 400, "BrokerProtocolError"),
    ("POST", "/nothing", b'{"payload": 1}', 404, "NotFound"),
    ("POST", "/v1/jobs/a/b/c", b'{"payload": 1}', 404, "NotFound"),
    ("POST", "/v1/jobs/missing/complete", b'{"workerId": "w"}', 404, "JobNotFound"),
    ("POST", "/v1/dead/missing/requeue", b"{}", 404, "JobNotFound"),
    ("PUT", "/v1/jobs", b'{"payload": 1}', 405, "MethodNotAllowed"),
    ("DELETE", "/v1/jobs/x/complete", b'{"workerId": "w"}', 405, "MethodNotAllowed"),
    ("POST", "/healthz", b'{"x": 1}', 405, "MethodNotAllowed"),
    ("GET", "/v1/jobs/claim", b'{"workerId": "w"}', 405, "MethodNotAllowed"),
    ("GET", "/v1/stats", b'{"ignored": "body"}', 200, ""),
]


async def test_thousands_of_mixed_bad_requests_on_one_client(broker: InProcessBroker) -> None:
    """A seeded run of 5,000 rejected requests with bodies (malformed, unknown paths,
    wrong methods, no token, oversized, chunked or not) over one keep-alive client:
    every one is answered, with its status and tag."""
    rng = random.Random(20240611)

    def run() -> int:
        answered = 0
        with httpx.Client(base_url=broker.url, timeout=CLIENT_TIMEOUT) as client:
            for n in range(5000):
                method, path, body, status, tag = rng.choice(_BAD)
                headers = AUTH
                roll = rng.random()
                if roll < 0.08 and path != "/healthz":  # /healthz needs no token
                    headers = rng.choice([{}, {"Authorization": "Bearer wrong"}])
                    status, tag = 401, "Unauthorized"
                elif roll < 0.16:
                    method, path, status, tag = "POST", "/v1/jobs", 413, "PayloadTooLarge"
                    body = oversized(rng.choice([LIMIT + 1, 3 * LIMIT]))
                body += b" " * rng.choice([0, 1, 100, 5000, 20000])
                content: bytes | Iterator[bytes] = body
                if rng.random() < 0.25:
                    content = chunks(body, rng.choice([1, 7, 4096]) if len(body) < 500 else 4096)
                response = client.request(method, path, content=content, headers=headers)
                assert response.status_code == status, (n, method, path, response.text)
                if tag:
                    assert response.json()["_tag"] == tag, (n, method, path, response.text)
                answered += 1
        return answered

    with trio.fail_after(90):
        assert await in_thread(run) == 5000
    async with httpx.AsyncClient(base_url=broker.url, headers=AUTH) as http:
        assert (await http.get("/v1/stats")).json()["total"] == 0


# ------------------------------------------------------------------ WebSocket


async def test_rejected_websocket_handshakes_then_requests_on_one_client(
    broker: InProcessBroker,
) -> None:
    """A handshake answered 401 closes its connection, and says so: the client's next
    request goes out on a new connection and is answered."""
    host, port = broker.url.removeprefix("http://").rsplit(":", 1)
    upgrade = (
        "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    for _ in range(5):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(upgrade.encode())
            answer = b""
            with trio.fail_after(CLIENT_TIMEOUT):
                while chunk := await stream.receive_some(65536):
                    answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), answer
        assert b"\r\nconnection: close" in head.lower(), answer
        assert orjson.loads(body)["_tag"] == "Unauthorized"
