"""The request bodies of the REST routes and the WebSocket methods."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from ._limits import (
    DEFAULT_TYPE,
    MAX_BATCH,
    MAX_CLAIM,
    MAX_DELAY_MS,
    MAX_WAIT_MS,
    Attempt,
    Cursor,
    DelayMs,
    ErrorText,
    JobId,
    JobType,
    Limit,
    MaxAttempts,
    Priority,
    WaitQuery,
    WireModel,
    WorkerId,
    blank_is_none,
)
from ._records import FailReport, JobReport, NewJob


def drop_nulls(value: object) -> object:
    """A job object from the wire without its ``null`` fields (they count as
    absent), but its payload, which may be ``null``."""
    if isinstance(value, dict) and None in value.values():
        return {k: v for k, v in value.items() if v is not None or k == "payload"}
    return value


class SubmitBatch(WireModel):
    """``POST /v1/jobs/batch``: validated as a whole (one bad item: nothing enqueued)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"jobs": [{"payload": 1, "id": "a"}, {"payload": 2}]}]}
    )
    jobs: Annotated[
        list[Annotated[NewJob, BeforeValidator(drop_nulls)]],
        Field(min_length=1, max_length=MAX_BATCH),
    ]


class SubmitBulk(WireModel):
    """``POST /v1/jobs/bulk``: each job parsed and enqueued on its own (a bad item is
    that item's error). Only the outer shape is all-or-nothing: ``jobs`` a list of
    1-10,000 objects."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"jobs": [{"payload": 1, "id": "a"}, {"payload": 2}]}]}
    )
    jobs: Annotated[
        list[Annotated[NewJob, BeforeValidator(drop_nulls)]],
        Field(min_length=1, max_length=MAX_BATCH),
    ]


class SubmitBulkShape(WireModel):
    """The outer shape of :class:`SubmitBulk` (items as plain objects, parsed one by one)."""

    jobs: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_BATCH)]


class ClaimRequest(WireModel):
    """``POST /v1/jobs/claim``. Without ``max`` the answer has osqueue's shape."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"workerId": "worker-1", "types": ["email:send"], "max": 10}]
        }
    )
    worker_id: WorkerId
    types: Annotated[list[StrictStr], Field(min_length=1)] | None = None
    max: Annotated[StrictInt, Field(ge=1, le=MAX_CLAIM)] | None = None
    wait_ms: Annotated[StrictInt, Field(ge=0, le=MAX_WAIT_MS)] | None = None


class ExchangeClaim(WireModel):
    """The claim of an exchange: as ``POST /v1/jobs/claim`` with ``max`` (default 1).
    ``waitMs`` is honoured only by an exchange that carries no reports."""

    types: Annotated[list[StrictStr], Field(min_length=1)] | None = None
    max: Annotated[StrictInt, Field(ge=1, le=MAX_CLAIM)] | None = None
    wait_ms: Annotated[StrictInt, Field(ge=0, le=MAX_WAIT_MS)] | None = None


_Reports = Annotated[list[JobReport], Field(max_length=MAX_BATCH)]
_Fails = Annotated[list[FailReport], Field(max_length=MAX_BATCH)]
_Items = Annotated[list[dict[str, Any]], Field(max_length=MAX_BATCH)]


class ExchangeRequest(WireModel):
    """``POST /v1/jobs/exchange``: a worker's reports, each applied on its own in the
    order heartbeat, complete, fail, release, then the claim, all in one commit."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "workerId": "worker-1",
                    "complete": [{"jobId": "order-17", "attempt": 1}],
                    "claim": {"types": ["email:send"], "max": 10},
                }
            ]
        }
    )
    worker_id: WorkerId
    heartbeat: _Reports | None = None
    complete: _Reports | None = None
    fail: _Fails | None = None
    release: _Reports | None = None
    claim: ExchangeClaim | None = None


class ExchangeShape(WireModel):
    """The outer shape of :class:`ExchangeRequest` (reports as plain objects, parsed
    one by one)."""

    worker_id: WorkerId
    heartbeat: _Items | None = None
    complete: _Items | None = None
    fail: _Items | None = None
    release: _Items | None = None
    claim: ExchangeClaim | None = None


class HeldJob(WireModel):
    """Heartbeat, complete and release: who holds the job, at which attempt
    (osqueue clients send only ``workerId``)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"workerId": "worker-1"}]})
    worker_id: WorkerId
    attempt: Attempt | None = None


class CompleteRequest(HeldJob):
    """``POST /v1/jobs/{id}/complete``: ``result`` is the handler's return value
    (any JSON; kept with the finished job, ``--max-result-bytes`` at most)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"workerId": "worker-1", "result": {"sent": True}}]}
    )
    result: Any = None


class FailRequest(HeldJob):
    """``POST /v1/jobs/{id}/fail``. Without ``retryInMs`` the broker's backoff applies;
    ``final`` dead-letters at once. ``error`` is cut to 8192 characters."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"workerId": "worker-1", "error": "boom"}]}
    )
    error: ErrorText | None = None
    retry_in_ms: DelayMs | None = None
    final: StrictBool | None = None


