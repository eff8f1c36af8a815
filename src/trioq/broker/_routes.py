"""The REST routes: one table (:data:`ROUTES`) that the app registers and that
``/openapi.json`` documents, and their handlers (:class:`RestHandlers`).

A handler reads its request through the wire schema (:mod:`trioq._wire`): the body
with :func:`~trioq.broker._json.decode_object` then the route's model, the job id of
its path with :func:`trioq._wire.job_id`, its query with
:class:`~trioq._wire.ListQuery` (``GET /v1/jobs``: its filtering
:class:`~trioq._wire._requests.JobsQuery`). A route that reads no body never reads it (the
connection guard of :mod:`trioq.broker._connections` drains it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from quart import Response, request

from .. import _wire
from .._errors import TrioqError
from .._tokens import Scope
from .._wire import (
    BatchAnswer,
    BulkAnswer,
    ClaimedJob,
    ClaimMany,
    ClaimRequest,
    DeadPage,
    EmptyClaim,
    ExchangeAnswer,
    ExchangeRequest,
    FailAnswer,
    FailRequest,
    Health,
    HeldJob,
    JobsPage,
    JobStatus,
    JobView,
    ListQuery,
    NewJob,
    NoBody,
    Ready,
    Stats,
    SubmitAnswer,
    SubmitBatch,
    SubmitBulk,
    ThrottleStats,
    parse,
    parse_batch,
    parse_bulk,
    parse_exchange,
    parse_new_job,
)
from .._wire._answers import (
    CancelledCount,
    JobResult,
    PurgedCount,
    SchedulesPage,
    ScheduleView,
    TypeRuleView,
    TypesPage,
)
from .._wire._requests import (
    CancelMatching,
    CompleteRequest,
    JobsQuery,
    PurgeDead,
    ResultQuery,
    ScheduleRequest,
    TypeRuleRequest,
)
from ._api import BrokerApi
from ._json import decode_object
from ._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ._metrics import render_metrics

JSON = "application/json"

ADMIN = frozenset({Scope.ADMIN})
"""Who may call what no other scope is given: the default of a route or method."""
PRODUCER = frozenset({Scope.PRODUCER, Scope.ADMIN})
WORKER = frozenset({Scope.WORKER, Scope.ADMIN})
ANY_SCOPE = frozenset(Scope)
"""Every valid token (a job by id: producers poll their jobs, workers look theirs up)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One REST route: what the app serves and what ``/openapi.json`` says of it.

    ``name`` is the endpoint, the handler's name and the operationId. ``body`` is the
    schema of the request body (``None``: the route reads none), ``answer`` the
    schema of a 200 answer (``None``: 204, no content).
    """

    name: str
    method: str
    path: str
    summary: str
    body: Any = None
    body_optional: bool = False
    query: Any = None
    answer: Any = None
    content_type: str = JSON
    leader_only: bool = True
    public: bool = False
    """Served without a token (``/healthz``, ``/readyz``, ``/openapi.json``)."""
    scopes: frozenset[Scope] = ADMIN
    """The scopes whose tokens may call it (admin always may; a token of another
    scope gets 403 Forbidden). Not declared: admin only."""
    conflicts: str = ""
    """What a 409 means here (empty: the route answers no 409)."""


_HELD = "the job is not held by this worker at this attempt, or was cancelled (LeaseLost)"
_ID = "/v1/jobs/<job_id>"

ROUTES: tuple[Route, ...] = (
    Route("healthz", "GET", "/healthz", "Liveness: which broker answers, its role and epoch",
          answer=Health, leader_only=False, public=True, scopes=ANY_SCOPE),
    Route("readyz", "GET", "/readyz", "Readiness: 200 on the leader, 503 NotLeader elsewhere",
          answer=Ready, leader_only=False, public=True, scopes=ANY_SCOPE),
    Route("openapi", "GET", "/openapi.json", "This document (OpenAPI 3.1)",
          answer=dict[str, Any], leader_only=False, public=True, scopes=ANY_SCOPE),
    Route("metrics", "GET", "/metrics", "Prometheus metrics (text format 0.0.4)",
          answer=str, content_type=METRICS_CONTENT_TYPE, leader_only=False, scopes=ADMIN),
    Route("state", "GET", "/state", "The raw queue document (last commit)",
          answer=dict[str, Any], scopes=ADMIN),
    Route("submit", "POST", "/v1/jobs", "Submit a job", body=NewJob, answer=SubmitAnswer,
          scopes=PRODUCER),
    Route("submit_batch", "POST", "/v1/jobs/batch", "Submit jobs atomically (all or none)",
          body=SubmitBatch, answer=BatchAnswer, scopes=PRODUCER),
    Route("submit_bulk", "POST", "/v1/jobs/bulk",
          "Submit jobs each on its own: a result per job (a bad job fails alone)",
          body=SubmitBulk, answer=BulkAnswer, scopes=PRODUCER),
    Route("claim", "POST", "/v1/jobs/claim",
          "Claim jobs; without max, osqueue's shape (one job or {})",
          body=ClaimRequest, answer=ClaimedJob | EmptyClaim | ClaimMany, scopes=WORKER),
    Route("exchange", "POST", "/v1/jobs/exchange",
          "A worker's round trip in one commit: heartbeats, completes, fails and "
          "releases (a result each), then a claim",
          body=ExchangeRequest, answer=ExchangeAnswer, scopes=WORKER),
    Route("heartbeat", "POST", f"{_ID}/heartbeat", "Renew a job's lease",
          body=HeldJob, conflicts=_HELD, scopes=WORKER),
    Route("complete", "POST", f"{_ID}/complete", "Complete a job (with its result, if any)",
          body=CompleteRequest, conflicts=_HELD, scopes=WORKER),
    Route("fail", "POST", f"{_ID}/fail", "Fail an attempt (retry later, or dead-letter)",
          body=FailRequest, answer=FailAnswer, conflicts=_HELD, scopes=WORKER),
    Route("release", "POST", f"{_ID}/release",
          "Give a job back at once without counting the attempt",
          body=HeldJob, conflicts=_HELD, scopes=WORKER),
    Route("cancel_matching", "POST", "/v1/jobs/cancel",
          "Cancel every queued job of a type and/or status",
          body=CancelMatching, answer=CancelledCount, scopes=ADMIN),
    Route("cancel", "POST", f"{_ID}/cancel", "Cancel a job",
          body=NoBody, body_optional=True, answer=JobStatus, scopes=ADMIN),
    Route("get_job", "GET", "/v1/jobs/<job_id:job_id>", "A job's record (finished jobs too)",
          answer=JobView, scopes=ANY_SCOPE),
    Route("job_result", "GET", f"{_ID}/result",
          "A job's outcome and result, waiting up to waitMs for it to end",
          query=ResultQuery, answer=JobResult, scopes=ANY_SCOPE),
    Route("list_jobs", "GET", "/v1/jobs",
          "Queue stats and a page of queued jobs (filtered by status and type)",
          query=JobsQuery, answer=JobsPage, scopes=ADMIN),
    Route("list_dead", "GET", "/v1/dead", "A page of the dead-letter list",
          query=ListQuery, answer=DeadPage, scopes=ADMIN),
    Route("requeue", "POST", "/v1/dead/<job_id>/requeue",
          "Move a dead job back to the queue, attempts reset",
          body=NoBody, body_optional=True, answer=JobStatus,
          conflicts="the job exists but is not dead (JobNotDead)", scopes=ADMIN),
    Route("purge_dead", "POST", "/v1/dead/purge",
          "Remove the dead jobs of a type (or all) for good",
          body=PurgeDead, answer=PurgedCount, scopes=ADMIN),
    Route("stats", "GET", "/v1/stats", "Queue counters", answer=Stats, scopes=WORKER),
    Route("list_type_rules", "GET", "/v1/types", "The job types' rules (paused, limits)",
          answer=TypesPage, scopes=ANY_SCOPE),
    Route("put_type_rule", "PUT", "/v1/types",
          "Pause, resume or limit a job type (the fields given change)",
          body=TypeRuleRequest, answer=TypeRuleView, scopes=ADMIN),
    Route("list_schedules", "GET", "/v1/schedules", "The periodic jobs",
          answer=SchedulesPage, scopes=ANY_SCOPE),
    Route("put_schedule", "PUT", "/v1/schedules/<name>",
          "Create or replace a periodic job (workers declare theirs at start)",
          body=ScheduleRequest, answer=ScheduleView, scopes=ANY_SCOPE),
    Route("delete_schedule", "DELETE", "/v1/schedules/<name>", "Delete a periodic job",
          scopes=ADMIN),
    Route("throttle_stats", "GET", "/v1/throttle-stats", "Storage throttle counters",
          answer=ThrottleStats, scopes=ADMIN),
)  # fmt: skip
"""Every REST route (the WebSocket is :mod:`trioq.broker._websocket`)."""


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type=JSON)


def error_response(exc: TrioqError) -> Response:
    return json_response(exc.to_body(), exc.status)


def _no_content() -> Response:
    return Response(b"", status=204)


async def _body(*, optional: bool = False) -> dict[str, Any]:
    data = await request.get_data(cache=False)
    assert isinstance(data, bytes)
    return decode_object(data, what="the request body", allow_empty=optional)


Handler = Callable[..., Awaitable[Response]]


class RestHandlers:
    """The handler of each route of :data:`ROUTES`, by its name."""

    def __init__(self, api: BrokerApi, openapi: Callable[[], bytes]) -> None:
        self.api = api
        self._openapi = openapi

    def handler(self, route: Route) -> Handler:
        found: Handler = getattr(self, route.name)
        return found

    async def healthz(self) -> Response:
        return json_response(self.api.health())

    async def readyz(self) -> Response:
        return json_response(self.api.ready())

    async def openapi(self) -> Response:
        return Response(self._openapi(), content_type=JSON)

    async def metrics(self) -> Response:
        return Response(render_metrics(self.api), content_type=METRICS_CONTENT_TYPE)

    async def state(self) -> Response:
        return Response(await self.api.raw_state(), content_type=JSON)

    async def submit(self) -> Response:
        return json_response(await self.api.submit(parse_new_job(await _body())))

    async def submit_batch(self) -> Response:
        return json_response(await self.api.submit_batch(parse_batch(await _body())))

    async def submit_bulk(self) -> Response:
        return json_response(await self.api.submit_bulk(parse_bulk(await _body())))

    async def exchange(self) -> Response:
        return json_response(await self.api.exchange(parse_exchange(await _body())))

    async def claim(self) -> Response:
        claim = parse(ClaimRequest, await _body())
        return json_response(await self.api.claim(claim, many=claim.max is not None))

    async def heartbeat(self, job_id: str) -> Response:
        await self.api.heartbeat(_wire.job_id(job_id), parse(HeldJob, await _body()))
        return _no_content()

    async def complete(self, job_id: str) -> Response:
        await self.api.complete(_wire.job_id(job_id), parse(CompleteRequest, await _body()))
        return _no_content()

    async def fail(self, job_id: str) -> Response:
        return json_response(
            await self.api.fail(_wire.job_id(job_id), parse(FailRequest, await _body()))
        )

    async def release(self, job_id: str) -> Response:
        await self.api.release(_wire.job_id(job_id), parse(HeldJob, await _body()))
        return _no_content()

    async def cancel(self, job_id: str) -> Response:
        parse(NoBody, await _body(optional=True))
        return json_response(await self.api.cancel(_wire.job_id(job_id)))

    async def get_job(self, job_id: str) -> Response:
        return json_response(await self.api.get_job(_wire.job_id(job_id)))

    async def job_result(self, job_id: str) -> Response:
        query = parse(ResultQuery, request.args.to_dict())
        answer = await self.api.job_result(_wire.job_id(job_id), (query.wait_ms or 0) / 1000)
        return json_response(answer)

    async def list_jobs(self) -> Response:
        return json_response(await self.api.list_jobs(parse(JobsQuery, request.args.to_dict())))

    async def list_dead(self) -> Response:
        return json_response(await self.api.list_dead(_query()))

    async def requeue(self, job_id: str) -> Response:
        parse(NoBody, await _body(optional=True))
        return json_response(await self.api.requeue(_wire.job_id(job_id)))

    async def stats(self) -> Response:
        return json_response(self.api.stats())

    async def throttle_stats(self) -> Response:
        return json_response(self.api.throttle_stats())

    async def cancel_matching(self) -> Response:
        return json_response(await self.api.cancel_matching(parse(CancelMatching, await _body())))

    async def purge_dead(self) -> Response:
        return json_response(await self.api.purge_dead(parse(PurgeDead, await _body())))

    async def list_type_rules(self) -> Response:
        return json_response(await self.api.list_type_rules())

    async def put_type_rule(self) -> Response:
        return json_response(await self.api.put_type_rule(parse(TypeRuleRequest, await _body())))

    async def list_schedules(self) -> Response:
        return json_response(await self.api.list_schedules())

    async def put_schedule(self, name: str) -> Response:
        body = parse(ScheduleRequest, await _body())
        return json_response(await self.api.put_schedule(name, body))

    async def delete_schedule(self, name: str) -> Response:
        await self.api.delete_schedule(name)
        return _no_content()


def _query() -> ListQuery:
    return parse(ListQuery, request.args.to_dict())
