"""What a Connect call costs on trioq's broker, against REST on the same broker and
against the ``connect-python`` package's own server: the measurement behind serving
Connect's unary protocol directly in the broker (``docs/connect.md``).

    python benchmarks/bench_connect.py [--calls N] [--rounds R]

Starts a broker subprocess on memory storage (``--group-commit-interval-ms 0``) and
the reference app (``_connectrpc_server.py``: connect-python's ASGI app answering
``GetStats`` with a fixed message) twice, under hypercorn's asyncio worker and under
its trio worker (the broker's), all on 127.0.0.1 and free ports, stopped at the end. Then, on one keep-alive connection
each, N calls one after another per row, R rounds of every row interleaved: the
wall time, the server's CPU (``/proc/<pid>/stat``) and this client's CPU per call.
The client sends prepared bytes (httpx), so its cost is alike across rows.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import trio

from trioq import _connect

sys.path.insert(0, str(Path(__file__).parent))
from bench_transport import cost, free_port

READY_TIMEOUT = 30.0
PROTO = {"Content-Type": "application/proto"}
JSON = {"Content-Type": "application/json"}
SUBMIT = _connect.RPCS["SubmitJob"].input(payload=b'{"n": 1}', type="bench")


@dataclass(frozen=True)
class Row:
    name: str
    server: str  # "trioq", or the reference app under hypercorn's "asyncio" or "trio" worker
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]


ROWS = [
    Row("REST GET /v1/stats", "trioq", "GET", "/v1/stats", None, {}),
    Row("Connect GetStats, proto", "trioq", "POST", "/GetStats", b"", PROTO),
    Row("Connect GetStats, JSON", "trioq", "POST", "/GetStats", b"{}", JSON),
    Row("connect-python/asyncio GetStats, proto", "asyncio", "POST", "/GetStats", b"", PROTO),
    Row("connect-python/asyncio GetStats, JSON", "asyncio", "POST", "/GetStats", b"{}", JSON),
    Row("connect-python/trio GetStats, proto", "trio", "POST", "/GetStats", b"", PROTO),
    Row("connect-python/trio GetStats, JSON", "trio", "POST", "/GetStats", b"{}", JSON),
    Row("REST POST /v1/jobs", "trioq", "POST", "/v1/jobs",
        orjson.dumps({"payload": {"n": 1}, "type": "bench"}), JSON),
    Row("Connect SubmitJob, proto", "trioq", "POST", "/SubmitJob",
        SUBMIT.SerializeToString(), PROTO),
    Row("Connect SubmitJob, JSON", "trioq", "POST", "/SubmitJob",
        _connect.encode(_connect.JSON, SUBMIT), JSON),
]  # fmt: skip


async def wait_up(client: httpx.AsyncClient, probe: Callable[[], httpx.Request]) -> None:
    with trio.fail_after(READY_TIMEOUT):
        while True:
            try:
                if (await client.send(probe())).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.1)


async def run_row(client: httpx.AsyncClient, base: str, row: Row, calls: int) -> None:
    url = base + (row.path if row.path.startswith("/v1/") else _connect.PATH_PREFIX + row.path[1:])
    for _ in range(calls):
        response = await client.request(row.method, url, content=row.body, headers=row.headers)
        if response.status_code != 200:
            raise RuntimeError(f"{row.name}: {response.status_code} {response.text}")


async def measure(urls: dict[str, str], pids: dict[str, int], calls: int, rounds: int) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await wait_up(client, lambda: client.build_request("GET", f"{urls['trioq']}/readyz"))
        for name in ("asyncio", "trio"):
            await wait_up(
                client,
                lambda name=name: client.build_request(  # type: ignore[misc]
                    "POST", f"{urls[name]}{_connect.PATH_PREFIX}GetStats",
                    content=b"", headers=PROTO,
                ),
            )  # fmt: skip
        print("| call | round | wall µs/call | server CPU µs/call | client CPU µs/call |")
        print("|---|---|---|---|---|")
        for round_ in range(1, rounds + 1):
            for row in ROWS:
                with cost(pids[row.server], calls) as per_call:
                    await run_row(client, urls[row.server], row, calls)
                wall, server, own = per_call
                print(f"| {row.name} | {round_} | {wall:.0f} | {server:.0f} | {own:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per row and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ports = {"trioq": free_port(), "asyncio": free_port(), "trio": free_port()}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    broker_argv = [sys.executable, "-m", "trioq.broker", "--storage", "memory"]
    broker_argv += [
        "--host",
        "127.0.0.1",
        "--port",
        str(ports["trioq"]),
        "--group-commit-interval-ms",
        "0",
    ]
    servers = {
        "trioq": subprocess.Popen(broker_argv, stdout=subprocess.DEVNULL),
        **{
            worker: subprocess.Popen(
                [sys.executable, str(Path(__file__).parent / "_connectrpc_server.py"),
                 str(ports[worker]), f"--{worker}"],
                stdout=subprocess.DEVNULL,
            )
            for worker in ("asyncio", "trio")
        },
    }  # fmt: skip
    try:
        pids = {name: process.pid for name, process in servers.items()}
        trio.run(measure, urls, pids, args.calls, args.rounds)
    finally:
        for process in servers.values():
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


if __name__ == "__main__":
    main()
