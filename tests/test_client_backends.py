"""The clients where producers live: ``trioq.Client`` under asyncio as under trio,
``trioq.SyncClient`` from plain threads, and the two examples (a script, a FastAPI
app served by uvicorn) as subprocesses.

Everything talks over real HTTP to a real broker (hypercorn on 127.0.0.1, a free
port, a file-backed queue) whose jobs a real trio worker runs; both run in a trio
event loop in a background thread, so that the tests themselves are plain functions
free to start asyncio loops, threads and subprocesses. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
import trio
from anyio.from_thread import start_blocking_portal

import trioq
from _broker_proc import start_in_process
from trioq.broker._settings import BrokerSettings

ROOT = Path(__file__).resolve().parent.parent

LIMIT = 30.0
"""Upper bound, in seconds, on any wait for a state (how long a broken build may
hang a test; the waits take far less)."""

SHORT_DEADLINE = 0.5
"""The retry deadline of the clients pointed at a broker that is down."""


@dataclass
class Stack:
    """A running broker and a trio worker for its ``email:send`` and
    ``image:resize`` jobs."""

    url: str
    data_dir: Path
    ran: dict[str, Any]
    """Job id -> payload of each job a handler ran (written by the worker's thread)."""


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """The stack, on the default layout (or the one a test passes indirectly)."""
    layout = getattr(request, "param", "log")
    ran: dict[str, Any] = {}
    data_dir = tmp_path / "queue"

    async def serve(*, task_status: anyio.abc.TaskStatus[str]) -> None:
        settings = BrokerSettings.load(
            {"port": 0, "data_dir": str(data_dir), "group_commit_interval": 0, "layout": layout},
            environ={},
        )
        async with trio.open_nursery() as nursery:
            broker = await start_in_process(nursery, settings)
            worker = trioq.Worker(
                broker_url=broker.url, concurrency=8, poll_interval=0.2, shutdown_grace=1
            )

            @worker.job("email:send")
            @worker.job("image:resize")
            async def record(payload: dict[str, Any], ctx: trioq.JobContext) -> None:
                ran[ctx.id] = payload

            await nursery.start(worker.run)
            task_status.started(broker.url)

    with start_blocking_portal("trio") as portal:
        running, url = portal.start_task(serve)
        try:
            yield Stack(url, data_dir, ran)
        finally:
            running.cancel()  # the worker drains, the broker stops


@pytest.fixture
def refused_url() -> Iterator[str]:
    """The URL of a port that is bound but not listening: connections are refused
    (and no other process can take the port meanwhile)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def wait_until(check: Callable[[], bool], *, what: str, within: float = LIMIT) -> None:
    """Poll ``check()`` from a plain thread until it is true (AssertionError after
    ``within`` seconds)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within:g} s: {what}")
        time.sleep(0.05)


async def wait_completed(client: trioq.Client, ids: list[str]) -> None:
    """Poll the broker until every job in ``ids`` is completed (any event loop)."""
    with anyio.fail_after(LIMIT):
        while True:
            statuses = [(await client.get(job_id))["status"] for job_id in ids]
            if all(status == "completed" for status in statuses):
                return
            assert not {"dead", "cancelled"} & set(statuses), statuses
            await anyio.sleep(0.05)


# ------------------------------------------------------- the async client, asyncio


def test_async_client_under_asyncio_submits_jobs_a_trio_worker_runs(stack: Stack) -> None:
    async def produce() -> list[str]:
        async with trioq.Client(stack.url) as client:
            ids = [await client.submit("email:send", {"to": "one@example.com"}, id="first")]
            ids += await client.submit_many(
                [trioq.JobSpec("email:send", {"to": f"batch{i}@example.com"}) for i in range(3)]
            )
            # concurrent submits share bulk requests (the coalescer's events, on asyncio)
            ids += await asyncio.gather(
                *(client.submit("email:send", {"to": f"many{i}@example.com"}) for i in range(20))
            )
            # a retried submit with the same id creates nothing new
            assert await client.submit("email:send", {"to": "other@example.com"}, id="first") == (
                "first"
            )
            await wait_completed(client, ids)
            return ids

    ids = asyncio.run(produce())
    assert len(set(ids)) == 24
    assert ids[0] == "first"
    assert stack.ran["first"] == {"to": "one@example.com"}
    assert sorted(stack.ran[job_id]["to"] for job_id in ids[4:]) == sorted(
        f"many{i}@example.com" for i in range(20)
    )


