"""Job records as they live in memory and in queue.json.

Each record caches its own JSON encoding. A commit re-encodes only the records a
mutation touched (they drop their cache) and splices the cached bytes of the rest
into the document, so serializing a deep queue costs little more than a byte join.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from .._wire import DEFAULT_TYPE as DEFAULT_TYPE
from .._wire import ID_CHARS, MAX_ID_CHARS, MAX_TYPE_CHARS, TYPE_CHARS
from .._wire._payload import kept

JobStatus = Literal["unclaimed", "in_progress"]
FinishedOutcome = Literal["completed", "cancelled"]
DeadReason = Literal["exhausted", "final", "expired", "deadline"]

ID_PATTERN = re.compile(f"{ID_CHARS}{{1,{MAX_ID_CHARS}}}")
"""Valid job ids (the wire's rule, :mod:`trioq._wire`): 1-128 characters of
``A-Z a-z 0-9 . _ : -``."""

TYPE_PATTERN = re.compile(f"{TYPE_CHARS[:-1]}\\ud800-\\udfff]{{1,{MAX_TYPE_CHARS}}}")
"""Valid job types (the wire's rule): 1-128 characters, none a control character, and
no lone surrogates (JSON cannot carry them)."""

_ONE_LINE = orjson.OPT_APPEND_NEWLINE

"""Each record's encoding ends in a newline, so the document holds one record a
line: a loader can then find and parse the records one at a time (JSON never has an
unescaped newline inside a value), and a person can read the document with ``less``."""


def valid_id(value: object) -> bool:
    """Whether ``value`` is a valid job id."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def valid_type(value: object) -> bool:
    """Whether ``value`` is a valid job type."""
    return isinstance(value, str) and TYPE_PATTERN.fullmatch(value) is not None


def valid_text(value: object) -> bool:
    """Whether ``value`` is a string the document can store (UTF-8: no lone surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(slots=True, eq=False)
class Job:
    """A queued or in-progress job."""

    id: str
    type: str
    payload: Any
    status: JobStatus
    attempts: int
    max_attempts: int
    created_at: int
    ready_at: int
    order: int
    worker_id: str | None = None
    heartbeat_at: int | None = None
    last_error: str | None = None
    cancel_requested: bool = False
    trace: dict[str, str] | None = None
    """The trace context it was submitted with (stored only when there is one)."""
    priority: int = 0
    """Higher is claimed first (stored only when not 0)."""
    unique_key: str | None = None
    """While this job is queued, a submit with the same key is its duplicate."""
    deadline_at: int | None = None
    """Unclaimed at this time (its TTL after the submit), it is dead-lettered."""
    progress_json: bytes | None = field(default=None, repr=False)
    """The handler's latest progress report (its JSON), while it runs."""
    # A fresh value of the state's ticket counter each time the job enters the
    # ready queue; stale heap entries carry another ticket and are skipped.
    ticket: int = 0
    # Bytes this job counts against the document-size cap: its encoded size when it
    # entered, brought up to date by every QueueState.encode().
    size: int = 0
    encoded: bytes | None = field(default=None, repr=False)
    # The payload's own JSON, kept so that re-encoding the job after a claim or a
    # heartbeat copies the payload's bytes instead of serializing it again.
    payload_json: bytes | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        if self.payload_json is None:
            self.payload_json = kept(orjson.dumps(self.payload))
        body: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "payload": orjson.Fragment(self.payload_json),
            "status": self.status,
            "attempts": self.attempts,
            "maxAttempts": self.max_attempts,
            "createdAt": self.created_at,
            "readyAt": self.ready_at,
            "order": self.order,
            "workerId": self.worker_id,
            "heartbeatAt": self.heartbeat_at,
            "lastError": self.last_error,
            "cancelRequested": self.cancel_requested,
        }
        if self.trace:
            body["trace"] = self.trace
        if self.priority:
            body["priority"] = self.priority
        if self.unique_key is not None:
            body["uniqueKey"] = self.unique_key
        if self.deadline_at is not None:
            body["deadlineAt"] = self.deadline_at
        if self.progress_json is not None:
            body["progress"] = orjson.Fragment(self.progress_json)
        return body

    def encode(self) -> bytes:
        if self.encoded is None:
            self.encoded = kept(orjson.dumps(self.to_json(), option=_ONE_LINE))
        return self.encoded

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Job:
        status = raw["status"]
        if status not in ("unclaimed", "in_progress"):
            raise ValueError(f"unknown job status {status!r}")
        return cls(
            id=_str(raw["id"]),
            type=_str(raw["type"]),
            payload=raw["payload"],
            status=status,
            attempts=_int(raw["attempts"]),
            max_attempts=_int(raw["maxAttempts"]),
            created_at=_int(raw["createdAt"]),
            ready_at=_int(raw["readyAt"]),
            order=_int(raw["order"]),
            worker_id=_opt_str(raw.get("workerId")),
            heartbeat_at=_opt_int(raw.get("heartbeatAt")),
            last_error=_opt_str(raw.get("lastError")),
            cancel_requested=bool(raw.get("cancelRequested", False)),
            trace=_opt_trace(raw.get("trace")),
            priority=_int(raw.get("priority", 0)),
            unique_key=_opt_str(raw.get("uniqueKey")),
            deadline_at=_opt_int(raw.get("deadlineAt")),
            progress_json=None if "progress" not in raw else kept(orjson.dumps(raw["progress"])),
        )


@dataclass(slots=True, eq=False)
class DeadJob:
    """A job that will not run again unless requeued: attempts exhausted, failed
    with ``final``, or its last lease expired with no attempts left."""

    id: str
    type: str
    payload: Any
    attempts: int
    max_attempts: int
    created_at: int
    died_at: int
    reason: DeadReason
    last_error: str | None
    trace: dict[str, str] | None = None
    priority: int = 0
    unique_key: str | None = None
    encoded: bytes | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "payload": self.payload,
            "attempts": self.attempts,
            "maxAttempts": self.max_attempts,
            "createdAt": self.created_at,
            "diedAt": self.died_at,
            "reason": self.reason,
            "lastError": self.last_error,
        }
        if self.trace:
            body["trace"] = self.trace
        if self.priority:
            body["priority"] = self.priority
        if self.unique_key is not None:
            body["uniqueKey"] = self.unique_key
        return body

    def encode(self) -> bytes:
        if self.encoded is None:
            self.encoded = kept(orjson.dumps(self.to_json(), option=_ONE_LINE))
        return self.encoded

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DeadJob:
        reason = raw["reason"]
        if reason not in ("exhausted", "final", "expired", "deadline"):
            raise ValueError(f"unknown dead-letter reason {reason!r}")
        return cls(
            id=_str(raw["id"]),
            type=_str(raw["type"]),
            payload=raw["payload"],
            attempts=_int(raw["attempts"]),
            max_attempts=_int(raw["maxAttempts"]),
            created_at=_int(raw["createdAt"]),
            died_at=_int(raw["diedAt"]),
            reason=reason,
            last_error=_opt_str(raw.get("lastError")),
            trace=_opt_trace(raw.get("trace")),
            priority=_int(raw.get("priority", 0)),
            unique_key=_opt_str(raw.get("uniqueKey")),
        )


