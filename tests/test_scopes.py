"""Scoped tokens on a real broker (in-process, file backend, real HTTP): every REST
route and every WebSocket method with a token of every scope, and without one; the
scope table pinned; several tokens per scope (rotation); the tokens file and the
per-scope variables, their errors; and no token in any log, repr or message.

The tables below are the contract of docs/security.md: a route or method added
without an entry here fails :func:`test_the_scope_table_is_pinned` (and one added
without a declared scope is admin only, the safe default).
"""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from httpx_ws import WebSocketUpgradeError, aconnect_ws

from _broker_proc import InProcessBroker, broker_process, run_broker_to_exit, start_in_process
from _waits import wait_for
from trioq._settings import SettingsError
from trioq._tokens import Scope, TokenTable, parse_tokens_file, secret_value
from trioq.broker._routes import ROUTES
from trioq.broker._settings import BrokerSettings, parse_settings
from trioq.broker._websocket import METHODS

P, W, A = "producer", "worker", "admin"

ROUTE_SCOPES: dict[str, set[str]] = {
    "metrics": {A},
    "state": {A},
    "submit": {P, A},
    "submit_batch": {P, A},
    "submit_bulk": {P, A},
    "claim": {W, A},
    "exchange": {W, A},
    "heartbeat": {W, A},
    "complete": {W, A},
    "fail": {W, A},
    "release": {W, A},
    "cancel": {A},
    "get_job": {P, W, A},
    "job_result": {P, W, A},
    "list_jobs": {A},
    "list_dead": {A},
    "requeue": {A},
    "stats": {W, A},
    "throttle_stats": {A},
    "cancel_matching": {A},
    "purge_dead": {A},
    "list_type_rules": {P, W, A},
    "put_type_rule": {A},
    "list_schedules": {P, W, A},
    "put_schedule": {P, W, A},
    "delete_schedule": {A},
}
"""Who may call each route that needs a token (admin: everything)."""

PUBLIC_ROUTES = {"healthz", "readyz", "openapi"}

METHOD_SCOPES: dict[str, set[str]] = {
    "submitJob": {P, A},
    "submitJobs": {P, A},
    "submitBulk": {P, A},
    "claimJob": {W, A},
    "claimJobs": {W, A},
    "exchange": {W, A},
    "heartbeat": {W, A},
    "completeJob": {W, A},
    "failJob": {W, A},
    "releaseJob": {W, A},
    "cancelJob": {A},
    "getJob": {P, W, A},
    "getStats": {W, A},
    "listJobs": {A},
    "listDead": {A},
    "requeueDead": {A},
}
"""Each WebSocket method has its REST twin's scopes."""

# a request each route would accept (job j1 exists; the worker "w" does not hold it)
REQUESTS: dict[str, tuple[str, str, Any]] = {
    "healthz": ("GET", "/healthz", None),
    "readyz": ("GET", "/readyz", None),
    "openapi": ("GET", "/openapi.json", None),
    "metrics": ("GET", "/metrics", None),
    "state": ("GET", "/state", None),
    "submit": ("POST", "/v1/jobs", {"payload": 1}),
    "submit_batch": ("POST", "/v1/jobs/batch", {"jobs": [{"payload": 1}]}),
    "submit_bulk": ("POST", "/v1/jobs/bulk", {"jobs": [{"payload": 1}]}),
    "claim": ("POST", "/v1/jobs/claim", {"workerId": "w", "types": ["none"]}),
    "exchange": ("POST", "/v1/jobs/exchange", {"workerId": "w"}),
    "heartbeat": ("POST", "/v1/jobs/j1/heartbeat", {"workerId": "w"}),
    "complete": ("POST", "/v1/jobs/j1/complete", {"workerId": "w"}),
    "fail": ("POST", "/v1/jobs/j1/fail", {"workerId": "w", "error": "x"}),
    "release": ("POST", "/v1/jobs/j1/release", {"workerId": "w"}),
    "cancel": ("POST", "/v1/jobs/nope/cancel", None),
    "get_job": ("GET", "/v1/jobs/j1", None),
    "job_result": ("GET", "/v1/jobs/j1/result", None),
    "list_jobs": ("GET", "/v1/jobs", None),
    "list_dead": ("GET", "/v1/dead", None),
    "requeue": ("POST", "/v1/dead/j1/requeue", None),
    "stats": ("GET", "/v1/stats", None),
    "throttle_stats": ("GET", "/v1/throttle-stats", None),
    "cancel_matching": ("POST", "/v1/jobs/cancel", {"type": "nothing-of-this-type"}),
    "purge_dead": ("POST", "/v1/dead/purge", {"type": "nothing-of-this-type"}),
    "list_type_rules": ("GET", "/v1/types", None),
    "put_type_rule": ("PUT", "/v1/types", {"type": "t", "maxInProgress": 5}),
    "list_schedules": ("GET", "/v1/schedules", None),
    "put_schedule": ("PUT", "/v1/schedules/s1", {"type": "t", "everyMs": 60000}),
    "delete_schedule": ("DELETE", "/v1/schedules/nope", None),
}

