"""A worker with two handlers, run from the repository's root directory::

    python -m trioq.broker                                                # a broker on ./.trioq
    python -m trioq.worker examples.quickstart:worker --concurrency 5     # this worker
    python examples/submit.py 20                                          # jobs for it

``--broker-url URL`` (or ``$BROKER_URL``) points the worker at another broker; a
comma-separated list of brokers follows whichever leads. Ctrl-C drains the worker:
running jobs finish, then it exits with status 0.
"""

from __future__ import annotations

import trio
from pydantic import BaseModel

import trioq

worker = trioq.Worker()


class Resize(BaseModel):
    """The payload of an ``image:resize`` job."""

    image: str
    width: int


@worker.job("image:resize", timeout=30)
async def resize(job: Resize, ctx: trioq.JobContext) -> None:
    """Pretend to resize an image (the payload is validated against ``Resize``)."""
    await trio.sleep(0.2)
    print(f"resized {job.image} to {job.width}px (job {ctx.id}, attempt {ctx.attempt})", flush=True)


@worker.job("flaky")
async def flaky(payload: int, ctx: trioq.JobContext) -> None:
    """Fails on its first attempt, succeeds on the second: shows retries with backoff."""
    if ctx.attempt == 1:
        raise RuntimeError(f"transient failure for {payload}")
    print(f"flaky {payload} succeeded on attempt {ctx.attempt}", flush=True)
