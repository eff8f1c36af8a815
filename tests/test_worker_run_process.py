"""``@worker.job(..., run="process")``: sync handlers in the worker's process pool
(``trio-parallel``), killed when their job is cancelled.

Real processes: a broker subprocess (``python -m trioq.broker`` on a data directory,
127.0.0.1, a free port), a worker embedded in the test's trio run, and the pool
processes it spawns. The handlers (tests/_cpu_jobs.py) write files naming the pid
they ran in; the tests wait for those files, for the broker's records or for a pid
to be gone, each with :func:`_waits.wait_for` (a bound that only stops a broken
build from hanging). Registration is checked without any process.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import _cpu_jobs
import trioq
from _waits import LIMIT, wait_for
from _worker_proc import (
    alive,
    broker_process,
    no_worker_environment,  # noqa: F401 (the fixture pytestmark uses)
)
from trioq.worker._cli import UsageError

pytestmark = pytest.mark.usefixtures("no_worker_environment")


def gone(pid: int) -> Callable[[], bool]:
    def check() -> bool:
        return not alive(pid)

    check.__qualname__ = f"process {pid} is gone"
    return check


def pid_in(path: Path) -> int:
    return int(path.read_text().split()[0])


# ---------------------------------------------------------------- registration


def test_registration_modes() -> None:
    worker = trioq.Worker()

    @worker.job("a")
    async def on_loop(payload: int) -> None: ...

    @worker.job("t")
    def in_thread(payload: int) -> None: ...

    worker.job("p", run="process")(_cpu_jobs.plain)
    assert [(h.type, h.run) for h in worker.handlers.values()] == [
        ("a", "async"),
        ("t", "thread"),
        ("p", "process"),
    ]
    assert worker.handlers["p"].pool is not None
    assert worker.handlers["t"].pool is None
    worker.check_handlers()


@pytest.mark.parametrize(
    ("fn", "run", "message"),
    [
        (_cpu_jobs.async_handler, "process", "is async; a process runs a plain"),
        (lambda payload: None, "process", "is a lambda, a nested function or a closure"),
        (_cpu_jobs.nested_factory(), "process", "is a lambda, a nested function or a closure"),
        (print, "process", "is not a plain function"),
        (_cpu_jobs.plain, "async", "run='async' needs an async function"),
        (_cpu_jobs.async_handler, "thread", "run='thread' needs a sync function"),
        (_cpu_jobs.plain, "fork", "run must be one of 'async', 'thread', 'process', not 'fork'"),
    ],
)
def test_registration_refuses_what_cannot_run_so(fn: Any, run: Any, message: str) -> None:
    worker = trioq.Worker()
    with pytest.raises(ValueError, match=re.escape(message)):
        worker.job("x", run=run)(fn)
    assert worker.handlers == {}


def test_a_closure_is_refused() -> None:
    worker = trioq.Worker()
    limit = 3

    def closure(payload: int) -> None:
        assert payload < limit

    with pytest.raises(ValueError, match="nested function or a closure"):
        worker.job("x", run="process")(closure)


def test_a_function_its_module_does_not_hold_is_refused_at_start() -> None:
    # a copy of a module-level function: same name, but the module's attribute is
    # another object, so a process could not find it by name
    copy = types.FunctionType(_cpu_jobs.plain.__code__, _cpu_jobs.plain.__globals__, "plain")
    copy.__qualname__ = "plain"
    worker = trioq.Worker()
    worker.job("x", run="process")(copy)
    with pytest.raises(ValueError, match=r"cannot be sent to a process by name"):
        worker.check_handlers()
    with pytest.raises(ValueError, match=r"cannot be sent to a process by name"):
        trio.run(worker.run)


def test_the_command_refuses_such_a_target(monkeypatch: pytest.MonkeyPatch) -> None:
    from trioq.worker._cli import load_worker

    bad = trioq.Worker()
    copy = types.FunctionType(_cpu_jobs.plain.__code__, _cpu_jobs.plain.__globals__, "plain")
    bad.job("x", run="process")(copy)
    monkeypatch.setattr(_cpu_jobs, "bad_worker", bad, raising=False)
    with pytest.raises(UsageError, match="cannot be sent to a process by name"):
        load_worker("_cpu_jobs:bad_worker")


# ------------------------------------------------------------ real processes


Body = Callable[[trioq.Worker, trioq.Client], Awaitable[None]]


async def with_worker(tmp_path: Path, body: Body, **options: Any) -> None:
    """``body(worker, client)`` with a broker subprocess and an embedded worker
    running the _cpu_jobs handlers; the worker is drained after it."""
    async with (
        broker_process(tmp_path, data_dir=tmp_path / "data") as broker,
        trioq.Client(broker.url, retry_deadline=LIMIT) as client,
    ):
        worker = trioq.Worker(broker_url=broker.url, **options)
        for job_type, handler in _cpu_jobs.worker.handlers.items():
            worker.job(job_type, run="process", timeout=handler.timeout)(handler.fn)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            try:
                await body(worker, client)
            finally:
                worker.drain()


async def test_a_process_handler_runs_in_another_process_and_the_loop_stays_free(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    gaps: list[float] = []
    seen: dict[str, int] = {}

    async def tick() -> None:
        last = trio.current_time()
        while True:
            await trio.sleep(0.01)
            now = trio.current_time()
            gaps.append(now - last)
            last = now

    async def body(worker: trioq.Worker, client: trioq.Client) -> None:
        # 1.5 s of pure-Python CPU work: on the event loop it would stall it
        await client.submit("cpu:sum", {"dir": str(out), "n": 2000, "seconds": 1.5}, id="sum")
        await wait_for(lambda: (out / "sum.start").exists(), what="the handler started")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            await wait_for(lambda: (out / "sum.done").exists(), what="the handler finished")
            nursery.cancel_scope.cancel()

        await wait_for(lambda: worker.counts["completed"] == 1, what="the completion recorded")
        assert (await client.get("sum")).get("outcome") == "completed"
        seen["child"] = pid_in(out / "sum.done")
        assert alive(seen["child"])  # kept in the pool for the next job

    await with_worker(tmp_path, body)
    child = seen["child"]
    assert child != os.getpid()
    assert (out / "sum.done").read_text() == f"{child} {sum(i * i for i in range(2000))}"
    # a tick every 10 ms: 0.5 s tells a loop that waited for the work (1.5 s) from
    # a loaded machine's scheduling
    assert gaps, "no tick"
    assert max(gaps) < 0.5, max(gaps)
    # the pool closed with the worker's run: its process has exited
    assert not alive(child)


async def test_a_lost_lease_kills_a_cpu_bound_handler(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    seen: dict[str, int] = {}

    async def body(worker: trioq.Worker, client: trioq.Client) -> None:
        await client.submit("cpu:spin", {"dir": str(out)}, id="spin")
        await wait_for(lambda: (out / "spin.start").exists(), what="the handler started")
        child = seen["child"] = pid_in(out / "spin.start")
        assert child != os.getpid()
        assert alive(child)
        # cancelled through the API: the worker's next heartbeat is answered
        # LeaseLost/JobNotFound, which cancels the job's scope
        assert await client.cancel("spin") == "cancelling"
        await wait_for(gone(child))
        await wait_for(lambda: worker.counts["lost"] == 1, what="the job counted as lost")
        record = await client.get("spin")
        assert record.get("outcome") == "cancelled", record
        assert "spin" not in worker.active
        # the pool goes on, with a new process
        await client.submit("cpu:sum", {"dir": str(out), "n": 10}, id="after")
        await wait_for(lambda: (out / "after.done").exists(), what="the next job ran")
        assert pid_in(out / "after.done") != child

    await with_worker(tmp_path, body, heartbeat_interval=0.2)
    assert not (out / "spin.done").exists()


async def test_a_timeout_kills_the_process_and_fails_the_job(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead: list[dict[str, Any]] = []

    async def body(worker: trioq.Worker, client: trioq.Client) -> None:
        # the timeout counts a process start too (about a second, cold): a first job
        # makes sure the pool has a process running
        await client.submit("cpu:sum", {"dir": str(out)}, id="first")
        await wait_for(lambda: worker.counts["completed"] == 1, what="a first job completed")
        await client.submit("cpu:spin-timeout", {"dir": str(out)}, id="slow", max_attempts=1)
        await wait_for(lambda: (out / "slow.start").exists(), what="the handler started")
        child = pid_in(out / "slow.start")

        async def dead_lettered() -> bool:
            dead[:] = (await client.dead())["jobs"]
            return len(dead) == 1

        await wait_for(dead_lettered)
        assert pid_in(out / "first.done") == child  # the pool's one process, reused
        assert not alive(child)

    await with_worker(tmp_path, body)
    assert (dead[0]["jobId"], dead[0]["lastError"]) == ("slow", "timed out after 1 s")


async def test_what_the_process_raises_fails_the_job(tmp_path: Path) -> None:
    dead: list[dict[str, Any]] = []

    async def body(worker: trioq.Worker, client: trioq.Client) -> None:
        await client.submit("cpu:raise", {"dir": str(tmp_path), "n": 7}, id="r", max_attempts=1)

        async def dead_lettered() -> bool:
            dead[:] = (await client.dead())["jobs"]
            return len(dead) == 1

        await wait_for(dead_lettered)

    await with_worker(tmp_path, body)
    error = dead[0]["lastError"]
    assert error.startswith("ArithmeticError: no luck with 7 in "), error
    assert int(error.rpartition(" ")[2]) != os.getpid()


async def test_an_invalid_payload_never_reaches_a_process(tmp_path: Path) -> None:
    dead: list[dict[str, Any]] = []

    async def body(worker: trioq.Worker, client: trioq.Client) -> None:
        await client.submit("cpu:sum", {"n": 1}, id="bad")  # no "dir"

        async def dead_lettered() -> bool:
            dead[:] = (await client.dead())["jobs"]
            return len(dead) == 1

        await wait_for(dead_lettered)

    await with_worker(tmp_path, body)
    assert dead[0]["lastError"].startswith("invalid payload for 'cpu:sum'")
