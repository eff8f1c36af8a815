"""The broker's operations, shared by the REST routes and the WebSocket methods.

Each operation takes the decoded JSON parameters, validates every field (a bad
field raises :class:`~trioq.BrokerProtocolError` before anything changes), calls
the engine, and returns the JSON-ready answer in osqueue's shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import BrokerProtocolError, JobNotFound
from ..core._engine import Engine
from ..core._jobs import DEFAULT_TYPE, DeadJob, FinishedJob, Job, valid_id
from ..core._state import ClaimedJob, NewJob, QueueState

MAX_CLAIM = 1000
MAX_WAIT_MS = 30_000
MAX_LIST = 1000
MAX_PAYLOAD_DEPTH = 64
"""Nesting depth cap of a payload. The JSON encoder refuses documents nested deeper
than 254 levels, and every answer that carries a payload (a job listing, a WebSocket
reply) wraps it in a few more, so a deep payload would be accepted and then break
the commit or every read that returns it."""

_MISSING: Any = object()


def _get(params: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = params.get(name, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise BrokerProtocolError(f"{name} is required")
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise BrokerProtocolError(f"{name} must be {_kind_name(kinds)}, not a boolean")
    if not isinstance(value, kinds):
        raise BrokerProtocolError(f"{name} must be {_kind_name(kinds)}")
    return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        bool: "a boolean",
        list: "a list",
        dict: "an object",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _int(params: Mapping[str, Any], name: str, default: Any, lo: int, hi: int) -> Any:
    value = _get(params, name, int, default)
    if value is not None and value is not default and not lo <= value <= hi:
        raise BrokerProtocolError(f"{name} must be from {lo} to {hi}")
    return value


def _worker(params: Mapping[str, Any]) -> str:
    worker_id = _get(params, "workerId", str, _MISSING)
    if not worker_id or len(worker_id) > 256:
        raise BrokerProtocolError("workerId must be 1-256 characters")
    return str(worker_id)


def _attempt(params: Mapping[str, Any]) -> int | None:
    return _int(params, "attempt", None, 1, 1_000_000)  # type: ignore[no-any-return]


def job_id_param(value: str) -> str:
    if not valid_id(value):
        raise BrokerProtocolError("job id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return value


def _new_job(params: Mapping[str, Any], where: str) -> NewJob:
    if not isinstance(params, Mapping):
        raise BrokerProtocolError(f"{where} must be an object")
    if "payload" not in params:
        raise BrokerProtocolError(f"{where}.payload is required")
    if _depth_exceeds(params["payload"], MAX_PAYLOAD_DEPTH):
        raise BrokerProtocolError(
            f"{where}.payload is nested more than {MAX_PAYLOAD_DEPTH} levels deep"
        )
    job_type = _get(params, "type", str, DEFAULT_TYPE)
    job_id = _get(params, "id", str, None)
    max_attempts = _get(params, "maxAttempts", int, None)
    delay_ms = _get(params, "delayMs", int, 0)
    if delay_ms < 0:
        raise BrokerProtocolError(f"{where}.delayMs must be >= 0")
    return NewJob(
        payload=params["payload"],
        type=job_type,
        id=job_id,
        max_attempts=max_attempts,
        delay_ms=delay_ms,
    )


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether the JSON value ``value`` nests containers more than ``limit`` deep."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


_STATS_FIELDS = ("total", "unclaimed", "inProgress", "completedTotal")


class BrokerApi:
    """Operations over one engine, answering in osqueue's JSON shapes."""

    def __init__(self, engine: Engine, *, throttle_stats: Any = None) -> None:
        self.engine = engine
        self._throttle_stats = throttle_stats

    def _leader_state(self) -> QueueState:
        engine = self.engine
        if not engine.is_leader or engine.state is None:
            raise engine.not_leader()
        return engine.state

    # ------------------------------------------------------------------ health

    def health(self) -> dict[str, Any]:
        e = self.engine
        return {
            "status": "ok",
            "brokerId": e.broker_id,
            "role": e.role.value,
            "epoch": e.epoch,
            "leader": e.url if e.is_leader else e.leader_url,
        }

    def ready(self) -> dict[str, Any]:
        self._leader_state()
        return {"status": "ready", "brokerId": self.engine.broker_id, "epoch": self.engine.epoch}

    def raw_state(self) -> bytes:
        self._leader_state()
        document = self.engine.document
        if document is None:
            raise self.engine.not_leader()
        return document

    # ------------------------------------------------------------------ submit

    async def submit(self, params: Mapping[str, Any]) -> dict[str, Any]:
        job = _new_job(params, "body")
        [result] = await self.engine.enqueue([job])
        answer: dict[str, Any] = {"jobId": result.id}
        if result.duplicate:
            answer["duplicate"] = True
        return answer

    async def submit_batch(self, params: Mapping[str, Any]) -> dict[str, Any]:
        jobs = _get(params, "jobs", list, _MISSING)
        if not jobs:
            raise BrokerProtocolError("jobs must be a non-empty list")
        if len(jobs) > 10_000:
            raise BrokerProtocolError("a batch holds at most 10000 jobs")
        items = [_new_job(item, f"jobs[{i}]") for i, item in enumerate(jobs)]
        results = await self.engine.enqueue(items)
        return {
            "jobIds": [r.id for r in results],
            "duplicates": [r.id for r in results if r.duplicate],
        }

    # ------------------------------------------------------------------- claim

    async def claim(self, params: Mapping[str, Any]) -> dict[str, Any]:
        worker_id = _worker(params)
        types = _get(params, "types", list, None)
        if types is not None and not all(isinstance(t, str) for t in types):
            raise BrokerProtocolError("types must be a list of strings")
        if types == []:
            raise BrokerProtocolError("types must not be empty (omit it to claim any type)")
        max_jobs = _int(params, "max", None, 1, MAX_CLAIM)
        wait_ms = _int(params, "waitMs", 0, 0, MAX_WAIT_MS)
        if not self.engine.is_leader:
            raise self.engine.not_leader()
        jobs = await self.engine.claim(
            worker_id,
            types=types,
            max_jobs=max_jobs or 1,
            wait=wait_ms / 1000,
        )
        if max_jobs is not None:
            return {"jobs": [_claimed(j) for j in jobs]}
        if not jobs:
            return {}
        return _claimed(jobs[0])

    # --------------------------------------------------------------- job calls

    async def heartbeat(self, job_id: str, params: Mapping[str, Any]) -> None:
        await self.engine.heartbeat(job_id_param(job_id), _worker(params), attempt=_attempt(params))

    async def complete(self, job_id: str, params: Mapping[str, Any]) -> None:
        await self.engine.complete(job_id_param(job_id), _worker(params), attempt=_attempt(params))

    async def fail(self, job_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
        worker_id = _worker(params)
        attempt = _attempt(params)
        error = _get(params, "error", str, "")
        if len(error) > 8192:
            error = error[:8192] + "…"
        retry_in_ms = _int(params, "retryInMs", None, 0, 7 * 86_400_000)
        final = _get(params, "final", bool, False)
        status = await self.engine.fail(
            job_id_param(job_id),
            worker_id,
            error=error,
            attempt=attempt,
            retry_in_ms=retry_in_ms,
            final=final,
        )
        return {"jobId": job_id, "status": status}

    async def release(self, job_id: str, params: Mapping[str, Any]) -> None:
        await self.engine.release(job_id_param(job_id), _worker(params), attempt=_attempt(params))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        status = await self.engine.cancel(job_id_param(job_id))
        return {"jobId": job_id, "status": status}

    async def requeue(self, job_id: str) -> dict[str, Any]:
        job_id = job_id_param(job_id)
        await self.engine.requeue_dead(job_id)
        return {"jobId": job_id, "status": "unclaimed"}

    # ------------------------------------------------------------------- reads

    # Reads show the last committed state only: never a batch whose write is in
    # flight or failed (Engine.read waits such a commit out).

    def stats(self) -> dict[str, Any]:
        self._leader_state()
        committed = self.engine.committed_stats
        return {
            **{name: committed[name] for name in _STATS_FIELDS},
            "brokerAddress": self.engine.url,
            # workers bound how long a claim in flight is awaited at a stop by it
            "groupCommitIntervalMs": round(self.engine.config.group_commit_interval * 1000),
        }

    async def get_job(self, job_id: str) -> dict[str, Any]:
        job_id = job_id_param(job_id)

        def view(state: QueueState) -> dict[str, Any]:
            record = state.lookup(job_id)
            if record is None:
                raise JobNotFound(f"no job {job_id!r}")
            return job_view(record)

        return await self.engine.read(view)

    async def list_jobs(self, limit: int, cursor: str | None) -> dict[str, Any]:
        after = _cursor(cursor)
        return await self.engine.read(lambda state: self._jobs_page(state, limit, after))

    def _jobs_page(self, state: QueueState, limit: int, after: int) -> dict[str, Any]:
        page: list[dict[str, Any]] = []
        next_cursor: str | None = None
        for job in state.iter_jobs():
            if job.order <= after:
                continue
            if len(page) == limit:
                next_cursor = str(page[-1]["order"])
                break
            page.append(job_view(job))
        return {
            **state.stats(),
            "brokerAddress": self.engine.url,
            "jobs": page,
            "nextCursor": next_cursor,
        }

    async def list_dead(self, limit: int, cursor: str | None) -> dict[str, Any]:
        start = _cursor(cursor, default=0)
        return await self.engine.read(lambda state: _dead_page(state, limit, start))

    def throttle_stats(self) -> dict[str, Any]:
        if self._throttle_stats is None:
            return {"throttling": False}
        return dict(self._throttle_stats())

    # ------------------------------------------------------------------- utils

    def assert_leader(self) -> None:
        if not self.engine.is_leader:
            raise self.engine.not_leader()


def _dead_page(state: QueueState, limit: int, start: int) -> dict[str, Any]:
    dead = list(state.dead.values())[start : start + limit + 1]
    more = len(dead) > limit
    return {
        "total": len(state.dead),
        "dropped": state.counters["deadDropped"],
        "jobs": [job_view(d) for d in dead[:limit]],
        "nextCursor": str(start + limit) if more else None,
    }


def _cursor(cursor: str | None, default: int = 0) -> int:
    if cursor is None or cursor == "":
        return default
    try:
        value = int(cursor)
    except ValueError:
        raise BrokerProtocolError("cursor must come from a previous nextCursor") from None
    if value < 0:
        raise BrokerProtocolError("cursor must come from a previous nextCursor")
    return value


def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return MAX_LIST
    try:
        value = int(raw)
    except ValueError:
        raise BrokerProtocolError("limit must be an integer from 1 to 1000") from None
    if not 1 <= value <= MAX_LIST:
        raise BrokerProtocolError("limit must be an integer from 1 to 1000")
    return value


def _claimed(job: ClaimedJob) -> dict[str, Any]:
    return {
        "jobId": job.id,
        "type": job.type,
        "payload": job.payload,
        "attempt": job.attempt,
        "leaseMs": job.lease_ms,
    }


def job_view(record: Job | DeadJob | FinishedJob) -> dict[str, Any]:
    """A job's public record, whatever list it sits in."""
    if isinstance(record, Job):
        view = record.to_json()
        view["jobId"] = record.id
        return view
    if isinstance(record, DeadJob):
        view = record.to_json()
        view["jobId"] = record.id
        view["status"] = "dead"
        return view
    view = record.to_json()
    view["jobId"] = record.id
    view["status"] = record.outcome
    return view
