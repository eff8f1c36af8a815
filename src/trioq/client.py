"""``trioq.Client``: an async HTTP client of the broker, for producers and workers.

What it does for you:

- job ids are generated client-side, so a retried submit never creates a second job;
- connection errors and 503 answers are retried with bounded exponential backoff
  within an overall deadline; ``NotLeader`` answers are followed to the leader;
- a broker that answers ``NotLeader`` while it is still starting (role ``"starting"``,
  no leader known) is asked again after a short wait: that is not a leader change,
  so the client does not move to another URL for it;
- concurrent :meth:`~Client.submit` calls share requests: they are coalesced into
  one ``POST /v1/jobs/bulk`` (at most two in flight), each caller getting its own
  outcome, with no background task (:class:`~trioq._coalescer.Coalescer`);
- a claim is retried only when it provably claimed nothing (the connection was
  never made, or the broker answered 503); a claim whose answer was lost in flight
  is not repeated (it raises :class:`~trioq.BrokerUnreachable`), and the jobs it may
  have claimed return to the queue when their lease runs out (the same holds for an
  :meth:`~Client.exchange` that carries a claim);
- every retry is logged at debug level (logger ``trioq.client``); the error raised at
  the deadline says how many attempts were made, for how long, and to which URLs;
- error bodies come back as the matching :class:`~trioq.TrioqError` subclass;
- payloads are JSON values that must round-trip exactly: NaN, infinities and
  integers outside ``-2**63 .. 2**64-1`` raise ``ValueError`` before anything is sent;
- requests are checked against the broker's own wire schema (:mod:`trioq._wire`)
  before they are sent: a job the broker would refuse raises the same
  :class:`~trioq.BrokerProtocolError`, with the same message, without a round trip;
  answers are read with the same schema.

The client runs under trio and under asyncio (its waits, deadlines and shields are
anyio's, which defer to trio's under trio): a web app's asyncio event loop submits
with the same calls, ids, retries and errors as a trio program. Only
:meth:`~Client.from_storage` is trio-only. :class:`~trioq.SyncClient` wraps it for
code that is not async at all.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import random
import ssl
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import EllipsisType, TracebackType
from typing import Any, Protocol, Self

import anyio
import httpx
import orjson
import trio
from pydantic import SecretStr

from ._calls import DEFAULT_URL as DEFAULT_URL
from ._calls import STARTING_RETRY_MAX as STARTING_RETRY_MAX
from ._calls import Caller, error_from_body, own_copy
from ._calls import error_from_response as error_from_response
from ._calls import parse_urls as parse_urls
from ._coalescer import BULK_BYTES, MAX_BULK, Coalescer
from ._errors import JobFailed, NotLeader, PayloadTooLarge, QueueFull, TrioqError
from ._tokens import secret_value, ssl_context
from ._tracing import Carrier, submit_span
from ._wire import (
    MAX_BATCH,
    MAX_WAIT_MS,
    WORKER_ID,
    BatchAnswer,
    ClaimedJob,
    ClaimMany,
    ClaimRequest,
    FailAnswer,
    FailRequest,
    HeldJob,
    JobStatus,
    NewJob,
    ScheduleRequest,
    TypeRuleRequest,
    adapter,
    checked_job,
    parse,
)
from ._wire import encode_payload as encode_payload
from .core._log_layout import is_marker, newest_leader
from .core._state import QueueState
from .storage._protocol import Storage

_log = logging.getLogger("trioq.client")


Claimed = ClaimedJob
"""A job handed to a worker (the wire's :class:`~trioq._wire.ClaimedJob`)."""


@dataclass(slots=True)
class JobSpec:
    """One job for :meth:`Client.submit_many`: the wire's :class:`~trioq._wire.NewJob`
    as a producer writes it (type first, the delay in seconds or as a timedelta)."""

    type: str
    payload: Any
    id: str | None = None
    max_attempts: int | None = None
    delay: float | dt.timedelta | None = None
    priority: int = 0
    """Higher is claimed first (within a priority: ready time, then enqueue order)."""
    unique_key: str | None = None
    """While a job with this key is queued or running, this one is its duplicate."""
    ttl: float | dt.timedelta | None = None
    """Still unclaimed this long after the submit, the job is dead-lettered."""


class Held(Protocol):
    """A job as a worker holds it: its id and the attempt it holds (a
    :class:`Claimed` is one)."""

    @property
    def id(self) -> str: ...

    @property
    def attempt(self) -> int | None: ...


@dataclass(slots=True, frozen=True)
class Failure:
    """A failed attempt, for :meth:`Client.exchange` (the fields of :meth:`Client.fail`)."""

    job: Held
    error: str
    retry_in: float | None = None
    """Seconds before the retry (None: the broker's backoff)."""
    final: bool = False
    """Dead-letter the job now, whatever attempts are left."""


@dataclass(slots=True, frozen=True)
class Submitted:
    """One job's outcome in :meth:`Client.submit_bulk`: its id, and whether a job
    with that id was known already (then nothing new was enqueued)."""

    job_id: str
    duplicate: bool


@dataclass(slots=True, frozen=True)
class _Carrying:
    """A report on a held job that carries a value of the handler's (its JSON)."""

    job: Held

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def attempt(self) -> int | None:
        return self.job.attempt


@dataclass(slots=True, frozen=True)
class Completion(_Carrying):
    """A completed job with its handler's result, for :meth:`Client.exchange`'s
    ``complete`` (a bare :class:`Held` completes without one)."""

    result_json: bytes
    """The result's JSON (:func:`encode_payload` of the handler's return value)."""


@dataclass(slots=True, frozen=True)
class Beat(_Carrying):
    """A heartbeat with the handler's progress report, for :meth:`Client.exchange`'s
    ``heartbeat`` (a bare :class:`Held` renews the lease only)."""

    progress_json: bytes
    """The report's JSON (:func:`encode_payload` of the value)."""


Outcome = str | TrioqError
"""One item's result in a bulk or exchange answer: a job id (bulk) or the job's
status after the call (exchange), or the error the broker gave that item."""


@dataclass(slots=True, frozen=True)
class ExchangeAnswer:
    """What :meth:`Client.exchange` brought back: one :data:`Outcome` per report, in
    the order sent (``"in_progress"`` for a heartbeat, ``"completed"``,
    ``"retrying"`` or ``"dead"`` for a fail, ``"unclaimed"`` or ``"cancelled"`` for a
    release), and the jobs claimed."""

    heartbeat: list[Outcome]
    complete: list[Outcome]
    fail: list[Outcome]
    release: list[Outcome]
    jobs: list[Claimed]


# A client needs few connections: submits are coalesced and a worker batches its
# calls; httpx's pool does work per open connection on every request, so a larger
# pool only costs CPU. (Idle ones kept for reuse: half of them.)
_POOL_LIMITS = httpx.Limits(max_connections=32, max_keepalive_connections=16)


def new_job_id() -> str:
    """A fresh client-side job id (random, 32 hex characters)."""
    return uuid.uuid4().hex


def to_json_value(payload: Any) -> Any:
    """The plain JSON value a payload is sent as; refuses what would not round-trip
    (see :func:`encode_payload`)."""
    return orjson.loads(encode_payload(payload))


def _ttl_ms(ttl: float | dt.timedelta | None) -> int | None:
    """A TTL in ms (at least 1; None: none)."""
    ms = _delay_ms(ttl)
    return None if ms is None else max(1, ms)


def _delay_ms(delay: float | dt.timedelta | None) -> int | None:
    if delay is None:
        return None
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else float(delay)
    if seconds < 0 or math.isnan(seconds):
        raise ValueError("delay must be >= 0")
    return round(seconds * 1000)


class Client:
    """Talks to a trioq broker (or several, following whichever leads).

    Use as ``async with Client("http://broker:8080") as client: ...``, under trio or
    asyncio (see the module docstring; :meth:`from_storage` is trio-only).

    Parameters:
        urls: one broker URL, a comma-separated list, or a sequence of URLs.
        token: bearer token, if the broker requires one (a ``str`` or a pydantic
            ``SecretStr``).
        verify: how the broker's certificate is checked on ``https://`` URLs: True
            (the system's CAs), a path to a CA bundle (PEM), an ``ssl.SSLContext``,
            or False (no check: tests only). A certificate that fails the check
            raises :class:`~trioq.BrokerUnreachable` at once, without retries.
        timeout: per-request timeout in seconds (long-poll claims add their wait).
        retry_deadline: overall time a call keeps retrying connection errors and
            503 answers before it raises (``claim`` and ``stats`` take a per-call
            ``retry_deadline`` too).
        backoff_base: the first retry waits between half and all of twice this.
        backoff_max: cap on one retry's wait (the waits double up to it).
        transport: an httpx transport (e.g. ``httpx.ASGITransport`` for an
            in-process broker, see :mod:`trioq.testing`).
        rng: randomness for the retry jitter (tests pass a seeded one).

    Raises ValueError for a URL that is not ``http://`` or ``https://``, or a CA
    bundle that cannot be loaded.
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
        self.token = token
        self.retry_deadline = retry_deadline
        """Seconds a call keeps retrying by default (see ``retry_deadline`` above)."""
        plain = secret_value(token)
        headers = {"Authorization": f"Bearer {plain}"} if plain else {}
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=timeout,
            transport=transport,
            limits=_POOL_LIMITS,
            verify=ssl_context(os.fspath(verify) if isinstance(verify, os.PathLike) else verify),
        )
        self._caller = Caller(
            parse_urls(urls),
            self._http,
            timeout=timeout,
            retry_deadline=retry_deadline,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            rng=rng or random.Random(),
        )
        self._call = self._caller.call
        # a send is bounded by the caller's own bounds: its retries, then one more try
        self._submits = Coalescer(self._bulk, bound=retry_deadline + 2 * timeout + 1)

    @classmethod
    async def from_storage(
        cls, storage: Storage, *, key: str = "queue.json", **kwargs: Any
    ) -> Self:
        """A client of the broker the queue document names as its leader.

        Trio only: the storage backends do their I/O with trio. Under another event
        loop this raises RuntimeError (``SyncClient.from_storage`` works anywhere).
        """
        return cls(await _leader_url(storage, key=key), **kwargs)

    @property
    def url(self) -> str:
        """The broker URL the client dials now."""
        return self._caller.url

    @property
    def urls(self) -> list[str]:
        """The broker URLs the client knows (the leaders it was sent to included)."""
        return self._caller.urls

    async def __aenter__(self) -> Self:
        await self._http.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (shielded from cancellation, at most 5 s)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self._http.aclose()

    # ------------------------------------------------------------------ producer

    async def submit(
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
        """Enqueue one job; returns its id once the broker has made it durable.

        ``priority``: claims take the highest first (default 0; any 32-bit integer),
        and within a priority the order of ready time, then enqueue order.
        ``unique_key``: while a job with this key is queued or running, this submit
        returns that job's id and enqueues nothing. ``ttl`` (seconds, or a
        timedelta): a job still unclaimed that long after the submit is
        dead-lettered (reason ``deadline``).

        Concurrent calls share requests (``POST /v1/jobs/bulk``), each with its own
        outcome: one caller's refused job never fails another's. A job the schema
        refuses raises here, before anything is sent; a full queue
        (:class:`~trioq.QueueFull`) is retried with backoff until the client's
        ``retry_deadline``, like any 503 answer.
        """
        spec = JobSpec(
            type,
            payload,
            id=id,
            max_attempts=max_attempts,
            delay=delay,
            priority=priority,
            unique_key=unique_key,
            ttl=ttl,
        )
        with submit_span(type) as trace:
            return await self._submit_one(_new_job(spec, "job: ", trace))

    async def _submit_one(self, job: NewJob) -> str:
        item, size = job.to_json(), len(job.payload_json or b"")
        caller = self._caller
        deadline = anyio.current_time() + caller.retry_deadline
        tries = 0
        while True:
            result = await self._submits.submit(item, size)
            if isinstance(result, str):
                return result
            # a QueueFull of the whole request was retried to the deadline already
            left = deadline - anyio.current_time()
            if not isinstance(result, QueueFull) or left <= 0:
                raise result
            tries += 1
            wait = min(caller.retry_wait(tries), left)
            _log.debug("submit of %s: %r; retrying in %.2f s", item.get("id"), result, wait)
            await anyio.sleep(wait)

    async def submit_many(self, jobs: Iterable[JobSpec]) -> list[str]:
        """Enqueue a batch atomically (validated as a whole); ids in input order."""
        specs = list(jobs)
        if not specs:
            return []
        with submit_span(_batch_type(specs), len(specs)) as trace:
            # each payload is encoded once, checked, and spliced into the body as is
            items = [
                _new_job(spec, f"jobs[{i}]: " if len(specs) > 1 else "job: ", trace)
                for i, spec in enumerate(specs)
            ]
            body = {"jobs": [item.to_json() for item in items]}
            response = await self._call("POST", "/v1/jobs/batch", body)
            return adapter(BatchAnswer).validate_json(response.content).job_ids

    async def submit_each(self, jobs: Iterable[JobSpec]) -> list[str | TrioqError]:
        """Enqueue jobs each on its own (``POST /v1/jobs/bulk``); in input order,
        each job's id (also when it existed already), or the
        :class:`~trioq.TrioqError` that refused it alone (``QueueFull`` for the jobs
        past the queue's cap, ``PayloadTooLarge``, ...), returned, not raised.

        Unlike :meth:`submit_many`, the jobs that fit go in when others do not. A job
        the schema refuses raises for the whole call, before anything is sent, as
        there. The jobs go in requests of at most 10,000 (and about 1 MiB of
        payloads), one after the other; an error of a request as a whole (the broker
        unreachable past the retry deadline, ...) is the result of each of its jobs.
        Nothing is retried per job: a ``QueueFull`` job is the caller's to resubmit.
        """
        return [
            result.job_id if isinstance(result, Submitted) else result
            for result in await self.submit_bulk(jobs)
        ]

    async def submit_bulk(self, jobs: Iterable[JobSpec]) -> list[Submitted | TrioqError]:
        """:meth:`submit_each`, telling each job's id and whether it was a duplicate
        (its id known already: nothing new enqueued), or the error that refused it."""
        specs = list(jobs)
        if not specs:
            return []
        results: list[Submitted | TrioqError] = []
        with submit_span(_batch_type(specs), len(specs)) as trace:
            items = [_new_job(spec, f"jobs[{i}]: ", trace) for i, spec in enumerate(specs)]
            for chunk in _chunks(items):
                results += await self._bulk_detailed([item.to_json() for item in chunk])
        return results

    async def _bulk(self, items: list[dict[str, Any]]) -> list[str | TrioqError]:
        """One ``POST /v1/jobs/bulk``: each job's id or its error (the coalescer's)."""
        return [
            result.job_id if isinstance(result, Submitted) else result
            for result in await self._bulk_detailed(items)
        ]

    async def _bulk_detailed(self, items: list[dict[str, Any]]) -> list[Submitted | TrioqError]:
        """One ``POST /v1/jobs/bulk`` (halved and sent again while the broker finds
        the request as a whole too large: then it enqueued none of it)."""
        try:
            response = await self._call("POST", "/v1/jobs/bulk", {"jobs": items})
        except PayloadTooLarge as exc:
            if len(items) == 1:
                return [exc]
            half = len(items) // 2
            return [
                *await self._bulk_detailed(items[:half]),
                *await self._bulk_detailed(items[half:]),
            ]
        except TrioqError as exc:
            return [exc, *(own_copy(exc) for _ in items[1:])]
        return _bulk_results(response.content, len(items))

    async def cancel(self, job_id: str) -> str:
        """Cancel a job; returns its status afterwards."""
        response = await self._call("POST", f"/v1/jobs/{job_id}/cancel", {})
        return adapter(JobStatus).validate_json(response.content).status

    async def get(self, job_id: str) -> dict[str, Any]:
        """A job's record, including finished jobs within the dedup window."""
        return dict((await self._call("GET", f"/v1/jobs/{job_id}")).json())

    async def stats(self, *, retry_deadline: float | None = None) -> dict[str, Any]:
        """Queue counters from the leader (``retry_deadline``: this call's, in seconds)."""
        return dict((await self._call("GET", "/v1/stats", retry_deadline=retry_deadline)).json())

    async def jobs(
        self,
        *,
        limit: int = 1000,
        cursor: str | None = None,
        status: str | None = None,
        type: str | None = None,
    ) -> dict[str, Any]:
        """Queue stats and a page of queued jobs (``GET /v1/jobs``), only those with
        this ``status`` (``"unclaimed"`` or ``"in_progress"``) and this ``type`` when
        given; ``cursor`` is a previous page's ``nextCursor``, with the same filters."""
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        if status is not None:
            params["status"] = status
        if type is not None:
            params["type"] = type
        return dict((await self._call("GET", "/v1/jobs", params=params)).json())

    async def dead(self, *, limit: int = 1000, cursor: str | None = None) -> dict[str, Any]:
        """A page of the dead-letter list (``GET /v1/dead``); ``cursor`` is a previous
        page's ``nextCursor``."""
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return dict((await self._call("GET", "/v1/dead", params=params)).json())

    async def requeue(self, job_id: str) -> None:
        """Move a dead-lettered job back to the queue."""
        await self._call("POST", f"/v1/dead/{job_id}/requeue", {})

    async def cancel_matching(
        self, *, type: str | None = None, status: str | None = None
    ) -> dict[str, int]:
        """Cancel every queued job of ``type`` and/or ``status`` (``"unclaimed"`` or
        ``"in_progress"``; neither: every queued job), in one commit: ``{"cancelled":
        n, "cancelling": m}`` (running ones stop at their worker's next report)."""
        body: dict[str, Any] = {}
        if type is not None:
            body["type"] = type
        if status is not None:
            body["status"] = status
        answer = (await self._call("POST", "/v1/jobs/cancel", body)).json()
        return {"cancelled": answer["cancelled"], "cancelling": answer["cancelling"]}

    async def purge_dead(self, *, type: str | None = None) -> int:
        """Remove the dead jobs of ``type`` (None: all) for good; how many. Their ids
        are forgotten: a submit with one makes a new job."""
        body = {} if type is None else {"type": type}
        return int((await self._call("POST", "/v1/dead/purge", body)).json()["purged"])

    # --------------------------------------------------------------- type rules

    async def set_type_rule(
        self,
        type: str,
        *,
        paused: bool | EllipsisType = ...,
        max_in_progress: int | EllipsisType | None = ...,
        max_per_second: float | EllipsisType | None = ...,
    ) -> dict[str, Any]:
        """Change a job type's rule (``PUT /v1/types``, admin): ``paused`` (claims
        skip the type), ``max_in_progress`` (across all workers), ``max_per_second``
        (claims a second); ``None`` clears a limit, an argument left out keeps what
        is stored. Returns the rule."""
        body: dict[str, Any] = {"type": type}
        if paused is not ...:
            body["paused"] = paused
        if max_in_progress is not ...:
            body["maxInProgress"] = max_in_progress
        if max_per_second is not ...:
            body["maxPerSecond"] = max_per_second
        parse(TypeRuleRequest, body)
        return dict((await self._call("PUT", "/v1/types", body)).json())

    async def pause(self, type: str) -> None:
        """Claims skip jobs of ``type`` until :meth:`resume` (they stay queued)."""
        await self.set_type_rule(type, paused=True)

    async def resume(self, type: str) -> None:
        """Claims take jobs of ``type`` again."""
        await self.set_type_rule(type, paused=False)

    async def type_rules(self) -> list[dict[str, Any]]:
        """Each type's rule, with its queued counts (``GET /v1/types``)."""
        return list((await self._call("GET", "/v1/types")).json()["types"])

    # ---------------------------------------------------------------- schedules

    async def set_schedule(
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
        """Create or replace the periodic job ``name`` (``PUT /v1/schedules/{name}``):
        a job of ``type`` with ``payload`` at each occurrence of ``cron`` (in
        ``timezone``) or ``every`` seconds (at least 1). ``missed``: what the leader
        does with occurrences missed while no broker led: ``"once"`` enqueues the
        latest once, ``"skip"`` only if at most ``grace`` seconds late. Returns the
        stored schedule (with its ``nextAt``). Replacing a schedule with the same
        timing keeps its next occurrence."""
        body: dict[str, Any] = {
            "type": type,
            "payload": to_json_value(payload),
            "timezone": timezone,
            "missed": missed,
            "graceMs": round(grace * 1000),
            "priority": priority,
        }
        if cron is not None:
            body["cron"] = cron
        if every is not None:
            body["everyMs"] = _delay_ms(every)
        if max_attempts is not None:
            body["maxAttempts"] = max_attempts
        parse(ScheduleRequest, body)  # a bad schedule raises here, before sending
        return dict((await self._call("PUT", f"/v1/schedules/{name}", body)).json())

    async def schedules(self) -> list[dict[str, Any]]:
        """Every periodic job (``GET /v1/schedules``), as stored."""
        answer = (await self._call("GET", "/v1/schedules")).json()
        return list(answer["schedules"])

    async def delete_schedule(self, name: str) -> None:
        """Delete a periodic job (``NotFound`` if there is none of that name); the
        jobs it enqueued already stay."""
        await self._call("DELETE", f"/v1/schedules/{name}")

    # -------------------------------------------------------------------- worker

    async def claim(
        self,
        worker_id: str,
        *,
        types: Sequence[str] | None = None,
        max: int = 1,
        wait: float = 0.0,
        retry_deadline: float | None = None,
    ) -> list[Claimed]:
        """Claim up to ``max`` jobs, waiting up to ``wait`` seconds for the first.

        Retried only while the broker provably claimed nothing (for at most
        ``retry_deadline`` seconds, default the client's); if the answer is lost in
        flight this raises :class:`~trioq.BrokerUnreachable` instead of asking again
        (the jobs return to the queue when their lease runs out).
        """
        body: dict[str, Any] = {"workerId": worker_id, "max": max}
        if types is not None:
            body["types"] = list(types)
        wait_ms = round(wait * 1000)
        if wait_ms > 0:
            body["waitMs"] = wait_ms
        parse(ClaimRequest, body)
        response = await self._call(
            "POST",
            "/v1/jobs/claim",
            body,
            claim=True,
            extra_timeout=wait_ms / 1000,
            retry_deadline=retry_deadline,
        )
        return adapter(ClaimMany).validate_json(response.content).jobs

    async def exchange(
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
        """A worker's round trip (``POST /v1/jobs/exchange``): its reports on held
        jobs, and a claim of up to ``claim`` jobs (0: none), in one broker commit.

        The broker applies heartbeats, completes, fails, releases, then the claim;
        each report has its own outcome in the answer (a ``LeaseLost`` one does not
        fail the others). ``wait`` (seconds) long-polls the claim, and only applies
        to an exchange without reports. Like :meth:`claim`, an exchange that carries
        a claim is never repeated once it may have reached the broker (a lost answer
        raises :class:`~trioq.BrokerUnreachable`, an unknown commit outcome
        :class:`~trioq.WriteOutcomeUnknown`); one without a claim is retried like
        the other calls. Raises ValueError for a list over 10,000 reports.
        """
        parse(WORKER_ID, worker_id, field="workerId")
        body: dict[str, Any] = {"workerId": worker_id}
        for name, held in (("heartbeat", heartbeat), ("complete", complete), ("release", release)):
            if held:
                body[name] = [_held_item(job) for job in _bounded(name, held)]
        if complete:
            for item, job in zip(body["complete"], complete, strict=True):
                if isinstance(job, Completion):
                    item["result"] = orjson.Fragment(job.result_json)
        if heartbeat:
            for item, job in zip(body["heartbeat"], heartbeat, strict=True):
                if isinstance(job, Beat):
                    item["progress"] = orjson.Fragment(job.progress_json)
        if fail:
            body["fail"] = [_fail_item(failure) for failure in _bounded("fail", fail)]
        wait_ms = 0
        if claim:
            spec: dict[str, Any] = {"max": claim}
            if types is not None:
                spec["types"] = list(types)
            if len(body) == 1:  # no reports: the broker honours waitMs
                wait_ms = min(round(wait * 1000), MAX_WAIT_MS)
                if wait_ms > 0:
                    spec["waitMs"] = wait_ms
            parse(ClaimRequest, {"workerId": worker_id, **spec})
            body["claim"] = spec
        response = await self._call(
            "POST",
            "/v1/jobs/exchange",
            body,
            claim=claim > 0,
            extra_timeout=wait_ms / 1000,
            retry_deadline=retry_deadline,
        )
        return _exchange_answer(response.content, body)

    async def heartbeat(self, job_id: str, worker_id: str, *, attempt: int | None = None) -> None:
        await self._call("POST", f"/v1/jobs/{job_id}/heartbeat", _held(worker_id, attempt))

    async def complete(
        self, job_id: str, worker_id: str, *, attempt: int | None = None, result: Any = None
    ) -> None:
        """Complete a held job; ``result`` (JSON, or a pydantic model) is kept with it
        for :meth:`result`."""
        body = _held(worker_id, attempt)
        if result is not None:
            body["result"] = orjson.Fragment(encode_payload(result))
        await self._call("POST", f"/v1/jobs/{job_id}/complete", body)

    async def result(self, job_id: str, *, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (the broker long-polls up to it)
        """Wait for a job to end and return its handler's result (JSON as decoded;
        None when the handler returned nothing). Long-polls ``GET
        /v1/jobs/{id}/result``, so waiting costs a request every 30 s, not a busy
        loop. Raises :class:`~trioq.JobFailed` for a job dead-lettered (its last
        error) or cancelled, :class:`~trioq.JobNotFound` for an unknown job (or one
        whose record left the dedup window), and ``TimeoutError`` after ``timeout``
        seconds (None: wait as long as it takes)."""
        deadline = None if timeout is None else anyio.current_time() + timeout
        while True:
            left = MAX_WAIT_MS if deadline is None else (deadline - anyio.current_time()) * 1000
            wait_ms = max(0, min(MAX_WAIT_MS, round(left)))
            response = await self._call(
                "GET",
                f"/v1/jobs/{job_id}/result",
                params={"waitMs": wait_ms},
                extra_timeout=wait_ms / 1000,
            )
            answer = response.json()
            status = answer["status"]
            if status == "completed":
                return answer.get("result")
            if status == "dead":
                raise JobFailed(
                    f"job {job_id!r} is dead ({answer.get('reason')}): {answer.get('error')}",
                    job_status="dead",
                    reason=answer.get("reason"),
                )
            if status == "cancelled":
                raise JobFailed(f"job {job_id!r} was cancelled", job_status="cancelled")
            if deadline is not None and anyio.current_time() >= deadline:
                raise TimeoutError(f"job {job_id!r} is still {status} after {timeout:g} s")

    async def fail(
        self,
        job_id: str,
        worker_id: str,
        error: str,
        *,
        attempt: int | None = None,
        retry_in: float | None = None,
        final: bool = False,
    ) -> str:
        """Report a failed attempt; returns ``"retrying"`` or ``"dead"``."""
        body = _held(worker_id, attempt)
        body["error"] = error
        if retry_in is not None:
            body["retryInMs"] = round(retry_in * 1000)
        if final:
            body["final"] = True
        parse(FailRequest, body)
        response = await self._call("POST", f"/v1/jobs/{job_id}/fail", body)
        return adapter(FailAnswer).validate_json(response.content).status

    async def release(self, job_id: str, worker_id: str, *, attempt: int | None = None) -> None:
        """Give a claimed job back at once, without counting the attempt."""
        await self._call("POST", f"/v1/jobs/{job_id}/release", _held(worker_id, attempt))


async def _leader_url(storage: Storage, *, key: str = "queue.json") -> str:
    """The URL of the broker that the queue document ``key`` names as its leader
    (trio only); NotLeader if there is no document or it names no leader."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        raise RuntimeError(
            "Client.from_storage reads the storage with trio: call it under trio, or "
            "use trioq.SyncClient.from_storage, or pass the broker URL to Client"
        ) from None
    got = await storage.read(key)
    if got is None:
        raise NotLeader(f"{key} does not exist in {storage.describe()}: no broker has started")
    name = f"{key} in {storage.describe()}"
    if is_marker(got.data, name=name):
        leader = await newest_leader(storage, key)  # the log layout: its newest record
    else:
        # the header only: parsing a 100,000-job document would stall the event loop
        _, leader = QueueState.decode_header(got.data, name=name)
    if leader is None or not leader.url:
        raise NotLeader(f"{key} in {storage.describe()} names no leader", leader=None)
    return leader.url


def _chunks(items: list[NewJob]) -> Iterator[list[NewJob]]:
    """``items`` (sealed) in runs that fit one bulk request."""
    chunk: list[NewJob] = []
    size = 0
    for item in items:
        item_size = len(item.payload_json or b"")
        if chunk and (len(chunk) >= MAX_BULK or size + item_size > BULK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk


def _bulk_results(content: bytes, count: int) -> list[Submitted | TrioqError]:
    """Each job's outcome in a bulk answer (``{"results": [...]}``)."""
    try:
        results = orjson.loads(content)["results"]
        if len(results) != count:
            raise ValueError(f"{len(results)} results for {count} jobs")
        return [_bulk_result(result) for result in results]
    except (ValueError, KeyError, TypeError) as exc:
        error = TrioqError(f"malformed answer to a bulk submit ({exc}): {content[:200]!r}")
        return [own_copy(error) for _ in range(count)]


def _bulk_result(result: dict[str, Any]) -> Submitted | TrioqError:
    error = result.get("error")
    if error is None:
        job_id = result["jobId"]
        if not isinstance(job_id, str):
            raise TypeError("a jobId that is not a string")
        return Submitted(job_id, result.get("duplicate") is True)
    return error_from_body(error) or TrioqError(f"malformed error in a bulk answer: {error!r}")


def _bounded(name: str, items: Sequence[Any]) -> Sequence[Any]:
    if len(items) > MAX_BATCH:
        raise ValueError(f"{name}: {len(items)} reports, over the limit of {MAX_BATCH}")
    return items


def _held_item(job: Held) -> dict[str, Any]:
    if job.attempt is None:
        return {"jobId": job.id}
    return {"jobId": job.id, "attempt": job.attempt}


def _fail_item(failure: Failure) -> dict[str, Any]:
    item = _held_item(failure.job)
    item["error"] = failure.error
    if failure.retry_in is not None:
        item["retryInMs"] = round(failure.retry_in * 1000)
    if failure.final:
        item["final"] = True
    return item


def _exchange_answer(content: bytes, body: dict[str, Any]) -> ExchangeAnswer:
    """The answer to the exchange ``body``, read as plain JSON (no model per item:
    this is a worker's hot path)."""
    try:
        data = orjson.loads(content)
        heartbeat, complete, fail, release = (
            _outcomes(data[name], len(body.get(name, ())))
            for name in ("heartbeat", "complete", "fail", "release")
        )
        jobs = [
            ClaimedJob(
                job["jobId"],
                job["type"],
                job.get("payload"),
                job["attempt"],
                job["leaseMs"],
                job.get("createdAt"),
                job.get("trace"),
                job.get("maxAttempts"),
                job.get("lastError"),
            )
            for job in data["jobs"]
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise TrioqError(f"malformed answer to an exchange ({exc}): {content[:200]!r}") from None
    claim = body.get("claim")
    if len(jobs) > (claim["max"] if claim else 0):
        raise TrioqError(f"an exchange answer with {len(jobs)} jobs, more than it claimed")
    return ExchangeAnswer(heartbeat, complete, fail, release, jobs)


def _outcomes(results: list[dict[str, Any]], count: int) -> list[Outcome]:
    if len(results) != count:
        raise ValueError(f"{len(results)} results for {count} reports")
    return [_outcome(result) for result in results]


def _outcome(result: dict[str, Any]) -> Outcome:
    status = result.get("status")
    if isinstance(status, str):
        return status
    error = error_from_body(result.get("error"))
    if error is None:
        raise ValueError(f"a result with neither status nor error: {result!r}")
    return error


def _held(worker_id: str, attempt: int | None) -> dict[str, Any]:
    """The body of a call on a held job, checked against the wire schema."""
    body: dict[str, Any] = {"workerId": worker_id}
    if attempt is not None:
        body["attempt"] = attempt
    parse(HeldJob, body)
    return body


def _batch_type(specs: Sequence[JobSpec]) -> str:
    """The destination a batch's span names: its jobs' type, or ``(mixed)``."""
    first = specs[0].type
    return first if all(spec.type == first for spec in specs) else "(mixed)"


def _new_job(spec: JobSpec, prefix: str, trace: Carrier | None = None) -> NewJob:
    """The wire job ``spec`` stands for, checked and sealed (its payload encoded once:
    ValueError or TypeError for a payload that is not JSON that round-trips), carrying
    ``trace`` (the submit span's context, when tracing is on)."""
    payload_json = encode_payload(spec.payload)
    job = NewJob(
        spec.payload,
        type=spec.type,
        id=spec.id or new_job_id(),
        max_attempts=spec.max_attempts,
        delay_ms=_delay_ms(spec.delay) or 0,
        trace=trace,
        priority=spec.priority,
        unique_key=spec.unique_key,
        ttl_ms=_ttl_ms(spec.ttl),
    )
    return checked_job(job, prefix, payload_json)