@dataclass
class Errors:
    """What a scenario of failing calls raised under one event loop."""

    not_found: BaseException
    refused_by_schema: BaseException
    stats_down: BaseException
    stats_elapsed: float
    submit_down: BaseException
    submit_elapsed: float


async def failing_calls(url: str, down_url: str) -> Errors:
    """The same calls, whichever event loop runs them."""
    async with trioq.Client(url) as client:
        with pytest.raises(trioq.TrioqError) as not_found:
            await client.get("never-submitted")
        with pytest.raises(trioq.TrioqError) as refused:
            await client.submit("email:send", 1, id="not a valid id!")
    async with trioq.Client(
        down_url, retry_deadline=SHORT_DEADLINE, backoff_base=0.01, backoff_max=0.1
    ) as client:
        started = anyio.current_time()
        with pytest.raises(trioq.TrioqError) as stats_down:
            await client.stats()
        stats_elapsed = anyio.current_time() - started
        started = anyio.current_time()
        with pytest.raises(trioq.TrioqError) as submit_down:
            await client.submit("email:send", {"to": "nobody@example.com"})
        submit_elapsed = anyio.current_time() - started
    return Errors(
        not_found.value,
        refused.value,
        stats_down.value,
        stats_elapsed,
        submit_down.value,
        submit_elapsed,
    )


def test_the_same_errors_under_asyncio_and_trio(stack: Stack, refused_url: str) -> None:
    under_asyncio = asyncio.run(failing_calls(stack.url, refused_url))
    under_trio = trio.run(failing_calls, stack.url, refused_url)
    for errors in (under_asyncio, under_trio):
        assert type(errors.not_found) is trioq.JobNotFound
        assert type(errors.refused_by_schema) is trioq.BrokerProtocolError
        # a broker that is down: retried to the deadline, then BrokerUnreachable
        # saying what was tried (the upper bound only catches a hang)
        for error, elapsed in (
            (errors.stats_down, errors.stats_elapsed),
            (errors.submit_down, errors.submit_elapsed),
        ):
            assert type(error) is trioq.BrokerUnreachable
            assert SHORT_DEADLINE <= elapsed < SHORT_DEADLINE + 10
        assert re.search(
            rf"gave up GET /v1/stats after \d+ attempts in \d+\.\d s to {refused_url}\)$",
            str(errors.stats_down),
        ), errors.stats_down
    assert str(under_asyncio.not_found) == str(under_trio.not_found)
    assert str(under_asyncio.refused_by_schema) == str(under_trio.refused_by_schema)


