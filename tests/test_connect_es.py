"""Connect-ES, the TypeScript Connect runtime osqueue's own client is built on (its
``@osqueue/client`` is not published, so ``tests/connect_es/client.mjs`` makes the
calls its Connect transport makes), against a real broker, in both codecs: every
RPC, and the errors a TypeScript caller reads (code, message, ``ErrorInfo`` reason).

Needs Node.js; the packages come from ``tests/connect_es/package-lock.json``
(``npm ci``, run here once when ``node_modules`` is missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

import trioq._connect as connect
from _broker_proc import start_in_process
from trioq.broker._settings import BrokerSettings

HERE = Path(__file__).parent / "connect_es"
DESCRIPTORS = Path(connect.__file__).parent / connect.DESCRIPTOR_SET
ADMIN_TOKEN = "connect-es-admin"


@pytest.fixture(scope="session")
def node_client() -> Path:
    """``client.mjs`` with its packages installed."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js (node and npm) is not installed")
    if not (HERE / "node_modules" / "@connectrpc" / "connect-node").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            check=True,
            timeout=300,
        )
    return HERE / "client.mjs"


@pytest.mark.parametrize(
    ("codec", "auth", "http_version"),
    [("binary", False, "1.1"), ("json", True, "1.1"), ("binary", True, "2")],
)
async def test_connect_es_calls_every_rpc(
    nursery: trio.Nursery,
    tmp_path: Path,
    node_client: Path,
    codec: str,
    auth: bool,
    http_version: str,
) -> None:
    """osqueue's client offers ``httpVersion: "1.1" | "2"``: HTTP/2 here is cleartext
    with prior knowledge, as connect-node speaks it to an ``http://`` URL."""
    overrides: dict[str, Any] = {"port": 0, "data_dir": str(tmp_path / "data")}
    env = {k: v for k, v in os.environ.items() if k != "TRIOQ_TOKEN"}
    env["HTTP_VERSION"] = http_version
    if auth:
        overrides["token"] = ADMIN_TOKEN
        env["TRIOQ_TOKEN"] = ADMIN_TOKEN
    broker = await start_in_process(nursery, BrokerSettings.load(overrides, environ={}))
    with trio.fail_after(60):
        ran = await trio.run_process(
            ["node", str(node_client), broker.url, str(DESCRIPTORS), codec],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert ran.returncode == 0, ran.stderr.decode()
    report = orjson.loads(ran.stdout)

    first, second = report["submitted"]
    assert report["stats"] == {
        "total": 2, "unclaimed": 2, "inProgress": 0, "brokerAddress": broker.url,
    }  # fmt: skip
    assert report["claimed"] == {"jobId": first, "type": "email", "payload": {"to": "a@b.c"}}
    listed = report["listed"]
    assert (listed["total"], listed["unclaimed"], listed["inProgress"]) == (2, 1, 1)
    held, waiting = listed["jobs"]
    assert (held["id"], held["status"], held["workerId"]) == (first, "in_progress", "ts-1")
    assert (held["attempts"], held["maxAttempts"]) == (1, 2)
    assert int(held["heartbeat"]) >= int(held["createdAt"]) > 0  # int64s, as bigint
    assert (waiting["id"], waiting["type"], waiting["payload"]) == (second, "default", [1, 2])
    assert report["next"] == second
    assert report["empty"] == {"jobId": None, "payload": None, "type": ""}

    errors = report["errors"]
    assert errors["unknownJob"]["code"] == "NotFound"
    assert errors["unknownJob"]["reason"] == "JobNotFound"
    assert errors["notHeld"]["code"] == "FailedPrecondition"
    assert errors["notHeld"]["reason"] == "LeaseLost"
    assert errors["badPayload"]["code"] == "InvalidArgument"
    assert errors["badPayload"]["reason"] == "BrokerProtocolError"

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if auth else {}
    async with httpx.AsyncClient(base_url=broker.url, headers=headers) as http:
        done = (await http.get(f"/v1/jobs/{first}")).json()
        assert done["status"] == "completed"
        stats = (await http.get("/v1/stats")).json()
        assert (stats["total"], stats["inProgress"], stats["completedTotal"]) == (1, 1, 1)
