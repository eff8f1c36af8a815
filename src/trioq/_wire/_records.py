"""The wire records the queue model builds or takes by position: NewJob and
ClaimedJob, and the reports of an exchange (JobReport, FailReport)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from pydantic import ConfigDict, Field, StrictBool, with_config

from ._limits import (
    CAMEL,
    DEFAULT_TYPE,
    Attempt,
    DelayMs,
    ErrorText,
    JobId,
    JobType,
    MaxAttempts,
    Priority,
    TraceCarrier,
    TtlMs,
    UniqueKey,
)


@with_config(
    ConfigDict(
        **CAMEL,
        json_schema_extra={
            "examples": [
                {
                    "payload": {"to": "a@example.com"},
                    "type": "email:send",
                    "id": "order-17",
                    "maxAttempts": 5,
                    "delayMs": 0,
                }
            ]
        },
    )
)
@dataclass(frozen=True)
class NewJob:
    """One job to enqueue (``POST /v1/jobs``, an item of ``POST /v1/jobs/batch``).

    ``type`` defaults to ``"default"``; ``id`` (client-chosen) makes the submit
    idempotent; ``max_attempts`` defaults to the broker's (3); ``delay_ms`` makes the
    job claimable that much later; ``priority`` (default 0): claims take the highest
    first, and within a priority the order of ready time, then enqueue order;
    ``unique_key``: while a job with this key is queued or running, a submit with it
    is that job's duplicate (its id back, ``duplicate: true``); ``ttl_ms``: a job
    still unclaimed that long after its submit is dead-lettered (``deadline``);
    ``trace`` is the trace context the job carries to
    its worker (written by the client when tracing is on). Built freely (nothing is checked here): the
    queue model checks an unsealed one against the schema before it takes it.
    """

    payload: Any
    type: JobType = DEFAULT_TYPE
    id: JobId | None = None
    max_attempts: MaxAttempts | None = None
    delay_ms: DelayMs = 0
    trace: TraceCarrier | None = None
    priority: Priority = 0
    unique_key: UniqueKey | None = None
    ttl_ms: TtlMs | None = None

    @property
    def payload_json(self) -> bytes | None:
        """The payload's JSON, once the job is sealed (None before)."""
        sealed: bytes | None = self.__dict__.get("_payload_json")
        return sealed

    def to_json(self) -> dict[str, Any]:
        """The job's wire form (sealed jobs only: the payload goes as its bytes)."""
        payload_json = self.payload_json
        if payload_json is None:
            raise ValueError("to_json() of a NewJob that was not sealed")
        body: dict[str, Any] = {"type": self.type, "payload": orjson.Fragment(payload_json)}
        if self.id is not None:
            body["id"] = self.id
        if self.max_attempts is not None:
            body["maxAttempts"] = self.max_attempts
        if self.delay_ms:
            body["delayMs"] = self.delay_ms
        if self.trace:
            body["trace"] = self.trace
        if self.priority:
            body["priority"] = self.priority
        if self.unique_key is not None:
            body["uniqueKey"] = self.unique_key
        if self.ttl_ms is not None:
            body["ttlMs"] = self.ttl_ms
        return body


def _absent(value: object) -> bool:
    """An optional field the wire form leaves out when it has no value."""
    return value is None


@with_config(ConfigDict(**CAMEL))
@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job handed to a worker: run it, then complete or fail it at ``attempt``,
    heartbeating at least three times per ``lease_ms`` meanwhile. ``created_at``:
    when it was submitted (the broker's clock, ms since the epoch; None from a broker
    that does not say); ``trace``: the trace context it was submitted with;
    ``max_attempts`` and ``last_error``: its attempts in all, and the error of its
    previous attempt (None on a first)."""

    id: Annotated[str, Field(alias="jobId")]
    type: str
    payload: Any
    attempt: int
    lease_ms: int
    created_at: Annotated[int | None, Field(exclude_if=_absent)] = None
    trace: Annotated[dict[str, str] | None, Field(exclude_if=_absent)] = None
    max_attempts: Annotated[int | None, Field(exclude_if=_absent)] = None
    last_error: Annotated[str | None, Field(exclude_if=_absent)] = None

    def to_json(self) -> dict[str, Any]:
        """The wire form (osqueue's claim fields plus ``attempt``, ``leaseMs``,
        ``createdAt`` and, when the job has one, ``trace``)."""
        body: dict[str, Any] = {
            "jobId": self.id,
            "type": self.type,
            "payload": self.payload,
            "attempt": self.attempt,
            "leaseMs": self.lease_ms,
        }
        if self.created_at is not None:
            body["createdAt"] = self.created_at
        if self.trace:
            body["trace"] = self.trace
        if self.max_attempts is not None:
            body["maxAttempts"] = self.max_attempts
        if self.last_error is not None:
            body["lastError"] = self.last_error
        return body


@with_config(
    ConfigDict(**CAMEL, json_schema_extra={"examples": [{"jobId": "order-17", "attempt": 1}]})
)
@dataclass(frozen=True, slots=True)
class JobReport:
    """A heartbeat, complete or release in an exchange (``POST /v1/jobs/exchange``):
    the job, and the attempt the worker holds (optional, as in ``HeldJob``); a
    complete's ``result`` is the handler's return value, a heartbeat's ``progress``
    the handler's latest progress report (JSON each; ignored elsewhere)."""

    job_id: JobId
    attempt: Attempt | None = None
    result: Any = None
    progress: Any = None


@with_config(
    ConfigDict(
        **CAMEL,
        json_schema_extra={"examples": [{"jobId": "order-17", "attempt": 1, "error": "boom"}]},
    )
)
@dataclass(frozen=True, slots=True)
class FailReport:
    """A failed attempt in an exchange: the fields of ``POST /v1/jobs/{id}/fail``
    (``error`` cut to 8192 characters; without ``retryInMs`` the broker's backoff)."""

    job_id: JobId
    attempt: Attempt | None = None
    error: ErrorText | None = None
    retry_in_ms: DelayMs | None = None
    final: StrictBool | None = None