def test_asyncio_cancellation_mid_submit_leaves_no_caller_waiting() -> None:
    """asyncio's task.cancel() goes through anyio's shield: the callers whose jobs
    ride in the request of a sender cancelled that way get an error at once instead
    of waiting forever for an outcome."""

    async def scenario() -> tuple[str | BaseException, str | BaseException]:
        requests = 0
        arrived = asyncio.Condition()
        release = asyncio.Event()
        handlers: set[asyncio.Task[Any]] = set()

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            """Read a request, count it, and answer nothing until released."""
            nonlocal requests
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await reader.readuntil(b"\r\n\r\n")
                async with arrived:
                    requests += 1
                    arrived.notify_all()
                await release.wait()
            finally:
                writer.close()
                await writer.wait_closed()

        async def until(count: int) -> None:
            async with asyncio.timeout(LIMIT), arrived:
                await arrived.wait_for(lambda: requests >= count)

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server, trioq.Client(url, timeout=LIMIT, retry_deadline=LIMIT) as client:

            def submit(n: int) -> asyncio.Task[str]:
                job = client.submit("email:send", {"to": f"{n}@x.test"}, id=f"job-{n}")
                return asyncio.create_task(job)

            first, second = submit(1), submit(2)  # the two senders, each alone
            await until(2)
            third, fourth, fifth = submit(3), submit(4), submit(5)
            await asyncio.sleep(0)  # they run to their wait: queued behind the senders
            first.cancel()  # its turn goes to the third, which sends 3, 4 and 5
            await until(3)
            third.cancel()  # mid-send: 4 and 5 rode in its request
            async with asyncio.timeout(LIMIT):  # far shorter than the client's deadlines
                outcomes = await asyncio.gather(fourth, fifth, return_exceptions=True)
            second.cancel()
            for cancelled in (first, second, third):
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
            release.set()
            async with asyncio.timeout(LIMIT):
                await asyncio.gather(*handlers, return_exceptions=True)
            return outcomes

    outcomes = asyncio.run(scenario())
    assert [type(outcome) for outcome in outcomes] == [trioq.BrokerUnreachable] * 2, outcomes
    for n, outcome in zip((4, 5), outcomes, strict=True):
        # each says its job's id: submitting it again with that id is safe
        assert f"carrying job job-{n} was cancelled mid-send" in str(outcome), outcome
        assert f"id='job-{n}'" in str(outcome), outcome


def test_from_storage_is_trio_only_and_says_so() -> None:
    async def under_asyncio() -> None:
        await trioq.Client.from_storage(trioq.MemoryStorage())

    with pytest.raises(RuntimeError, match=r"reads the storage with trio.*SyncClient"):
        asyncio.run(under_asyncio())


# ------------------------------------------------------------------- SyncClient


def test_sync_client_has_every_method_of_client_with_its_signature() -> None:
    for name, method in inspect.getmembers(trioq.Client, inspect.iscoroutinefunction):
        if name.startswith("_") or name == "aclose":
            continue
        mirrored = getattr(trioq.SyncClient, name, None)
        assert mirrored is not None, f"SyncClient.{name} is missing"
        assert not inspect.iscoroutinefunction(mirrored), name
        assert inspect.signature(mirrored) == inspect.signature(method), name
    assert inspect.signature(trioq.SyncClient) == inspect.signature(trioq.Client)


def test_sync_client_from_a_plain_thread(stack: Stack, refused_url: str) -> None:
    with trioq.SyncClient(stack.url) as client:
        assert client.url == stack.url
        outcome: dict[str, Any] = {}

        def produce() -> None:
            outcome["id"] = client.submit("email:send", {"to": "thread@example.com"})
            outcome["ids"] = client.submit_many(
                trioq.JobSpec("image:resize", {"image": f"{i}.png"}) for i in range(2)
            )

        thread = threading.Thread(target=produce)
        thread.start()
        thread.join(LIMIT)
        assert not thread.is_alive()
        ids = [outcome["id"], *outcome["ids"]]
        wait_until(
            lambda: all(client.get(job_id)["status"] == "completed" for job_id in ids),
            what="the jobs completed",
        )
        assert stack.ran[outcome["id"]] == {"to": "thread@example.com"}
        assert client.stats()["completedTotal"] == len(ids)
        # the async client's exceptions, raised in the calling thread
        with pytest.raises(trioq.JobNotFound):
            client.get("never-submitted")
        with pytest.raises(trioq.BrokerProtocolError):
            client.submit("email:send", 1, id="not a valid id!")
    with pytest.raises(RuntimeError, match="closed"):
        client.get(ids[0])
    client.close()  # idempotent

    with trioq.SyncClient(refused_url, retry_deadline=SHORT_DEADLINE, backoff_max=0.1) as down:
        started = time.monotonic()
        with pytest.raises(trioq.BrokerUnreachable, match="gave up GET /v1/stats"):
            down.stats()
        assert SHORT_DEADLINE <= time.monotonic() - started < SHORT_DEADLINE + 10


