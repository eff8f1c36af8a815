"""The per-item routes, ``POST /v1/jobs/bulk`` and ``POST /v1/jobs/exchange``, on the
real HTTP app driven in-process (``httpx.ASGITransport``), in virtual time
(``MockClock(autojump_threshold=0)``): a result per item, in order; a bad item fails
alone; a request whose shape is wrong changes nothing; a claim rides with the
reports, and waits only without them; a failed commit answers by whether the
exchange claims. The WebSocket twins are in ``test_websocket.py``.

Every answer is checked against its answer model, key for key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import trio
import trio.testing

from trioq import FaultyStorage, MemoryStorage, Storage
from trioq._wire import MAX_BATCH, BulkAnswer, ExchangeAnswer, adapter
from trioq.broker._api import BrokerApi
from trioq.broker._http import create_app
from trioq.core._config import EngineConfig
from trioq.core._engine import Engine
from trioq.core._state import Limits, QueueState
from trioq.testing import TEST_URL, trio_wall_clock

KEY = "queue.json"
MAX_REQUEST_BYTES = 256 * 1024


@dataclass
class Served:
    engine: Engine
    http: httpx.AsyncClient

    def stored(self) -> bytes:
        """The last committed document."""
        assert self.engine.document is not None
        return self.engine.document

    def state(self) -> QueueState:
        return QueueState.decode(self.stored())


@asynccontextmanager
async def serve(
    nursery: trio.Nursery, storage: Storage | None = None, **limits: Any
) -> AsyncIterator[Served]:
    """An engine (run in ``nursery``) and its app, reached in-process."""
    engine = Engine(
        storage or MemoryStorage(),
        key=KEY,
        url=TEST_URL,
        config=EngineConfig(group_commit_interval=0.0),
        limits=Limits(**limits),
        wall_clock=trio_wall_clock,
    )
    app = create_app(BrokerApi(engine), max_request_bytes=MAX_REQUEST_BYTES)
    await nursery.start(engine.run)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=TEST_URL) as http:
        yield Served(engine, http)


def answer(response: httpx.Response, model: Any) -> dict[str, Any]:
    """A 200's body, which holds exactly the fields of ``model``."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    validator = adapter(model)
    parsed = validator.validate_python(body)
    assert validator.dump_python(parsed, mode="json", exclude_unset=True) == body
    return body


def failed(job_id: str | None, tag: str, message: str) -> dict[str, Any]:
    """An item's result that is an error."""
    return {"jobId": job_id, "error": {"_tag": tag, "message": message}}


async def bulk(served: Served, *jobs: Any) -> list[dict[str, Any]]:
    response = await served.http.post("/v1/jobs/bulk", json={"jobs": list(jobs)})
    results: list[dict[str, Any]] = answer(response, BulkAnswer)["results"]
    return results


async def exchange(served: Served, **body: Any) -> dict[str, Any]:
    response = await served.http.post("/v1/jobs/exchange", json={"workerId": "w1", **body})
    return answer(response, ExchangeAnswer)


async def held(served: Served, *ids: str, worker: str = "w1") -> None:
    """Submit ``ids`` and have ``worker`` claim them."""
    assert all(
        "error" not in r for r in await bulk(served, *({"payload": i, "id": i} for i in ids))
    )
    claim = {"workerId": worker, "max": len(ids)}
    claimed = (await served.http.post("/v1/jobs/claim", json=claim)).json()["jobs"]
    assert [j["jobId"] for j in claimed] == list(ids)


# ------------------------------------------------------------------------ bulk


