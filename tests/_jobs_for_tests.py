"""Worker targets for the worker subprocess tests (``tests/`` goes on PYTHONPATH)::

    python -m trioq.worker _jobs_for_tests:worker --broker-url ...

Every handler appends events to a per-process file in ``$TRIOQ_TEST_LOG_DIR``
(``<pid>.log``), one line each: ``<event> <job id> <attempt> <unix time>``, where
event is ``start``, ``done`` (just before the handler returns), ``cancelled`` or
``error``. Each line is one ``write`` to a file opened with O_APPEND.
"""

from __future__ import annotations

import os
import time

import trio
from pydantic import BaseModel

import trioq

worker = trioq.Worker()

not_a_worker = 42
empty_worker = trioq.Worker()
configured_worker = trioq.Worker(concurrency=3, poll_interval=0.25)


def log_event(event: str, ctx: trioq.JobContext) -> None:
    directory = os.environ.get("TRIOQ_TEST_LOG_DIR")
    if not directory:
        return
    line = f"{event} {ctx.id} {ctx.attempt} {time.time():.6f}\n".encode()
    fd = os.open(
        os.path.join(directory, f"{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND
    )
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class Work(BaseModel):
    sleep: float = 0.0


@worker.job("record")
@configured_worker.job("record")
async def record(work: Work, ctx: trioq.JobContext) -> None:
    """Sleeps ``work.sleep`` seconds; logs start, then done or cancelled."""
    log_event("start", ctx)
    try:
        await trio.sleep(work.sleep)
    except trio.Cancelled:
        log_event("cancelled", ctx)
        raise
    log_event("done", ctx)


@worker.job("fail")
async def fail(payload: str, ctx: trioq.JobContext) -> None:
    """Always raises."""
    log_event("start", ctx)
    log_event("error", ctx)
    raise RuntimeError(f"{payload} at attempt {ctx.attempt}")


class Typed(BaseModel):
    n: int


@worker.job("typed")
async def typed(payload: Typed, ctx: trioq.JobContext) -> None:
    """Runs only for a payload that validates as ``Typed``."""
    log_event("start", ctx)
    log_event("done", ctx)
