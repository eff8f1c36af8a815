"""Every limit of the broker, on every route and WebSocket method it applies to: each
is answered with its tagged error (or a closed connection) within a bounded time,
and the broker answers another client afterwards. docs/limits.md tables them.

Real brokers (hypercorn on a free port, memory storage) and real sockets: httpx for
well-behaved requests, raw ``trio.open_tcp_stream`` for header floods, trickled
requests and clients that never read; wsproto frames the raw WebSocket. The route
and method tables (``ROUTES``, ``METHODS``) drive the parametrization, so a new
route or method shows up here. Timeouts are set small through the settings; the
waits for a state are event-driven (:func:`_waits.wait_for`), and the client-side
bounds only turn a hang into a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import orjson
import pytest
import trio
import wsproto
import wsproto.events
from httpx_ws import AsyncWebSocketSession, aconnect_ws

import trioq.broker._connections
from _broker_proc import InProcessBroker, start_in_process
from _waits import wait_for
from trioq._wire import MAX_BATCH, MAX_CLAIM, MAX_LIST, MAX_WAIT_MS, ListQuery
from trioq.broker._routes import ROUTES, Route
from trioq.broker._settings import BrokerSettings
from trioq.broker._websocket import METHODS

HANG = 20.0
"""Seconds a client waits for an answer or a close: only a hang reaches it."""

SHORT = 0.5
"""The keep-alive and client timeouts of the brokers that test them (seconds)."""

SLACK = 5.0
"""How much later than its timeout a cut-off may come on a loaded machine."""

BODY_ROUTES = [route for route in ROUTES if route.body is not None]
WS_PATH = "/v1/ws"


def settings(directory: Path, **overrides: Any) -> BrokerSettings:
    values: dict[str, Any] = {
        "port": 0,
        "storage": "memory",
        "data_dir": str(directory),
        "group_commit_interval_ms": 0,
    }
    return BrokerSettings.load(values | overrides, environ={})


@pytest.fixture
async def broker(nursery: trio.Nursery, tmp_path: Path) -> InProcessBroker:
    return await start_in_process(nursery, settings(tmp_path))


def path_of(route: Route) -> str:
    return re.sub(r"<[^>]+>", "job-1", route.path)


def ids(route: Route) -> str:
    return route.name


def address(broker: InProcessBroker) -> tuple[str, int]:
    host, port = broker.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def raw(broker: InProcessBroker) -> trio.SocketStream:
    return await trio.open_tcp_stream(*address(broker))


async def read_to_close(stream: trio.abc.ReceiveStream, within: float = HANG) -> bytes:
    """Everything the broker sends until it closes the connection."""
    answer = b""
    with trio.fail_after(within):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # reset: the broker closed with data unread
                return answer
            if not chunk:
                return answer
            answer += chunk


def head_and_body(answer: bytes) -> tuple[str, Any]:
    """The head (lowercase) and the body (decoded if it is JSON) of an answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    text = head.decode("latin-1").lower()
    return text, (orjson.loads(body) if "application/json" in text and body else body)


async def assert_still_serving(broker: InProcessBroker) -> None:
    """A new client is answered at once: the broker is not stuck."""
    async with httpx.AsyncClient(base_url=broker.url, timeout=HANG) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/v1/stats")).status_code == 200


def request_head(route: Route | None, extra: str = "") -> bytes:
    """A request line and headers for ``route`` (``None``: the WebSocket handshake)."""
    if route is None:
        return (
            f"GET {WS_PATH} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"{extra}\r\n"
        ).encode()
    return f"{route.method} {path_of(route)} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


EVERY_TARGET: list[Route | None] = [*ROUTES, None]
"""Every REST route, and the WebSocket handshake (``None``)."""


def target_id(target: Route | None) -> str:
    return "websocket" if target is None else target.name


# ------------------------------------------------------------------ header size


@pytest.mark.parametrize("target", EVERY_TARGET, ids=target_id)
async def test_headers_over_the_limit_are_431_and_closed(
    broker: InProcessBroker, target: Route | None
) -> None:
    """A request head over hypercorn's ``h11_max_incomplete_size`` (64 KiB): 431 and
    the connection closed, before any route sees it."""
    stream = await raw(broker)
    async with stream:
        head = request_head(target, extra=f"X-Flood: {'a' * (200 * 1024)}\r\n")
        with trio.fail_after(HANG):
            # closed while the flood was still being sent: also fine
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(head)
        answer = await read_to_close(stream)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"connection: close" in answer.lower()
    await assert_still_serving(broker)


