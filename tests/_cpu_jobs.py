"""``run="process"`` handlers for the process-pool and supervisor tests (``tests/`` is
on the path of the test process, of worker subprocesses and of their pool processes).

Each handler writes ``<dir>/<job id>.<event>`` files (``dir`` comes in the payload)
holding the pid of the process it ran in: ``start`` when it starts, ``done`` with
``<pid> <result>`` when it finishes. One ``write`` each, to a temporary name then
renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel

import trioq

worker = trioq.Worker()


class Work(BaseModel):
    dir: str
    n: int = 0
    seconds: float = 0.0


def note(work: Work, ctx: trioq.JobContext, event: str, text: str = "") -> None:
    path = Path(work.dir) / f"{ctx.id}.{event}"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(f"{os.getpid()} {text}".strip())
    partial.rename(path)


@worker.job("cpu:sum", run="process")
def cpu_sum(work: Work, ctx: trioq.JobContext) -> None:
    """Sums the squares below ``n`` in pure Python, busy for at least ``seconds``."""
    note(work, ctx, "start")
    until = time.monotonic() + work.seconds
    total = 0
    while True:
        total = sum(i * i for i in range(work.n))
        if time.monotonic() >= until:
            break
    note(work, ctx, "done", str(total))


@worker.job("cpu:spin", run="process")
@worker.job("cpu:spin-timeout", run="process", timeout=1.0)
def spin(work: Work, ctx: trioq.JobContext) -> None:
    """Burns CPU forever (until its process is killed)."""
    note(work, ctx, "start")
    x = 0
    while True:
        x = (x + 1) % 1_000_003


@worker.job("cpu:raise", run="process")
def raise_(work: Work) -> None:
    """Raises in the pool process."""
    raise ArithmeticError(f"no luck with {work.n} in {os.getpid()}")


def nested_factory() -> object:
    def nested(payload: int) -> None:
        pass

    return nested


async def async_handler(payload: int) -> None:
    pass


def plain(payload: int) -> None:
    pass


def wrapped_plain(payload: int) -> None:
    pass
