"""``trioq.SyncClient``: :class:`~trioq.Client` for code that is not async (Django,
Flask, scripts, notebooks).

Design: one daemon thread per ``SyncClient`` runs a trio event loop with an anyio
blocking portal, and owns one :class:`~trioq.Client`. Each blocking method hands
its call to that loop (``portal.call``) and waits for the outcome, so the calls,
ids, retries, deadlines, return values and exceptions are the async client's own.
Any number of threads may call at once: each call is a task of its own in the loop,
and concurrent :meth:`~SyncClient.submit` calls share bulk requests there as they
do in async code.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import ssl
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Future
from functools import partial
from types import EllipsisType, TracebackType
from typing import Any, Self, TypeVar

import anyio
import httpx
from anyio.from_thread import BlockingPortal
from pydantic import SecretStr

from ._calls import DEFAULT_URL
from ._errors import TrioqError
from ._tracing import capture, within
from .client import (
    Claimed,
    Client,
    ExchangeAnswer,
    Failure,
    Held,
    JobSpec,
    Submitted,
    _leader_url,
)
from .storage._protocol import Storage

_T = TypeVar("_T")


class _Loop:
    """The thread that runs the event loop, its portal and the client in it."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._pid = os.getpid()
        self._idle = threading.Condition()
        self._calls = 0
        self._closed = False
        ready: Future[BlockingPortal] = Future()
        # a daemon thread: a client nobody closed must not keep the process alive
        # (one left open at exit is still closed, by SyncClient's finalizer)
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="trioq-sync-client", daemon=True
        )
        self._thread.start()
        self._portal = ready.result()
        try:
            self._portal.call(client.__aenter__)
        except BaseException:
            self._stop()
            raise

    def _run(self, ready: Future[BlockingPortal]) -> None:
        async def serve() -> None:
            async with BlockingPortal() as portal:
                ready.set_result(portal)
                await portal.sleep_until_stopped()

        try:
            anyio.run(serve, backend="trio")
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                raise

    def call(self, func: Callable[[], Awaitable[_T]]) -> _T:
        """``await func()`` in the loop; its result or its exception, here."""
        if os.getpid() != self._pid:
            # after a fork the loop's thread exists only in the parent: the call
            # would wait forever
            raise RuntimeError(
                "this SyncClient was created in another process (before a fork): "
                "create one in each process"
            )
        with self._idle:
            if self._closed:
                raise RuntimeError("this SyncClient is closed")
            self._calls += 1
        # the caller's trace context goes with the call (the loop's thread has its own)
        context = capture()
        try:
            if context is None:
                return self._portal.call(func)
            return self._portal.call(within, context, func)
        finally:
            with self._idle:
                self._calls -= 1
                self._idle.notify_all()

    def close(self) -> None:
        """Refuse new calls, let those in flight finish (each is bounded by the
        client's deadlines), close the client and end the thread."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
            self._idle.wait_for(lambda: self._calls == 0)
        if os.getpid() != self._pid or threading.current_thread() is self._thread:
            # the thread lives in the parent process, or this is the loop's own thread
            # (a garbage collection there) which cannot wait for itself: leave it
            return
        try:
            self._portal.call(self.client.aclose)
        finally:
            self._stop()

    def _stop(self) -> None:
        self._portal.call(self._portal.stop)
        self._thread.join()


class SyncClient:
    """A blocking :class:`~trioq.Client`, for code that is not async (Django, Flask,
    scripts). Same methods, arguments, return values and exceptions as ``Client``,
    and the same ids, retries and deadlines::

        with trioq.SyncClient("http://broker:8080") as client:
            job_id = client.submit("email:send", {"to": "a@example.com"})

    or keep one for the life of the process (a module-level client in a web app)
    and call :meth:`close` at the end; one never closed is closed when it is
    garbage-collected or at interpreter exit.

    Thread-safe: any number of threads may share one instance and call it at once
    (concurrent ``submit`` calls share bulk requests). Each instance runs a trio
    event loop in a daemon thread of its own, so it works the same whatever the
    calling thread runs; but a method blocks its caller, so in async code (an
    asyncio web app, a trio program) use :class:`~trioq.Client` instead: calling a
    ``SyncClient`` there stalls that event loop for the length of the call. After
    ``os.fork()`` the child must create its own (a call on the parent's raises
    RuntimeError), as must code that runs after :meth:`close`.

    The parameters are :class:`~trioq.Client`'s (``transport`` runs in the
    client's own trio thread). Raises ValueError for a URL that is not
    ``http://`` or ``https://``, before any thread is started.
    """

    def __init__(
        self,
        urls: str | Sequence[str] = DEFAULT_URL,
        *,
        token: str | SecretStr | None = None,
        verify: bool | str | os.PathLike[str] | ssl.SSLContext = True,
        timeout: float = 10.0,
        retry_deadline: float = 30.0,
        backoff_base: float = 0.05,
        backoff_max: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        client = Client(
            urls,
            token=token,
            verify=verify,
            timeout=timeout,
            retry_deadline=retry_deadline,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            transport=transport,
            rng=rng,
        )
        self._client = client
        self._loop = _Loop(client)
        # the finalizer holds the loop, not self: an instance nobody closed is
        # closed when collected, or at exit while its daemon thread still runs
        self._finalizer = weakref.finalize(self, self._loop.close)

    @classmethod
    def from_storage(cls, storage: Storage, *, key: str = "queue.json", **kwargs: Any) -> Self:
        """A client of the broker the queue document names as its leader
        (:meth:`Client.from_storage`: the storage is read in a trio run of its own in
        the calling thread, so do not call this from inside a trio run)."""
        url = anyio.run(partial(_leader_url, storage, key=key), backend="trio")
        return cls(url, **kwargs)

    @property
    def token(self) -> str | SecretStr | None:
        """The bearer token given (see :class:`~trioq.Client`)."""
        return self._client.token

    @property
    def retry_deadline(self) -> float:
        """Seconds a call keeps retrying by default."""
        return self._client.retry_deadline

    @property
    def url(self) -> str:
        """The broker URL the client dials now."""
        return self._client.url

    @property
    def urls(self) -> list[str]:
        """The broker URLs the client knows (a copy: the client's thread adds the
        leaders it is sent to)."""
        return list(self._client.urls)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the calls in flight, close the connections and end the client's
        thread. Idempotent; any call afterwards raises RuntimeError."""
        self._finalizer()

    # ------------------------------------------------------------------ producer

    def submit(
        self,
        type: str,
        payload: Any,
        *,
        max_attempts: int | None = None,
        delay: float | dt.timedelta | None = None,
        id: str | None = None,
        priority: int = 0,
        unique_key: str | None = None,
        ttl: float | dt.timedelta | None = None,
    ) -> str:
        """:meth:`Client.submit`: enqueue one job; its id once it is durable."""
        return self._loop.call(
            partial(
                self._client.submit,
                type,
                payload,
                max_attempts=max_attempts,
                delay=delay,
                id=id,
                priority=priority,
                unique_key=unique_key,
                ttl=ttl,
            )
        )

    def submit_many(self, jobs: Iterable[JobSpec]) -> list[str]:
        """:meth:`Client.submit_many`: enqueue a batch atomically; ids in order."""
        specs = list(jobs)  # a generator runs here, in the caller's thread
        return self._loop.call(partial(self._client.submit_many, specs))

    def submit_each(self, jobs: Iterable[JobSpec]) -> list[str | TrioqError]:
        """:meth:`Client.submit_each`: enqueue jobs each on its own; each job's id or
        the error that refused it (returned, not raised)."""
        specs = list(jobs)
        return self._loop.call(partial(self._client.submit_each, specs))

    def submit_bulk(self, jobs: Iterable[JobSpec]) -> list[Submitted | TrioqError]:
        """:meth:`Client.submit_bulk`: :meth:`submit_each`, telling duplicates apart."""
        specs = list(jobs)
        return self._loop.call(partial(self._client.submit_bulk, specs))

    def cancel_matching(
        self, *, type: str | None = None, status: str | None = None
    ) -> dict[str, int]:
        """:meth:`Client.cancel_matching`: cancel every queued job that matches."""
        return self._loop.call(partial(self._client.cancel_matching, type=type, status=status))

    def purge_dead(self, *, type: str | None = None) -> int:
        """:meth:`Client.purge_dead`: remove dead jobs for good; how many."""
        return self._loop.call(partial(self._client.purge_dead, type=type))

    def set_type_rule(
        self,
        type: str,
        *,
        paused: bool | EllipsisType = ...,
        max_in_progress: int | EllipsisType | None = ...,
        max_per_second: float | EllipsisType | None = ...,
    ) -> dict[str, Any]:
        """:meth:`Client.set_type_rule`: pause, resume or limit a job type."""
        return self._loop.call(
            partial(
                self._client.set_type_rule,
                type,
                paused=paused,
                max_in_progress=max_in_progress,
                max_per_second=max_per_second,
            )
        )

    def pause(self, type: str) -> None:
        """:meth:`Client.pause`: claims skip jobs of ``type``."""
        self._loop.call(partial(self._client.pause, type))

    def resume(self, type: str) -> None:
        """:meth:`Client.resume`: claims take jobs of ``type`` again."""
        self._loop.call(partial(self._client.resume, type))

    def type_rules(self) -> list[dict[str, Any]]:
        """:meth:`Client.type_rules`: each type's rule, with its queued counts."""
        return self._loop.call(self._client.type_rules)

    def set_schedule(
        self,
        name: str,
        type: str,
        payload: Any = None,
        *,
        cron: str | None = None,
        every: float | dt.timedelta | None = None,
        timezone: str = "UTC",
        missed: str = "once",
        grace: float = 60.0,
        max_attempts: int | None = None,
        priority: int = 0,
    ) -> dict[str, Any]:
        """:meth:`Client.set_schedule`: create or replace a periodic job."""
        return self._loop.call(
            partial(
                self._client.set_schedule,
                name,
                type,
                payload,
                cron=cron,
                every=every,
                timezone=timezone,
                missed=missed,
                grace=grace,
                max_attempts=max_attempts,
                priority=priority,
            )
        )

    def schedules(self) -> list[dict[str, Any]]:
        """:meth:`Client.schedules`: every periodic job, as stored."""
        return self._loop.call(self._client.schedules)

    def delete_schedule(self, name: str) -> None:
        """:meth:`Client.delete_schedule`: delete a periodic job."""
        self._loop.call(partial(self._client.delete_schedule, name))

    def cancel(self, job_id: str) -> str:
        """:meth:`Client.cancel`: cancel a job; its status afterwards."""
        return self._loop.call(partial(self._client.cancel, job_id))

    def get(self, job_id: str) -> dict[str, Any]:
        """:meth:`Client.get`: a job's record (``JobNotFound`` if there is none)."""
        return self._loop.call(partial(self._client.get, job_id))

    def result(self, job_id: str, *, timeout: float | None = None) -> Any:
        """:meth:`Client.result`: wait for a job to end; its handler's result
        (``JobFailed`` for a dead or cancelled job, ``TimeoutError`` after ``timeout``)."""
        return self._loop.call(partial(self._client.result, job_id, timeout=timeout))

    def stats(self, *, retry_deadline: float | None = None) -> dict[str, Any]:
        """:meth:`Client.stats`: queue counters from the leader."""
        return self._loop.call(partial(self._client.stats, retry_deadline=retry_deadline))

    def jobs(
        self,
        *,
        limit: int = 1000,
        cursor: str | None = None,
        status: str | None = None,
        type: str | None = None,
    ) -> dict[str, Any]:
        """:meth:`Client.jobs`: queue stats and a page of queued jobs."""
        return self._loop.call(
            partial(self._client.jobs, limit=limit, cursor=cursor, status=status, type=type)
        )

    def dead(self, *, limit: int = 1000, cursor: str | None = None) -> dict[str, Any]:
        """:meth:`Client.dead`: a page of the dead-letter list."""
        return self._loop.call(partial(self._client.dead, limit=limit, cursor=cursor))

    def requeue(self, job_id: str) -> None:
        """:meth:`Client.requeue`: move a dead-lettered job back to the queue."""
        self._loop.call(partial(self._client.requeue, job_id))

    # -------------------------------------------------------------------- worker

    def claim(
        self,
        worker_id: str,
        *,
        types: Sequence[str] | None = None,
        max: int = 1,
        wait: float = 0.0,
        retry_deadline: float | None = None,
    ) -> list[Claimed]:
        """:meth:`Client.claim`: claim up to ``max`` jobs, waiting up to ``wait`` s."""
        return self._loop.call(
            partial(
                self._client.claim,
                worker_id,
                types=types,
                max=max,
                wait=wait,
                retry_deadline=retry_deadline,
            )
        )

    def exchange(
        self,
        worker_id: str,
        *,
        heartbeat: Sequence[Held] = (),
        complete: Sequence[Held] = (),
        fail: Sequence[Failure] = (),
        release: Sequence[Held] = (),
        claim: int = 0,
        types: Sequence[str] | None = None,
        wait: float = 0.0,
        retry_deadline: float | None = None,
    ) -> ExchangeAnswer:
        """:meth:`Client.exchange`: a worker's reports and claim in one round trip."""
        return self._loop.call(
            partial(
                self._client.exchange,
                worker_id,
                heartbeat=heartbeat,
                complete=complete,
                fail=fail,
                release=release,
                claim=claim,
                types=types,
                wait=wait,
                retry_deadline=retry_deadline,
            )
        )

    def heartbeat(self, job_id: str, worker_id: str, *, attempt: int | None = None) -> None:
        """:meth:`Client.heartbeat`: renew a held job's lease."""
        self._loop.call(partial(self._client.heartbeat, job_id, worker_id, attempt=attempt))

    def complete(
        self, job_id: str, worker_id: str, *, attempt: int | None = None, result: Any = None
    ) -> None:
        """:meth:`Client.complete`: report a held job done (with its result)."""
        self._loop.call(
            partial(self._client.complete, job_id, worker_id, attempt=attempt, result=result)
        )

    def fail(
        self,
        job_id: str,
        worker_id: str,
        error: str,
        *,
        attempt: int | None = None,
        retry_in: float | None = None,
        final: bool = False,
    ) -> str:
        """:meth:`Client.fail`: report a failed attempt; ``"retrying"`` or ``"dead"``."""
        return self._loop.call(
            partial(
                self._client.fail,
                job_id,
                worker_id,
                error,
                attempt=attempt,
                retry_in=retry_in,
                final=final,
            )
        )

    def release(self, job_id: str, worker_id: str, *, attempt: int | None = None) -> None:
        """:meth:`Client.release`: give a claimed job back without counting the attempt."""
        self._loop.call(partial(self._client.release, job_id, worker_id, attempt=attempt))
