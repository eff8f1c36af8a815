"""The broker's HTTP face: a quart-trio app over :class:`~trioq.broker._api.BrokerApi`.

The app owns no background task: the engine's commit loop belongs to the broker's
nursery (or a test's), so the app can also be driven in-process, without a
lifespan, through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import hmac
import importlib.metadata
import json
import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import trio
from hypercorn.protocol import events as stream_events
from hypercorn.protocol import ws_stream
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPScope,
    Scope,
    WebsocketScope,
)
from quart import Response, request, websocket
from quart_trio import QuartTrio
from werkzeug import exceptions as http_exceptions
from werkzeug.routing import BaseConverter

from .._errors import (
    BrokerProtocolError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    TrioqError,
    Unauthorized,
)
from ._api import BrokerApi, parse_limit
from ._metrics import render_metrics

log = logging.getLogger("trioq.http")

_OPEN_PATHS = frozenset({"/healthz", "/readyz"})
WS_MAX_IN_FLIGHT = 64

# Routes only the leader serves: a standby answers them with NotLeader before it
# looks at the request, whatever the request holds (every broker serves /healthz,
# /readyz and /metrics).
_LEADER_ONLY = frozenset(
    {
        "state",
        "submit",
        "submit_batch",
        "claim",
        "heartbeat",
        "complete",
        "fail",
        "release",
        "cancel",
        "get_job",
        "list_jobs",
        "list_dead",
        "requeue",
        "stats",
        "throttle_stats",
    }
)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def _error(exc: TrioqError) -> Response:
    return _json(exc.to_body(), exc.status)


INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
"""The integers orjson reads and writes exactly."""

# orjson reads an integer outside INT_MIN..INT_MAX as a float, silently dropping
# digits, and has no option to refuse it. Such a literal has at least 19 digits in a
# row, not after a "." or an exponent mark and not before one. Looking for that in C
# (every digit mapped to "9", then a substring search) costs a fraction of the
# parse; only a hit (such an integer, or a long digit run inside a string) pays for
# the exact check, a second parse with the stdlib.
_DIGITS_AS_NINES = bytes.maketrans(b"0123456789", b"9" * 10)
_LONG_RUN = b"9" * 19
_NINES = re.compile(rb"9*")
_RUNS_LOOKED_AT = 1000
"""Long digit runs looked at one by one (in Python) before the exact check decides."""


def _loads(data: bytes | str) -> Any:
    """``orjson.loads``, refusing what it would not read exactly.

    NaN, Infinity and numbers that overflow a double are refused by orjson itself
    (``orjson.JSONDecodeError``); an integer beyond 64 bits raises
    :class:`BrokerProtocolError`."""
    value = orjson.loads(data)
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _may_hold_long_integer(raw):
        try:
            json.loads(raw, parse_int=_exact_int)
        except RecursionError:
            raise BrokerProtocolError("JSON nested too deeply") from None
        except ValueError as exc:  # orjson took it: not expected, but never a 500
            raise BrokerProtocolError(f"malformed JSON: {exc}") from None
    return value


def _may_hold_long_integer(raw: bytes) -> bool:
    nines = raw.translate(_DIGITS_AS_NINES)
    start = nines.find(_LONG_RUN)
    for _ in range(_RUNS_LOOKED_AT):
        if start == -1:
            return False
        run = _NINES.match(nines, start)  # always matches ("9*")
        end = run.end() if run else start
        before = raw[start - 1 : start]
        if before == b"-" and raw[start - 2 : start - 1] not in (b"e", b"E"):
            before = b""  # the sign of a number, not of an exponent
        if before not in (b".", b"e", b"E", b"+", b"-") and raw[end : end + 1] not in (
            b".",
            b"e",
            b"E",
        ):
            return True  # an integer, or digits in a string
        start = nines.find(_LONG_RUN, end)
    return start != -1


def _exact_int(literal: str) -> int:
    digits = literal.removeprefix("-")
    if len(digits) <= 20:
        value = int(literal)
        if INT_MIN <= value <= INT_MAX:
            return value
    shown = literal if len(literal) <= 40 else literal[:40] + "..."
    raise BrokerProtocolError(
        f"integer {shown} is out of range: integers must be from {INT_MIN} to {INT_MAX} "
        "(send larger ones as strings)"
    )


def _decode_body(data: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    if not data.strip():
        if allow_empty:
            return {}
        raise BrokerProtocolError("the request body must be a JSON object")
    try:
        body = _loads(data)
    except orjson.JSONDecodeError as exc:
        raise BrokerProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BrokerProtocolError("the request body must be a JSON object")
    return body


class _JobIdConverter(BaseConverter):
    """A job id in ``GET /v1/jobs/<job_id>``: any segment but the names of the
    POST-only routes beside it, so that ``GET /v1/jobs/claim`` is a 405 from the
    router instead of a lookup of a job called "claim"."""

    regex = r"(?!(?:claim|batch)\Z)[^/]+"


DRAIN_SECONDS = 10.0
"""How long the rest of a body answered early is waited for before the answer goes
out with ``Connection: close`` instead (see :class:`_BrokerApp`)."""

# Why _BrokerApp guards connections (hypercorn 0.17-0.18, trio worker, HTTP/1.1).
# hypercorn ends a response cycle inside the app's own send of the last body chunk:
# it first hands the app http.disconnect (hypercorn/protocol/http_stream.py:132),
# then recycles the connection or, when the request body was not read to its end,
# closes it (protocol/h11.py:271-289 -> trio/tcp_server.py:91-92). quart-trio cancels
# the request's nursery the moment it receives that disconnect
# (quart_trio/asgi.py:36-40), so the close dies with trio.Cancelled at its first
# checkpoint (tcp_server.py:119, send_eof). The connection stays open, h11 holds the
# client's next request as PAUSED (h11.py:174-176) and nothing ever answers it. The
# recycle path needs no checkpoint before the next request can be read, so a request
# whose body was read to its end is safe (only hypercorn's keep-alive idle timer,
# h11.py:286, is lost to the same cancellation).


class _BrokerApp(QuartTrio):
    """The broker's app: a QuartTrio whose early answers leave connections usable.

    An HTTP answer that goes out before the request body was read (an error, a read
    route given a body) first waits for the rest of the body, which quart reads and
    drops, up to ``drain_budget`` bytes and :data:`DRAIN_SECONDS`: the connection is
    then recycled. Past either bound the answer says ``Connection: close`` and its
    last chunk is sent shielded from quart-trio's cancellation, so hypercorn does
    close the connection.
    """

    drain_budget = 0
    """Bytes of body a request may carry and still keep its connection."""

    async def asgi_app(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await super().asgi_app(scope, receive, send)

    async def _http(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        budget = self.drain_budget
        body = _BodySeen(budget)
        declared = _content_length(scope["headers"])
        # hypercorn closes these after the answer: let it (see the shield below)
        closing = scope["http_version"] == "1.0" or _asks_close(scope["headers"])

        async def receive_seen() -> ASGIReceiveEvent:
            message = await receive()
            body.saw(message)
            return message

        async def send_guarded(message: ASGISendEvent) -> None:
            nonlocal closing
            if message["type"] == "http.response.start" and not body.complete:
                if (declared is None or declared <= budget) and message["status"] != 408:
                    # quart keeps receiving (and dropping) the body meanwhile
                    with trio.move_on_after(DRAIN_SECONDS):
                        await body.settled.wait()
                if not body.complete:
                    closing = True
                    message["headers"] = [*message["headers"], (b"connection", b"close")]
            if (
                closing
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
            ):
                # hypercorn closes the connection inside this call, after telling
                # quart-trio the request is over, which cancels us: shield it (for a
                # bounded time: a client that never reads must not hold the task)
                with trio.move_on_after(DRAIN_SECONDS, shield=True):
                    await send(message)
                return
            await send(message)

        await super().asgi_app(scope, receive_seen, send_guarded)

    async def _websocket(
        self, scope: WebsocketScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if _declares_body(scope["headers"]):
            await _refuse_handshake_with_body(receive, send)
            return

        async def send_refusal_closes(message: ASGISendEvent) -> None:
            if message["type"] == "websocket.http.response.start":
                # hypercorn never reuses the connection of a refused handshake: say
                # so, or a pooled client sends its next request into a closing socket
                message["headers"] = [*message["headers"], (b"connection", b"close")]
            await send(message)

        await super().asgi_app(scope, receive, send_refusal_closes)


class _BodySeen:
    """How much of a request body the app has received (watched through ``receive``)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.received = 0
        self.complete = False
        self.settled = trio.Event()
        """Set once the body is complete, the client has gone, or it is over budget."""

    def saw(self, message: ASGIReceiveEvent) -> None:
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        if self.complete or message["type"] == "http.disconnect" or self.received > self.budget:
            self.settled.set()


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # h11 refuses such a request before the app sees it
    return None


