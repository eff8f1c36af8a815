"""The worker jobs module of the chaos harness (``benchmarks/chaos.py``).

Run as ``python -m trioq.worker benchmarks._chaos_jobs:worker`` (from the repository
root, or with it on ``PYTHONPATH``). The ``chaos`` job (``{"k": key, "s": seconds}``)
appends one line when it starts and one when its handler returns, then sleeps ``s``
seconds in between; the ``on_completed`` hook (run once the broker acknowledged the
completion) appends a third. Lines go to ``$TRIOQ_CHAOS_DIR/history-<pid>.txt``,
line-buffered, so a ``kill -9`` loses at most the line being written::

    S <job id> <attempt> <pid> <time.time()> <key>     handler started
    E <job id> <attempt> <pid> <time.time()> <key>     handler returned
    X <job id> <attempt> <pid> <time.time()> <key>     handler cancelled by the worker
    C <job id> <attempt> <pid> <time.time()> -         completion acknowledged

Without ``TRIOQ_CHAOS_DIR`` nothing is written.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import IO, Any

import trio

import trioq

worker = trioq.Worker()

_out: IO[str] | None = None
_directory = os.environ.get("TRIOQ_CHAOS_DIR")
if _directory:
    _out = open(  # noqa: SIM115 (open for the process's lifetime, closed at exit)
        os.path.join(_directory, f"history-{os.getpid()}.txt"), "a", buffering=1
    )
    atexit.register(_out.close)


def _note(kind: str, ctx: trioq.JobContext, key: str) -> None:
    if _out is not None:
        _out.write(f"{kind} {ctx.id} {ctx.attempt} {os.getpid()} {time.time()!r} {key}\n")


@worker.job("chaos")
async def chaos(payload: Any, ctx: trioq.JobContext) -> None:
    """Note the start, sleep ``payload["s"]`` seconds, note the end."""
    key = str(payload.get("k", "-")) if isinstance(payload, dict) else "-"
    _note("S", ctx, key)
    try:
        await trio.sleep(float(payload.get("s", 0.1)) if isinstance(payload, dict) else 0.1)
    except trio.Cancelled:  # the worker gave it up (lease lost, drain grace over)
        _note("X", ctx, key)
        raise
    _note("E", ctx, key)


@worker.on_completed
def _completed(ctx: trioq.JobContext) -> None:
    _note("C", ctx, "-")
