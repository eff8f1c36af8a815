"""A trioq worker embedded in an existing trio program, next to the program's own
tasks: a periodic task (here, one that submits a job every ``--every`` seconds) and a
tiny HTTP health endpoint, all in one nursery.

    python -m trioq.broker                              # a broker (shell 1)
    python examples/embedded_worker.py --seconds 30     # this program (shell 2)
    curl http://127.0.0.1:8081/healthz                  # its health (--health-port 8081)

Ctrl-C (or SIGTERM, or the end of ``--seconds``) stops it cleanly: the health
endpoint and the periodic task are cancelled at once, and the worker drains (the
nursery that runs ``worker.run`` is cancelled, which is a drain: no new claims,
running jobs get the grace period, ``shutdown_grace=5`` here). A second Ctrl-C aborts:
running jobs are cancelled and released at once.

The broker comes from ``--broker``, else ``$TRIOQ_BROKER_URL``, else ``$BROKER_URL``,
else ``http://127.0.0.1:8080``. The health endpoint binds 127.0.0.1, on
``--health-port`` (0, the default: any free port; the program prints its URL).
Exit status 0 after a drain, 1 when the broker never answered, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio

import trioq


def make_worker(client: trioq.Client) -> trioq.Worker:
    """The program's worker, talking through the program's own ``client`` (so
    ``--broker`` decides for both; the environment's worker settings, such as
    ``TRIOQ_CONCURRENCY``, still win over the arguments here)."""
    worker = trioq.Worker(concurrency=2, shutdown_grace=5, client=client)

    @worker.job("embedded:ping", timeout=10)
    async def ping(sequence: int, ctx: trioq.JobContext) -> None:
        """A short job: the handler the program's own periodic task feeds."""
        await trio.sleep(0.1)
        print(f"ran ping {sequence} (job {ctx.id})", flush=True)

    return worker


@dataclass
class AppState:
    """What the program's tasks share (trio tasks of one thread: no lock needed)."""

    submitted: int = 0
    ready: bool = False
    """The worker's broker has answered: it is claiming."""


async def submit_periodically(client: trioq.Client, every: float, state: AppState) -> None:
    """The program's own periodic task: submit an ``embedded:ping`` job every
    ``every`` seconds (a failed submit is reported and the task carries on)."""
    while True:
        try:
            await client.submit("embedded:ping", state.submitted)
        except trioq.TrioqError as exc:
            print(f"periodic task: submit failed: {exc}", file=sys.stderr, flush=True)
        else:
            state.submitted += 1
        await trio.sleep(every)


async def serve_health(
    port: int,
    worker: trioq.Worker,
    state: AppState,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A minimal HTTP/1.0 server on 127.0.0.1: ``GET /healthz`` answers 200 with the
    worker's counters as JSON (503 until the worker is claiming); anything else, 404.
    Calls ``task_status.started(port)`` once listening. A client that breaks its
    connection only ends its own handler."""

    def response(request: bytes) -> bytes:
        words = request.split(b"\r\n", 1)[0].split()
        if len(words) >= 2 and words[0] == b"GET" and words[1] == b"/healthz":
            code = "200 OK" if state.ready else "503 Service Unavailable"
            body = json.dumps(
                {
                    "status": "ok" if state.ready else "starting",
                    "workerId": worker.worker_id,
                    "held": len(worker.active),
                    "counts": worker.counts,
                    "submitted": state.submitted,
                }
            ).encode()
        else:
            code, body = "404 Not Found", b'{"error": "not found"}'
        head = (
            f"HTTP/1.0 {code}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        return head.encode() + body

    async def answer(stream: trio.SocketStream) -> None:
        try:
            request = b""
            with trio.move_on_after(5):  # a client that sends nothing is dropped
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    request += chunk
            await stream.send_all(response(request))
        except trio.BrokenResourceError:
            pass  # the client went away
        finally:
            await stream.aclose()

    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(answer, listeners)


async def watch_for_stop(
    signals: AsyncIterator[int], seconds: float, app: trio.CancelScope, worker: trioq.Worker
) -> None:
    """Cancel ``app`` at the first signal or after ``seconds``; then abort the worker
    at a second signal."""
    with trio.move_on_after(seconds):
        async for signum in signals:
            print(f"{signal.Signals(signum).name}: draining (again to abort)", flush=True)
            break
        else:
            return
    app.cancel()
    async for signum in signals:
        print(f"{signal.Signals(signum).name}: aborting running jobs", flush=True)
        worker.abort()
        return


async def main(broker: str, seconds: float, health_port: int, every: float) -> int:
    """Run the program; its exit status."""
    state = AppState()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with (
            trioq.Client(broker, token=os.environ.get("TRIOQ_TOKEN")) as client,
            trio.open_nursery() as outer,
        ):
            worker = make_worker(client)
            app = trio.CancelScope()
            outer.start_soon(watch_for_stop, signals, seconds, app, worker)
            with app:
                async with trio.open_nursery() as nursery:
                    port = await nursery.start(serve_health, health_port, worker, state)
                    print(f"health endpoint on http://127.0.0.1:{port}/healthz", flush=True)
                    # returns once the broker has answered; cancelling this nursery
                    # drains the worker
                    await nursery.start(worker.run)
                    state.ready = True
                    print(f"worker claiming {sorted(worker.handlers)} from {broker}", flush=True)
                    nursery.start_soon(submit_periodically, client, every, state)
            outer.cancel_scope.cancel()
    done = worker.counts["completed"]
    if not state.ready:
        print(f"stopped before the broker at {broker} answered", flush=True)
        return 1
    print(f"drained: submitted {state.submitted}, completed {done} jobs", flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A trio program running a trioq worker next to its own tasks."
    )
    parser.add_argument(
        "--broker",
        default=os.environ.get("TRIOQ_BROKER_URL")
        or os.environ.get("BROKER_URL")
        or "http://127.0.0.1:8080",
        help="broker URL(s) (default: $TRIOQ_BROKER_URL, $BROKER_URL, http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=math.inf,
        help="stop (drain) after this many seconds (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--health-port", type=int, default=0, help="health endpoint port (0: any free port)"
    )
    parser.add_argument(
        "--every", type=float, default=0.5, help="seconds between two submits (0.5)"
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.every <= 0:
        parser.error("--seconds and --every must be > 0")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(
        trio.run(main, arguments.broker, arguments.seconds, arguments.health_port, arguments.every)
    )
