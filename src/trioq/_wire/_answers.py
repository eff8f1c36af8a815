"""The response bodies (documented by /openapi.json, read by the client)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from ._limits import WireModel
from ._records import ClaimedJob


class SubmitAnswer(WireModel):
    """Answer to a submit: the job's id; ``duplicate`` (only when true) if it existed."""

    job_id: str
    duplicate: Literal[True] | None = None


class BatchAnswer(WireModel):
    """Answer to a batch: every id in input order, and those that already existed
    (always sent; a reader takes its absence as none)."""

    job_ids: list[str]
    duplicates: list[str] = Field(default_factory=list)


class ErrorBody(WireModel):
    """Every error answer (and a WebSocket reply's ``error``). ``leader`` and ``role``
    come with ``NotLeader`` only."""

    tag: str = Field(alias="_tag")
    message: str
    leader: str | None = None
    role: Literal["starting", "leader", "standby", "stopped"] | None = None


class BulkResult(WireModel):
    """One job's result in a bulk answer: ``jobId`` (``null`` for a rejected item
    without a usable id), and ``duplicate`` (only when true) or ``error``."""

    job_id: str | None
    duplicate: Literal[True] | None = None
    error: ErrorBody | None = None


class BulkAnswer(WireModel):
    """Answer to a bulk submit: one result per job, in input order."""

    results: list[BulkResult]


ReportStatus = Literal["in_progress", "completed", "retrying", "dead", "unclaimed", "cancelled"]


class ReportResult(WireModel):
    """One report's result in an exchange: ``status`` (heartbeat ``in_progress``,
    complete ``completed``, fail ``retrying`` or ``dead``, release ``unclaimed`` or
    ``cancelled``) or ``error``. ``jobId`` is ``null`` for a report without a usable id."""

    job_id: str | None
    status: ReportStatus | None = None
    error: ErrorBody | None = None


class ExchangeAnswer(WireModel):
    """Answer to an exchange: each list of reports' results (same length and order as
    the request's; every key present) and the jobs claimed (``[]`` without a claim)."""

    heartbeat: list[ReportResult]
    complete: list[ReportResult]
    fail: list[ReportResult]
    release: list[ReportResult]
    jobs: list[ClaimedJob]


class EmptyClaim(WireModel):
    """osqueue's answer to a claim that found nothing: ``{}``."""

    model_config = ConfigDict(extra="forbid")


class ClaimMany(WireModel):
    """Answer to a claim with ``max``: the jobs claimed (maybe none)."""

    jobs: list[ClaimedJob]


class FailAnswer(WireModel):
    """Answer to a fail: whether the job will be retried or is dead."""

    job_id: str
    status: Literal["retrying", "dead"]


class JobStatus(WireModel):
    """A job's status after a cancel or a requeue."""

    job_id: str
    status: Literal["cancelled", "cancelling", "completed", "unclaimed"]


class TypeCounts(WireModel):
    """The queued jobs of one type, by status."""

    unclaimed: int
    in_progress: int


class Stats(WireModel):
    """``GET /v1/stats`` (osqueue's fields, the broker's commit interval, and the
    queued jobs of each type that has any)."""

    total: int
    unclaimed: int
    in_progress: int
    completed_total: int
    broker_address: str
    group_commit_interval_ms: int
    by_type: dict[str, TypeCounts]


class QueuedJobView(WireModel):
    """A queued or in-progress job's record (``priority``, ``uniqueKey`` and
    ``trace`` only when the job has them)."""

    job_id: str
    id: str
    type: str
    payload: Any
    status: Literal["unclaimed", "in_progress"]
    attempts: int
    max_attempts: int
    created_at: int
    ready_at: int
    order: int
    worker_id: str | None
    heartbeat_at: int | None
    last_error: str | None
    cancel_requested: bool
    priority: int | None = None
    unique_key: str | None = None
    trace: dict[str, str] | None = None


class DeadJobView(WireModel):
    """A dead-lettered job's record."""

    job_id: str
    id: str
    type: str
    payload: Any
    status: Literal["dead"]
    attempts: int
    max_attempts: int
    created_at: int
    died_at: int
    reason: Literal["exhausted", "final", "expired", "deadline"]
    last_error: str | None
    priority: int | None = None
    unique_key: str | None = None
    trace: dict[str, str] | None = None