class NoBody(WireModel):
    """An optional body that carries nothing (cancel, requeue): any object, or none."""

    model_config = ConfigDict(json_schema_extra={"examples": [{}]})


class ListQuery(WireModel):
    """``limit`` (default 1000) and ``cursor`` (a previous ``nextCursor``) of a listing."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"limit": 100}]})

    limit: Annotated[Limit | None, BeforeValidator(blank_is_none)] = None
    cursor: Annotated[Cursor | None, BeforeValidator(blank_is_none)] = None


class JobsQuery(ListQuery):
    """``GET /v1/jobs``: a :class:`ListQuery` of the queued jobs with this ``status``
    and (AND) this ``type``, either optional; ``nextCursor`` goes on with the same
    filters."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"limit": 100, "status": "unclaimed", "type": "email:send"}]
        }
    )

    status: Annotated[
        Literal["unclaimed", "in_progress"] | None, BeforeValidator(blank_is_none)
    ] = None
    type: Annotated[JobType | None, BeforeValidator(blank_is_none)] = None


class JobRef(WireModel):
    """WebSocket ``cancelJob``, ``getJob``, ``requeueDead``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"jobId": "order-17"}]})

    job_id: JobId


class HeldJobCall(HeldJob):
    """WebSocket ``heartbeat``, ``completeJob``, ``releaseJob``."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"jobId": "order-17", "workerId": "worker-1"}]}
    )

    job_id: JobId


class CompleteCall(CompleteRequest):
    """WebSocket ``completeJob``."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"jobId": "order-17", "workerId": "worker-1"}]}
    )

    job_id: JobId


class ResultQuery(WireModel):
    """``GET /v1/jobs/{id}/result``: wait up to ``waitMs`` for the job to end."""

    wait_ms: Annotated[WaitQuery | None, BeforeValidator(blank_is_none)] = None


class FailCall(FailRequest):
    """WebSocket ``failJob``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"jobId": "order-17", "workerId": "worker-1", "error": "boom"}]
        }
    )

    job_id: JobId


class RpcRequest(WireModel):
    """A WebSocket message: ``{id, method, params}``."""

    id: StrictStr | StrictInt | StrictFloat | None = None
    method: StrictStr
    params: dict[str, Any] | None = None


SCHEDULE_NAME_PATTERN = r"^[A-Za-z0-9._\-]{1,64}$"


class ScheduleRequest(WireModel):
    """``PUT /v1/schedules/{name}``: a periodic job (create or replace). Exactly one
    of ``cron`` (5 fields, or 6 with seconds last) and ``everyMs``; ``timezone``
    (IANA, default UTC) is the cron's; ``missed`` says what a recovery does with the
    occurrences missed while no broker led: ``once`` enqueues the latest once,
    ``skip`` only if it is at most ``graceMs`` late. ``maxAttempts`` and ``priority``
    are each occurrence's job's."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"type": "report:daily", "payload": {}, "cron": "0 6 * * *"}]
        }
    )

    type: JobType = DEFAULT_TYPE
    payload: Any = None
    cron: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None
    every_ms: Annotated[StrictInt, Field(ge=1000, le=MAX_DELAY_MS)] | None = None
    timezone: Annotated[StrictStr, Field(min_length=1, max_length=64)] = "UTC"
    missed: Literal["once", "skip"] = "once"
    grace_ms: DelayMs = 60_000
    max_attempts: MaxAttempts | None = None
    priority: Priority = 0


class TypeRuleRequest(WireModel):
    """``PUT /v1/types``: change a job type's rule. The fields given replace the
    stored ones (``null`` clears a limit); absent ones stay. ``paused``: claims skip
    the type; ``maxInProgress``: at most that many of its jobs in progress across all
    workers; ``maxPerSecond``: at most that many claims of it a second."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"type": "email:send", "maxPerSecond": 50}]}
    )

    type: JobType
    paused: StrictBool | None = None
    max_in_progress: Annotated[StrictInt, Field(ge=1, le=1_000_000)] | None = None
    max_per_second: Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)] | None = None


class CancelMatching(WireModel):
    """``POST /v1/jobs/cancel``: cancel every queued job of ``type`` and/or
    ``status`` (both absent: every queued job)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"type": "email:send"}]})

    type: JobType | None = None
    status: Literal["unclaimed", "in_progress"] | None = None


class PurgeDead(WireModel):
    """``POST /v1/dead/purge``: remove the dead jobs of ``type`` (absent: all) from
    the dead-letter list for good."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"type": "email:send"}]})

    type: JobType | None = None
