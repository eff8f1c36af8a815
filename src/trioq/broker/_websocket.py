"""The WebSocket endpoint (``/v1/ws``): JSON-RPC ``{id, method, params}`` messages,
answered by ``{id, ok, result}`` or ``{id, ok: false, error}``.

The methods are tabled in :data:`METHODS` (``/openapi.json`` lists them too): each
parses its params with the wire schema (:mod:`trioq._wire`) and calls the
:class:`~trioq.broker._api.BrokerApi` operation its REST twin calls. The handshake
takes any valid token; each call is then checked against the token's scope (a method
its scope does not allow is answered with a ``Forbidden`` error, and the connection
stays open).

Calls on one connection run concurrently, up to :data:`WS_MAX_IN_FLIGHT`: a nursery
per connection holds them, and a long-poll claim does not hold up the calls behind
it. When the broker closes, the socket stops reading, finishes the calls it has in
flight and closes with 1001 (going away).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
import trio
from quart import websocket

from .._errors import BrokerProtocolError, Forbidden, InternalError, PayloadTooLarge, TrioqError
from .._tokens import Scope
from .._wire import (
    BatchAnswer,
    BulkAnswer,
    ClaimedJob,
    ClaimMany,
    ClaimRequest,
    DeadPage,
    EmptyClaim,
    ExchangeAnswer,
    ExchangeRequest,
    FailAnswer,
    FailCall,
    HeldJobCall,
    JobRef,
    JobsPage,
    JobStatus,
    JobView,
    ListQuery,
    NewJob,
    RpcRequest,
    Stats,
    SubmitAnswer,
    SubmitBatch,
    SubmitBulk,
    parse,
    parse_batch,
    parse_bulk,
    parse_exchange,
    parse_new_job,
)
from ._api import BrokerApi
from ._dashboard import accepted_subprotocol, websocket_authorization
from ._json import decode_object
from ._routes import ADMIN, ANY_SCOPE, PRODUCER, WORKER

log = logging.getLogger("trioq.http")

WS_MAX_IN_FLIGHT = 64
"""Calls one connection may have in flight; the next message waits for a slot."""


@dataclass(frozen=True, slots=True)
class Method:
    """One WebSocket method: how its params are read and which operation it calls.

    ``params`` and ``result`` are schemas, for ``/openapi.json`` (``None``: none).
    ``scopes``: the scopes whose tokens may call it, those of its REST twin (not
    declared: admin only).
    """

    name: str
    summary: str
    read: Callable[[dict[str, Any]], Any]
    call: Callable[[BrokerApi, Any], Awaitable[Any]]
    params: Any
    result: Any
    scopes: frozenset[Scope] = ADMIN


async def _stats(api: BrokerApi, _: None) -> dict[str, Any]:
    return api.stats()


def _nothing(params: dict[str, Any]) -> None:
    return None


METHODS: tuple[Method, ...] = (
    Method("submitJob", "as POST /v1/jobs", parse_new_job,
           BrokerApi.submit, NewJob, SubmitAnswer, scopes=PRODUCER),
    Method("submitJobs", "as POST /v1/jobs/batch", parse_batch,
           BrokerApi.submit_batch, SubmitBatch, BatchAnswer, scopes=PRODUCER),
    Method("submitBulk", "as POST /v1/jobs/bulk", parse_bulk,
           BrokerApi.submit_bulk, SubmitBulk, BulkAnswer, scopes=PRODUCER),
    Method("claimJob", "osqueue's claim: one job or {} (max is ignored)",
           partial(parse, ClaimRequest), partial(BrokerApi.claim, many=False),
           ClaimRequest, ClaimedJob | EmptyClaim, scopes=WORKER),
    Method("claimJobs", "claim up to max jobs (default 1)",
           partial(parse, ClaimRequest), partial(BrokerApi.claim, many=True),
           ClaimRequest, ClaimMany, scopes=WORKER),
    Method("exchange", "as POST /v1/jobs/exchange", parse_exchange,
           BrokerApi.exchange, ExchangeRequest, ExchangeAnswer, scopes=WORKER),
    Method("heartbeat", "as POST /v1/jobs/{id}/heartbeat", partial(parse, HeldJobCall),
           lambda api, p: api.heartbeat(p.job_id, p), HeldJobCall, None, scopes=WORKER),
    Method("completeJob", "as POST /v1/jobs/{id}/complete", partial(parse, HeldJobCall),
           lambda api, p: api.complete(p.job_id, p), HeldJobCall, None, scopes=WORKER),
    Method("failJob", "as POST /v1/jobs/{id}/fail", partial(parse, FailCall),
           lambda api, p: api.fail(p.job_id, p), FailCall, FailAnswer, scopes=WORKER),
    Method("releaseJob", "as POST /v1/jobs/{id}/release", partial(parse, HeldJobCall),
           lambda api, p: api.release(p.job_id, p), HeldJobCall, None, scopes=WORKER),
    Method("cancelJob", "as POST /v1/jobs/{id}/cancel", partial(parse, JobRef),
           lambda api, p: api.cancel(p.job_id), JobRef, JobStatus, scopes=ADMIN),
    Method("getJob", "as GET /v1/jobs/{id}", partial(parse, JobRef),
           lambda api, p: api.get_job(p.job_id), JobRef, JobView, scopes=ANY_SCOPE),
    Method("getStats", "as GET /v1/stats", _nothing, _stats, None, Stats, scopes=WORKER),
    Method("listJobs", "as GET /v1/jobs", partial(parse, ListQuery),
           BrokerApi.list_jobs, ListQuery, JobsPage, scopes=ADMIN),
    Method("listDead", "as GET /v1/dead", partial(parse, ListQuery),
           BrokerApi.list_dead, ListQuery, DeadPage, scopes=ADMIN),
    Method("requeueDead", "as POST /v1/dead/{id}/requeue", partial(parse, JobRef),
           lambda api, p: api.requeue(p.job_id), JobRef, JobStatus, scopes=ADMIN),
)  # fmt: skip
"""Every WebSocket method."""

_BY_NAME = {method.name: method for method in METHODS}


class WebSocketEndpoint:
    """The ``/v1/ws`` handler over ``api``: :meth:`serve` runs one connection.

    ``authorize`` maps the handshake's ``Authorization`` header (or a browser's bearer
    subprotocol, :func:`~trioq.broker._dashboard.websocket_authorization`) to the
    token's scope (raising ``Unauthorized``); None: auth is off, every call is allowed.
    """

    def __init__(
        self,
        api: BrokerApi,
        *,
        max_request_bytes: int,
        closing: trio.Event | None,
        authorize: Callable[[str | None], Scope] | None = None,
    ) -> None:
        self.api = api
        self.max_request_bytes = max_request_bytes
        self.closing = closing
        self.authorize = authorize

    async def serve(self) -> None:
        """Accept, then answer messages until the client goes or the broker closes."""
        scope = Scope.ADMIN
        if self.authorize is not None:
            # the handshake was checked already (before_websocket); this learns the
            # scope every call of the connection is checked against
            scope = self.authorize(websocket_authorization())
        await websocket.accept(subprotocol=accepted_subprotocol())
        send_lock = trio.Lock()
        slots = trio.Semaphore(WS_MAX_IN_FLIGHT)
        async with trio.open_nursery() as calls:
            with trio.CancelScope() as reading:
                if self.closing is not None:
                    calls.start_soon(self._stop_reading_when_closing, reading)
                while True:
                    # quart reads a frame as ``bytes or text``: an empty binary frame
                    # comes out as None (hypercorn sets text None), so say b"" instead
                    raw: str | bytes | None = await websocket.receive()
                    if raw is None:
                        raw = b""
                    await slots.acquire()
                    calls.start_soon(self._answer, raw, send_lock, slots, scope)
            # the broker is closing: the calls in flight finish (the nursery waits)
        await websocket.close(1001, "the broker is shutting down")

    async def _stop_reading_when_closing(self, reading: trio.CancelScope) -> None:
        assert self.closing is not None
        await self.closing.wait()
        reading.cancel()

    async def _answer(
        self, raw: str | bytes, send_lock: trio.Lock, slots: trio.Semaphore, scope: Scope
    ) -> None:
        try:
            reply = await self.reply(raw, scope=scope)
        finally:
            slots.release()
        async with send_lock:
            await websocket.send(orjson.dumps(reply).decode())

    async def reply(self, raw: str | bytes, *, scope: Scope) -> dict[str, Any]:
        """The reply to one message from a connection whose token has ``scope``,
        errors included."""
        request_id: Any = None
        try:
            if len(raw) > self.max_request_bytes:
                raise PayloadTooLarge(f"message over the limit of {self.max_request_bytes} bytes")
            message = decode_object(raw, what="a message {id, method, params}")
            request_id = _echoed_id(message.get("id"))
            if request_id is None and message.get("id") is not None:
                raise BrokerProtocolError("id must be a string, a number or null")
            envelope = parse(RpcRequest, message)
            method = _BY_NAME.get(envelope.method)
            if method is None:
                raise BrokerProtocolError(f"unknown method {envelope.method!r}")
            if scope not in method.scopes:
                raise Forbidden(forbidden_message(scope, envelope.method))
            params = method.read(envelope.params or {})
            result = await method.call(self.api, params)
            return {"id": request_id, "ok": True, "result": result}
        except TrioqError as exc:
            return {"id": request_id, "ok": False, "error": exc.to_body()}
        except Exception as exc:
            log.exception("unexpected error in a WebSocket call")
            error = InternalError(f"internal error: {exc!r}")
            return {"id": request_id, "ok": False, "error": error.to_body()}


def forbidden_message(scope: Scope, what: str) -> str:
    """What a ``Forbidden`` answer says (the same over REST and the WebSocket)."""
    return f"a {scope} token may not call {what} (see docs/security.md)"


def _echoed_id(value: object) -> Any:
    """The request's id as its answer echoes it: a string, a number or null (a
    message with any other id is refused, and answered with null)."""
    if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return value