class FinishedJobView(WireModel):
    """A finished job's summary, kept for the dedup window."""

    job_id: str
    id: str
    type: str
    status: Literal["completed", "cancelled"]
    outcome: Literal["completed", "cancelled"]
    attempts: int
    created_at: int
    finished_at: int


JobView = QueuedJobView | DeadJobView | FinishedJobView
"""``GET /v1/jobs/{id}``: the job's record, whatever list it sits in."""


class JobsPage(WireModel):
    """``GET /v1/jobs``: osqueue's stats fields and a page of jobs."""

    total: int
    unclaimed: int
    in_progress: int
    completed_total: int
    broker_address: str
    jobs: list[QueuedJobView]
    next_cursor: str | None


class DeadPage(WireModel):
    """``GET /v1/dead``: a page of the dead-letter list."""

    total: int
    dropped: int
    jobs: list[DeadJobView]
    next_cursor: str | None


class Health(WireModel):
    """``GET /healthz``: which broker answered, its role and epoch, the leader's URL,
    and the lease: ``leaseAgeMs``, on the leader, the milliseconds since it last
    renewed its lease in storage (its last commit that landed; ``null`` on any other
    broker), and ``leaseMs``, the age at which standbys take a lease as stale.
    (The two lease fields are newer: a reader must not require them.)"""

    status: Literal["ok"]
    broker_id: str
    role: Literal["starting", "leader", "standby", "stopped"]
    epoch: int
    leader: str | None
    lease_age_ms: int | None = None
    lease_ms: int | None = None


class Ready(WireModel):
    """``GET /readyz`` on the leader (any other broker answers 503 ``NotLeader``)."""

    status: Literal["ready"]
    broker_id: str
    epoch: int


class ThrottleStats(WireModel):
    """``GET /v1/throttle-stats``: ``{"throttling": false}``, or the throttle's counters."""

    model_config = ConfigDict(extra="allow")
    throttling: bool


class RpcReply(WireModel):
    """A WebSocket answer: ``{id, ok: true, result}`` or ``{id, ok: false, error}``."""

    id: str | int | float | None
    ok: bool
    result: Any = None
    error: ErrorBody | None = None


class ScheduleView(WireModel):
    """A periodic job as stored (``PUT``/``GET /v1/schedules``): its request's
    fields, and ``anchorMs`` (fixed intervals count from it), ``nextAt`` (the next
    occurrence not yet enqueued) and ``lastAt`` (the last one enqueued), in ms since
    the epoch."""

    name: str
    type: str
    payload: Any
    cron: str | None = None
    every_ms: int | None = None
    timezone: str
    missed: Literal["once", "skip"]
    grace_ms: int
    max_attempts: int | None = None
    priority: int
    anchor_ms: int
    next_at: int
    last_at: int | None


class SchedulesPage(WireModel):
    """``GET /v1/schedules``: every periodic job, in the order they were created."""

    schedules: list[ScheduleView]


class JobResult(WireModel):
    """``GET /v1/jobs/{id}/result``: the job's status, and once it ended, its
    ``result`` (completed: the handler's return value, ``null`` if it returned
    none) or its ``error`` (dead: its last error; ``reason``: why it died)."""

    job_id: str
    status: Literal["unclaimed", "in_progress", "completed", "cancelled", "dead"]
    result: Any = None
    error: str | None = None
    reason: Literal["exhausted", "final", "expired", "deadline"] | None = None


class TypeRuleView(WireModel):
    """A job type's rule (``PUT /v1/types``; an item of ``GET /v1/types``, which
    adds the type's queued counts)."""

    type: str
    paused: bool
    max_in_progress: int | None = None
    max_per_second: float | None = None
    unclaimed: int | None = None
    in_progress: int | None = None


class TypesPage(WireModel):
    """``GET /v1/types``: each type that has a rule, with its queued counts."""

    types: list[TypeRuleView]


class CancelledCount(WireModel):
    """``POST /v1/jobs/cancel``: the jobs cancelled at once (queued), and those
    marked for their worker's next report (in progress)."""

    cancelled: int
    cancelling: int


class PurgedCount(WireModel):
    """``POST /v1/dead/purge``: the dead jobs removed."""

    purged: int