def nested(depth: int) -> Any:
    """A payload of ``depth`` nested lists."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_bulk_answers_each_job_on_its_own(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with serve(nursery, max_queued=4, max_payload_bytes=100) as served:
        await bulk(served, {"payload": 0, "id": "known"})
        results = await bulk(
            served,
            {"payload": 1, "id": "a", "type": None, "maxAttempts": None},  # nulls are absent
            {"payload": 2, "id": "bad-attempts", "maxAttempts": 0},
            {"payload": 3, "id": "bad id"},
            {"payload": "x" * 200, "id": "big"},
            {"payload": 4, "id": "a"},  # earlier in the request
            {"payload": 5, "id": "known"},
            {"payload": 6},  # a broker-made id
            {"payload": nested(65), "id": "deep"},
            {"payload": 7, "id": "last"},  # the fourth job: the queue is full after it
            {"payload": 8, "id": "over"},
            {"payload": 9},
        )
    made = results[6]["jobId"]
    assert isinstance(made, str)
    protocol, full = (
        "BrokerProtocolError",
        "the queue holds 4 jobs; 1 more would pass the limit of 4",
    )
    assert results == [
        {"jobId": "a"},
        failed("bad-attempts", protocol, "jobs[1]: maxAttempts must be an integer from 1 to 1000"),
        failed(None, protocol, "jobs[2]: id must be 1-128 characters of A-Z a-z 0-9 . _ : -"),
        failed("big", "PayloadTooLarge", "jobs[3]: payload is 202 bytes, over the limit of 100"),
        {"jobId": "a", "duplicate": True},
        {"jobId": "known", "duplicate": True},
        {"jobId": made},
        failed("deep", protocol, "jobs[7]: payload is nested more than 64 levels deep"),
        {"jobId": "last"},
        failed("over", "QueueFull", full),
        failed(None, "QueueFull", full),
    ]
    stored = served.state()
    assert list(stored.jobs) == ["known", "a", made, "last"]
    assert [j.payload for j in stored.jobs.values()] == [0, 1, 6, 7]
    assert stored.counters["enqueued"] == 4


BAD_BULKS: list[tuple[bytes, str]] = [
    (b"{not json", "malformed JSON"),
    (b"[]", "the request body must be a JSON object"),
    (b"{}", "jobs is required"),
    (b'{"jobs": {"payload": 1}}', "jobs must be a list of 1 to 10000 jobs"),
    (b'{"jobs": []}', "jobs must be a list of 1 to 10000 jobs"),
    (orjson.dumps({"jobs": [{"payload": 1}] * (MAX_BATCH + 1)}), "jobs must be a list of 1"),
    (b'{"jobs": [{"payload": 1, "id": "ok"}, 1]}', "jobs[1] must be an object"),
    (b'{"jobs": [{"payload": 1, "id": "ok"}, null]}', "jobs[1] must be an object"),
    (b'{"jobs": [{"payload": 1, "id": "ok"}, [{"payload": 2}]]}', "jobs[1] must be an object"),
    (b'{"jobs": [{"payload": 123456789012345678901234567890, "id": "ok"}]}', "out of range"),
]


async def test_a_bulk_of_the_wrong_shape_is_a_400_and_changes_nothing(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with serve(nursery) as served:
        await bulk(served, {"payload": 0, "id": "before"})
        before = served.stored()
        for raw, message in BAD_BULKS:
            response = await served.http.post("/v1/jobs/bulk", content=raw)
            assert response.status_code == 400, (raw[:60], response.text)
            assert response.json()["_tag"] == "BrokerProtocolError"
            assert message in response.json()["message"], (raw[:60], response.text)
        huge = {"jobs": [{"payload": "x" * 1000, "id": f"j{n}"} for n in range(300)]}
        response = await served.http.post("/v1/jobs/bulk", json=huge)
        assert (response.status_code, response.json()["_tag"]) == (413, "PayloadTooLarge")
        assert served.stored() == before
        assert list(served.state().jobs) == ["before"]


# -------------------------------------------------------------------- exchange


MIXED_REPORTS: dict[str, list[dict[str, Any]]] = {
    "heartbeat": [{"jobId": "hb", "attempt": 1}, {"jobId": "hb", "attempt": 2}],
    "complete": [
        {"jobId": "done", "attempt": None},
        {"jobId": "theirs"},
        {"jobId": "nope"},
        {"jobId": "bad id"},
        {"attempt": 1},
    ],
    "fail": [
        {"jobId": "retry", "error": "boom", "retryInMs": 100},
        {"jobId": "dead", "error": "x", "final": True},
        {"jobId": "retry", "error": 5},
    ],
    "release": [{"jobId": "back"}, {"jobId": "gone"}],
}
"""Reports of worker w1: valid ones, others' and unknown jobs, and malformed ones."""


