"""What a browser needs from the broker: the dashboard's files, and a way to put a
token on a WebSocket handshake (docs/dashboard.md).

The dashboard is three static files shipped in this package (``dashboard/``:
``index.html``, ``app.js``, ``app.css``; no build step, nothing fetched from
elsewhere). :func:`register` serves them at ``/`` (the page) and
``/dashboard/<asset>``, without a token: they hold no data. Everything the page shows
comes from the API, which it calls with the token the user gives it. They are the
app's static files, registered under the endpoint ``static`` (Quart's name for an
app's static files; the app is built without Quart's own static folder): they are
not part of the API, and ``/openapi.json`` does not list them.

A browser cannot set ``Authorization`` on a WebSocket handshake, but it can offer
subprotocols. A handshake without that header may carry the token as the offered
subprotocol ``trioq.bearer.<token as unpadded base64url>`` beside the plain
``trioq``; :func:`websocket_authorization` reads it as if it were the header, and
:func:`accepted_subprotocol` answers ``trioq`` (the token is never echoed back).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.resources
from dataclasses import dataclass

from quart import Response, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import NotFound

SUBPROTOCOL = "trioq"
"""The subprotocol a browser offers beside its bearer one, and the one accepted."""

BEARER_PREFIX = "trioq.bearer."
"""Prefix of the offered subprotocol that carries the token (unpadded base64url)."""

ENDPOINT = "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page runs only its own script and style and talks only to its own broker."""


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of the dashboard, read once when the app is built."""

    body: bytes
    content_type: str
    etag: str


_CONTENT_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
"""Every asset and its content type: nothing else is served."""

PATHS = frozenset({"/", *(f"/dashboard/{name}" for name in _CONTENT_TYPES)})
"""The paths served without a token."""


def load_assets() -> dict[str, Asset]:
    """The dashboard's files from the installed package, by name."""
    folder = importlib.resources.files("trioq.broker").joinpath("dashboard")
    assets: dict[str, Asset] = {}
    for name, content_type in _CONTENT_TYPES.items():
        body = folder.joinpath(name).read_bytes()
        etag = hashlib.sha256(body).hexdigest()[:32]
        assets[name] = Asset(body, content_type, etag)
    return assets


def register(app: QuartTrio) -> None:
    """Serve the dashboard from ``app``: ``/`` is the page, ``/dashboard/<asset>``
    each file (an unknown name is a 404 like any path no route serves)."""
    assets = load_assets()

    async def serve(filename: str = "index.html") -> Response:
        asset = assets.get(filename)
        if asset is None:
            raise NotFound(f"no dashboard file {filename!r}")
        if request.if_none_match.contains(asset.etag):
            response = Response(b"", status=304)
        else:
            response = Response(asset.body, content_type=asset.content_type)
        response.set_etag(asset.etag)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return response

    # "/" takes the parameter's default rather than rule defaults, which would make
    # the router redirect /dashboard/index.html to /
    app.add_url_rule("/", ENDPOINT, serve, methods=["GET"])
    app.add_url_rule("/dashboard/<filename>", ENDPOINT, serve, methods=["GET"])


def websocket_authorization() -> str | None:
    """The handshake's ``Authorization`` header or, without one, ``Bearer <token>``
    from an offered ``trioq.bearer.<base64url>`` subprotocol (None: neither; a
    subprotocol that does not decode counts as no token, and is refused as one)."""
    header = websocket.headers.get("Authorization")
    if header is not None:
        return header
    for offered in websocket.requested_subprotocols:
        if offered.startswith(BEARER_PREFIX):
            token = _decode_token(offered[len(BEARER_PREFIX) :])
            return None if token is None else f"Bearer {token}"
    return None


def accepted_subprotocol() -> str | None:
    """``trioq`` if the client offered it (a browser must be answered one of the
    subprotocols it offered, or it drops the connection), else none."""
    return SUBPROTOCOL if SUBPROTOCOL in websocket.requested_subprotocols else None


def _decode_token(encoded: str) -> str | None:
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        return raw.decode("ascii")
    except (binascii.Error, ValueError):
        return None
