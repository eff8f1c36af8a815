"""The broker's operations, shared by the REST routes and the WebSocket methods.

Each operation takes a request the wire schema (:mod:`trioq._wire`) has already
validated (the routes and methods parse it; nothing here checks a field again),
calls the engine, and returns the JSON-ready answer in osqueue's shapes (the
answer models of the wire schema document them; the answers are built here as plain
values, with each job's payload as its cached JSON bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import trio

from .._errors import JobNotFound, TrioqError
from .._wire import (
    MAX_LIST,
    ClaimedJob,
    ClaimRequest,
    FailReport,
    FailRequest,
    HeldJob,
    Items,
    JobReport,
    ListQuery,
    NewJob,
    ParsedExchange,
)
from .._wire._requests import (
    CancelMatching,
    CompleteRequest,
    JobsQuery,
    PurgeDead,
    ScheduleRequest,
    TypeRuleRequest,
)
from ..core._engine import Engine
from ..core._jobs import DeadJob, FinishedJob, Job
from ..core._state import EnqueueResult, Outcome, QueueState, Reports

_STATS_FIELDS = ("total", "unclaimed", "inProgress", "completedTotal")


class BrokerApi:
    """Operations over one engine, answering in osqueue's JSON shapes."""

    def __init__(
        self, engine: Engine, *, throttle_stats: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        self.engine = engine
        self._throttle_stats = throttle_stats

    def assert_leader(self) -> None:
        """Raise ``NotLeader`` unless this broker leads."""
        if not self.engine.is_leader:
            raise self.engine.not_leader()

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
            # the lease: renewed by every commit (at least every heartbeat interval);
            # standbys take over once it is leaseMs old (their own clocks)
            "leaseAgeMs": e.lease_age_ms,
            "leaseMs": round(e.config.broker_heartbeat_timeout * 1000),
        }

    def ready(self) -> dict[str, Any]:
        self._leader_state()
        return {"status": "ready", "brokerId": self.engine.broker_id, "epoch": self.engine.epoch}

    async def raw_state(self) -> bytes:
        self._leader_state()
        return await self.engine.stored_document()

    # ------------------------------------------------------------------ submit

    async def submit(self, job: NewJob) -> dict[str, Any]:
        [result] = await self.engine.enqueue([job])
        answer: dict[str, Any] = {"jobId": result.id}
        if result.duplicate:
            answer["duplicate"] = True
        return answer

    async def submit_batch(self, jobs: list[NewJob]) -> dict[str, Any]:
        results = await self.engine.enqueue(jobs)
        return {
            "jobIds": [r.id for r in results],
            "duplicates": [r.id for r in results if r.duplicate],
        }

    async def submit_bulk(self, jobs: Items[NewJob]) -> dict[str, Any]:
        """Each job on its own: ``{"results": [...]}`` in input order."""
        results = await self.engine.enqueue_each(jobs.values)
        answers: list[dict[str, Any]] = []
        for index, result in enumerate(results):
            if isinstance(result, EnqueueResult):
                answer: dict[str, Any] = {"jobId": result.id}
                if result.duplicate:
                    answer["duplicate"] = True
            else:
                item = jobs.values[index]
                job_id = item.id if isinstance(item, NewJob) else jobs.rejected_ids.get(index)
                answer = {"jobId": job_id, "error": result.to_body()}
            answers.append(answer)
        return {"results": answers}

    # ------------------------------------------------------------------- claim

    async def claim(self, request: ClaimRequest, *, many: bool) -> dict[str, Any]:
        """Claim jobs: ``many`` answers ``{"jobs": [...]}`` (up to ``max``), otherwise
        osqueue's shape (one job's fields, or ``{}``)."""
        self.assert_leader()
        jobs = await self.engine.claim(
            request.worker_id,
            types=request.types,
            max_jobs=(request.max or 1) if many else 1,
            wait=(request.wait_ms or 0) / 1000,
        )
        if many:
            return {"jobs": [_claimed(j) for j in jobs]}
        return _claimed(jobs[0]) if jobs else {}

    async def exchange(self, call: ParsedExchange) -> dict[str, Any]:
        """A worker's reports and claim in one commit: each report's result, list by
        list, and the jobs claimed."""
        claim = call.claim
        reports = Reports(
            call.heartbeat.values, call.complete.values, call.fail.values, call.release.values
        )
        done = await self.engine.exchange(
            call.worker_id,
            reports,
            types=None if claim is None else claim.types,
            max_jobs=0 if claim is None else claim.max or 1,
            wait=0.0 if claim is None else (claim.wait_ms or 0) / 1000,
        )
        return {
            "heartbeat": _report_answers(call.heartbeat, done.reports.heartbeat),
            "complete": _report_answers(call.complete, done.reports.complete),
            "fail": _report_answers(call.fail, done.reports.fail),
            "release": _report_answers(call.release, done.reports.release),
            "jobs": [_claimed(j) for j in done.jobs],
        }

    # --------------------------------------------------------------- job calls

    async def heartbeat(self, job_id: str, call: HeldJob) -> None:
        await self.engine.heartbeat(job_id, call.worker_id, attempt=call.attempt)

    async def complete(self, job_id: str, call: HeldJob) -> None:
        result = call.result if isinstance(call, CompleteRequest) else None
        await self.engine.complete(job_id, call.worker_id, attempt=call.attempt, result=result)

    async def job_result(self, job_id: str, wait: float) -> dict[str, Any]:
        """The job's outcome (``JobResult``); a job that has not ended yet is waited
        for, up to ``wait`` seconds, commit by commit (committed state only)."""
        deadline = trio.current_time() + wait
        while True:
            landed = self.engine.landed  # taken before the read: no commit is missed
            answer = await self.engine.read(lambda state: _result_view(state, job_id))
            if answer["status"] not in ("unclaimed", "in_progress"):
                return answer
            if trio.current_time() >= deadline:
                return answer
            with trio.move_on_at(deadline):
                await landed.wait()

    async def fail(self, job_id: str, call: FailRequest) -> dict[str, Any]:
        status = await self.engine.fail(
            job_id,
            call.worker_id,
            error=call.error or "",
            attempt=call.attempt,
            retry_in_ms=call.retry_in_ms,
            final=bool(call.final),
        )
        return {"jobId": job_id, "status": status}

    async def release(self, job_id: str, call: HeldJob) -> None:
        await self.engine.release(job_id, call.worker_id, attempt=call.attempt)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        status = await self.engine.cancel(job_id)
        return {"jobId": job_id, "status": status}

    async def requeue(self, job_id: str) -> dict[str, Any]:
        await self.engine.requeue_dead(job_id)
        return {"jobId": job_id, "status": "unclaimed"}

    async def put_schedule(self, name: str, request: ScheduleRequest) -> dict[str, Any]:
        return await self.engine.put_schedule(name, request)

    async def delete_schedule(self, name: str) -> None:
        await self.engine.delete_schedule(name)

    async def cancel_matching(self, request: CancelMatching) -> dict[str, Any]:
        return await self.engine.cancel_matching(request.type, request.status)

    async def purge_dead(self, request: PurgeDead) -> dict[str, Any]:
        return {"purged": await self.engine.purge_dead(request.type)}

    async def put_type_rule(self, request: TypeRuleRequest) -> dict[str, Any]:
        return await self.engine.put_type_rule(request)

    async def list_type_rules(self) -> dict[str, Any]:
        def view(state: QueueState) -> dict[str, Any]:
            counts = state.counts_by_type()
            rules = []
            for rule in state.type_rules.values():
                queued = counts.get(rule.type, {"unclaimed": 0, "inProgress": 0})
                rules.append(rule.to_json() | queued)
            return {"types": rules}

        return await self.engine.read(view)

    async def list_schedules(self) -> dict[str, Any]:
        return await self.engine.read(
            lambda state: {"schedules": [s.view() for s in state.schedules.values()]}
        )

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
            # kept up to date at each commit, O(types): cheap to read this often
            "byType": self.engine.committed_by_type,
        }

    async def get_job(self, job_id: str) -> dict[str, Any]:
        def view(state: QueueState) -> dict[str, Any]:
            record = state.lookup(job_id)
            if record is None:
                raise JobNotFound(f"no job {job_id!r}")
            return job_view(record)

        return await self.engine.read(view)

    async def list_jobs(self, query: ListQuery) -> dict[str, Any]:
        """A page of queued jobs; a :class:`JobsQuery` filters them (the WebSocket's
        ``listJobs`` takes a plain :class:`ListQuery`: no filters)."""
        limit, after = query.limit or MAX_LIST, int(query.cursor or 0)
        status = job_type = None
        if isinstance(query, JobsQuery):
            status, job_type = query.status, query.type
        return await self.engine.read(
            lambda state: self._jobs_page(state, limit, after, status, job_type)
        )

    def _jobs_page(
        self,
        state: QueueState,
        limit: int,
        after: int,
        status: str | None = None,
        job_type: str | None = None,
    ) -> dict[str, Any]:
        """Up to ``limit`` jobs past the cursor ``after`` (an enqueue order) in queue
        order, of ``status`` and ``job_type`` when given. The cursor is the order of
        the page's last job, so it stays valid for the same filters (and any others)."""
        page: list[dict[str, Any]] = []
        next_cursor: str | None = None
        for job in state.iter_jobs():
            if job.order <= after:
                continue
            if (status is not None and job.status != status) or (
                job_type is not None and job.type != job_type
            ):
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

    async def list_dead(self, query: ListQuery) -> dict[str, Any]:
        limit, start = query.limit or MAX_LIST, int(query.cursor or 0)
        return await self.engine.read(lambda state: _dead_page(state, limit, start))

    def throttle_stats(self) -> dict[str, Any]:
        if self._throttle_stats is None:
            return {"throttling": False}
        return dict(self._throttle_stats())