async def test_an_exchange_answers_each_report_on_its_own(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with serve(nursery) as served:
        await held(served, "hb", "done", "retry", "dead", "back", "gone")
        await held(served, "theirs", worker="w2")
        await bulk(served, {"payload": 0, "id": "next"})
        cancel = await served.http.post("/v1/jobs/gone/cancel")
        assert cancel.json() == {"jobId": "gone", "status": "cancelling"}
        body = await exchange(served, **MIXED_REPORTS, claim={"max": 5})
        stored = served.state()
    lost, protocol = "LeaseLost", "BrokerProtocolError"
    assert body["heartbeat"] == [
        {"jobId": "hb", "status": "in_progress"},
        failed("hb", lost, "job 'hb' is at attempt 1, not 2 (lease lost)"),
    ]
    assert body["complete"] == [
        {"jobId": "done", "status": "completed"},
        failed("theirs", lost, "job 'theirs' is not held by worker 'w1'"),
        failed("nope", "JobNotFound", "no job 'nope'"),
        failed(
            None, protocol, "complete[3]: jobId must be 1-128 characters of A-Z a-z 0-9 . _ : -"
        ),
        failed(None, protocol, "complete[4]: jobId is required"),
    ]
    assert body["fail"] == [
        {"jobId": "retry", "status": "retrying"},
        {"jobId": "dead", "status": "dead"},
        failed("retry", protocol, "fail[2]: error must be a string"),
    ]
    assert body["release"] == [
        {"jobId": "back", "status": "unclaimed"},
        {"jobId": "gone", "status": "cancelled"},
    ]
    # the claim came last, in the same commit: the released job first (its old place)
    assert all(isinstance(job.pop("createdAt"), int) for job in body["jobs"])
    assert all(job.pop("maxAttempts") == 3 for job in body["jobs"])
    assert body["jobs"] == [
        {"jobId": "back", "type": "default", "payload": "back", "attempt": 1, "leaseMs": 30_000},
        {"jobId": "next", "type": "default", "payload": 0, "attempt": 1, "leaseMs": 30_000},
    ]
    assert stored.jobs["hb"].status == "in_progress"
    assert stored.finished["done"].outcome == "completed"
    assert stored.jobs["retry"].last_error == "boom"
    assert stored.dead["dead"].reason == "final"
    assert stored.finished["gone"].outcome == "cancelled"
    assert stored.jobs["theirs"].worker_id == "w2"
    assert stored.jobs["back"].worker_id == "w1"


async def test_an_exchange_without_a_claim_or_reports_answers_every_key(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with serve(nursery) as served:
        await held(served, "a")
        empty: dict[str, Any] = {
            "heartbeat": [],
            "complete": [],
            "fail": [],
            "release": [],
            "jobs": [],
        }
        assert await exchange(served) == empty
        assert await exchange(served, heartbeat=None, claim=None) == empty
        done = await exchange(served, complete=[{"jobId": "a"}])
        assert done == {**empty, "complete": [{"jobId": "a", "status": "completed"}]}


BAD_EXCHANGES: list[tuple[dict[str, Any], str]] = [
    ({}, "workerId is required"),
    ({"workerId": ""}, "workerId must be a string of 1-256 characters"),
    ({"workerId": 5}, "workerId must be a string"),
    ({"workerId": "w1", "complete": {"jobId": "a"}}, "complete must be a list"),
    ({"workerId": "w1", "heartbeat": [{"jobId": "a"}] * (MAX_BATCH + 1)}, "heartbeat must be"),
    ({"workerId": "w1", "fail": [{"jobId": "a"}, "a"]}, "fail[1] must be an object"),
    ({"workerId": "w1", "release": [None]}, "release[0] must be an object"),
    ({"workerId": "w1", "claim": 5}, "claim must be an object"),
    ({"workerId": "w1", "claim": {"max": 0}}, "claim.max must be an integer from 1 to 10000"),
    ({"workerId": "w1", "claim": {"types": []}}, "claim.types must be"),
    ({"workerId": "w1", "claim": {"waitMs": 30_001}}, "claim.waitMs must be"),
]


async def test_an_exchange_of_the_wrong_shape_is_a_400_and_changes_nothing(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with serve(nursery) as served:
        await held(served, "a")
        await bulk(served, {"payload": 1, "id": "ready"})
        before = served.stored()
        for bad, message in BAD_EXCHANGES:
            # each also carries a valid report and a claim that would change the queue
            body = {"complete": [{"jobId": "a"}], "claim": {"max": 1}, **bad}
            response = await served.http.post("/v1/jobs/exchange", json=body)
            assert response.status_code == 400, (bad, response.text)
            assert response.json()["_tag"] == "BrokerProtocolError"
            assert message in response.json()["message"], (bad, response.text)
        for raw in (b"nope", b"[1]", b'"w1"'):
            response = await served.http.post("/v1/jobs/exchange", content=raw)
            assert response.status_code == 400, raw
        assert served.stored() == before


async def test_wait_ms_is_honoured_only_by_an_exchange_without_reports(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    got: list[tuple[float, list[str]]] = []

    async def long_poll(served: Served) -> None:
        body = await exchange(served, workerId="w2", claim={"max": 1, "waitMs": 10_000})
        got.append((trio.current_time(), [j["jobId"] for j in body["jobs"]]))

    async with serve(nursery) as served:
        await held(served, "a")
        claim = {"max": 1, "waitMs": 10_000}
        start = trio.current_time()
        body = await exchange(served, heartbeat=[{"jobId": "a"}], claim=claim)
        assert (body["heartbeat"][0]["status"], body["jobs"]) == ("in_progress", [])
        # a report that fails its parse is a report too
        body = await exchange(served, complete=[{"jobId": "bad id"}], claim=claim)
        assert body["jobs"] == []
        assert trio.current_time() == start  # neither waited
        nursery.start_soon(long_poll, served)
        await trio.sleep(2.5)
        assert got == []
        await bulk(served, {"payload": 1, "id": "b"})
        await trio.testing.wait_all_tasks_blocked()
        assert got == [(start + 2.5, ["b"])]
        # and without a job it waits the whole waitMs
        body = await exchange(served, claim={"max": 1, "waitMs": 1500})
        assert body["jobs"] == []
        assert trio.current_time() == start + 4.0


async def test_a_failed_commit_fails_the_exchange_and_applies_none_of_it(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    storage = FaultyStorage(MemoryStorage())
    async with serve(nursery, storage) as served:
        await held(served, "a", "b")
        await bulk(served, {"payload": 1, "id": "ready"})
        before = served.stored()
        storage.inject("error", count=None, ops=["write"])
        claiming = await served.http.post(
            "/v1/jobs/exchange",
            json={"workerId": "w1", "complete": [{"jobId": "a"}], "claim": {"max": 1}},
        )
        assert (claiming.status_code, claiming.json()["_tag"]) == (503, "WriteOutcomeUnknown")
        plain = await served.http.post(
            "/v1/jobs/exchange", json={"workerId": "w1", "complete": [{"jobId": "b"}]}
        )
        assert (plain.status_code, plain.json()["_tag"]) == (503, "StorageUnavailable")
        submitted = await served.http.post("/v1/jobs/bulk", json={"jobs": [{"payload": 2}]})
        assert (submitted.status_code, submitted.json()["_tag"]) == (503, "StorageUnavailable")
        storage.clear()
        # reads wait for the reload: what they show is what is stored, untouched
        jobs = (await served.http.get("/v1/jobs")).json()["jobs"]
        assert {j["jobId"]: j["status"] for j in jobs} == {
            "a": "in_progress",
            "b": "in_progress",
            "ready": "unclaimed",
        }
        assert storage.inner.peek(KEY).data == before  # type: ignore[attr-defined]
        assert served.engine.state is not None
        assert served.engine.state.encode() == before
        retried = await exchange(served, complete=[{"jobId": "a"}], claim={"max": 1})
        assert retried["complete"] == [{"jobId": "a", "status": "completed"}]
        assert [j["jobId"] for j in retried["jobs"]] == ["ready"]


async def test_a_standby_answers_not_leader(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    storage = MemoryStorage()
    async with serve(nursery, storage) as leader, serve(nursery, storage) as standby:
        assert leader.engine.is_leader
        assert not standby.engine.is_leader
        for path, body in (
            ("/v1/jobs/bulk", {"jobs": [{"payload": 1}]}),
            ("/v1/jobs/exchange", {"workerId": "w1", "claim": {"max": 1}}),
        ):
            response = await standby.http.post(path, json=body)
            assert (response.status_code, response.json()["_tag"]) == (503, "NotLeader")
        assert list(leader.state().jobs) == []