def _asks_close(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(
        name.lower() == b"connection"
        and any(token.strip() == b"close" for token in value.lower().split(b","))
        for name, value in headers
    )


def _declares_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(
        (name.lower() == b"content-length" and value.strip() != b"0")
        or name.lower() == b"transfer-encoding"
        for name, value in headers
    )


async def _refuse_handshake_with_body(receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """Refuse a WebSocket handshake that carries a body.

    hypercorn itself answers 400 when the first body byte arrives (see
    :func:`_make_websocket_refusals_safe`), so the app stays silent meanwhile and
    only answers if no body came within :data:`DRAIN_SECONDS`.
    """
    with trio.move_on_after(DRAIN_SECONDS):
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    refusal = BrokerProtocolError("a WebSocket handshake must not carry a body")
    body = orjson.dumps(refusal.to_body())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send(
        {"type": "websocket.http.response.start", "status": refusal.status, "headers": headers}
    )
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


_HYPERCORN_WS_RACE_UNTIL = (0, 18)
"""The last hypercorn release known to have the race :func:`_make_websocket_refusals_safe`
closes (0.18.0 is the latest at the time of writing)."""


def _make_websocket_refusals_safe() -> None:
    """Close a race in hypercorn that lets one request take the whole server down.

    Bytes that reach a WebSocket stream before the app accepts it (a handshake with a
    body, or a frame sent right behind the handshake) make hypercorn answer 400 from
    its reader task (hypercorn/protocol/ws_stream.py:238-239) while the app may be
    answering the same handshake (an accept, a refusal). Whichever answer comes
    second makes h11 raise LocalProtocolError (protocol/h11.py:248-253) in the reader
    task, which only catches OSError (trio/tcp_server.py:77), so the error ends
    ``trio.serve_listeners`` and the broker. No ASGI app can avoid it: the app cannot
    see those bytes. So ``WSStream`` is wrapped: such bytes mark the stream closed
    before anything is sent (hypercorn then drops what the app sends), answer 400
    only if the app has not started an answer, tell the app the client has gone, and
    close the connection.
    """
    version = importlib.metadata.version("hypercorn").split(".")
    if tuple(int(part) for part in version[:2] if part.isdigit()) > _HYPERCORN_WS_RACE_UNTIL:
        return  # a newer hypercorn: test_websocket.py tells whether it still needs this
    stream_class = ws_stream.WSStream
    handle, app_send = stream_class.handle, stream_class.app_send
    if getattr(handle, "trioq_safe", False):
        return
    answered: weakref.WeakSet[ws_stream.WSStream] = weakref.WeakSet()

    async def safe_app_send(self: ws_stream.WSStream, message: ASGISendEvent | None) -> None:
        # an answer's state changes only after its first write (_send_rejection):
        # note it before, for safe_handle
        if not self.handshake.accepted and (
            message is None or message["type"] != "websocket.http.response.start"
        ):
            answered.add(self)
        await app_send(self, message)

    async def safe_handle(self: ws_stream.WSStream, event: stream_events.Event) -> None:
        if (
            isinstance(event, stream_events.Body | stream_events.Data)
            and not self.closed
            and not self.handshake.accepted
        ):
            self.closed = True
            if self not in answered:
                await self._send_error_response(400)
            if self.app_put is not None:
                await self.app_put({"type": "websocket.disconnect", "code": 1006})
            await self.send(stream_events.StreamClosed(stream_id=self.stream_id))
            return
        await handle(self, event)

    safe_handle.trioq_safe = True  # type: ignore[attr-defined]
    # mypy refuses assigning to a method
    setattr(stream_class, "handle", safe_handle)  # noqa: B010
    setattr(stream_class, "app_send", safe_app_send)  # noqa: B010


def create_app(
    api: BrokerApi,
    *,
    token: str | None = None,
    max_request_bytes: int = 8 * 1024 * 1024,
    metrics_public: bool = False,
    closing: trio.Event | None = None,
) -> QuartTrio:
    """Build the broker's ASGI app over ``api``.

    ``closing``, once set, makes every WebSocket stop reading, finish the calls it
    has in flight and close (1001, going away): the server's graceful shutdown
    would otherwise wait its whole grace period for clients to hang up.
    """
    _make_websocket_refusals_safe()
    app = _BrokerApp("trioq.broker")
    app.drain_budget = 2 * max_request_bytes
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    app.config["BODY_TIMEOUT"] = 30
    app.config["RESPONSE_TIMEOUT"] = None
    app.url_map.converters["job_id"] = _JobIdConverter
    expected = None if token is None else token.encode()
    open_paths = _OPEN_PATHS | ({"/metrics"} if metrics_public else set())

    def check_auth(path: str, header: str | None) -> None:
        if expected is None or path in open_paths:
            return
        # the scheme is case-insensitive (RFC 9110 11.1); the token is not, and is
        # compared in constant time
        scheme, _, credentials = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.encode(), expected):
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")

    @app.before_request
    async def _auth() -> None:
        # answered before the body is read: _BrokerApp keeps the connection usable
        check_auth(request.path, request.headers.get("Authorization"))
        if request.endpoint in _LEADER_ONLY:
            api.assert_leader()

    @app.before_websocket
    async def _ws_auth() -> None:
        check_auth(websocket.path, websocket.headers.get("Authorization"))

    @app.errorhandler(TrioqError)
    async def _trioq_error(exc: TrioqError) -> Response:
        return _error(exc)

    @app.errorhandler(http_exceptions.HTTPException)
    async def _http_error(exc: http_exceptions.HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            return _error(
                PayloadTooLarge(f"the request is over the limit of {max_request_bytes} bytes")
            )
        if status == 404:
            return _error(NotFound(message))
        if isinstance(exc, http_exceptions.MethodNotAllowed):
            response = _error(MethodNotAllowed(message))
            if exc.valid_methods:
                response.headers["Allow"] = ", ".join(exc.valid_methods)
            return response
        # other protocol-level refusals (a body that never arrived: 408) keep their
        # status; what they say is a BrokerProtocolError
        return _json({"_tag": BrokerProtocolError.tag, "message": message}, status)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return _error(InternalError(f"internal error: {exc!r}"))

    async def body(*, allow_empty: bool = False) -> dict[str, Any]:
        data = await request.get_data(cache=False)
        assert isinstance(data, bytes)
        return _decode_body(data, allow_empty=allow_empty)

    # ----------------------------------------------------------------- health

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json(api.health())

    @app.get("/readyz")
    async def readyz() -> Response:
        return _json(api.ready())

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(
            render_metrics(api), content_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.get("/state")
    async def state() -> Response:
        return Response(api.raw_state(), content_type="application/json")

    # ------------------------------------------------------------------- jobs

    @app.post("/v1/jobs")
    async def submit() -> Response:
        return _json(await api.submit(await body()))

    @app.post("/v1/jobs/batch")
    async def submit_batch() -> Response:
        return _json(await api.submit_batch(await body()))

    @app.post("/v1/jobs/claim")
    async def claim() -> Response:
        return _json(await api.claim(await body()))

    @app.post("/v1/jobs/<job_id>/heartbeat")
    async def heartbeat(job_id: str) -> Response:
        await api.heartbeat(job_id, await body())
        return Response(b"", status=204)

    @app.post("/v1/jobs/<job_id>/complete")
    async def complete(job_id: str) -> Response:
        await api.complete(job_id, await body())
        return Response(b"", status=204)

    @app.post("/v1/jobs/<job_id>/fail")
    async def fail(job_id: str) -> Response:
        return _json(await api.fail(job_id, await body()))

    @app.post("/v1/jobs/<job_id>/release")
    async def release(job_id: str) -> Response:
        await api.release(job_id, await body())
        return Response(b"", status=204)

    @app.post("/v1/jobs/<job_id>/cancel")
    async def cancel(job_id: str) -> Response:
        await body(allow_empty=True)
        return _json(await api.cancel(job_id))

    @app.get("/v1/jobs/<job_id:job_id>")
    async def get_job(job_id: str) -> Response:
        return _json(await api.get_job(job_id))

    @app.get("/v1/jobs")
    async def list_jobs() -> Response:
        limit = parse_limit(request.args.get("limit"))
        return _json(await api.list_jobs(limit, request.args.get("cursor")))

    @app.get("/v1/dead")
    async def list_dead() -> Response:
        limit = parse_limit(request.args.get("limit"))
        return _json(await api.list_dead(limit, request.args.get("cursor")))

    @app.post("/v1/dead/<job_id>/requeue")
    async def requeue(job_id: str) -> Response:
        await body(allow_empty=True)
        return _json(await api.requeue(job_id))

    @app.get("/v1/stats")
    async def stats() -> Response:
        return _json(api.stats())

    @app.get("/v1/throttle-stats")
    async def throttle_stats() -> Response:
        return _json(api.throttle_stats())

    # -------------------------------------------------------------- websocket

    methods: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
        "submitJob": api.submit,
        "submitJobs": api.submit_batch,
        "claimJob": lambda p: api.claim({k: v for k, v in p.items() if k != "max"}),
        "claimJobs": lambda p: api.claim({**p, "max": p.get("max", 1)}),
        "heartbeat": lambda p: api.heartbeat(_ws_job_id(p), p),
        "completeJob": lambda p: api.complete(_ws_job_id(p), p),
        "failJob": lambda p: api.fail(_ws_job_id(p), p),
        "releaseJob": lambda p: api.release(_ws_job_id(p), p),
        "cancelJob": lambda p: api.cancel(_ws_job_id(p)),
        "getJob": lambda p: api.get_job(_ws_job_id(p)),
        "getStats": _sync(lambda p: api.stats()),
        "listJobs": lambda p: api.list_jobs(
            parse_limit(_opt_str(p, "limit")), _opt_str(p, "cursor")
        ),
        "listDead": lambda p: api.list_dead(
            parse_limit(_opt_str(p, "limit")), _opt_str(p, "cursor")
        ),
        "requeueDead": lambda p: api.requeue(_ws_job_id(p)),
    }

    async def handle_message(raw: str | bytes, send_lock: trio.Lock, slots: trio.Semaphore) -> None:
        request_id: Any = None
        try:
            try:
                if len(raw) > max_request_bytes:
                    raise PayloadTooLarge(f"message over the limit of {max_request_bytes} bytes")
                message = _loads(raw)
            except orjson.JSONDecodeError as exc:
                raise BrokerProtocolError(f"malformed JSON: {exc}") from None
            if not isinstance(message, dict):
                raise BrokerProtocolError("a message must be {id, method, params}")
            request_id = message.get("id")
            if request_id is not None and (
                isinstance(request_id, bool) or not isinstance(request_id, str | int | float)
            ):
                request_id = None
                raise BrokerProtocolError("id must be a string, a number or null")
            method = message.get("method")
            params = message.get("params")
            if params is None:
                params = {}
            if not isinstance(method, str) or method not in methods:
                raise BrokerProtocolError(f"unknown method {method!r}")
            if not isinstance(params, dict):
                raise BrokerProtocolError("params must be an object")
            result = await methods[method](params)
            reply: dict[str, Any] = {"id": request_id, "ok": True, "result": result}
        except TrioqError as exc:
            reply = {"id": request_id, "ok": False, "error": exc.to_body()}
        except Exception as exc:
            log.exception("unexpected error in a WebSocket call")
            error = InternalError(f"internal error: {exc!r}")
            reply = {"id": request_id, "ok": False, "error": error.to_body()}
        finally:
            slots.release()
        async with send_lock:
            await websocket.send(orjson.dumps(reply).decode())

    async def stop_reading_when_closing(reading: trio.CancelScope) -> None:
        assert closing is not None
        await closing.wait()
        reading.cancel()

    @app.websocket("/v1/ws")
    async def ws() -> None:
        await websocket.accept()
        send_lock = trio.Lock()
        slots = trio.Semaphore(WS_MAX_IN_FLIGHT)
        async with trio.open_nursery() as calls:
            with trio.CancelScope() as reading:
                if closing is not None:
                    calls.start_soon(stop_reading_when_closing, reading)
                while True:
                    raw = await websocket.receive()
                    await slots.acquire()
                    calls.start_soon(handle_message, raw, send_lock, slots)
            # the broker is closing: the calls in flight finish (the nursery waits)
        await websocket.close(1001, "the broker is shutting down")

    return app


def _ws_job_id(params: dict[str, Any]) -> str:
    job_id = params.get("jobId")
    if not isinstance(job_id, str):
        raise BrokerProtocolError("jobId is required")
    return job_id


def _opt_str(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    return None if value is None else str(value)


def _sync(fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    async def call(params: dict[str, Any]) -> Any:
        return fn(params)

    return call
