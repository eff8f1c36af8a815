"""Bearer-token auth on every route of a real broker (in-process, file backend),
on and off, and at the WebSocket handshake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from httpx_ws import WebSocketUpgradeError, aconnect_ws

from _broker_proc import InProcessBroker, start_in_process
from trioq.broker._settings import BrokerSettings

TOKEN = "s3cr3t-Token_value"

# every route but the open ones (/healthz, /readyz), with a body that would pass
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/state", None),
    ("GET", "/metrics", None),
    ("GET", "/v1/stats", None),
    ("GET", "/v1/throttle-stats", None),
    ("GET", "/v1/jobs", None),
    ("GET", "/v1/jobs/j1", None),
    ("GET", "/v1/dead", None),
    ("POST", "/v1/jobs", {"payload": 1}),
    ("POST", "/v1/jobs/batch", {"jobs": [{"payload": 1}]}),
    ("POST", "/v1/jobs/claim", {"workerId": "w"}),
    ("POST", "/v1/jobs/j1/heartbeat", {"workerId": "w"}),
    ("POST", "/v1/jobs/j1/complete", {"workerId": "w"}),
    ("POST", "/v1/jobs/j1/fail", {"workerId": "w", "error": "x"}),
    ("POST", "/v1/jobs/j1/release", {"workerId": "w"}),
    ("POST", "/v1/jobs/j1/cancel", None),
    ("POST", "/v1/dead/j1/requeue", None),
    # not routes at all: still no hint without the token
    ("GET", "/nothing", None),
    ("DELETE", "/v1/jobs", None),
]

_BAD_HEADERS: list[dict[str, str | bytes]] = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": f"Bearer  {TOKEN}"},
    {"Authorization": "Bearer tökén".encode()},
    {"Authorization": b"Bearer \xff\xfe"},
]


BAD_HEADERS: list[dict[bytes, bytes]] = [
    {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in h.items()}
    for h in _BAD_HEADERS
]
GOOD = {b"Authorization": f"Bearer {TOKEN}".encode()}


def settings(directory: Path, **overrides: Any) -> BrokerSettings:
    return BrokerSettings(port=0, data_dir=str(directory), group_commit_interval_ms=0, **overrides)


@pytest.fixture
async def secured(nursery: trio.Nursery, tmp_path: Path) -> InProcessBroker:
    return await start_in_process(nursery, settings(tmp_path, token=TOKEN))


async def request(
    client: httpx.AsyncClient, method: str, path: str, body: Any, headers: dict[bytes, bytes]
) -> httpx.Response:
    return await client.request(method, path, json=body, headers=headers)


async def test_every_route_requires_the_token(secured: InProcessBroker) -> None:
    async with httpx.AsyncClient(base_url=secured.url, verify=False) as client:
        for method, path, body in ROUTES:
            for headers in BAD_HEADERS:
                response = await request(client, method, path, body, headers)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.json()["_tag"] == "Unauthorized"
        # nothing got through
        good = {"Authorization": f"Bearer {TOKEN}"}
        stats = await client.get("/v1/stats", headers=good)
        assert stats.json()["total"] == 0


async def test_the_scheme_is_case_insensitive(secured: InProcessBroker) -> None:
    """RFC 9110: the auth scheme is case-insensitive (the token is not)."""
    async with httpx.AsyncClient(base_url=secured.url, verify=False) as client:
        for scheme in ("bearer", "BEARER", "bEaReR"):
            headers = {"Authorization": f"{scheme} {TOKEN}"}
            submitted = await client.post("/v1/jobs", json={"payload": 1}, headers=headers)
            assert submitted.status_code == 200, (scheme, submitted.text)
            for method, path, body in ROUTES:
                response = await client.request(method, path, json=body, headers=headers)
                assert response.status_code != 401, (scheme, method, path, response.text)
            wrong = {"Authorization": f"{scheme} {TOKEN.swapcase()}"}
            assert (await client.get("/v1/stats", headers=wrong)).status_code == 401


async def test_junk_without_the_token_is_401_not_400(secured: InProcessBroker) -> None:
    async with httpx.AsyncClient(base_url=secured.url, verify=False) as client:
        for path in ("/v1/jobs", "/v1/jobs/claim", "/v1/jobs/bad%20id/complete"):
            response = await client.post(path, content=b"\xff junk")
            assert response.status_code == 401
            assert response.json()["_tag"] == "Unauthorized"


async def test_the_right_token_opens_every_route(secured: InProcessBroker) -> None:
    async with httpx.AsyncClient(base_url=secured.url, verify=False) as client:
        submitted = await client.post("/v1/jobs", json={"payload": 1, "id": "j1"}, headers=GOOD)
        assert submitted.status_code == 200
        for method, path, body in ROUTES:
            response = await request(client, method, path, body, GOOD)
            assert response.status_code != 401, (method, path, response.text)
            if path not in ("/nothing",) and method != "DELETE":
                assert response.status_code < 500, (method, path, response.text)


async def test_health_and_readiness_need_no_token(secured: InProcessBroker) -> None:
    async with httpx.AsyncClient(base_url=secured.url, verify=False) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            health = await client.get("/healthz", headers=headers)
            assert health.status_code == 200
            assert health.json()["role"] == "leader"
            assert (await client.get("/readyz", headers=headers)).status_code == 200
        # the metrics are not public by default
        assert (await client.get("/metrics")).status_code == 401


async def test_metrics_public(nursery: trio.Nursery, tmp_path: Path) -> None:
    broker = await start_in_process(nursery, settings(tmp_path, token=TOKEN, metrics_public=True))
    async with httpx.AsyncClient(base_url=broker.url, verify=False) as client:
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert "trioq_broker_leader" in metrics.text
        # only /metrics opened up
        assert (await client.get("/v1/stats")).status_code == 401
        assert (await client.get("/state")).status_code == 401


async def test_auth_off_every_route_answers_without_a_header(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    broker = await start_in_process(nursery, settings(tmp_path))
    async with httpx.AsyncClient(base_url=broker.url, verify=False) as client:
        await client.post("/v1/jobs", json={"payload": 1, "id": "j1"})
        for method, path, body in [*ROUTES, ("GET", "/healthz", None), ("GET", "/readyz", None)]:
            for headers in ({}, {b"Authorization": b"Bearer anything"}):
                response = await request(client, method, path, body, headers)
                assert response.status_code != 401, (method, path, response.text)


async def test_a_standby_checks_the_token_before_it_redirects(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    await start_in_process(nursery, settings(tmp_path, token=TOKEN))
    standby = await start_in_process(nursery, settings(tmp_path, token=TOKEN))
    async with httpx.AsyncClient(base_url=standby.url, verify=False) as client:
        anonymous = await client.post("/v1/jobs", json={"payload": 1})
        assert anonymous.status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        redirected = await client.post("/v1/jobs", json={"payload": 1}, headers=good)
        assert redirected.status_code == 503
        assert redirected.json()["_tag"] == "NotLeader"
        assert (await client.get("/healthz")).json()["role"] == "standby"
        assert (await client.get("/readyz")).status_code == 503


# ------------------------------------------------------------------ WebSocket


async def test_websocket_handshake_requires_the_token(secured: InProcessBroker) -> None:
    for headers in BAD_HEADERS[:6]:
        async with httpx.AsyncClient(headers=headers, verify=False) as client:
            with pytest.raises(WebSocketUpgradeError) as caught:
                async with aconnect_ws(f"{secured.url}/v1/ws", client):
                    pass  # pragma: no cover - the handshake fails
            assert caught.value.response.status_code == 401


async def test_websocket_with_the_token(secured: InProcessBroker) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        httpx.AsyncClient(headers=headers, verify=False) as client,
        aconnect_ws(f"{secured.url}/v1/ws", client) as ws,
    ):
        await ws.send_json({"id": 1, "method": "getStats", "params": {}})
        reply = await ws.receive_json()
        assert reply["ok"] is True
        assert reply["result"]["total"] == 0


async def test_websocket_scheme_is_case_insensitive(secured: InProcessBroker) -> None:
    for scheme in ("bearer", "BEARER"):
        headers = {"Authorization": f"{scheme} {TOKEN}"}
        async with (
            httpx.AsyncClient(headers=headers, verify=False) as client,
            aconnect_ws(f"{secured.url}/v1/ws", client) as ws,
        ):
            await ws.send_json({"id": 1, "method": "getStats", "params": {}})
            reply = await ws.receive_json()
            assert reply["ok"] is True, (scheme, reply)


async def test_websocket_without_auth_configured(nursery: trio.Nursery, tmp_path: Path) -> None:
    broker = await start_in_process(nursery, settings(tmp_path))
    async with (
        httpx.AsyncClient(verify=False) as client,
        aconnect_ws(f"{broker.url}/v1/ws", client) as ws,
    ):
        await ws.send_json({"id": "a", "method": "getStats"})
        assert (await ws.receive_json())["ok"] is True