PARAMS: dict[str, dict[str, Any]] = {
    "submitJob": {"payload": 1},
    "submitJobs": {"jobs": [{"payload": 1}]},
    "submitBulk": {"jobs": [{"payload": 1}]},
    "claimJob": {"workerId": "w", "types": ["none"]},
    "claimJobs": {"workerId": "w", "types": ["none"]},
    "exchange": {"workerId": "w"},
    "heartbeat": {"jobId": "j1", "workerId": "w"},
    "completeJob": {"jobId": "j1", "workerId": "w"},
    "failJob": {"jobId": "j1", "workerId": "w", "error": "x"},
    "releaseJob": {"jobId": "j1", "workerId": "w"},
    "cancelJob": {"jobId": "nope"},
    "getJob": {"jobId": "j1"},
    "getStats": {},
    "listJobs": {},
    "listDead": {},
    "requeueDead": {"jobId": "j1"},
}

TOKENS = {
    P: ["prod-token-1", "prod-token-2"],
    W: ["work-token-1", "work-token-2"],
    A: ["admin-token-1"],
}
"""Two tokens for producer and worker: both must work (rotation)."""
ADMIN_FLAG_TOKEN = "the-admin-token-from-TRIOQ_TOKEN"
EVERY_TOKEN = [ADMIN_FLAG_TOKEN, *(t for tokens in TOKENS.values() for t in tokens)]


def tokens_file(directory: Path) -> Path:
    path = directory / "tokens"
    lines = ["# scope token", ""]
    for scope, tokens in TOKENS.items():
        lines += [f"{scope} {token}" for token in tokens]
        lines.append(f"   # a comment after the {scope}s")
    path.write_text("\n".join(lines) + "\n")
    return path


