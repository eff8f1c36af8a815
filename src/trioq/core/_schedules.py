"""Periodic jobs: schedules kept in the queue state and fired by the leader.

A :class:`Schedule` names a job (type, payload, attempts, priority) and when to
enqueue it: a cron expression (five fields, or six with seconds; evaluated by
``croniter`` in the schedule's time zone, UTC unless given) or a fixed interval. It
keeps ``next_at``, the next occurrence not yet enqueued. The leader's commit loop
fires the schedules that are due (:meth:`QueueState.fire_schedules
<trioq.core._state.QueueState.fire_schedules>`) in the same commit as everything
else, so an occurrence is enqueued and ``next_at`` moves past it together, or
neither: a failover never enqueues one twice, and each occurrence's job has a
deterministic id (``periodic:<name>:<occurrence ms>``) on top.

Occurrences missed while no broker led (or while the queue was full) are handled
by the schedule's ``missed`` policy when it next fires: ``once`` enqueues the latest
missed occurrence once; ``skip`` enqueues it only when it is at most ``grace_ms``
late, and otherwise skips it (logged). Either way the earlier missed ones are
logged, not enqueued.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from croniter import croniter

from .._errors import BrokerProtocolError, NotFound, QueueFull, TrioqError
from .._wire import RULES, SCHEDULE_NAME_PATTERN, NewJob, ScheduleRequest, checked_job
from .._wire._payload import kept

if TYPE_CHECKING:
    from ._state import QueueState

log = logging.getLogger("trioq.broker")

Missed = Literal["once", "skip"]

MIN_EVERY_MS = 1000
"""The shortest interval of a fixed-interval schedule."""
MAX_SCHEDULES = 1000
"""Schedules one queue keeps at most."""
_NAME = re.compile(SCHEDULE_NAME_PATTERN)


class ScheduleInvalid(ValueError):
    """A schedule's when-part cannot be evaluated (its message says why)."""


def check_when(cron: str | None, every_ms: int | None, timezone: str) -> None:
    """ScheduleInvalid unless exactly one of ``cron`` / ``every_ms`` is given and
    valid, and ``timezone`` names an IANA zone."""
    if (cron is None) == (every_ms is None):
        raise ScheduleInvalid("give exactly one of cron and everyMs")
    if cron is not None and (len(cron.split()) not in (5, 6) or not croniter.is_valid(cron)):
        raise ScheduleInvalid(f"cron {cron!r} is not a valid cron expression (5 or 6 fields)")
    if every_ms is not None and every_ms < MIN_EVERY_MS:
        raise ScheduleInvalid(f"everyMs must be at least {MIN_EVERY_MS}")
    zone(timezone)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleInvalid(f"timezone {name!r} is not an IANA time zone") from None


@dataclass(slots=True, eq=False)
class Schedule:
    """A stored schedule (see the module's docstring)."""

    name: str
    type: str
    payload: Any
    cron: str | None
    every_ms: int | None
    timezone: str
    missed: Missed
    grace_ms: int
    max_attempts: int | None
    priority: int
    anchor_ms: int
    """Fixed intervals count from here: occurrences are ``anchor + k * every``."""
    next_at: int
    """The next occurrence not yet enqueued (ms since the epoch)."""
    last_at: int | None = None
    """The last occurrence enqueued."""
    payload_json: bytes | None = field(default=None, repr=False)
    blocked: bool = field(default=False, repr=False)
    """Its last occurrence did not fit (logged once until it fits again)."""

    def following(self, after_ms: int) -> int:
        """The first occurrence strictly after ``after_ms``."""
        if self.every_ms is not None:
            steps = (after_ms - self.anchor_ms) // self.every_ms + 1
            return self.anchor_ms + max(steps, 0) * self.every_ms
        assert self.cron is not None
        start = dt.datetime.fromtimestamp(after_ms / 1000, tz=zone(self.timezone))
        return math.ceil(croniter(self.cron, start).get_next(float) * 1000)

    def latest(self, now: int) -> int:
        """The last occurrence at or before ``now`` (at least ``next_at``, which the
        caller knows to be due)."""
        if self.every_ms is not None:
            steps = (now - self.anchor_ms) // self.every_ms
            return max(self.next_at, self.anchor_ms + steps * self.every_ms)
        assert self.cron is not None
        start = dt.datetime.fromtimestamp((now + 1) / 1000, tz=zone(self.timezone))
        previous = math.floor(croniter(self.cron, start).get_prev(float) * 1000)
        return max(self.next_at, previous)

    def job_id(self, occurrence: int) -> str:
        """The deterministic id of the job of ``occurrence``."""
        return f"periodic:{self.name}:{occurrence}"

    def to_json(self) -> dict[str, Any]:
        if self.payload_json is None:
            self.payload_json = kept(orjson.dumps(self.payload))
        body: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "payload": orjson.Fragment(self.payload_json),
            "timezone": self.timezone,
            "missed": self.missed,
            "graceMs": self.grace_ms,
            "priority": self.priority,
            "anchorMs": self.anchor_ms,
            "nextAt": self.next_at,
            "lastAt": self.last_at,
        }
        if self.cron is not None:
            body["cron"] = self.cron
        if self.every_ms is not None:
            body["everyMs"] = self.every_ms
        if self.max_attempts is not None:
            body["maxAttempts"] = self.max_attempts
        return body

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Schedule:
        def integer(value: object) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected an integer, got {value!r}")
            return value

        def text(value: object) -> str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {value!r}")
            return value

        missed = raw["missed"]
        if missed not in ("once", "skip"):
            raise ValueError(f"unknown missed policy {missed!r}")
        cron = None if raw.get("cron") is None else text(raw["cron"])
        every = None if raw.get("everyMs") is None else integer(raw["everyMs"])
        timezone = text(raw["timezone"])
        try:
            check_when(cron, every, timezone)
        except ScheduleInvalid as exc:
            raise ValueError(str(exc)) from None
        last = raw.get("lastAt")
        attempts = raw.get("maxAttempts")
        return cls(
            name=text(raw["name"]),
            type=text(raw["type"]),
            payload=raw["payload"],
            cron=cron,
            every_ms=every,
            timezone=timezone,
            missed=missed,
            grace_ms=integer(raw["graceMs"]),
            max_attempts=None if attempts is None else integer(attempts),
            priority=integer(raw.get("priority", 0)),
            anchor_ms=integer(raw["anchorMs"]),
            next_at=integer(raw["nextAt"]),
            last_at=None if last is None else integer(last),
        )

    def view(self) -> dict[str, Any]:
        """The schedule as the API shows it."""
        return orjson.loads(orjson.dumps(self.to_json()))  # type: ignore[no-any-return]


