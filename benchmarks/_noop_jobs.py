"""The worker of ``benchmarks/bench_e2e.py``: a no-op handler that records timings.

``python -m trioq.worker benchmarks._noop_jobs:worker --concurrency C --broker-url URL``
(from the repository root, or with it on ``PYTHONPATH``).

Every payload carries its submit time (``{"t": time.time(), "i": n}``). The handler
notes the time it started; the ``on_completed`` hook (run once the broker has
acknowledged the completion) writes one line per job,
``<job id> <submitted> <started> <completed>`` (``time.time()`` seconds), to
``$TRIOQ_BENCH_DIR/times-<pid>.txt``. The file is written through a 1 MB buffer and
flushed at exit (the worker exits normally after a SIGTERM drain), so recording costs
the measured process almost nothing. Without ``TRIOQ_BENCH_DIR`` nothing is written.

The ``sleep`` job (``{"s": seconds, "t": submitted}``) sleeps that long; the moment it
starts is written at once (line-buffered, one line ``<job id> <submitted> <started>``) to
``$TRIOQ_BENCH_DIR/starts-<pid>.txt``, so the benchmark can watch a worker's slots fill.
"""

from __future__ import annotations

import atexit
import math
import os
import time
from typing import IO, Any

import trio

import trioq

worker = trioq.Worker()

_started: dict[str, tuple[float, float]] = {}
_out: IO[str] | None = None
_starts: IO[str] | None = None

_directory = os.environ.get("TRIOQ_BENCH_DIR")
if _directory:
    _out = open(  # noqa: SIM115 (open for the process's lifetime, closed at exit)
        os.path.join(_directory, f"times-{os.getpid()}.txt"), "a", buffering=1 << 20
    )
    atexit.register(_out.close)
    _starts = open(  # noqa: SIM115 (line-buffered: each start is visible at once)
        os.path.join(_directory, f"starts-{os.getpid()}.txt"), "a", buffering=1
    )
    atexit.register(_starts.close)


@worker.job("noop")
async def noop(payload: Any, ctx: trioq.JobContext) -> None:
    """Do nothing; remember when this job was submitted and when it started."""
    submitted = payload.get("t", math.nan) if isinstance(payload, dict) else math.nan
    _started[ctx.id] = (submitted, time.time())


@worker.job("sleep")
async def sleep(payload: Any, ctx: trioq.JobContext) -> None:
    """Note the start at once, then sleep ``payload["s"]`` seconds."""
    started = time.time()
    if _starts is not None:
        _starts.write(f"{ctx.id} {payload.get('t', math.nan)!r} {started!r}\n")
    await trio.sleep(float(payload.get("s", 0)))


@worker.on_completed
def _completed(ctx: trioq.JobContext) -> None:
    submitted, started = _started.pop(ctx.id, (math.nan, math.nan))
    if _out is not None:
        _out.write(f"{ctx.id} {submitted!r} {started!r} {time.time()!r}\n")
