"""What one worker exchange costs over HTTP and over the WebSocket.

    python benchmarks/bench_transport.py [--calls N]

Starts a broker subprocess on memory storage (127.0.0.1, a free port; stopped at the
end), then sends N empty ``exchange`` calls one after another, first as
``POST /v1/jobs/exchange`` on one keep-alive connection, then as the WebSocket method
``exchange`` on one socket, twice each. An empty exchange (no reports, no claim) is
answered without a commit, so the figures are the transport's own cost per call: wall
time, the broker's CPU (``/proc/<pid>/stat``) and this client's CPU. Prints a table;
one run on a shared machine: compare the rows with each other.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import trio
from httpx_ws import aconnect_ws

BODY = {"workerId": "bench-transport"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@contextmanager
def cost(pid: int, calls: int) -> Iterator[list[float]]:
    """Measure the block: on exit, the list holds the wall time, ``pid``'s CPU and
    this process's CPU, each in µs per call."""
    per_call: list[float] = []
    server0, wall0, client0 = cpu_seconds(pid), time.perf_counter(), time.process_time()
    yield per_call
    server1, wall1, client1 = cpu_seconds(pid), time.perf_counter(), time.process_time()
    per_call += [(b - a) * 1e6 / calls for a, b in
                 ((wall0, wall1), (server0, server1), (client0, client1))]  # fmt: skip


async def over_http(client: httpx.AsyncClient, url: str, calls: int) -> None:
    for _ in range(calls):
        response = await client.post(f"{url}/v1/jobs/exchange", json=BODY)
        response.raise_for_status()


async def over_websocket(client: httpx.AsyncClient, url: str, calls: int) -> None:
    async with aconnect_ws(f"{url}/v1/ws", client) as ws:
        for i in range(calls):
            message = {"id": i, "method": "exchange", "params": BODY}
            await ws.send_text(orjson.dumps(message).decode())
            reply = orjson.loads(await ws.receive_text())
            if not reply.get("ok"):
                raise RuntimeError(f"exchange failed: {reply}")


async def measure(url: str, pid: int, calls: int) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        with trio.fail_after(READY_TIMEOUT):
            while True:
                try:
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)
        print("| transport | calls | wall µs/call | broker CPU µs/call | client CPU µs/call |")
        print("|---|---|---|---|---|")
        for name, send in [("HTTP", over_http), ("WebSocket", over_websocket)] * 2:
            with cost(pid, calls) as per_call:
                await send(client, url, calls)
            wall, broker, own = per_call
            print(f"| {name} | {calls} | {wall:.0f} | {broker:.0f} | {own:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per row")
    args = parser.parse_args()
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TRIOQ_", "BROKER_", "STORAGE_"))
    }
    command = [sys.executable, "-m", "trioq.broker", "--storage", "memory"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    broker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        trio.run(measure, f"http://127.0.0.1:{port}", broker.pid, args.calls)
    finally:
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()


if __name__ == "__main__":
    main()
