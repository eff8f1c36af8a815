"""The broker's HTTP face: a quart-trio app over :class:`~trioq.broker._api.BrokerApi`.

:func:`create_app` assembles it from the parts, each in a module of its own:

- :mod:`~trioq.broker._routes`: the REST route table and its handlers;
- :mod:`~trioq.broker._websocket`: the WebSocket endpoint and its method table;
- :mod:`~trioq.broker._openapi`: ``/openapi.json``, generated from both tables;
- :mod:`~trioq.broker._connections`: the app class that keeps keep-alive
  connections usable after early answers, and the hypercorn WebSocket patch;
- :mod:`~trioq.broker._json`: JSON decoding with the exact-integer check;
- :mod:`trioq._wire`: the schema every request is validated with.

Here: auth, the standby's ``NotLeader`` before any leader-only route looks at its
request, and the translation of every error into a ``{"_tag", "message"}`` body.

The app owns no background task: the engine's commit loop belongs to the broker's
nursery (or a test's), so the app can also be driven in-process, without a
lifespan, through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Callable

import orjson
import trio
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
from ._api import BrokerApi
from ._connections import BrokerApp, make_websocket_refusals_safe
from ._openapi import build_openapi
from ._routes import ROUTES, RestHandlers, error_response, json_response
from ._websocket import WebSocketEndpoint

log = logging.getLogger("trioq.http")

_CheckAuth = Callable[[str, str | None], None]

_PUBLIC_PATHS = frozenset(route.path for route in ROUTES if route.public)
_LEADER_ONLY = frozenset(route.name for route in ROUTES if route.leader_only)
"""Endpoints only the leader serves: a standby answers them with NotLeader before it
looks at the request, whatever the request holds."""


class _JobIdConverter(BaseConverter):
    """A job id in ``GET /v1/jobs/<job_id>``: any segment but the names of the
    POST-only routes beside it, so that ``GET /v1/jobs/claim`` is a 405 from the
    router instead of a lookup of a job called "claim"."""

    regex = r"(?!(?:claim|batch|bulk|exchange)\Z)[^/]+"


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
    make_websocket_refusals_safe()
    app = BrokerApp("trioq.broker")
    app.drain_budget = 2 * max_request_bytes
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    app.config["BODY_TIMEOUT"] = 30
    app.config["RESPONSE_TIMEOUT"] = None
    app.url_map.converters["job_id"] = _JobIdConverter
    public = _PUBLIC_PATHS | ({"/metrics"} if metrics_public else set())
    _guard(app, api, _token_check(token, public))
    _handle_errors(app, max_request_bytes)
    handlers = RestHandlers(api, functools.cache(_openapi_bytes))
    for route in ROUTES:
        app.add_url_rule(route.path, route.name, handlers.handler(route), methods=[route.method])
    endpoint = WebSocketEndpoint(api, max_request_bytes=max_request_bytes, closing=closing)
    app.add_websocket("/v1/ws", "ws", endpoint.serve)
    return app


def _openapi_bytes() -> bytes:
    from .. import __version__

    return orjson.dumps(build_openapi(__version__))


def _token_check(token: str | None, public: frozenset[str]) -> _CheckAuth:
    expected = None if token is None else token.encode()

    def check(path: str, header: str | None) -> None:
        if expected is None or path in public:
            return
        # the scheme is case-insensitive (RFC 9110 11.1); the token is not, and is
        # compared in constant time
        scheme, _, credentials = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.encode(), expected):
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")

    return check


def _guard(app: QuartTrio, api: BrokerApi, check_auth: _CheckAuth) -> None:
    @app.before_request
    async def _auth() -> None:
        # answered before the body is read: BrokerApp keeps the connection usable
        check_auth(request.path, request.headers.get("Authorization"))
        if request.endpoint in _LEADER_ONLY:
            api.assert_leader()

    @app.before_websocket
    async def _ws_auth() -> None:
        check_auth(websocket.path, websocket.headers.get("Authorization"))


def _handle_errors(app: QuartTrio, max_request_bytes: int) -> None:
    @app.errorhandler(TrioqError)
    async def _trioq_error(exc: TrioqError) -> Response:
        return error_response(exc)

    @app.errorhandler(http_exceptions.HTTPException)
    async def _http_error(exc: http_exceptions.HTTPException) -> Response:
        return _http_exception(exc, max_request_bytes)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(InternalError(f"internal error: {exc!r}"))


def _http_exception(exc: http_exceptions.HTTPException, max_request_bytes: int) -> Response:
    status = exc.code or 500
    message = exc.description or exc.name
    if status == 413:
        return error_response(
            PayloadTooLarge(f"the request is over the limit of {max_request_bytes} bytes")
        )
    if status == 404:
        return error_response(NotFound(message))
    if isinstance(exc, http_exceptions.MethodNotAllowed):
        response = error_response(MethodNotAllowed(message))
        if exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response
    # other protocol-level refusals (a body that never arrived: 408) keep their
    # status; what they say is a BrokerProtocolError
    return json_response({"_tag": BrokerProtocolError.tag, "message": message}, status)