# ------------------------------------------------------------------- slow heads


async def trickle(stream: trio.abc.SendStream, data: bytes, every: float) -> None:
    """Send ``data`` a byte at a time, ``every`` seconds apart, until it is sent or
    the broker closes the connection."""
    for byte in data:
        try:
            await stream.send_all(bytes([byte]))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await trio.sleep(every)


async def cut_off_within(
    stream: trio.SocketStream, data: bytes, every: float, within: float
) -> bytes:
    """Trickle ``data`` and return what the broker sent before it closed the
    connection, which it must within ``within`` seconds."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle, stream, data, every)
        answer = await read_to_close(stream, within)
        nursery.cancel_scope.cancel()
    return answer


@pytest.mark.parametrize("after_a_request", [False, True], ids=["first", "after-a-request"])
async def test_a_request_head_sent_a_byte_at_a_time_is_cut_off(
    nursery: trio.Nursery, tmp_path: Path, after_a_request: bool
) -> None:
    """Slowloris on the request line and headers, on every route and the WebSocket
    at once: each connection is closed once ``--keep-alive-timeout-s`` passes without
    a whole request head, also on a connection that served a request before (whose
    idle timer hypercorn used to lose), and other clients are served meanwhile."""
    broker = await start_in_process(nursery, settings(tmp_path, keep_alive_timeout=SHORT))
    timings: dict[str, float] = {}

    async def slow_client(target: Route | None) -> None:
        stream = await raw(broker)
        async with stream:
            if after_a_request:
                await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                with trio.fail_after(HANG):
                    while b"}" not in answer:
                        answer += await stream.receive_some(65536)
                assert answer.startswith(b"HTTP/1.1 200"), answer
            start = trio.current_time()
            head = request_head(target, extra="X-Slow: " + "s" * 10_000 + "\r\n")
            answer = await cut_off_within(stream, head, 0.05, SHORT + SLACK)
            timings[target_id(target)] = trio.current_time() - start
            assert not answer.startswith(b"HTTP/1.1 2"), answer

    async with trio.open_nursery() as clients:
        for target in EVERY_TARGET:
            clients.start_soon(slow_client, target)
        await assert_still_serving(broker)  # while they trickle
    assert len(timings) == len(EVERY_TARGET)
    await assert_still_serving(broker)


# --------------------------------------------------------------------- HTTP/2

# hypercorn also speaks cleartext HTTP/2 to a client that opens with its preface
# (prior knowledge): the same limits hold there.


def h2_client() -> h2.connection.H2Connection:
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    return connection


def h2_headers(route: Route, extra: int = 0) -> list[tuple[str, str]]:
    headers = [(":method", route.method), (":path", path_of(route)), (":scheme", "http")]
    return [*headers, (":authority", "x"), ("x-flood", "a" * extra)]


async def h2_events_to_close(
    stream: trio.SocketStream, connection: h2.connection.H2Connection, within: float
) -> list[h2.events.Event]:
    """The HTTP/2 events the broker sends until it closes the connection."""
    data = await read_to_close(stream, within)
    return connection.receive_data(data) if data else []


@pytest.mark.parametrize("route", ROUTES, ids=ids)
async def test_http2_headers_over_the_limit_close_the_connection(
    broker: InProcessBroker, route: Route
) -> None:
    """Over HTTP/2 a header block over ``h2_max_header_list_size`` (64 KiB) ends the
    connection (GOAWAY, closed) before any route sees it."""
    stream = await raw(broker)
    async with stream:
        connection = h2_client()
        connection.send_headers(1, h2_headers(route, 80 * 1024), end_stream=True)
        with contextlib.suppress(trio.BrokenResourceError), trio.fail_after(HANG):
            await stream.send_all(connection.data_to_send())
        events = await h2_events_to_close(stream, connection, HANG)
    assert not any(isinstance(e, h2.events.ResponseReceived) for e in events), events
    await assert_still_serving(broker)


@pytest.mark.parametrize("trickled", [False, True], ids=["no-stream", "headers-trickled"])
async def test_http2_connections_without_a_request_are_cut_off(
    nursery: trio.Nursery, tmp_path: Path, trickled: bool
) -> None:
    """An HTTP/2 connection that opens no stream (only its preface), or trickles a
    HEADERS frame a byte at a time, is closed once ``--keep-alive-timeout-s``
    passes (hypercorn never timed it: see ``_GuardedTCPServer``)."""
    broker = await start_in_process(nursery, settings(tmp_path, keep_alive_timeout=SHORT))
    stream = await raw(broker)
    async with stream:
        connection = h2_client()
        await stream.send_all(connection.data_to_send())
        start = time.monotonic()
        if trickled:
            connection.send_headers(1, h2_headers(ROUTES[0], 10_000), end_stream=True)
            await cut_off_within(stream, connection.data_to_send(), 0.05, SHORT + SLACK)
        else:
            await read_to_close(stream, SHORT + SLACK)
        assert time.monotonic() - start < SHORT + SLACK
    await wait_for(lambda: broker.broker.connections.open == 0, within=HANG, what="released")
    await assert_still_serving(broker)


# ------------------------------------------------------------------- slow bodies


@pytest.mark.parametrize("route", ROUTES, ids=ids)
async def test_a_body_sent_a_byte_at_a_time_is_cut_off(
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    route: Route,
) -> None:
    """A body trickled a byte at a time: a route that reads it answers 408 once
    ``--client-timeout-s`` passes; one that does not answers as it would, after
    the drain bound; both close the connection, and the broker serves others."""
    monkeypatch.setattr(trioq.broker._connections, "DRAIN_SECONDS", SHORT)
    broker = await start_in_process(nursery, settings(tmp_path, client_timeout=SHORT))
    stream = await raw(broker)
    async with stream:
        await stream.send_all(request_head(route, extra="Content-Length: 5000\r\n"))
        start = trio.current_time()
        answer = await cut_off_within(stream, b'{"payload": "' + b"x" * 4000, 0.05, SHORT + SLACK)
        took = trio.current_time() - start
    head, body = head_and_body(answer)
    assert "connection: close" in head, answer[:300]
    if route.body is not None:
        assert head.startswith("http/1.1 408"), answer[:300]
        assert body["_tag"] == "BrokerProtocolError"
    else:
        assert not head.startswith("http/1.1 408"), answer[:300]
    assert took < SHORT + SLACK
    await assert_still_serving(broker)


# ------------------------------------------------------------ clients that never read


@contextlib.asynccontextmanager
async def open_ws(
    broker: InProcessBroker, http: httpx.AsyncClient
) -> AsyncIterator[AsyncWebSocketSession]:
    # httpx-ws's context manager is untyped: name what it gives
    session: AsyncWebSocketSession
    async with aconnect_ws(f"{broker.url}{WS_PATH}", http) as session:
        yield session


def ws_client() -> wsproto.WSConnection:
    return wsproto.WSConnection(wsproto.ConnectionType.CLIENT)


async def raw_websocket(broker: InProcessBroker) -> tuple[trio.SocketStream, wsproto.WSConnection]:
    """A raw WebSocket connection, its handshake done, that reads nothing more."""
    stream = await raw(broker)
    ws = ws_client()
    await stream.send_all(ws.send(wsproto.events.Request(host="x", target=WS_PATH)))
    answer = b""
    with trio.fail_after(HANG):
        while b"\r\n\r\n" not in answer:
            answer += await stream.receive_some(1)  # not a byte past the handshake
    ws.receive_data(answer)
    assert any(isinstance(e, wsproto.events.AcceptConnection) for e in ws.events()), answer
    return stream, ws


BIG = 900 * 1024
"""A payload under the default --max-payload-bytes; a few dozen of them fill the
socket buffers between the broker and a client that reads nothing."""


async def submit_big_jobs(broker: InProcessBroker, count: int) -> None:
    async with httpx.AsyncClient(base_url=broker.url, timeout=HANG) as http:
        for n in range(count):
            job = {"id": f"big-{n}", "payload": "b" * BIG}
            assert (await http.post("/v1/jobs", json=job)).status_code == 200


async def test_a_websocket_client_that_never_reads_is_closed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A WebSocket client sends calls and never reads their answers: once a piece of
    an answer waits ``--client-timeout-s`` for it, the broker closes the connection,
    serving others meanwhile and after."""
    broker = await start_in_process(nursery, settings(tmp_path, client_timeout=SHORT))
    await submit_big_jobs(broker, 4)
    guard = broker.broker.connections
    stream, ws = await raw_websocket(broker)
    async with stream:
        calls = b"".join(
            ws.send(wsproto.events.TextMessage(orjson.dumps(
                {"id": n, "method": "getJob", "params": {"jobId": f"big-{n % 4}"}}
            ).decode()))
            for n in range(200)
        )  # fmt: skip
        with trio.fail_after(HANG):
            await stream.send_all(calls)
        await wait_for(lambda: guard.timed_out_sends >= 1, within=HANG, what="the send timeout")
        await assert_still_serving(broker)
        await read_to_close(stream)  # what was buffered, then the close
    await wait_for(lambda: guard.open == 0, within=HANG, what="the connection is released")
    await assert_still_serving(broker)