# ------------------------------------------------------- the state's operations


def put(state: QueueState, name: str, request: ScheduleRequest, now: int) -> Schedule:
    """Create or replace the schedule ``name`` (checked whole first: a bad one
    raises BrokerProtocolError and changes nothing). A replaced schedule keeps its
    next occurrence unless its timing changed; a new timing starts from ``now``."""
    if not _NAME.fullmatch(name):
        raise BrokerProtocolError(f"schedule name must be {RULES['name']}")
    try:
        check_when(request.cron, request.every_ms, request.timezone)
    except ScheduleInvalid as exc:
        raise BrokerProtocolError(str(exc)) from None
    # the job each occurrence makes, checked as a submit is (type, payload, limits)
    job = NewJob(
        request.payload,
        type=request.type,
        max_attempts=request.max_attempts,
        priority=request.priority,
    )
    payload_json = checked_job(job, "schedule: ").payload_json
    assert payload_json is not None
    limits = state.limits
    if len(payload_json) > limits.max_payload_bytes:
        raise BrokerProtocolError(
            f"schedule: payload is {len(payload_json)} bytes, over the limit of "
            f"{limits.max_payload_bytes}"
        )
    old = state.schedules.get(name)
    if old is None and len(state.schedules) >= MAX_SCHEDULES:
        raise BrokerProtocolError(f"a queue keeps at most {MAX_SCHEDULES} schedules")
    schedule = Schedule(
        name=name,
        type=request.type,
        payload=request.payload,
        cron=request.cron,
        every_ms=request.every_ms,
        timezone=request.timezone,
        missed=request.missed,
        grace_ms=request.grace_ms,
        max_attempts=request.max_attempts,
        priority=request.priority,
        anchor_ms=now,
        next_at=0,
        payload_json=payload_json,
    )
    same_timing = old is not None and (old.cron, old.every_ms, old.timezone) == (
        schedule.cron,
        schedule.every_ms,
        schedule.timezone,
    )
    if same_timing:
        assert old is not None
        schedule.anchor_ms, schedule.next_at, schedule.last_at = (
            old.anchor_ms,
            old.next_at,
            old.last_at,
        )
    else:
        schedule.next_at = schedule.following(now)
    state.schedules[name] = schedule
    state.note_schedules()
    return schedule


def delete(state: QueueState, name: str) -> None:
    if state.schedules.pop(name, None) is None:
        raise NotFound(f"no schedule {name!r}")
    state.note_schedules()


def fire(state: QueueState, now: int) -> tuple[bool, list[str]]:
    """Enqueue the due occurrences (see the module's docstring); returns whether a
    schedule moved on, and the ids enqueued. A schedule whose job does not fit (the
    queue is full) stays due and fires at a later commit."""
    enqueued: list[str] = []
    moved = False
    for schedule in list(state.schedules.values()):
        if schedule.next_at > now:
            continue
        latest = schedule.latest(now)
        if latest > schedule.next_at:
            log.warning(
                "schedule %r missed its occurrences from %s to %s (no leader, or the "
                "queue was full): %s",
                schedule.name,
                _iso(schedule.next_at),
                _iso(latest),
                "enqueuing the latest once"
                if schedule.missed == "once" or now - latest <= schedule.grace_ms
                else f"skipping them (missed=skip, more than {schedule.grace_ms} ms late)",
            )
        if schedule.missed == "skip" and now - latest > schedule.grace_ms:
            occurrence = None
        else:
            occurrence = latest
        if occurrence is not None:
            job = NewJob(
                schedule.payload,
                type=schedule.type,
                id=schedule.job_id(occurrence),
                max_attempts=schedule.max_attempts,
                priority=schedule.priority,
            )
            try:
                [result] = state.enqueue([job], now)
            except QueueFull as exc:
                if not schedule.blocked:
                    log.warning("schedule %r waits for room in the queue: %s", schedule.name, exc)
                schedule.blocked = True
                continue  # still due: fires once there is room
            except TrioqError as exc:  # the limits changed since it was stored
                log.error("schedule %r skips %s: %s", schedule.name, _iso(occurrence), exc)
                result = None
            schedule.blocked = False
            if result is not None and not result.duplicate:
                enqueued.append(result.id)
            schedule.last_at = occurrence
        schedule.next_at = schedule.following(now)
        state.note_schedules()
        moved = True
    return moved, enqueued


def next_due(state: QueueState) -> int | None:
    """The earliest ``next_at`` of the stored schedules."""
    return min((s.next_at for s in state.schedules.values()), default=None)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat(timespec="seconds")
