"""The web dashboard over HTTP (docs/dashboard.md), on a real broker (in-process, file
backend, tokens of every scope): the page and its assets are served without a token
with their content types and headers, name nothing outside the broker, the API still
needs a token, and the WebSocket takes the browser's bearer subprotocol (while the
``Authorization`` header still works and wins). The page itself is driven in
Chromium by tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from httpx_ws import WebSocketUpgradeError, aconnect_ws

from _broker_proc import InProcessBroker, start_in_process
from trioq.broker import _dashboard
from trioq.broker._settings import BrokerSettings

ADMIN, WORKER, PRODUCER = "dash-admin-token", "dash-worker-token", "dash-producer/=+token"
"""The producer's token has characters a subprotocol may not carry as they are."""

ASSETS = {
    "/": "text/html",
    "/dashboard/index.html": "text/html",
    "/dashboard/app.js": "text/javascript",
    "/dashboard/app.css": "text/css",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def bearer_subprotocol(token: str) -> str:
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return f"{_dashboard.BEARER_PREFIX}{encoded}"


@pytest.fixture
async def broker(nursery: trio.Nursery, tmp_path: Path) -> InProcessBroker:
    settings = BrokerSettings.load(
        {
            "port": 0,
            "data_dir": str(tmp_path / "data"),
            "group_commit_interval": 0,
            "admin_tokens": ADMIN,
            "worker_tokens": WORKER,
            "producer_tokens": PRODUCER,
        },
        environ={},
    )
    return await start_in_process(nursery, settings)


async def test_the_page_and_its_assets_need_no_token(broker: InProcessBroker) -> None:
    async with httpx.AsyncClient(base_url=broker.url) as anonymous:
        for path, content_type in ASSETS.items():
            response = await anonymous.get(path)
            assert response.status_code == 200, (path, response.text)
            assert response.headers["content-type"].split(";")[0] == content_type, path
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "connect-src 'self'" in response.headers["content-security-policy"]
            assert response.content, path
            # conditional GET: the ETag answers 304 with no body
            again = await anonymous.get(path, headers={"If-None-Match": response.headers["etag"]})
            assert again.status_code == 304, path
            assert again.content == b""
        page = (await anonymous.get("/")).text
        assert '<script src="/dashboard/app.js"' in page
        assert '<link rel="stylesheet" href="/dashboard/app.css"' in page


async def test_the_api_still_needs_a_token(broker: InProcessBroker) -> None:
    async with httpx.AsyncClient(base_url=broker.url) as anonymous:
        for method, path in (
            ("GET", "/v1/stats"),
            ("GET", "/v1/jobs"),
            ("GET", "/v1/dead"),
            ("POST", "/v1/jobs"),
            ("GET", "/metrics"),
            ("GET", "/v1/throttle-stats"),
            # a path beside the assets is not one of them: token first, then 404
            ("GET", "/dashboard/secrets.json"),
            ("GET", "/dashboard/"),
        ):
            response = await anonymous.request(method, path, json={} if method == "POST" else None)
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["_tag"] == "Unauthorized"
        unknown = await anonymous.get("/dashboard/secrets.json", headers=bearer(ADMIN))
        assert unknown.status_code == 404
        assert unknown.json()["_tag"] == "NotFound"
        # a token of the wrong scope is a 403, as for any client
        listing = await anonymous.get("/v1/jobs", headers=bearer(WORKER))
        assert listing.status_code == 403
        assert "a worker token may not call GET /v1/jobs" in listing.json()["message"]


def test_no_asset_names_anything_outside_the_broker() -> None:
    """No http(s) URL, protocol-relative URL or absolute ws URL in any asset: the page
    loads and calls nothing but its own broker, by relative paths."""
    assets = _dashboard.load_assets()
    assert set(assets) == {"index.html", "app.js", "app.css"}
    for name, asset in assets.items():
        text = asset.body.decode()
        urls = re.findall(r"(?:https?|wss?)://[^\s\"'`)]*", text)
        assert [
            u for u in urls if not u.startswith(("http://127.0.0.1", "https://127.0.0.1"))
        ] == [], name
        assert re.search(r"""["'(]//[a-zA-Z0-9]""", text) is None, name  # protocol-relative
        assert "@import" not in text, name


async def ws_call(ws: Any, method: str) -> dict[str, Any]:
    await ws.send_json({"id": 1, "method": method, "params": {}})
    reply: dict[str, Any] = await ws.receive_json()
    return reply


async def test_the_websocket_takes_the_bearer_subprotocol(broker: InProcessBroker) -> None:
    url = f"{broker.url}/v1/ws"
    async with httpx.AsyncClient() as client:
        # the producer token (with "/", "=", "+") as unpadded base64url
        async with aconnect_ws(
            url, client, subprotocols=["trioq", bearer_subprotocol(PRODUCER)]
        ) as ws:
            assert ws.subprotocol == "trioq"  # the token is never echoed back
            reply = await ws_call(ws, "getStats")
            assert reply["error"]["_tag"] == "Forbidden", reply  # checked as a producer's
        async with aconnect_ws(
            url, client, subprotocols=["trioq", bearer_subprotocol(ADMIN)]
        ) as ws:
            reply = await ws_call(ws, "getStats")
            assert reply["ok"], reply
        # a wrong, an undecodable or no token: 401, no socket
        for offered in (
            ["trioq", bearer_subprotocol("wrong")],
            ["trioq", f"{_dashboard.BEARER_PREFIX}!!!"],
            ["trioq"],
        ):
            with pytest.raises(WebSocketUpgradeError) as caught:
                async with aconnect_ws(url, client, subprotocols=offered):
                    pass  # pragma: no cover - the handshake fails
            assert caught.value.response.status_code == 401, offered
    # the Authorization header, when present, is the token: it wins over a subprotocol
    async with (
        httpx.AsyncClient(headers=bearer(WORKER)) as client,
        aconnect_ws(url, client, subprotocols=["trioq", bearer_subprotocol(ADMIN)]) as ws,
    ):
        reply = await ws_call(ws, "listJobs")
        assert reply["error"]["_tag"] == "Forbidden", reply
        assert "a worker token may not call listJobs" in reply["error"]["message"]
    # an existing client (header, no subprotocol) gets no subprotocol, as before
    async with (
        httpx.AsyncClient(headers=bearer(ADMIN)) as client,
        aconnect_ws(url, client) as ws,
    ):
        assert ws.subprotocol is None
        assert (await ws_call(ws, "getStats"))["ok"]