def _dead_page(state: QueueState, limit: int, start: int) -> dict[str, Any]:
    dead = list(state.dead.values())[start : start + limit + 1]
    more = len(dead) > limit
    return {
        "total": len(state.dead),
        "dropped": state.counters["deadDropped"],
        "jobs": [job_view(d) for d in dead[:limit]],
        "nextCursor": str(start + limit) if more else None,
    }


def _report_answers(
    items: Items[JobReport] | Items[FailReport], outcomes: list[Outcome]
) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    for index, outcome in enumerate(outcomes):
        item = items.values[index]
        job_id = items.rejected_ids.get(index) if isinstance(item, TrioqError) else item.job_id
        if isinstance(outcome, str):
            answers.append({"jobId": job_id, "status": outcome})
        else:
            answers.append({"jobId": job_id, "error": outcome.to_body()})
    return answers


def _claimed(job: ClaimedJob) -> dict[str, Any]:
    return job.to_json()


def job_view(record: Job | DeadJob | FinishedJob) -> dict[str, Any]:
    """A job's public record, whatever list it sits in."""
    view = record.to_json()
    view["jobId"] = record.id
    if isinstance(record, DeadJob):
        view["status"] = "dead"
    elif isinstance(record, FinishedJob):
        view["status"] = record.outcome
    return view


def _result_view(state: QueueState, job_id: str) -> dict[str, Any]:
    record = state.lookup(job_id)
    if record is None:
        raise JobNotFound(f"no job {job_id!r} (or it left the dedup window)")
    if isinstance(record, Job):
        return {"jobId": job_id, "status": record.status}
    if isinstance(record, DeadJob):
        return {
            "jobId": job_id,
            "status": "dead",
            "error": record.last_error,
            "reason": record.reason,
        }
    answer: dict[str, Any] = {"jobId": job_id, "status": record.outcome, "result": None}
    if record.result_json is not None:
        answer["result"] = orjson.Fragment(record.result_json)
    return answer