def settings(directory: Path, **overrides: Any) -> BrokerSettings:
    return BrokerSettings.load(
        {"port": 0, "data_dir": str(directory / "data"), "group_commit_interval": 0, **overrides},
        environ={},
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def broker(nursery: trio.Nursery, tmp_path: Path) -> InProcessBroker:
    """A broker with every scope's tokens (a file) and an admin ``--token``, and a
    job j1 that is queued."""
    started = await start_in_process(
        nursery,
        settings(tmp_path, tokens_file=str(tokens_file(tmp_path)), token=ADMIN_FLAG_TOKEN),
    )
    async with httpx.AsyncClient(base_url=started.url) as client:
        submitted = await client.post(
            "/v1/jobs", json={"id": "j1", "payload": 1}, headers=bearer(TOKENS[P][0])
        )
        assert submitted.status_code == 200, submitted.text
    return started


# ------------------------------------------------------------------ the tables


def test_the_scope_table_is_pinned() -> None:
    """Every route and method is in the tables above, with the scopes they say."""
    assert {r.name for r in ROUTES} == set(ROUTE_SCOPES) | PUBLIC_ROUTES
    assert {r.name for r in ROUTES if r.public} == PUBLIC_ROUTES
    assert set(REQUESTS) == {r.name for r in ROUTES}
    for route in ROUTES:
        if not route.public:
            assert {str(s) for s in route.scopes} == ROUTE_SCOPES[route.name], route.name
    assert {m.name for m in METHODS} == set(METHOD_SCOPES) == set(PARAMS)
    for method in METHODS:
        assert {str(s) for s in method.scopes} == METHOD_SCOPES[method.name], method.name
    # admin may do everything
    assert all(Scope.ADMIN in r.scopes for r in ROUTES)
    assert all(Scope.ADMIN in m.scopes for m in METHODS)


def test_the_openapi_document_states_each_scope() -> None:
    from trioq.broker._openapi import build_openapi, openapi_path

    document = build_openapi("0")
    for route in ROUTES:
        operation = document["paths"][openapi_path(route.path)][route.method.lower()]
        if route.public:
            assert operation["security"] == [], route.name
            assert "x-trioq-scopes" not in operation
        else:
            assert set(operation["x-trioq-scopes"]) == ROUTE_SCOPES[route.name], route.name
            assert ("403" in operation["responses"]) == (len(ROUTE_SCOPES[route.name]) < 3)
    methods = document["paths"]["/v1/ws"]["get"]["x-websocket-methods"]
    for name, scopes in METHOD_SCOPES.items():
        assert set(methods[name]["x-trioq-scopes"]) == scopes
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


# ------------------------------------------------------------- every route x scope

SCOPED_ROUTES = sorted(ROUTE_SCOPES)


@pytest.mark.parametrize("scope", [P, W, A, "none"])
@pytest.mark.parametrize("name", sorted(REQUESTS))
async def test_route_by_scope(broker: InProcessBroker, name: str, scope: str) -> None:
    method, path, body = REQUESTS[name]
    async with httpx.AsyncClient(base_url=broker.url) as client:
        tokens = [None] if scope == "none" else TOKENS[scope]
        for token in tokens:  # every token of the scope: rotation keeps both working
            headers = {} if token is None else bearer(token)
            response = await client.request(method, path, json=body, headers=headers)
            if name in PUBLIC_ROUTES:
                assert response.status_code == 200, response.text
            elif scope == "none":
                assert response.status_code == 401, response.text
                assert response.json()["_tag"] == "Unauthorized"
            elif scope in ROUTE_SCOPES[name]:
                assert response.status_code not in (401, 403, 500), (token, response.text)
            else:
                assert response.status_code == 403, (token, response.text)
                body_ = response.json()
                assert body_["_tag"] == "Forbidden"
                assert f"a {scope} token may not call {method} {path}" in body_["message"]
                assert token is not None
                assert token not in response.text


async def test_the_admin_token_from_the_flag_opens_everything(broker: InProcessBroker) -> None:
    async with httpx.AsyncClient(base_url=broker.url) as client:
        for name in SCOPED_ROUTES:
            method, path, body = REQUESTS[name]
            response = await client.request(
                method, path, json=body, headers=bearer(ADMIN_FLAG_TOKEN)
            )
            assert response.status_code not in (401, 403, 500), (name, response.text)


async def test_forbidden_comes_before_the_body_and_before_not_leader(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A standby refuses an out-of-scope call with 403 (auth first), and a body that
    is junk never gets the chance to be a 400."""
    configured = settings(tmp_path, tokens_file=str(tokens_file(tmp_path)))
    await start_in_process(nursery, configured)
    standby = await start_in_process(nursery, configured.model_copy())
    async with httpx.AsyncClient(base_url=standby.url) as client:
        claim = await client.post("/v1/jobs/claim", content=b"\xff", headers=bearer(TOKENS[P][0]))
        assert (claim.status_code, claim.json()["_tag"]) == (403, "Forbidden")
        allowed = await client.post("/v1/jobs/claim", json={}, headers=bearer(TOKENS[W][0]))
        assert (allowed.status_code, allowed.json()["_tag"]) == (503, "NotLeader")


async def test_unknown_paths_need_a_valid_token_of_any_scope(broker: InProcessBroker) -> None:
    async with httpx.AsyncClient(base_url=broker.url) as client:
        assert (await client.get("/nothing")).status_code == 401
        assert (await client.get("/nothing", headers=bearer(TOKENS[P][0]))).status_code == 404
        deleted = await client.delete("/v1/jobs", headers=bearer(TOKENS[W][0]))
        assert deleted.status_code == 405


async def test_public_metrics_are_open_to_every_scope(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    started = await start_in_process(
        nursery, settings(tmp_path, tokens_file=str(tokens_file(tmp_path)), metrics_public=True)
    )
    async with httpx.AsyncClient(base_url=started.url) as client:
        for headers in ({}, bearer(TOKENS[P][0]), bearer("wrong")):
            assert (await client.get("/metrics", headers=headers)).status_code == 200
        assert (await client.get("/state", headers=bearer(TOKENS[W][0]))).status_code == 403


# --------------------------------------------------------- every method x scope


@pytest.mark.parametrize("scope", [P, W, A])
async def test_websocket_methods_by_scope(broker: InProcessBroker, scope: str) -> None:
    """The handshake takes any valid token; each call is checked against its scope,
    and a refused call leaves the connection open for the next."""
    for token in TOKENS[scope]:
        async with (
            httpx.AsyncClient(headers=bearer(token)) as client,
            aconnect_ws(f"{broker.url}/v1/ws", client) as ws,
        ):
            for number, (name, params) in enumerate(sorted(PARAMS.items())):
                await ws.send_json({"id": number, "method": name, "params": params})
                reply = await ws.receive_json()
                assert reply["id"] == number
                if scope in METHOD_SCOPES[name]:
                    assert reply["ok"] or reply["error"]["_tag"] != "Forbidden", (name, reply)
                    assert reply["ok"] or reply["error"]["_tag"] != "InternalError", reply
                else:
                    assert reply["ok"] is False, (name, reply)
                    assert reply["error"]["_tag"] == "Forbidden", (name, reply)
                    assert f"a {scope} token may not call {name}" in reply["error"]["message"]


async def test_websocket_handshake_needs_a_valid_token(broker: InProcessBroker) -> None:
    for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {TOKENS[A][0]}"}):
        async with httpx.AsyncClient(headers=headers) as client:
            with pytest.raises(WebSocketUpgradeError) as caught:
                async with aconnect_ws(f"{broker.url}/v1/ws", client):
                    pass  # pragma: no cover - the handshake fails
            assert caught.value.response.status_code == 401


# ------------------------------------------------------------------ configuration


def test_tokens_from_the_environment_per_scope(tmp_path: Path) -> None:
    environ = {
        "TRIOQ_PRODUCER_TOKENS": "p1, p2",
        "TRIOQ_WORKER_TOKENS": "w1",
        "TRIOQ_ADMIN_TOKENS": "a1,a2",
        "TRIOQ_TOKEN": "a3",
    }
    loaded = BrokerSettings.load({"data_dir": str(tmp_path)}, environ=environ)
    table = loaded.token_table()
    expected = {b"p1": P, b"p2": P, b"w1": W, b"a1": A, b"a2": A, b"a3": A}
    assert {token: table.scope_of(token) for token in expected} == expected
    assert table.scope_of(b"p3") is None
    assert (table.count(Scope.PRODUCER), table.count(Scope.ADMIN)) == (2, 3)


async def test_env_tokens_on_a_real_broker(nursery: trio.Nursery, tmp_path: Path) -> None:
    configured = BrokerSettings.load(
        {"port": 0, "data_dir": str(tmp_path)},
        environ={"TRIOQ_WORKER_TOKENS": "w-old,w-new", "TRIOQ_PRODUCER_TOKENS": "p-1"},
    )
    started = await start_in_process(nursery, configured)
    async with httpx.AsyncClient(base_url=started.url) as client:
        for token in ("w-old", "w-new"):
            assert (await client.get("/v1/stats", headers=bearer(token))).status_code == 200
        assert (await client.get("/v1/stats", headers=bearer("p-1"))).status_code == 403
        assert (await client.get("/v1/stats", headers=bearer("w-gone"))).status_code == 401


def test_the_tokens_file_format() -> None:
    text = "# comment\n\n  producer   p1  \nworker w1\n\tadmin a1\nworker w2\n"
    assert parse_tokens_file(text, "f") == {
        Scope.PRODUCER: ["p1"],
        Scope.WORKER: ["w1", "w2"],
        Scope.ADMIN: ["a1"],
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sekrit-token admin\n", "line 1: the scope must be producer, worker or admin"),
        ("worker\n", "line 1: expected '<scope> <token>'"),
        ("# ok\nworker sekrit-token extra\n", "line 2: expected '<scope> <token>'"),
        ("producer sekrit,token\n", "line 1: a token must be visible ASCII"),
        ("producer sekrit-tökén\n", "line 1: a token must be visible ASCII"),
        ("worker sekrit-token\nadmin sekrit-token\n", "both the worker and the admin scope"),
    ],
)
def test_tokens_file_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(SettingsError) as caught:
        settings(tmp_path, tokens_file=str(path))
    said = str(caught.value).replace(str(path), "<path>")  # the path holds the test id
    assert message in said
    assert "sekrit" not in said  # never the token, nor the line


def test_a_missing_tokens_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"cannot read the tokens file .*absent"):
        settings(tmp_path, tokens_file=str(tmp_path / "absent"))


@pytest.mark.parametrize(
    ("values", "environ"),
    [
        ({"token": ""}, {}),
        ({"admin_tokens": "a,,b"}, {}),
        ({}, {"TRIOQ_WORKER_TOKENS": "w1,"}),
        ({"token": "has space"}, {}),
    ],
)
def test_empty_or_malformed_tokens_are_refused(
    tmp_path: Path, values: dict[str, str], environ: dict[str, str]
) -> None:
    with pytest.raises(SettingsError, match=r"empty token|visible ASCII"):
        BrokerSettings.load({"data_dir": str(tmp_path), **values}, environ=environ)


async def test_a_bad_tokens_file_exits_with_a_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("admin ok-token\nsekrit-token worker\n")
    code, stdout, stderr = await run_broker_to_exit(
        ["--data-dir", str(tmp_path / "data"), "--port", "0", "--tokens-file", str(path)]
    )
    assert code == 2, stderr
    assert stderr.strip() == (
        f"trioq broker: tokens file {path}, line 2: the scope must be producer, worker or admin"
    )
    assert "sekrit" not in stdout + stderr
    assert "ok-token" not in stdout + stderr


async def test_a_token_both_ways_of_one_scope_is_fine(tmp_path: Path) -> None:
    table = settings(tmp_path, token="same", admin_tokens="same").token_table()
    assert table.scope_of(b"same") is Scope.ADMIN
    assert repr(table) == "TokenTable({'producer': 0, 'worker': 0, 'admin': 1})"


def test_no_tokens_is_auth_off(tmp_path: Path) -> None:
    assert not settings(tmp_path).token_table()
    assert not TokenTable()


# ------------------------------------------------------------------ never shown


async def test_no_token_in_logs_reprs_or_messages(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    configured = settings(
        tmp_path,
        tokens_file=str(tokens_file(tmp_path)),
        token=ADMIN_FLAG_TOKEN,
        admin_tokens="admin-from-env",
        worker_tokens="worker-from-env",
        producer_tokens="producer-from-env",
    )
    secrets = [*EVERY_TOKEN, "admin-from-env", "worker-from-env", "producer-from-env"]
    started = await start_in_process(nursery, configured)
    async with httpx.AsyncClient(base_url=started.url) as client:
        await client.get("/v1/stats", headers=bearer(TOKENS[P][0]))  # 403
        await client.get("/v1/stats", headers=bearer(TOKENS[P][0] + "x"))  # 401
        await client.get("/v1/stats", headers=bearer(TOKENS[W][0]))  # 200
    shown = "\n".join(
        [
            caplog.text,
            repr(configured),
            str(configured),
            configured.model_dump_json(),
            repr(started.broker.tokens),
            str(configured.model_dump()),
        ]
    )
    assert "auth on: 3 producer token(s), 3 worker token(s), 3 admin token(s)" in caplog.text
    for secret in secrets:
        assert secret not in shown, secret
    # the settings still hold them, and equal them (code that compares keeps working)
    assert secret_value(configured.token) == ADMIN_FLAG_TOKEN
    assert configured.token is not None
    assert configured.token.get_secret_value() == ADMIN_FLAG_TOKEN


def test_help_shows_no_token(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--help"], environ={"TRIOQ_TOKEN": ADMIN_FLAG_TOKEN})
    out = capsys.readouterr().out
    assert "--tokens-file" in out
    assert "TRIOQ_WORKER_TOKENS" in out
    assert ADMIN_FLAG_TOKEN not in out


async def test_a_broker_process_logs_no_token(tmp_path: Path) -> None:
    path = tokens_file(tmp_path)
    async with broker_process(
        ["--data-dir", str(tmp_path / "data"), "--port", "0", "--tokens-file", str(path)],
        env={"TRIOQ_TOKEN": ADMIN_FLAG_TOKEN, "TRIOQ_WORKER_TOKENS": "worker-from-env"},
        log_path=tmp_path / "broker.log",
    ) as proc:
        async with httpx.AsyncClient(base_url=proc.url) as client:
            assert (await client.get("/state", headers=bearer(TOKENS[W][1]))).status_code == 403
            assert (await client.get("/state", headers=bearer(ADMIN_FLAG_TOKEN))).status_code == 200
        log = proc.log_path.read_text()
    assert "auth on: 2 producer token(s), 3 worker token(s), 2 admin token(s)" in log
    for secret in [*EVERY_TOKEN, "worker-from-env"]:
        assert secret not in log


# ------------------------------------------------------------------ rotation


async def test_sighup_reloads_the_tokens_file(tmp_path: Path) -> None:
    """Rotation without a restart: add the new token, SIGHUP, roll the clients,
    remove the old one, SIGHUP. A file that no longer parses keeps the old tokens."""
    path = tmp_path / "tokens"
    path.write_text("worker old-worker-token\nadmin the-admin\n")
    async with broker_process(
        ["--data-dir", str(tmp_path / "data"), "--port", "0", "--tokens-file", str(path)],
        log_path=tmp_path / "broker.log",
    ) as proc:
        async with httpx.AsyncClient(base_url=proc.url) as client:

            async def status(token: str) -> int:
                return (await client.get("/v1/stats", headers=bearer(token))).status_code

            async def reaches(token: str, code: int) -> bool:
                return await status(token) == code

            assert await status("old-worker-token") == 200
            assert await status("new-worker-token") == 401

            path.write_text("worker old-worker-token\nworker new-worker-token\nadmin the-admin\n")
            proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: reaches("new-worker-token", 200), within=10)
            assert await status("old-worker-token") == 200

            path.write_text("worker new-worker-token\nadmin the-admin\n")
            proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: reaches("old-worker-token", 401), within=10)

            path.write_text("worker new-worker-token\nbroken-secret admin\n")
            proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: "tokens not reloaded" in proc.log_path.read_text(), within=10)
            assert await status("new-worker-token") == 200  # the old table stays
            assert proc.returncode is None
        log = proc.log_path.read_text()
    assert "line 2: the scope must be producer, worker or admin" in log
    for secret in ("old-worker-token", "new-worker-token", "the-admin", "broken-secret"):
        assert secret not in log


def test_the_security_doc_states_the_table() -> None:
    """docs/security.md's scope table is this file's (and so the code's)."""
    from trioq.broker._openapi import openapi_path

    doc = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    rows = {}
    for line in doc.split("| REST route |", 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        route, methods, scopes = (cell.strip() for cell in line.strip("|").split("|"))
        rows[route.strip("`")] = (set(re.findall(r"`(\w+)`", methods)), scopes)
    assert len(rows) == len(ROUTES)
    for route in ROUTES:
        methods, scopes = rows[f"{route.method} {openapi_path(route.path)}"]
        if route.public:
            assert scopes == "public"
            continue
        assert (
            set(re.findall(r"producer|worker|admin", scopes.split("(")[0]))
            == (ROUTE_SCOPES[route.name])
        ), route.name
        for method in methods:
            assert METHOD_SCOPES[method] == ROUTE_SCOPES[route.name], method
    documented = {method for methods, _ in rows.values() for method in methods}
    assert documented == set(METHOD_SCOPES)