def test_sync_client_shared_by_many_threads_at_once(stack: Stack) -> None:
    threads, per_thread = 8, 5
    together = threading.Barrier(threads, timeout=LIMIT)

    with trioq.SyncClient(stack.url) as client:

        def produce(n: int) -> list[str]:
            together.wait()  # every thread calls at the same moment
            return [
                client.submit("email:send", {"to": f"t{n}-{i}@example.com"})
                for i in range(per_thread)
            ]

        with ThreadPoolExecutor(threads) as pool:
            ids = [job_id for batch in pool.map(produce, range(threads)) for job_id in batch]
        assert len(set(ids)) == threads * per_thread
        wait_until(
            lambda: all(client.get(job_id)["status"] == "completed" for job_id in ids),
            what="every job completed",
        )
    assert sorted(stack.ran[job_id]["to"] for job_id in ids) == sorted(
        f"t{n}-{i}@example.com" for n in range(threads) for i in range(per_thread)
    )


def test_sync_client_ends_its_thread_on_close_or_when_collected(stack: Stack) -> None:
    def loop_threads() -> int:
        return sum(t.name == "trioq-sync-client" for t in threading.enumerate())

    before = loop_threads()
    client = trioq.SyncClient(stack.url)
    assert loop_threads() == before + 1
    client.stats()
    client.close()
    assert loop_threads() == before

    # one nobody closes is closed when it is collected
    forgotten = trioq.SyncClient(stack.url)
    forgotten.stats()
    del forgotten
    gc.collect()
    assert loop_threads() == before


# from_storage reads the document's header, or the log layout's newest record
@pytest.mark.parametrize("stack", ["document", "log"], indirect=True)
def test_sync_client_from_storage_finds_the_leader(stack: Stack) -> None:
    with trioq.SyncClient.from_storage(trioq.FileStorage(stack.data_dir)) as client:
        assert client.url == stack.url
        assert client.stats()["brokerAddress"] == stack.url


# -------------------------------------------------------------------- examples


LOCAL_FREE_PORT = ("--host", "127.0.0.1", "--port", "0")
"""uvicorn's flags for 127.0.0.1 and a free port (its log names the port)."""


def example_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@pytest.mark.parametrize("via", ["flag", "environment"])
def test_sync_submit_example_completes(stack: Stack, via: str) -> None:
    argv = [sys.executable, "examples/sync_submit.py", "4", "--timeout", str(LIMIT)]
    env = example_env()
    if via == "flag":
        argv += ["--broker", stack.url]
    else:
        env["TRIOQ_BROKER_URL"] = stack.url
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LIMIT + 30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"submitted 4 jobs to {stack.url}" in done.stdout
    assert "all 4 jobs completed" in done.stdout
    assert sorted(p["image"] for p in stack.ran.values()) == [f"photo-{i}.png" for i in range(4)]


def test_fastapi_example_under_uvicorn(stack: Stack, tmp_path: Path) -> None:
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", *LOCAL_FREE_PORT],
            cwd=ROOT,
            env=example_env(TRIOQ_BROKER_URL=stack.url),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        found: list[str] = []

        def listening() -> bool:
            assert server.poll() is None, log_path.read_text()
            match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log_path.read_text())
            if match:
                found.append(match[1])
            return bool(match)

        wait_until(listening, what="uvicorn's listening line")
        response = httpx.post(
            f"{found[0]}/signup", json={"email": "ada@example.com", "name": "Ada"}, timeout=LIMIT
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["jobId"]
        with trioq.SyncClient(stack.url) as client:
            wait_until(
                lambda: client.get(job_id)["status"] == "completed", what="the email job ran"
            )
        assert stack.ran[job_id] == {"to": "ada@example.com", "subject": "Welcome, Ada!"}

        server.terminate()  # the lifespan closes the client on the way out
        # uvicorn re-raises the signal once it has shut down gracefully
        assert server.wait(timeout=LIMIT) in (0, -signal.SIGTERM), log_path.read_text()
        assert "Application shutdown complete" in log_path.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=LIMIT)