async def test_an_http_client_that_never_reads_its_answer_is_closed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """An HTTP client that asks for a large answer (``/state``) and never reads it:
    the connection is closed after ``--client-timeout-s`` without progress."""
    broker = await start_in_process(nursery, settings(tmp_path, client_timeout=SHORT))
    await submit_big_jobs(broker, 24)
    guard = broker.broker.connections
    stream = await raw(broker)
    async with stream:
        await stream.send_all(b"GET /state HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_for(lambda: guard.timed_out_sends >= 1, within=HANG, what="the send timeout")
        await assert_still_serving(broker)
    await wait_for(lambda: guard.open == 0, within=HANG, what="the connection is released")


# ----------------------------------------------------------- too many connections


async def test_connections_over_the_cap_are_refused_503_on_every_route(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """At ``--max-connections`` open connections (idle keep-alive ones count), one
    more is answered ``503 Overloaded`` with ``Retry-After`` and closed, whatever it
    asks for; the connections the broker holds keep being served, and a freed slot
    is taken by the next client."""
    cap = 3
    broker = await start_in_process(nursery, settings(tmp_path, max_connections=cap))
    guard = broker.broker.connections
    held = [await raw(broker) for _ in range(cap)]
    try:
        await wait_for(lambda: guard.open == cap, within=HANG, what="the cap is reached")
        for target in EVERY_TARGET:
            stream = await raw(broker)
            async with stream:
                await stream.send_all(request_head(target))
                head, body = head_and_body(await read_to_close(stream))
            assert head.startswith("http/1.1 503"), (target_id(target), head)
            assert "retry-after: 1" in head, head
            assert "connection: close" in head, head
            assert body["_tag"] == "Overloaded", body
        assert guard.refused == len(EVERY_TARGET)
        # the held connections are still served
        await held[0].send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(HANG):
            assert (await held[0].receive_some(65536)).startswith(b"HTTP/1.1 200")
    finally:
        for stream in held:
            await stream.aclose()
    await wait_for(lambda: guard.open == 0, within=HANG, what="the held connections close")
    await assert_still_serving(broker)


# ---------------------------------------------------------- too many long-polls


@dataclasses.dataclass(frozen=True)
class LongPoll:
    """One way to ask for a long-poll claim: a REST route or a WebSocket method."""

    name: str
    route: str | None
    method: str | None
    body: dict[str, Any]


LONG_POLLS = [
    LongPoll("claim", "/v1/jobs/claim", None, {"workerId": "w", "waitMs": MAX_WAIT_MS}),
    LongPoll("claim-max", "/v1/jobs/claim", None,
             {"workerId": "w", "max": 5, "waitMs": MAX_WAIT_MS}),
    LongPoll("exchange", "/v1/jobs/exchange", None,
             {"workerId": "w", "claim": {"max": 2, "waitMs": MAX_WAIT_MS}}),
    LongPoll("ws-claimJob", None, "claimJob", {"workerId": "w", "waitMs": MAX_WAIT_MS}),
    LongPoll("ws-claimJobs", None, "claimJobs",
             {"workerId": "w", "max": 5, "waitMs": MAX_WAIT_MS}),
    LongPoll("ws-exchange", None, "exchange",
             {"workerId": "w", "claim": {"max": 2, "waitMs": MAX_WAIT_MS}}),
]  # fmt: skip


def _mentions_wait(schema: Any) -> bool:
    return schema is not None and b"waitMs" in orjson.dumps(
        schema.model_json_schema() if hasattr(schema, "model_json_schema") else {}
    )


def test_the_long_poll_table_covers_every_route_and_method_that_waits() -> None:
    routes = {r.path for r in ROUTES if _mentions_wait(r.body)}
    methods = {m.name for m in METHODS if _mentions_wait(m.params)}
    assert routes == {p.route for p in LONG_POLLS if p.route}
    assert methods == {p.method for p in LONG_POLLS if p.method}


async def ws_call(session: AsyncWebSocketSession, method: str, params: Any) -> dict[str, Any]:
    await session.send_text(orjson.dumps({"id": 1, "method": method, "params": params}).decode())
    with trio.fail_after(HANG):
        reply: dict[str, Any] = await session.receive_json()
    return reply


@pytest.mark.parametrize("poll", LONG_POLLS, ids=lambda p: p.name)
async def test_long_polls_over_the_cap_are_refused_503(
    nursery: trio.Nursery, tmp_path: Path, poll: LongPoll
) -> None:
    """With ``--max-waiting-claims`` claims parked, one more long-poll is answered
    at once with ``503 Overloaded`` (``Retry-After`` over REST), which clients retry
    after a pause; the parked ones still get the next jobs."""
    cap = 2
    broker = await start_in_process(nursery, settings(tmp_path, max_waiting_claims=cap))
    book = broker.broker.engine.book
    async with httpx.AsyncClient(base_url=broker.url, timeout=HANG) as http:
        got: list[httpx.Response] = []

        async def park(n: int) -> None:
            body = {"workerId": f"parked-{n}", "waitMs": MAX_WAIT_MS}
            got.append(await http.post("/v1/jobs/claim", json=body))

        async with trio.open_nursery() as parked:
            for n in range(cap):
                parked.start_soon(park, n)
            await wait_for(lambda: len(book.waiting) == cap, within=HANG, what="parked")
            with trio.fail_after(HANG / 2):  # at once, not after waitMs
                if poll.route is not None:
                    response = await http.post(poll.route, json=poll.body)
                    assert response.status_code == 503, response.text
                    assert response.headers["retry-after"] == "1"
                    error = response.json()
                else:
                    assert poll.method is not None
                    async with open_ws(broker, http) as session:
                        reply = await ws_call(session, poll.method, poll.body)
                    assert reply["ok"] is False, reply
                    error = reply["error"]
            assert error["_tag"] == "Overloaded", error
            # the parked claims are served by the next jobs
            for n in range(cap):
                submitted = await http.post("/v1/jobs", json={"payload": n})
                assert submitted.status_code == 200
        assert sorted(r.status_code for r in got) == [200] * cap
        assert all(r.json().get("jobId") for r in got)
    await assert_still_serving(broker)


# ---------------------------------------------------- request and payload size


def oversized_body(limit: int) -> bytes:
    return orjson.dumps({"payload": "z" * (limit + 1)})


@pytest.mark.parametrize("route", BODY_ROUTES, ids=ids)
async def test_a_request_over_max_request_bytes_is_413(
    nursery: trio.Nursery, tmp_path: Path, route: Route
) -> None:
    """Every route that takes a body refuses one over ``--max-request-bytes`` with
    413 ``PayloadTooLarge``, and the connection stays usable."""
    limit = 32 * 1024
    broker = await start_in_process(
        nursery, settings(tmp_path, max_request_bytes=limit, max_payload_bytes=limit // 2)
    )
    async with httpx.AsyncClient(base_url=broker.url, timeout=HANG) as http:
        response = await http.request(route.method, path_of(route), content=oversized_body(limit))
        assert response.status_code == 413, response.text
        assert response.json()["_tag"] == "PayloadTooLarge"
        assert (await http.get("/healthz")).status_code == 200  # same client, same pool
    await assert_still_serving(broker)


async def test_a_websocket_message_over_max_request_bytes_closes_1009(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Every method shares one socket: a message over ``--max-request-bytes`` closes
    it with 1009 (message too big) before any method reads it."""
    limit = 32 * 1024
    broker = await start_in_process(
        nursery, settings(tmp_path, max_request_bytes=limit, max_payload_bytes=limit // 2)
    )
    from httpx_ws import WebSocketDisconnect

    for method in METHODS:
        async with httpx.AsyncClient(timeout=HANG) as client, open_ws(broker, client) as session:
            message = {"id": 1, "method": method.name, "params": {"payload": "z" * limit}}
            await session.send_text(orjson.dumps(message).decode())
            with trio.fail_after(HANG), pytest.raises(WebSocketDisconnect) as closed:
                await session.receive_json()
            assert closed.value.code == 1009, method.name
    await assert_still_serving(broker)


SUBMITS: list[tuple[str, str | None, str | None, Any]] = [
    # (name, REST path, WebSocket method, body/params with a job given by JOB)
    ("submit", "/v1/jobs", None, "JOB"),
    ("submit_batch", "/v1/jobs/batch", None, {"jobs": ["JOB"]}),
    ("submit_bulk", "/v1/jobs/bulk", None, {"jobs": ["JOB"]}),
    ("ws-submitJob", None, "submitJob", "JOB"),
    ("ws-submitJobs", None, "submitJobs", {"jobs": ["JOB"]}),
    ("ws-submitBulk", None, "submitBulk", {"jobs": ["JOB"]}),
]


def test_the_submit_table_covers_every_route_and_method_that_submits() -> None:
    from trioq._wire import NewJob, SubmitBatch, SubmitBulk

    submits = (NewJob, SubmitBatch, SubmitBulk)
    routes = {r.path for r in ROUTES if r.body in submits}
    methods = {m.name for m in METHODS if m.params in submits}
    assert routes == {path for _, path, _, _ in SUBMITS if path}
    assert methods == {method for _, _, method, _ in SUBMITS if method}


def with_job(template: Any, job: dict[str, Any]) -> Any:
    if template == "JOB":
        return job
    if isinstance(template, dict):
        return {key: with_job(value, job) for key, value in template.items()}
    if isinstance(template, list):
        return [with_job(value, job) for value in template]
    return template


@dataclasses.dataclass
class Answer:
    """What a submit got: a REST status and body, or a WebSocket reply."""

    status: int | None
    body: Any

    def tags(self) -> set[str]:
        """Every ``_tag`` in the answer (a bulk answer has one per job)."""
        found: set[str] = set()

        def walk(value: Any) -> None:
            if isinstance(value, dict):
                if "_tag" in value:
                    found.add(value["_tag"])
                for inner in value.values():
                    walk(inner)
            elif isinstance(value, list):
                for inner in value:
                    walk(inner)

        walk(self.body)
        return found


async def submit_via(
    broker: InProcessBroker, path: str | None, method: str | None, body: Any
) -> Answer:
    async with httpx.AsyncClient(base_url=broker.url, timeout=HANG) as http:
        if path is not None:
            response = await http.post(path, json=body)
            return Answer(response.status_code, response.json())
        assert method is not None
        async with open_ws(broker, http) as session:
            return Answer(None, await ws_call(session, method, body))


def is_bulk(name: str) -> bool:
    return name.endswith(("bulk", "Bulk"))


@pytest.mark.parametrize(
    ("name", "path", "method", "template"), SUBMITS, ids=[s[0] for s in SUBMITS]
)
async def test_a_payload_over_max_payload_bytes_is_refused(
    nursery: trio.Nursery, tmp_path: Path, name: str, path: str | None, method: str | None,
    template: Any,
) -> None:  # fmt: skip
    """A payload over ``--max-payload-bytes``: 413 ``PayloadTooLarge`` (a bulk
    submit: that job's result), nothing enqueued."""
    broker = await start_in_process(nursery, settings(tmp_path, max_payload_bytes=1024))
    answer = await submit_via(broker, path, method, with_job(template, {"payload": "x" * 2000}))
    assert "PayloadTooLarge" in answer.tags(), answer
    if path is not None and not is_bulk(name):
        assert answer.status == 413
    async with httpx.AsyncClient(base_url=broker.url) as http:
        assert (await http.get("/v1/stats")).json()["total"] == 0
    await assert_still_serving(broker)


@pytest.mark.parametrize(
    ("name", "path", "method", "template"), SUBMITS, ids=[s[0] for s in SUBMITS]
)
@pytest.mark.parametrize("cap", ["max_queued", "max_document_bytes"])
async def test_a_full_queue_is_503_queue_full(
    nursery: trio.Nursery, tmp_path: Path, name: str, path: str | None, method: str | None,
    template: Any, cap: str,
) -> None:  # fmt: skip
    """At ``TRIOQ_MAX_QUEUED`` jobs, or at ``--max-document-bytes``, a submit is
    503 ``QueueFull`` (a bulk submit: that job's result); nothing is enqueued."""
    overrides: dict[str, Any] = (
        {"max_queued": 1} if cap == "max_queued" else {"max_document_bytes": 4096}
    )
    broker = await start_in_process(nursery, settings(tmp_path, **overrides))
    async with httpx.AsyncClient(base_url=broker.url, timeout=HANG) as http:
        filler = {"id": "filler", "payload": "f" * 3000}
        assert (await http.post("/v1/jobs", json=filler)).status_code == 200
        answer = await submit_via(
            broker, path, method, with_job(template, {"id": "over", "payload": "o" * 1500})
        )
        assert "QueueFull" in answer.tags(), answer
        if path is not None and not is_bulk(name):
            assert answer.status == 503
        assert (await http.get("/v1/stats")).json()["total"] == 1
    await assert_still_serving(broker)


# ------------------------------------------------------- batch and claim bounds

_REPORT = {"jobId": "job-1", "workerId": "w"}
BOUNDS: list[tuple[str, str | None, str | None, dict[str, Any], str]] = [
    # (name, REST path, WebSocket method, body over a bound, the field named)
    ("batch", "/v1/jobs/batch", None, {"jobs": [{"payload": 1}] * (MAX_BATCH + 1)}, "jobs"),
    ("bulk", "/v1/jobs/bulk", None, {"jobs": [{"payload": 1}] * (MAX_BATCH + 1)}, "jobs"),
    ("ws-submitJobs", None, "submitJobs", {"jobs": [{"payload": 1}] * (MAX_BATCH + 1)}, "jobs"),
    ("ws-submitBulk", None, "submitBulk", {"jobs": [{"payload": 1}] * (MAX_BATCH + 1)}, "jobs"),
    *[
        (f"exchange-{kind}", path, method,
         {"workerId": "w", kind: [_REPORT] * (MAX_BATCH + 1)}, kind)
        for kind in ("heartbeat", "complete", "fail", "release")
        for path, method in (("/v1/jobs/exchange", None), (None, "exchange"))
    ],
    ("claim-max", "/v1/jobs/claim", None, {"workerId": "w", "max": MAX_CLAIM + 1}, "max"),
    ("claim-waitMs", "/v1/jobs/claim", None,
     {"workerId": "w", "waitMs": MAX_WAIT_MS + 1}, "waitMs"),
    ("exchange-max", "/v1/jobs/exchange", None,
     {"workerId": "w", "claim": {"max": MAX_CLAIM + 1}}, "max"),
    ("exchange-waitMs", "/v1/jobs/exchange", None,
     {"workerId": "w", "claim": {"max": 1, "waitMs": MAX_WAIT_MS + 1}}, "waitMs"),
    *[
        (f"ws-{method}-{field}", None, method, body, field)
        for method in ("claimJob", "claimJobs")
        for field, body in (
            ("max", {"workerId": "w", "max": MAX_CLAIM + 1}),
            ("waitMs", {"workerId": "w", "waitMs": MAX_WAIT_MS + 1}),
        )
    ],
    ("ws-exchange-max", None, "exchange", {"workerId": "w", "claim": {"max": MAX_CLAIM + 1}}, "max"),
    ("ws-exchange-waitMs", None, "exchange",
     {"workerId": "w", "claim": {"max": 1, "waitMs": MAX_WAIT_MS + 1}}, "waitMs"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "path", "method", "body", "field"), BOUNDS, ids=[b[0] for b in BOUNDS]
)
async def test_a_list_or_claim_over_its_bound_is_400(
    broker: InProcessBroker, name: str, path: str | None, method: str | None,
    body: dict[str, Any], field: str,
) -> None:  # fmt: skip
    """Batch and bulk jobs, exchange report lists (``MAX_BATCH``), claim ``max``
    (``MAX_CLAIM``) and ``waitMs`` (``MAX_WAIT_MS``): one over is a 400
    ``BrokerProtocolError`` naming the field; nothing changes."""
    answer = await submit_via(broker, path, method, body)
    assert answer.tags() == {"BrokerProtocolError"}, answer
    if path is not None:
        assert answer.status == 400
    assert field in orjson.dumps(answer.body).decode()
    async with httpx.AsyncClient(base_url=broker.url) as http:
        assert (await http.get("/v1/stats")).json()["total"] == 0
    await assert_still_serving(broker)


LISTS = [
    (route.path, None)
    for route in ROUTES
    if route.query is not None and issubclass(route.query, ListQuery)
] + [(None, method.name) for method in METHODS if method.params is ListQuery]


@pytest.mark.parametrize(("path", "method"), LISTS, ids=lambda value: str(value))
async def test_a_page_over_the_list_limit_is_400(
    broker: InProcessBroker, path: str | None, method: str | None
) -> None:
    """A listing's ``limit`` over ``MAX_LIST`` (1000): 400 ``BrokerProtocolError``
    naming ``limit``, on every listing route and method."""
    async with httpx.AsyncClient(base_url=broker.url, timeout=HANG) as http:
        if path is not None:
            response = await http.get(path, params={"limit": MAX_LIST + 1})
            answer = Answer(response.status_code, response.json())
            assert answer.status == 400
        else:
            assert method is not None
            async with open_ws(broker, http) as session:
                answer = Answer(None, await ws_call(session, method, {"limit": MAX_LIST + 1}))
    assert answer.tags() == {"BrokerProtocolError"}, answer
    assert "limit" in orjson.dumps(answer.body).decode()
    await assert_still_serving(broker)


# ------------------------------------------------------- dead letters and dedup


FAILS: list[tuple[str, str | None, str | None]] = [
    ("fail", "/v1/jobs/{id}/fail", None),
    ("exchange", "/v1/jobs/exchange", None),
    ("ws-failJob", None, "failJob"),
    ("ws-exchange", None, "exchange"),
]


def fail_body(path: str | None, method: str | None, job_id: str, attempt: int) -> Any:
    report = {"workerId": "w", "attempt": attempt, "error": "boom", "final": True}
    if (path or method or "").endswith("exchange"):
        return {"workerId": "w", "fail": [{"jobId": job_id, **report}]}
    if method is not None:
        return {"jobId": job_id, **report}
    return report


@pytest.mark.parametrize(("name", "path", "method"), FAILS, ids=[f[0] for f in FAILS])
async def test_the_dead_letter_list_is_bounded_and_counts_what_it_drops(
    nursery: trio.Nursery, tmp_path: Path, name: str, path: str | None, method: str | None
) -> None:
    """The dead-letter list keeps at most its cap (10,000; 2 here): a job failed for
    good past it drops the oldest dead letter, counted in ``dropped``."""
    broker = await start_in_process(nursery, settings(tmp_path))
    engine = broker.broker.engine
    assert engine.state is not None
    engine.limits = dataclasses.replace(engine.limits, dead_letter_cap=2)
    engine.state.limits = engine.limits
    async with httpx.AsyncClient(base_url=broker.url, timeout=HANG) as http:
        for n in range(3):
            assert (
                await http.post("/v1/jobs", json={"id": f"d{n}", "payload": n})
            ).status_code == 200
            claimed = (await http.post("/v1/jobs/claim", json={"workerId": "w"})).json()
            body = fail_body(path, method, claimed["jobId"], claimed["attempt"])
            if path is not None:
                response = await http.post(path.format(id=claimed["jobId"]), json=body)
                assert response.status_code == 200, response.text
            else:
                assert method is not None
                async with open_ws(broker, http) as session:
                    assert (await ws_call(session, method, body))["ok"] is True
        dead = (await http.get("/v1/dead")).json()
    assert [job["jobId"] for job in dead["jobs"]] == ["d1", "d2"], dead
    assert dead["dropped"] == 1, dead
    await assert_still_serving(broker)


async def test_the_dedup_window_is_bounded_in_count(nursery: trio.Nursery, tmp_path: Path) -> None:
    """``--dedup-cap`` finished ids are remembered: past it the oldest is forgotten
    (``GET /v1/jobs/{id}`` is 404 ``JobNotFound``, a resubmit creates a new job)."""
    broker = await start_in_process(nursery, settings(tmp_path, dedup_cap=2))
    async with httpx.AsyncClient(base_url=broker.url, timeout=HANG) as http:
        for n in range(3):
            await http.post("/v1/jobs", json={"id": f"k{n}", "payload": n})
            claimed = (await http.post("/v1/jobs/claim", json={"workerId": "w"})).json()
            done = await http.post(f"/v1/jobs/{claimed['jobId']}/complete", json={"workerId": "w"})
            assert done.status_code == 204
        forgotten = await http.get("/v1/jobs/k0")
        assert forgotten.status_code == 404
        assert forgotten.json()["_tag"] == "JobNotFound"
        assert (await http.get("/v1/jobs/k2")).status_code == 200
        again = (await http.post("/v1/jobs", json={"id": "k0", "payload": 0})).json()
        assert not again.get("duplicate"), again
    await assert_still_serving(broker)


# ------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("field", "flag", "env", "value"),
    [
        ("max_connections", "--max-connections", "TRIOQ_MAX_CONNECTIONS", 7),
        ("max_waiting_claims", "--max-waiting-claims", "TRIOQ_MAX_WAITING_CLAIMS", 9),
        ("client_timeout", "--client-timeout-s", "TRIOQ_CLIENT_TIMEOUT_S", 2.5),
        ("keep_alive_timeout", "--keep-alive-timeout-s", "TRIOQ_KEEP_ALIVE_TIMEOUT_S", 1.5),
    ],
)
def test_the_limit_settings_are_read_and_checked(
    field: str, flag: str, env: str, value: float
) -> None:
    """Each new bound has its flag and variable, and refuses zero or less."""
    from trioq.broker._settings import SettingsError, parse_settings

    assert getattr(parse_settings([flag, str(value)], environ={}), field) == value
    assert getattr(parse_settings([], environ={env: str(value)}), field) == value
    for bad in ("0", "-1"):
        with pytest.raises(SettingsError, match=re.escape(flag)):
            parse_settings([flag, bad], environ={})
