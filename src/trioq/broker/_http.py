"""The broker's HTTP face: a quart-trio app over :class:`~trioq.broker._api.BrokerApi`.

:func:`create_app` assembles it from the parts, each in a module of its own:

- :mod:`~trioq.broker._routes`: the REST route table and its handlers;
- :mod:`~trioq.broker._websocket`: the WebSocket endpoint and its method table;
- :mod:`~trioq.broker._connect`: osqueue's Connect service (``/osqueue.v1.QueueService/``),
  which answers its own refusals in Connect's shape;
- :mod:`~trioq.broker._openapi`: ``/openapi.json``, generated from both tables;
- :mod:`~trioq.broker._connections`: the app class that keeps keep-alive
  connections usable after early answers, and the hypercorn WebSocket patch;
- :mod:`~trioq.broker._json`: JSON decoding with the exact-integer check;
- :mod:`~trioq.broker._dashboard`: the web dashboard's static files (``/``, no
  token) and the WebSocket bearer subprotocol a browser authenticates with;
- :mod:`trioq._wire`: the schema every request is validated with.

Here: auth (a bearer token, then its scope against the route's: 401
``Unauthorized``, then 403 ``Forbidden``), the standby's ``NotLeader`` before any
leader-only route looks at its request, and the translation of every error into a
``{"_tag", "message"}`` body.

The app owns no background task: the engine's commit loop belongs to the broker's
nursery (or a test's), so the app can also be driven in-process, without a
lifespan, through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import orjson
import trio
from pydantic import SecretStr
from quart import Response, request, websocket
from quart_trio import QuartTrio
from werkzeug import exceptions as http_exceptions
from werkzeug.routing import BaseConverter

from .. import _connect
from .._errors import (
    BrokerProtocolError,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    TrioqError,
    Unauthorized,
)
from .._tokens import Scope, TokenTable, secret_value
from . import _dashboard
from ._api import BrokerApi
from ._connect import ENDPOINT as CONNECT_ENDPOINT
from ._connect import ConnectEndpoint
from ._connections import BrokerApp, make_websocket_refusals_safe
from ._openapi import build_openapi
from ._routes import ROUTES, RestHandlers, error_response, json_response
from ._websocket import WebSocketEndpoint, forbidden_message

log = logging.getLogger("trioq.http")

_PUBLIC_PATHS = frozenset(route.path for route in ROUTES if route.public)
_SCOPES = {route.name: route.scopes for route in ROUTES}
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
    token: str | SecretStr | None = None,
    tokens: TokenTable | Callable[[], TokenTable] | None = None,
    max_request_bytes: int = 8 * 1024 * 1024,
    metrics_public: bool = False,
    closing: trio.Event | None = None,
) -> QuartTrio:
    """Build the broker's ASGI app over ``api``.

    Auth: ``token`` is one admin token; ``tokens`` every token by scope, or a
    function that gives the current table (asked on every request, so a reload takes
    effect at once). Neither: auth is off and every caller is admin.

    ``closing``, once set, makes every WebSocket stop reading, finish the calls it
    has in flight and close (1001, going away): the server's graceful shutdown
    would otherwise wait its whole grace period for clients to hang up.
    """
    make_websocket_refusals_safe()
    # no folder of static files: the app's static files are the dashboard's
    # (_dashboard.register), served from memory under the same endpoint name
    app = BrokerApp("trioq.broker", static_folder=None)
    app.drain_budget = 2 * max_request_bytes
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    app.config["BODY_TIMEOUT"] = 30
    app.config["RESPONSE_TIMEOUT"] = None
    app.url_map.converters["job_id"] = _JobIdConverter
    public = _PUBLIC_PATHS | _dashboard.PATHS | ({"/metrics"} if metrics_public else set())
    auth = _Auth(_token_source(token, tokens), frozenset(public))
    _guard(app, api, auth)
    _handle_errors(app, max_request_bytes)
    handlers = RestHandlers(api, functools.cache(_openapi_bytes))
    for route in ROUTES:
        app.add_url_rule(route.path, route.name, handlers.handler(route), methods=[route.method])
    endpoint = WebSocketEndpoint(
        api, max_request_bytes=max_request_bytes, closing=closing, authorize=auth.scope
    )
    app.add_websocket("/v1/ws", "ws", endpoint.serve)
    connect = ConnectEndpoint(api, authorize=auth.scope, max_request_bytes=max_request_bytes)
    app.add_url_rule(
        f"{_connect.PATH_PREFIX}<method>",
        CONNECT_ENDPOINT,
        connect.serve,
        # every method: the view refuses what is not a POST in Connect's shape
        methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
    )
    _dashboard.register(app)
    return app


def _openapi_bytes() -> bytes:
    from .. import __version__

    return orjson.dumps(build_openapi(__version__))


def _token_source(
    token: str | SecretStr | None, tokens: TokenTable | Callable[[], TokenTable] | None
) -> Callable[[], TokenTable]:
    """One way to ask for the current token table, whichever way it was given."""
    if callable(tokens):
        return tokens
    table = tokens if tokens is not None else TokenTable()
    plain = secret_value(token)
    if plain is not None:
        given = {scope: [t.decode() for t, s in table.tokens if s is scope] for scope in Scope}
        given[Scope.ADMIN].append(plain)
        table = TokenTable.build(given)
    return lambda: table


class _Auth:
    """Who is calling: the scope of the request's bearer token."""

    def __init__(self, tokens: Callable[[], TokenTable], public: frozenset[str]) -> None:
        self.tokens = tokens
        self.public = public

    def scope(self, header: str | None) -> Scope:
        """The scope of the token in an ``Authorization`` header; admin when auth
        is off. Raises :class:`Unauthorized` (the message never echoes the header)."""
        table = self.tokens()
        if not table:
            return Scope.ADMIN
        # the scheme is case-insensitive (RFC 9110 11.1); the token is not, and is
        # compared in constant time with every token
        scheme, _, credentials = (header or "").partition(" ")
        scope = table.scope_of(credentials.encode()) if scheme.lower() == "bearer" else None
        if scope is None:
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")
        return scope

    def check(self, path: str, endpoint: str | None, header: str | None) -> None:
        """Raise :class:`Unauthorized` or :class:`Forbidden` unless the request may
        go on. A path no route serves (``endpoint`` None) needs a valid token of any
        scope, and is then answered 404 or 405 by the router."""
        if path in self.public:
            return
        scope = self.scope(header)
        allowed = _SCOPES.get(endpoint or "")
        if allowed is not None and scope not in allowed:
            raise Forbidden(forbidden_message(scope, f"{request.method} {path}"))


def _guard(app: QuartTrio, api: BrokerApi, auth: _Auth) -> None:
    @app.before_request
    async def _auth() -> None:
        if request.endpoint == CONNECT_ENDPOINT:
            return  # the Connect view checks the same, answering in Connect's shape
        # answered before the body is read: BrokerApp keeps the connection usable
        auth.check(request.path, request.endpoint, request.headers.get("Authorization"))
        if request.endpoint in _LEADER_ONLY:
            api.assert_leader()

    @app.before_websocket
    async def _ws_auth() -> None:
        # any valid token opens the socket; each call is checked against its scope.
        # The token is the Authorization header's, or a browser's bearer subprotocol
        if websocket.path not in auth.public:
            auth.scope(_dashboard.websocket_authorization())


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