@dataclass(slots=True, eq=False)
class FinishedJob:
    """A finished job kept for the dedup window: its id, outcome and a summary, and
    its handler's result (its JSON) when it returned one."""

    id: str
    type: str
    outcome: FinishedOutcome
    attempts: int
    created_at: int
    finished_at: int
    result_json: bytes | None = None
    encoded: bytes | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "outcome": self.outcome,
            "attempts": self.attempts,
            "createdAt": self.created_at,
            "finishedAt": self.finished_at,
        }
        if self.result_json is not None:
            body["result"] = orjson.Fragment(self.result_json)
        return body

    def encode(self) -> bytes:
        if self.encoded is None:
            self.encoded = kept(orjson.dumps(self.to_json(), option=_ONE_LINE))
        return self.encoded

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FinishedJob:
        outcome = raw["outcome"]
        if outcome not in ("completed", "cancelled"):
            raise ValueError(f"unknown outcome {outcome!r}")
        return cls(
            id=_str(raw["id"]),
            type=_str(raw["type"]),
            outcome=outcome,
            attempts=_int(raw["attempts"]),
            created_at=_int(raw["createdAt"]),
            finished_at=_int(raw["finishedAt"]),
            result_json=None if "result" not in raw else kept(orjson.dumps(raw["result"])),
        )


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _opt_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _opt_int(value: object) -> int | None:
    return None if value is None else _int(value)


def _opt_trace(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"expected a trace carrier (an object of strings), got {value!r}")
    return value
