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

Pushes: ``subscribeStats`` (the scopes of ``getStats``) makes the broker push
``{"event": "stats", "data": <getStats' result>}`` (or ``"error"`` instead of
``"data"``: a standby's ``NotLeader``) after each commit that landed and changed the
stats, at most :data:`STATS_MAX_PER_SECOND` a second, and at least every
:data:`STATS_EVERY` seconds; ``unsubscribeStats`` stops it. A push has no ``id``
(every reply has one, null included), so no client mistakes it for a reply; only a
connection that subscribed gets any. The pushing task runs in the connection's nursery
(:class:`_Connection`): it ends with the connection, or at the broker's close, when
reading stops. These two methods belong to a connection, not to the API: they are
not in :data:`METHODS` (nor the OpenAPI document's table); docs/http-api.md lists them.
"""

from __future__ import annotations

import logging
import math
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
    CompleteCall,
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
from ..core._engine import Engine
from ._api import BrokerApi
from ._dashboard import accepted_subprotocol, websocket_authorization
from ._json import decode_object
from ._routes import ADMIN, ANY_SCOPE, PRODUCER, WORKER

log = logging.getLogger("trioq.http")

WS_MAX_IN_FLIGHT = 64
"""Calls one connection may have in flight; the next message waits for a slot."""

STATS_MAX_PER_SECOND = 4
"""Bound on the stats pushes one subscribed connection gets in a second."""

STATS_EVERY = 2.0
"""Seconds after which a subscriber gets the stats even if no commit changed them
(a dashboard's rates stay live; a standby's ``NotLeader`` is repeated)."""


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
    Method("completeJob", "as POST /v1/jobs/{id}/complete", partial(parse, CompleteCall),
           lambda api, p: api.complete(p.job_id, p), CompleteCall, None, scopes=WORKER),
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
        self.feed = CommitFeed(api.engine)
        """What wakes the stats pushers of every connection."""
        self.stats_max_per_second: float = STATS_MAX_PER_SECOND
        self.stats_every: float = STATS_EVERY

    async def serve(self) -> None:
        """Accept, then answer messages until the client goes or the broker closes."""
        scope = Scope.ADMIN
        if self.authorize is not None:
            # the handshake was checked already (before_websocket); this learns the
            # scope every call of the connection is checked against
            scope = self.authorize(websocket_authorization())
        await websocket.accept(subprotocol=accepted_subprotocol())
        slots = trio.Semaphore(WS_MAX_IN_FLIGHT)
        async with trio.open_nursery() as calls:
            connection = _Connection(self, calls)
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
                    calls.start_soon(self._answer, raw, connection, slots, scope)
            # the broker is closing: pushes stop, the calls in flight finish (the
            # nursery waits)
            connection.close()
        await websocket.close(1001, "the broker is shutting down")

    async def _stop_reading_when_closing(self, reading: trio.CancelScope) -> None:
        assert self.closing is not None
        await self.closing.wait()
        reading.cancel()

    async def _answer(
        self, raw: str | bytes, connection: _Connection, slots: trio.Semaphore, scope: Scope
    ) -> None:
        try:
            reply, pushes = await self._reply(raw, scope, connection)
        finally:
            slots.release()
        await connection.send(reply)
        if pushes is not None:
            connection.start_pushing(pushes)  # after the reply: it comes first

    async def reply(self, raw: str | bytes, *, scope: Scope) -> dict[str, Any]:
        """The reply to one message from a connection whose token has ``scope``,
        errors included (without a connection, the subscriptions are unknown)."""
        reply, _ = await self._reply(raw, scope, None)
        return reply

    async def _reply(
        self, raw: str | bytes, scope: Scope, connection: _Connection | None
    ) -> tuple[dict[str, Any], trio.CancelScope | None]:
        """The reply, and the cancel scope of the pushes to start once it is sent (a
        subscribe that started a subscription), or None."""
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
            if method is None and connection is not None and envelope.method in SUBSCRIPTIONS:
                if scope not in STATS_SCOPES:
                    raise Forbidden(forbidden_message(scope, envelope.method))
                if envelope.method == "subscribeStats":
                    answer, pushes = connection.subscribe()
                    return {"id": request_id, "ok": True, "result": answer}, pushes
                return {"id": request_id, "ok": True, "result": connection.unsubscribe()}, None
            if method is None:
                raise BrokerProtocolError(f"unknown method {envelope.method!r}")
            if scope not in method.scopes:
                raise Forbidden(forbidden_message(scope, envelope.method))
            params = method.read(envelope.params or {})
            result = await method.call(self.api, params)
            return {"id": request_id, "ok": True, "result": result}, None
        except TrioqError as exc:
            return {"id": request_id, "ok": False, "error": exc.to_body()}, None
        except Exception as exc:
            log.exception("unexpected error in a WebSocket call")
            error = InternalError(f"internal error: {exc!r}")
            return {"id": request_id, "ok": False, "error": error.to_body()}, None


SUBSCRIPTIONS = frozenset({"subscribeStats", "unsubscribeStats"})
"""The methods of a connection rather than of the API (see the module's doc)."""

STATS_SCOPES = _BY_NAME["getStats"].scopes
"""Who may subscribe to the stats: whoever may read them."""


class CommitFeed:
    """Wakes the stats pushers of one broker after each commit that landed.

    It chains itself onto the engine's ``observe_commit`` hook (keeping the observer
    that was there: the broker's metrics) when the first subscriber comes; until
    then nothing is added to a commit. :attr:`pushers` counts the pushing tasks
    that run, for tests.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.commits = 0
        """Commits that landed since :meth:`attach` (a subscriber's bookmark)."""
        self.pushers = 0
        self._landed = trio.Event()
        self._observer: Callable[[int, int, dict[tuple[str, str], int]], None] | None = None

    def attach(self) -> None:
        """Observe the engine's commits (once; again if the hook was replaced)."""
        engine = self.engine
        if self._observer is not None and engine.observe_commit is self._observer:
            return
        previous = engine.observe_commit

        def observe(size: int, written: int, events: dict[tuple[str, str], int]) -> None:
            if previous is not None:
                previous(size, written, events)
            self.commits += 1
            self._landed.set()
            self._landed = trio.Event()

        self._observer = observe
        engine.observe_commit = observe

    async def wait_beyond(self, seen: int) -> None:
        """Return once a commit landed after the one :attr:`commits` was ``seen`` at."""
        while self.commits == seen:
            await self._landed.wait()


def stats_event(api: BrokerApi) -> dict[str, Any]:
    """A stats push: ``{"event": "stats", "data"}``, or ``"error"`` (``NotLeader``)."""
    try:
        return {"event": "stats", "data": api.stats()}
    except TrioqError as exc:
        return {"event": "stats", "error": exc.to_body()}


async def push_stats(
    api: BrokerApi,
    feed: CommitFeed,
    send: Callable[[dict[str, Any]], Awaitable[None]],
    *,
    max_per_second: float = STATS_MAX_PER_SECOND,
    every: float = STATS_EVERY,
) -> None:
    """Send the stats now, then after each commit that changed them (coalesced: the
    starts of two sends are at least ``1 / max_per_second`` apart) and at least every
    ``every`` seconds; until cancelled."""
    feed.attach()
    gap = 1 / max_per_second
    feed.pushers += 1
    try:
        last_at = -math.inf
        last: dict[str, Any] | None = None
        seen = feed.commits
        while True:
            if last is not None:
                with trio.move_on_at(last_at + every):
                    await feed.wait_beyond(seen)
                await trio.sleep_until(last_at + gap)  # commits meanwhile: one push
            seen = feed.commits
            event = stats_event(api)
            now = trio.current_time()
            if event == last and now < last_at + every:
                continue  # a commit that changed no count (a lease refresh, a heartbeat)
            last_at, last = now, event
            await send(event)
    finally:
        feed.pushers -= 1


class _Connection:
    """One WebSocket connection's sending side and its subscription: its pushing
    task runs in the connection's nursery, in a cancel scope of its own (stopped by
    ``unsubscribeStats``, at the broker's close, or with the connection)."""

    def __init__(self, endpoint: WebSocketEndpoint, nursery: trio.Nursery) -> None:
        self.endpoint = endpoint
        self.nursery = nursery
        self.send_lock = trio.Lock()
        self.stats: trio.CancelScope | None = None
        """The pushes' cancel scope while subscribed."""
        self._closed = False

    async def send(self, message: dict[str, Any]) -> None:
        async with self.send_lock:
            await websocket.send(orjson.dumps(message).decode())

    def subscribe(self) -> tuple[dict[str, Any], trio.CancelScope | None]:
        """Subscribe: the answer, and the scope of the pushes to start once it is
        sent (:meth:`start_pushing`); None if already subscribed (nothing changes)."""
        pushes = None
        if self.stats is None and not self._closed:
            self.stats = pushes = trio.CancelScope()
        answer = {
            "subscribed": True,
            "event": "stats",
            "maxPerSecond": self.endpoint.stats_max_per_second,
            "everyMs": round(self.endpoint.stats_every * 1000),
        }
        return answer, pushes

    def unsubscribe(self) -> dict[str, Any]:
        if self.stats is not None:
            self.stats.cancel()
        self.stats = None
        return {"subscribed": False}

    def start_pushing(self, pushes: trio.CancelScope) -> None:
        """The subscribe's reply was sent: push (unless it was unsubscribed since)."""
        if pushes is self.stats and not self._closed:
            self.nursery.start_soon(self._push, pushes)

    async def _push(self, pushes: trio.CancelScope) -> None:
        endpoint = self.endpoint
        with pushes:
            await push_stats(
                endpoint.api,
                endpoint.feed,
                self.send,
                max_per_second=endpoint.stats_max_per_second,
                every=endpoint.stats_every,
            )

    def close(self) -> None:
        """Reading stopped: stop pushing, start nothing more."""
        self._closed = True
        self.unsubscribe()


def forbidden_message(scope: Scope, what: str) -> str:
    """What a ``Forbidden`` answer says (the same over REST and the WebSocket)."""
    return f"a {scope} token may not call {what} (see docs/security.md)"


def _echoed_id(value: object) -> Any:
    """The request's id as its answer echoes it: a string, a number or null (a
    message with any other id is refused, and answered with null)."""
    if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return value
