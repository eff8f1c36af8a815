"""The broker's HTTP face: a quart-trio app over :class:`~trioq._api.BrokerApi`.

The app owns no background task: the engine's commit loop belongs to the broker's
nursery (or a test's), so the app can also be driven in-process, without a
lifespan, through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio
from quart import Response, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ._api import BrokerApi, parse_limit
from ._errors import BrokerProtocolError, PayloadTooLarge, TrioqError, Unauthorized
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


def _decode_body(data: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    if not data.strip():
        if allow_empty:
            return {}
        raise BrokerProtocolError("the request body must be a JSON object")
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BrokerProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BrokerProtocolError("the request body must be a JSON object")
    return body


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
    app = QuartTrio("trioq.broker")
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    app.config["BODY_TIMEOUT"] = 30
    app.config["RESPONSE_TIMEOUT"] = None
    expected = None if token is None else f"Bearer {token}".encode()
    open_paths = _OPEN_PATHS | ({"/metrics"} if metrics_public else set())

    def check_auth(path: str, header: str | None) -> None:
        if expected is None or path in open_paths:
            return
        if header is None or not hmac.compare_digest(header.encode(), expected):
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")

    @app.before_request
    async def _auth() -> None:
        try:
            check_auth(request.path, request.headers.get("Authorization"))
            if request.endpoint in _LEADER_ONLY:
                api.assert_leader()
        except TrioqError:
            # read the body before answering early: a request body left unread on a
            # keep-alive connection can stall the next request on it (hypercorn)
            await request.get_data(cache=False)
            raise

    @app.before_websocket
    async def _ws_auth() -> None:
        check_auth(websocket.path, websocket.headers.get("Authorization"))

    @app.errorhandler(TrioqError)
    async def _trioq_error(exc: TrioqError) -> Response:
        return _error(exc)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            return _error(
                PayloadTooLarge(f"the request is over the limit of {max_request_bytes} bytes")
            )
        tag = {404: "NotFound", 405: "MethodNotAllowed"}.get(status, "BrokerProtocolError")
        return _json({"_tag": tag, "message": exc.description or exc.name}, status)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return _json({"_tag": "InternalError", "message": f"internal error: {exc!r}"}, 500)

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

    @app.get("/v1/jobs/<job_id>")
    async def get_job(job_id: str) -> Response:
        return _json(api.get_job(job_id))

    @app.get("/v1/jobs")
    async def list_jobs() -> Response:
        limit = parse_limit(request.args.get("limit"))
        return _json(api.list_jobs(limit, request.args.get("cursor")))

    @app.get("/v1/dead")
    async def list_dead() -> Response:
        limit = parse_limit(request.args.get("limit"))
        return _json(api.list_dead(limit, request.args.get("cursor")))

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
        "getJob": _sync(lambda p: api.get_job(_ws_job_id(p))),
        "getStats": _sync(lambda p: api.stats()),
        "listJobs": _sync(
            lambda p: api.list_jobs(parse_limit(_opt_str(p, "limit")), _opt_str(p, "cursor"))
        ),
        "listDead": _sync(
            lambda p: api.list_dead(parse_limit(_opt_str(p, "limit")), _opt_str(p, "cursor"))
        ),
        "requeueDead": lambda p: api.requeue(_ws_job_id(p)),
    }

    async def handle_message(raw: str | bytes, send_lock: trio.Lock, slots: trio.Semaphore) -> None:
        request_id: Any = None
        try:
            try:
                if len(raw) > max_request_bytes:
                    raise PayloadTooLarge(f"message over the limit of {max_request_bytes} bytes")
                message = orjson.loads(raw)
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
            reply = {
                "id": request_id,
                "ok": False,
                "error": {"_tag": "InternalError", "message": f"internal error: {exc!r}"},
            }
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
