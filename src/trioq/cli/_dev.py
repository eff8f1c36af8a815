"""``trioq dev MODULE:ATTR``: a broker on a local directory and workers for one
:class:`~trioq.Worker`, as child processes of one command, for development.

The children run in a session of their own, so a Ctrl-C in the terminal reaches
this process only, which then stops them in order: the workers first (SIGTERM: each
drains its running jobs while the broker still answers them), then the broker
(SIGTERM: it commits and releases its lease). A second Ctrl-C kills what is left.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import trio

from ._common import FAILED, USAGE, Parser

READY_TIMEOUT = 60.0
"""Seconds the broker has to print its ready line (a fresh queue starts in well under
a second; a large one loads first)."""

_READY = re.compile(r"listening on (\S+) as ")
_INTERRUPTED = 130

Child = tuple[str, trio.Process]


def dev(argv: Sequence[str], prog: str) -> int:
    p = Parser(
        prog=prog,
        description="Run a broker on a local directory (the file backend) and workers "
        "for the worker object at MODULE:ATTR, until Ctrl-C or SIGTERM (exit 0 once the "
        "workers drained and the broker released).",
    )
    p.add_argument("target", metavar="MODULE:ATTR", help="a trioq.Worker, e.g. myapp:worker")
    p.add_argument("--concurrency", type=int, default=1, help="jobs at once, each worker")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--port", type=int, default=8080, help="broker port (0: any free port)")
    p.add_argument("--data-dir", default=".trioq", help="the queue's directory (default ./.trioq)")
    args = p.parse_args(argv)
    if args.workers < 1 or args.concurrency < 1:
        p.error("--workers and --concurrency are at least 1")
    from ..worker._cli import UsageError, load_worker

    try:  # here, so that a bad target is one line before anything starts
        load_worker(args.target)
    except UsageError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return USAGE
    broker = [
        *("-m", "trioq.broker", "--host", "127.0.0.1", "--port", str(args.port)),
        *("--storage", "file", "--data-dir", str(Path(args.data_dir).absolute())),
    ]
    worker = [
        *("-m", "trioq.worker", args.target, "--concurrency", str(args.concurrency)),
    ]
    return trio.run(_run, broker, worker, args.workers, prog)


async def _run(broker_args: list[str], worker_args: list[str], count: int, prog: str) -> int:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        broker = await _spawn(broker_args, stdout=subprocess.PIPE)
        workers: list[Child] = []
        problem: str | None = None
        forced = False
        # the nursery ends with the copy of the broker's output, once the broker exited
        async with trio.open_nursery() as nursery:
            try:
                url = await _ready_url(broker)
                if url is None:
                    problem = f"the broker did not start (status {await broker.wait()}): see above"
                    return FAILED
                assert broker.stdout is not None
                nursery.start_soon(_copy, broker.stdout)
                print(
                    f"{prog}: broker listening on {url}; {count} worker(s) running "
                    f"{worker_args[2]}; Ctrl-C stops them",
                    flush=True,
                )
                for number in range(1, count + 1):
                    process = await _spawn([*worker_args, "--broker-url", url])
                    workers.append((f"worker {number}", process))
                problem = await _until_stop([("broker", broker), *workers], signals)
            finally:
                forced = await _stop([workers, [("broker", broker)]], signals)
                if problem is not None:
                    sys.stderr.write(f"{prog}: {problem}; stopped the rest\n")
    if forced:
        return _INTERRUPTED
    if problem is not None:
        return FAILED
    codes = [process.returncode for _, process in [*workers, ("broker", broker)]]
    return 0 if all(code == 0 for code in codes) else FAILED


async def _spawn(args: list[str], *, stdout: int | None = None) -> trio.Process:
    return await trio.lowlevel.open_process(
        [sys.executable, *args],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # the terminal's Ctrl-C is ours to pass on, in order
    )


async def _ready_url(broker: trio.Process) -> str | None:
    """The URL of the broker's ready line; None if it ended without one (then it is
    killed). What it wrote after the line is copied to our stdout."""
    assert broker.stdout is not None
    buffer = b""
    with trio.move_on_after(READY_TIMEOUT):
        while b"\n" not in buffer:
            chunk = await broker.stdout.receive_some(4096)
            if not chunk:
                break
            buffer += chunk
    line, _, rest = buffer.partition(b"\n")
    match = _READY.search(line.decode(errors="replace"))
    if match is None:
        broker.kill()
        return None
    sys.stdout.buffer.write(rest)
    return match[1]


async def _copy(stream: trio.abc.ReceiveStream) -> None:
    """The broker's later output to ours (a pipe nobody read would block it)."""
    try:
        async for chunk in stream:
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
    except (OSError, trio.BrokenResourceError):  # our stdout closed: drop the rest
        pass


async def _until_stop(children: list[Child], signals: AsyncIterator[int]) -> str | None:
    """Wait for a signal (None) or for a child to end on its own (what ended)."""
    outcome: list[str | None] = []
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            async for _ in signals:
                outcome.append(None)
                nursery.cancel_scope.cancel()

        async def on_exit(name: str, process: trio.Process) -> None:
            code = await process.wait()
            outcome.append(f"{name} exited on its own with status {code}")
            nursery.cancel_scope.cancel()

        nursery.start_soon(on_signal)
        for name, process in children:
            nursery.start_soon(on_exit, name, process)
    return outcome[0]


async def _stop(groups: list[list[Child]], signals: AsyncIterator[int]) -> bool:
    """SIGTERM each group in turn and wait for it to end; a signal meanwhile kills
    every child at once. Whether it came to that."""
    everyone = [process for group in groups for _, process in group]
    for group in groups:
        for _, process in group:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        forced = False
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                nonlocal forced
                async for _ in signals:
                    forced = True
                    for process in everyone:
                        if process.returncode is None:
                            process.kill()
                    return

            nursery.start_soon(on_signal)
            for _, process in group:
                await process.wait()
            nursery.cancel_scope.cancel()
        if forced:
            with trio.CancelScope(shield=True):
                for process in everyone:
                    await process.wait()
            return True
    return False
