"""``GET /openapi.json`` against a real broker (in-process, hypercorn on a free port):
a valid OpenAPI 3.1 document, open like ``/healthz``, that lists every route the app
serves; each documented request schema accepts its own example, the broker accepts
that example, and the broker's answers (REST and WebSocket) match the documented
answer schemas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import trio
from httpx_ws import AsyncWebSocketSession, aconnect_ws
from openapi_spec_validator import validate as validate_openapi

from _broker_proc import InProcessBroker, start_in_process
from trioq.broker._connect import METHODS as CONNECT_METHODS
from trioq.broker._openapi import openapi_path
from trioq.broker._routes import ROUTES
from trioq.broker._settings import BrokerSettings
from trioq.broker._websocket import METHODS

TOKEN = "openapi-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HELD_BY = "worker-1"
"""The worker the examples name."""


def settings(directory: Path) -> BrokerSettings:
    return BrokerSettings(port=0, data_dir=str(directory), group_commit_interval_ms=0, token=TOKEN)


@pytest.fixture
async def broker(nursery: trio.Nursery, tmp_path: Path) -> InProcessBroker:
    return await start_in_process(nursery, settings(tmp_path))


@pytest.fixture
async def http(broker: InProcessBroker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=broker.url, headers=AUTH, timeout=20) as client:
        yield client


@pytest.fixture
async def document(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/openapi.json", headers={"Authorization": ""})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


def check(document: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    """Validate ``value`` against ``schema``, whose refs point into ``document``."""
    root = {**schema, "components": document["components"]}
    jsonschema.Draft202012Validator(root).validate(value)


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, item in document["paths"].items()
        for method, op in item.items()
    }


async def test_the_document_is_valid_openapi_3_1_and_needs_no_token(
    nursery: trio.Nursery, tmp_path: Path, broker: InProcessBroker, document: dict[str, Any]
) -> None:
    assert document["openapi"] == "3.1.0"
    validate_openapi(document)
    standby = await start_in_process(nursery, settings(tmp_path))
    assert standby.broker.engine.role.value == "standby"
    for url in (broker.url, standby.url):  # a standby serves it too
        async with httpx.AsyncClient(base_url=url) as anonymous:
            assert (await anonymous.get("/openapi.json")).json() == document
            assert (await anonymous.get("/v1/stats")).status_code == 401


async def test_every_route_of_the_app_is_documented(
    broker: InProcessBroker, document: dict[str, Any]
) -> None:
    served: set[tuple[str, str]] = set()
    for rule in broker.broker.app.url_map.iter_rules():
        if rule.endpoint in ("static", "connect"):
            continue  # Connect: x-connect, below
        methods = {"GET"} if rule.websocket else (rule.methods or set()) - {"HEAD", "OPTIONS"}
        served |= {(method, openapi_path(rule.rule)) for method in methods}
    assert served == set(operations(document))
    assert ("GET", "/v1/ws") in served
    ws = document["paths"]["/v1/ws"]["get"]["x-websocket-methods"]
    assert list(ws) == [m.name for m in METHODS]
    connect = document["x-connect"]
    assert connect["path"] == "/osqueue.v1.QueueService/{method}"
    assert list(connect["methods"]) == list(CONNECT_METHODS)
    assert connect["methods"]["ListJobs"] == {
        "input": "osqueue.v1.ListJobsRequest",
        "output": "osqueue.v1.ListJobsResponse",
        "x-trioq-scopes": ["admin"],
    }


async def test_the_per_item_routes_are_documented_with_their_models(
    document: dict[str, Any],
) -> None:
    ops = operations(document)
    refs = {
        ("POST", "/v1/jobs/bulk"): ("SubmitBulk", "BulkAnswer"),
        ("POST", "/v1/jobs/exchange"): ("ExchangeRequest", "ExchangeAnswer"),
    }
    for key, (request, answer) in refs.items():
        op = ops[key]
        assert op["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{request}"
        }
        ok = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{answer}"}
        assert {"400", "401", "413", "503"} <= set(op["responses"])
        assert "404" not in op["responses"]  # a missing job is a result, not a status
    ws = document["paths"]["/v1/ws"]["get"]["x-websocket-methods"]
    assert ws["submitBulk"]["params"] == {"$ref": "#/components/schemas/SubmitBulk"}
    assert ws["exchange"]["result"] == {"$ref": "#/components/schemas/ExchangeAnswer"}


async def test_the_listing_query_documents_its_bounds_and_pattern(
    document: dict[str, Any],
) -> None:
    # found by the fuzzer: the before-validators had hidden these from the schema
    params = {p["name"]: p for p in operations(document)[("GET", "/v1/jobs")]["parameters"]}
    limit, cursor = params["limit"]["schema"], params["cursor"]["schema"]
    check(document, limit, 1000)
    check(document, cursor, "17")
    for schema, bad in ((limit, 0), (limit, 1001), (cursor, "abc")):
        with pytest.raises(jsonschema.ValidationError):
            check(document, schema, bad)


async def prepare(http: httpx.AsyncClient, name: str) -> str:
    """A job for the route ``name`` to act on: held by the examples' worker, queued,
    or dead, as the route needs. Returns its id."""
    job_id = f"for-{name}"
    submit = {"payload": 1, "id": job_id, "type": job_id, "maxAttempts": 1}
    assert (await http.post("/v1/jobs", json=submit)).status_code == 200
    if name in ("cancel", "get_job", "cancelJob", "getJob"):
        return job_id
    claimed = await http.post("/v1/jobs/claim", json={"workerId": HELD_BY, "types": [job_id]})
    assert claimed.json()["jobId"] == job_id
    if name in ("requeue", "requeueDead"):
        failed = {"workerId": HELD_BY, "error": "x", "final": True}
        assert (await http.post(f"/v1/jobs/{job_id}/fail", json=failed)).status_code == 200
    return job_id


async def test_each_example_is_valid_accepted_and_answered_as_documented(
    http: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    ops = operations(document)
    for route in ROUTES:
        path = openapi_path(route.path)
        op = ops[(route.method, path)]
        content = op.get("requestBody", {}).get("content", {}).get("application/json")
        body = None
        if content is not None:
            assert "example" in content, route.name
            body = content["example"]
            check(document, content["schema"], body)
        if "{id}" in path:
            path = path.replace("{id}", await prepare(http, route.name))
        path = path.replace("{name}", "s1")  # put_schedule makes it, delete_schedule drops it
        response = await http.request(route.method, path, json=body)
        assert response.is_success, (route.name, response.text)
        answers = op["responses"]
        if response.status_code == 204:
            assert "204" in answers, route.name
            continue
        media = answers[str(response.status_code)]["content"]
        if route.content_type == "application/json":
            check(document, media["application/json"]["schema"], response.json())
        else:
            assert response.headers["content-type"] == route.content_type


async def test_error_answers_match_the_error_schema(
    http: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    ops = operations(document)
    for method, path, documented, body, status in (
        ("POST", "/v1/jobs", "/v1/jobs", {"payload": 1, "maxAttempts": 0}, 400),
        ("POST", "/v1/jobs/claim", "/v1/jobs/claim", {"workerId": ""}, 400),
        ("GET", "/v1/jobs/missing", "/v1/jobs/{id}", None, 404),
        ("GET", "/v1/stats", "/v1/stats", None, 401),
    ):
        headers = {"Authorization": ""} if status == 401 else None
        response = await http.request(method, path, json=body, headers=headers)
        assert response.status_code == status
        media = ops[(method, documented)]["responses"][str(status)]["content"]
        check(document, media["application/json"]["schema"], response.json())


async def ws_call(session: AsyncWebSocketSession, method: str, params: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"id": method, "method": method}
    if params is not None:
        message["params"] = params
    await session.send_json(message)
    with trio.fail_after(20):
        reply: dict[str, Any] = await session.receive_json()
    assert reply["id"] == method
    return reply


async def test_each_websocket_method_takes_its_example_and_answers_as_documented(
    broker: InProcessBroker, http: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    methods = document["paths"]["/v1/ws"]["get"]["x-websocket-methods"]
    definitions = document["components"]["schemas"]
    async with (
        httpx.AsyncClient(headers=AUTH) as client,
        aconnect_ws(f"{broker.url}/v1/ws", client) as session,
    ):
        for name, spec in methods.items():
            params = None
            if spec["params"] is not None:
                model = spec["params"]["$ref"].rsplit("/", 1)[-1]
                params = dict(definitions[model]["examples"][0])
                check(document, spec["params"], params)
                if "jobId" in params:
                    params["jobId"] = await prepare(http, name)
            reply = await ws_call(session, name, params)
            assert reply["ok"] is True, (name, reply)
            if spec["result"] is None:
                assert reply["result"] is None
            else:
                check(document, spec["result"], reply["result"])
