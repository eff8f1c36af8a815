"""Every error status of the broker's HTTP API, with its ``_tag``, against real
in-process brokers on the file backend; and hostile input everywhere: never a 500,
and a rejected request changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from _broker_proc import InProcessBroker, start_in_process
from trioq import Client
from trioq._errors import ERRORS_BY_TAG, JobNotDead, StorageUnreachable
from trioq.broker._settings import BrokerSettings
from trioq.storage._faulty import FaultyStorage
from trioq.storage._file import FileStorage
from trioq.storage._memory import MemoryStorage

KNOWN_TAGS = {
    400: {"BrokerProtocolError"},
    401: {"Unauthorized"},
    404: {"JobNotFound", "NotFound"},
    405: {"MethodNotAllowed"},
    409: {"LeaseLost", "JobNotDead"},
    413: {"PayloadTooLarge"},
    503: {"NotLeader", "QueueFull", "StorageUnavailable"},
    500: {"InternalError"},  # a bug: asserted absent everywhere
}


def settings_for(directory: Path, **overrides: Any) -> BrokerSettings:
    return BrokerSettings(port=0, data_dir=str(directory), group_commit_interval_ms=0, **overrides)


@pytest.fixture
async def broker(nursery: trio.Nursery, tmp_path: Path) -> InProcessBroker:
    return await start_in_process(
        nursery, settings_for(tmp_path, max_payload_bytes=1024, max_request_bytes=64 * 1024)
    )


@pytest.fixture
async def http(broker: InProcessBroker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=broker.url, timeout=15, verify=False) as client:
        yield client


def assert_error(response: httpx.Response, status: int, tag: str) -> dict[str, Any]:
    assert response.status_code == status, (response.request.url, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["_tag"] == tag, body
    assert isinstance(body["message"], str)
    assert body["message"]
    return body


async def snapshot(http: httpx.AsyncClient) -> dict[str, Any]:
    """The queue's content (not the lease bookkeeping, which heartbeats change)."""
    response = await http.get("/state")
    assert response.status_code == 200
    document = response.json()
    return {k: document[k] for k in ("jobs", "dead", "finished", "counters", "nextOrder")}


async def held_job(http: httpx.AsyncClient, worker: str = "w1") -> str:
    """A fresh job (of a type of its own), claimed by ``worker``."""
    job_id = f"held-{uuid.uuid4().hex[:8]}"
    submitted = await http.post("/v1/jobs", json={"payload": 1, "id": job_id, "type": job_id})
    assert submitted.status_code == 200
    claimed = await http.post("/v1/jobs/claim", json={"workerId": worker, "types": [job_id]})
    assert claimed.json()["jobId"] == job_id
    return job_id


# ------------------------------------------------------------ 400 named cases

BAD_BODIES: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not JSON", b"nope"),
    ("non-UTF-8", b"\xff\xfe\x00{"),
    ("truncated", b'{"payload": '),
    ("array", b"[1, 2]"),
    ("string", b'"payload"'),
    ("number", b"42"),
    ("null", b"null"),
    ("NaN", b'{"payload": NaN, "workerId": "w", "jobs": [], "error": "x"}'),
    ("Infinity", b'{"payload": Infinity, "workerId": "w"}'),
    ("huge float", b'{"payload": 1e400, "workerId": "w"}'),
    ("too deep", b"[" * 5000 + b"]" * 5000),
    ("lone surrogate", b'{"payload": "\\ud800", "workerId": "\\ud800"}'),
]


async def test_malformed_bodies_are_400_on_every_post_route(http: httpx.AsyncClient) -> None:
    job_id = await held_job(http)
    before = await snapshot(http)
    for name, raw in BAD_BODIES:
        paths = [
            "/v1/jobs",
            "/v1/jobs/batch",
            "/v1/jobs/claim",
            *(f"/v1/jobs/{job_id}/{op}" for op in ("heartbeat", "complete", "fail", "release")),
        ]
        if raw:  # cancel and requeue take an optional body
            paths += [f"/v1/jobs/{job_id}/cancel", f"/v1/dead/{job_id}/requeue"]
        for path in paths:
            response = await http.post(path, content=raw)
            assert response.status_code == 400, (name, path, response.text)
            assert response.json()["_tag"] == "BrokerProtocolError", (name, path)
    assert await snapshot(http) == before


INVALID_SUBMITS: list[dict[str, Any]] = [
    {},
    {"payload": 1, "type": ""},
    {"payload": 1, "type": 5},
    {"payload": 1, "type": "x" * 129},
    {"payload": 1, "type": "a\nb"},
    {"payload": 1, "type": ["a"]},
    {"payload": 1, "maxAttempts": 0},
    {"payload": 1, "maxAttempts": -1},
    {"payload": 1, "maxAttempts": True},
    {"payload": 1, "maxAttempts": 1.5},
    {"payload": 1, "maxAttempts": "3"},
    {"payload": 1, "maxAttempts": 10**6},
    {"payload": 1, "maxAttempts": 2**64},
    {"payload": 1, "delayMs": -1},
    {"payload": 1, "delayMs": False},
    {"payload": 1, "delayMs": 2**63},
    {"payload": 1, "delayMs": 10**30},
    {"payload": 1, "delayMs": "10"},
    {"payload": 1, "id": ""},
    {"payload": 1, "id": "has space"},
    {"payload": 1, "id": "slash/y"},
    {"payload": 1, "id": "ü"},
    {"payload": 1, "id": "x" * 129},
    {"payload": 1, "id": 7},
    {"payload": 1, "id": {"a": 1}},
]


async def test_invalid_submit_fields_are_400(http: httpx.AsyncClient) -> None:
    before = await snapshot(http)
    for body in INVALID_SUBMITS:
        response = await http.post("/v1/jobs", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["_tag"] == "BrokerProtocolError"
        # the same job inside a batch rejects the whole batch
        batch = {"jobs": [{"payload": "fine", "id": "fine-1"}, body]}
        response = await http.post("/v1/jobs/batch", json=batch)
        assert response.status_code == 400, (body, response.text)
    assert await snapshot(http) == before


async def test_invalid_batches_are_400(http: httpx.AsyncClient) -> None:
    before = await snapshot(http)
    bodies: list[dict[str, Any]] = [
        {},
        {"jobs": []},
        {"jobs": "x"},
        {"jobs": {"payload": 1}},
        {"jobs": [1]},
        {"jobs": [None]},
        {"jobs": [[{"payload": 1}]]},
        {"jobs": [0] * 10_001},
    ]
    for body in bodies:
        assert_error(await http.post("/v1/jobs/batch", json=body), 400, "BrokerProtocolError")
    assert await snapshot(http) == before


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def nested_json(depth: int) -> bytes:
    """``{"payload": [[...[0]...]]}`` with ``depth`` lists, built as text (the
    encoder refuses to nest that deep)."""
    return b'{"payload": ' + b"[" * depth + b"0" + b"]" * depth + b"}"


async def test_deeply_nested_payloads_are_400_and_break_nothing(http: httpx.AsyncClient) -> None:
    before = await snapshot(http)
    for depth in (65, 252, 253, 254, 300, 1000):
        body = nested_json(depth)
        assert_error(await http.post("/v1/jobs", content=body), 400, "BrokerProtocolError")
    assert await snapshot(http) == before
    # moderately nested payloads are fine, and every answer that carries them works
    job_id = (await http.post("/v1/jobs", json={"payload": nested(64)})).json()["jobId"]
    assert (await http.get("/v1/jobs")).status_code == 200
    assert (await http.get(f"/v1/jobs/{job_id}")).status_code == 200
    claimed = await http.post("/v1/jobs/claim", json={"workerId": "w", "max": 5})
    assert claimed.status_code == 200
    assert claimed.json()["jobs"][0]["payload"] == nested(64)


INVALID_CLAIMS: list[dict[str, Any]] = [
    {},
    {"workerId": ""},
    {"workerId": None},
    {"workerId": 5},
    {"workerId": True},
    {"workerId": ["w"]},
    {"workerId": "w" * 257},
    {"workerId": "w", "max": 0},
    {"workerId": "w", "max": -3},
    {"workerId": "w", "max": 10001},
    {"workerId": "w", "max": True},
    {"workerId": "w", "max": 2.0},
    {"workerId": "w", "max": "2"},
    {"workerId": "w", "max": 2**64},
    {"workerId": "w", "waitMs": -1},
    {"workerId": "w", "waitMs": 30_001},
    {"workerId": "w", "waitMs": 10**30},
    {"workerId": "w", "waitMs": False},
    {"workerId": "w", "waitMs": 0.5},
    {"workerId": "w", "types": "default"},
    {"workerId": "w", "types": [1]},
    {"workerId": "w", "types": [None]},
    {"workerId": "w", "types": {"a": 1}},
    {"workerId": "w", "types": []},
]


async def test_invalid_claims_are_400(http: httpx.AsyncClient) -> None:
    await http.post("/v1/jobs", json={"payload": 1, "id": "waiting"})
    before = await snapshot(http)
    for body in INVALID_CLAIMS:
        response = await http.post("/v1/jobs/claim", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["_tag"] == "BrokerProtocolError"
    assert await snapshot(http) == before


INVALID_JOB_CALLS: list[tuple[str, dict[str, Any]]] = [
    *(
        (op, body)
        for op in ("heartbeat", "complete", "release", "fail")
        for body in (
            {},
            {"workerId": ""},
            {"workerId": 1},
            {"workerId": False},
            {"workerId": "w1", "attempt": 0},
            {"workerId": "w1", "attempt": -1},
            {"workerId": "w1", "attempt": True},
            {"workerId": "w1", "attempt": 1.0},
            {"workerId": "w1", "attempt": "1"},
            {"workerId": "w1", "attempt": 2**64},
        )
    ),
    ("fail", {"workerId": "w1", "error": 5}),
    ("fail", {"workerId": "w1", "error": ["x"]}),
    ("fail", {"workerId": "w1", "error": "x", "retryInMs": -1}),
    ("fail", {"workerId": "w1", "error": "x", "retryInMs": 2**63}),
    ("fail", {"workerId": "w1", "error": "x", "retryInMs": True}),
    ("fail", {"workerId": "w1", "error": "x", "final": "yes"}),
    ("fail", {"workerId": "w1", "error": "x", "final": 1}),
]


async def test_invalid_job_calls_are_400(http: httpx.AsyncClient) -> None:
    job_id = await held_job(http)
    before = await snapshot(http)
    for op, body in INVALID_JOB_CALLS:
        response = await http.post(f"/v1/jobs/{job_id}/{op}", json=body)
        assert response.status_code == 400, (op, body, response.text)
        assert response.json()["_tag"] == "BrokerProtocolError"
    assert await snapshot(http) == before


BAD_PATH_IDS = ["bad%20id", "%ff%fe", "x" * 129, "%C3%BC", "a%00b", "..", "a%2Fb", "%20"]


async def test_bad_ids_in_paths(http: httpx.AsyncClient) -> None:
    before = await snapshot(http)
    for bad in BAD_PATH_IDS:
        calls = [
            http.get(f"/v1/jobs/{bad}"),
            *(
                http.post(f"/v1/jobs/{bad}/{op}", json={"workerId": "w1", "error": "x"})
                for op in ("heartbeat", "complete", "fail", "release", "cancel")
            ),
            http.post(f"/v1/dead/{bad}/requeue"),
        ]
        for call in calls:
            response = await call
            assert response.status_code in (400, 404, 405), (bad, response.text)
            tag = response.json()["_tag"]
            assert tag in KNOWN_TAGS[response.status_code], (bad, response.text)
            if response.status_code == 400:
                assert tag == "BrokerProtocolError"
    assert await snapshot(http) == before


async def test_bad_query_parameters(http: httpx.AsyncClient) -> None:
    for path in ("/v1/jobs", "/v1/dead"):
        for query in (
            "limit=0",
            "limit=-1",
            "limit=1001",
            "limit=abc",
            "limit=1.5",
            "limit=1e3",
            "limit=%ff",
            "limit=" + "9" * 5000,
            "cursor=abc",
            "cursor=-1",
            "cursor=%00",
            "cursor=" + "9" * 5000,
        ):
            assert_error(await http.get(f"{path}?{query}"), 400, "BrokerProtocolError")
        # a cursor past the end is an empty last page
        far = (await http.get(f"{path}?cursor={10**30}")).json()
        assert far["jobs"] == []
        assert far["nextCursor"] is None


# ------------------------------------------------------------------ 404 / 409


async def test_job_not_found_is_404(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/v1/jobs/missing"), 404, "JobNotFound")
    for op in ("heartbeat", "complete", "fail", "release"):
        response = await http.post(f"/v1/jobs/missing/{op}", json={"workerId": "w1"})
        assert_error(response, 404, "JobNotFound")
    assert_error(await http.post("/v1/jobs/missing/cancel"), 404, "JobNotFound")
    assert_error(await http.post("/v1/dead/missing/requeue"), 404, "JobNotFound")


async def test_lease_lost_is_409(http: httpx.AsyncClient) -> None:
    job_id = await held_job(http)
    before = await snapshot(http)
    for op in ("heartbeat", "complete", "fail", "release"):
        other = await http.post(f"/v1/jobs/{job_id}/{op}", json={"workerId": "w2", "error": "x"})
        assert_error(other, 409, "LeaseLost")
        stale = await http.post(
            f"/v1/jobs/{job_id}/{op}", json={"workerId": "w1", "attempt": 2, "error": "x"}
        )
        assert_error(stale, 409, "LeaseLost")
    assert await snapshot(http) == before
    # not in progress any more
    done = await http.post(f"/v1/jobs/{job_id}/complete", json={"workerId": "w1"})
    assert done.status_code == 204
    again = await http.post(f"/v1/jobs/{job_id}/complete", json={"workerId": "w1"})
    assert_error(again, 409, "LeaseLost")


async def test_requeue_of_a_job_that_is_not_dead_is_409(
    broker: InProcessBroker, http: httpx.AsyncClient
) -> None:
    """A job that exists but is not dead (queued, held, finished) is a conflict with
    its state, not a malformed request; the client raises JobNotDead."""
    held = await held_job(http)
    queued = (await http.post("/v1/jobs", json={"payload": 1, "id": "queued"})).json()["jobId"]
    before = await snapshot(http)
    for job_id in (held, queued):
        body = assert_error(await http.post(f"/v1/dead/{job_id}/requeue"), 409, "JobNotDead")
        assert job_id in body["message"]
    assert await snapshot(http) == before
    async with Client(broker.url, retry_deadline=5) as client:
        with pytest.raises(JobNotDead):
            await client.requeue(queued)


async def test_every_tag_on_the_wire_has_a_class() -> None:
    for status, tags in KNOWN_TAGS.items():
        for tag in tags:
            assert ERRORS_BY_TAG[tag].status == status, tag


async def test_unknown_routes_and_methods(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/nothing"), 404, "NotFound")
    assert_error(await http.get("/v1/jobs/a/b/c"), 404, "NotFound")
    assert_error(await http.delete("/v1/jobs"), 405, "MethodNotAllowed")
    assert_error(await http.get("/v1/jobs/claim/x"), 404, "NotFound")
    assert_error(await http.put("/v1/jobs/x/complete"), 405, "MethodNotAllowed")
    assert_error(await http.post("/healthz"), 405, "MethodNotAllowed")


async def test_post_only_paths_answer_405_to_other_methods(http: httpx.AsyncClient) -> None:
    """``/v1/jobs/claim`` and ``/v1/jobs/batch`` sit where ``GET /v1/jobs/{id}``
    would match: a GET is the wrong method, not a lookup of a job named "claim"."""
    for path in ("/v1/jobs/claim", "/v1/jobs/batch"):
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            response = await http.request(method, path)
            assert_error(response, 405, "MethodNotAllowed")
            assert "POST" in response.headers["allow"]
        head = await http.head(path)
        assert head.status_code == 405
    for op in ("heartbeat", "complete", "fail", "release", "cancel"):
        assert_error(await http.get(f"/v1/jobs/x/{op}"), 405, "MethodNotAllowed")
    assert_error(await http.get("/v1/dead/x/requeue"), 405, "MethodNotAllowed")
    # names that only look like them are job ids
    for name in ("claims", "Claim", "batch2", "xclaim"):
        assert_error(await http.get(f"/v1/jobs/{name}"), 404, "JobNotFound")
    # a job may still be called "claim": every POST route reaches it
    await http.post("/v1/jobs", json={"payload": 1, "id": "claim"})
    cancelled = await http.post("/v1/jobs/claim/cancel")
    assert cancelled.json() == {"jobId": "claim", "status": "cancelled"}


# ------------------------------------------------------------------ numbers

OUT_OF_RANGE = [
    "123456789012345678901234567890",
    "18446744073709551616",  # 2**64
    "-9223372036854775809",  # -2**63 - 1
    "-9999999999999999999",
    "1" + "0" * 5000,
]


async def test_integers_beyond_64_bits_are_400_not_floats(http: httpx.AsyncClient) -> None:
    """orjson reads them as floats: they are refused, naming the problem, wherever
    they are (payload, nested, another field, a batch item)."""
    before = await snapshot(http)
    for literal in OUT_OF_RANGE:
        for path, body in (
            ("/v1/jobs", f'{{"payload": {literal}}}'),
            ("/v1/jobs", f'{{"payload": {{"a": [1, {{"b": {literal}}}]}}}}'),
            ("/v1/jobs", f'{{"payload": 1, "maxAttempts": {literal}}}'),
            ("/v1/jobs/batch", f'{{"jobs": [{{"payload": 1}}, {{"payload": {literal}}}]}}'),
            ("/v1/jobs/claim", f'{{"workerId": "w", "max": {literal}}}'),
        ):
            response = await http.post(path, content=body.encode())
            answer = assert_error(response, 400, "BrokerProtocolError")
            if len(literal) < 40:  # a longer one overflows a double: orjson refuses it
                assert literal in answer["message"], answer
                assert "out of range" in answer["message"], answer
    assert await snapshot(http) == before


async def test_numbers_that_round_trip_exactly(http: httpx.AsyncClient) -> None:
    """The 64-bit edges, long digit runs in strings, and floats with many digits are
    accepted and come back as they were sent."""
    payloads = [
        "18446744073709551615",  # 2**64 - 1
        "-9223372036854775808",  # -2**63
        "9999999999999999999",
        '"123456789012345678901234567890"',
        '{"k123456789012345678901234567890": ["12345678901234567890\\"", 1]}',
        "0.1234567890123456789012345",
        "1.5e300",
    ]
    for n, literal in enumerate(payloads):
        body = f'{{"payload": {literal}, "id": "exact-{n}"}}'
        response = await http.post("/v1/jobs", content=body.encode())
        assert response.status_code == 200, (literal, response.text)
        stored = (await http.get(f"/v1/jobs/exact-{n}")).json()["payload"]
        assert stored == orjson.loads(literal), literal
        if isinstance(stored, int):
            assert str(stored) == literal


async def test_nan_and_infinity_are_400(http: httpx.AsyncClient) -> None:
    before = await snapshot(http)
    for literal in ("NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e999"):
        response = await http.post("/v1/jobs", content=f'{{"payload": {literal}}}'.encode())
        assert_error(response, 400, "BrokerProtocolError")
    assert await snapshot(http) == before


# ------------------------------------------------------------------------ 413


async def test_payload_too_large_is_413(broker: InProcessBroker, http: httpx.AsyncClient) -> None:
    before = await snapshot(http)
    big = "x" * 2000  # over max_payload_bytes (1024), under the request limit
    body = assert_error(await http.post("/v1/jobs", json={"payload": big}), 413, "PayloadTooLarge")
    assert "1024" in body["message"]
    batch = {"jobs": [{"payload": 1, "id": "small"}, {"payload": big}]}
    assert_error(await http.post("/v1/jobs/batch", json=batch), 413, "PayloadTooLarge")
    assert await snapshot(http) == before
    # exactly at the limit is fine
    at_limit = "y" * (1024 - 2)
    assert (await http.post("/v1/jobs", json={"payload": at_limit})).status_code == 200


async def test_request_too_large_is_413(broker: InProcessBroker, http: httpx.AsyncClient) -> None:
    before = await snapshot(http)
    huge = orjson.dumps({"payload": "z" * (70 * 1024)})
    for path in ("/v1/jobs", "/v1/jobs/batch", "/v1/jobs/claim"):
        response = await http.post(path, content=huge)
        assert_error(response, 413, "PayloadTooLarge")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(huge), 8192):
            yield huge[start : start + 8192]

    # without a Content-Length (chunked), the limit holds too
    assert_error(await http.post("/v1/jobs", content=chunks()), 413, "PayloadTooLarge")
    assert await snapshot(http) == before


# ------------------------------------------------------------------------ 503


async def test_queue_full_is_503(nursery: trio.Nursery, tmp_path: Path) -> None:
    broker = await start_in_process(nursery, settings_for(tmp_path, max_queued=3))
    async with httpx.AsyncClient(base_url=broker.url, verify=False) as http:
        for n in range(3):
            ok = await http.post("/v1/jobs", json={"payload": n, "id": f"j{n}"})
            assert ok.status_code == 200
        before = await snapshot(http)
        assert_error(await http.post("/v1/jobs", json={"payload": 3}), 503, "QueueFull")
        batch = {"jobs": [{"payload": 4}, {"payload": 5}]}
        assert_error(await http.post("/v1/jobs/batch", json=batch), 503, "QueueFull")
        assert await snapshot(http) == before
        # a duplicate at capacity is still answered: it creates nothing
        dup = await http.post("/v1/jobs", json={"payload": 0, "id": "j0"})
        assert dup.json() == {"jobId": "j0", "duplicate": True}


async def test_storage_unavailable_is_503_and_loses_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    storage = FaultyStorage(FileStorage(tmp_path))
    broker = await start_in_process(nursery, settings_for(tmp_path), storage=storage)
    async with httpx.AsyncClient(base_url=broker.url, verify=False) as http:
        await http.post("/v1/jobs", json={"payload": 1, "id": "before"})
        # a commit is a write (document layout) or a create (log layout)
        storage.inject("error", count=None, ops=["write", "create"], error=StorageUnreachable)
        failed = await http.post("/v1/jobs", json={"payload": 2, "id": "during"})
        assert_error(failed, 503, "StorageUnavailable")
        storage.clear()
        after = await http.post("/v1/jobs", json={"payload": 3, "id": "after"})
        assert after.status_code == 200
        ids = {j["jobId"] for j in (await http.get("/v1/jobs")).json()["jobs"]}
        assert ids == {"before", "after"}
        # the failed submit was not acknowledged, so a retry creates it once
        retry = await http.post("/v1/jobs", json={"payload": 2, "id": "during"})
        assert retry.json() == {"jobId": "during"}


LEADER_ONLY_CALLS: list[tuple[str, str, Any]] = [
    ("GET", "/state", None),
    ("GET", "/v1/stats", None),
    ("GET", "/v1/jobs", None),
    ("GET", "/v1/jobs?limit=abc", None),
    ("GET", "/v1/jobs/some-id", None),
    ("GET", "/v1/jobs/bad%20id", None),
    ("GET", "/v1/dead", None),
    ("GET", "/v1/throttle-stats", None),
    ("POST", "/v1/jobs", {"payload": 1}),
    ("POST", "/v1/jobs", b"junk"),
    ("POST", "/v1/jobs/batch", {"jobs": [{"payload": 1}]}),
    ("POST", "/v1/jobs/claim", {"workerId": "w"}),
    ("POST", "/v1/jobs/claim", {"workerId": "w", "max": 5, "waitMs": 1000}),
    ("POST", "/v1/jobs/some-id/heartbeat", {"workerId": "w"}),
    ("POST", "/v1/jobs/some-id/complete", {"workerId": "w"}),
    ("POST", "/v1/jobs/some-id/fail", {"workerId": "w", "error": "x"}),
    ("POST", "/v1/jobs/some-id/release", {"workerId": "w"}),
    ("POST", "/v1/jobs/some-id/cancel", None),
    ("POST", "/v1/dead/some-id/requeue", None),
]


async def test_standby_answers_not_leader_everywhere(nursery: trio.Nursery, tmp_path: Path) -> None:
    leader = await start_in_process(nursery, settings_for(tmp_path))
    standby = await start_in_process(nursery, settings_for(tmp_path))
    assert standby.broker.engine.role.value == "standby"
    async with httpx.AsyncClient(base_url=standby.url, verify=False) as http:
        for method, path, body in LEADER_ONLY_CALLS:
            if isinstance(body, bytes):
                response = await http.request(method, path, content=body)
            else:
                response = await http.request(method, path, json=body)
            answer = assert_error(response, 503, "NotLeader")
            assert answer["leader"] == leader.url, (method, path)
        health = await http.get("/healthz")
        assert health.status_code == 200
        assert health.json()["role"] == "standby"
        assert health.json()["epoch"] == 1
        ready = assert_error(await http.get("/readyz"), 503, "NotLeader")
        assert ready["leader"] == leader.url
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200
        assert "trioq_broker_leader{" in metrics.text
        assert "} 0.0\n" in metrics.text.split("trioq_broker_leader{", 1)[1]
    # nothing reached the queue
    async with httpx.AsyncClient(base_url=leader.url, verify=False) as http:
        assert (await http.get("/v1/stats")).json()["total"] == 0


# ------------------------------------------------------------ hostile fuzzing

HOSTILE_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    1.5,
    -0.0,
    2**53 + 1,
    2**63,
    2**64,
    10**40,
    "",
    "w1",
    "x" * 300,
    "bad id",
    "\x00",
    [],
    [1, "a"],
    {},
    {"workerId": "w1"},
    nested(80),
]

FIELDS = {
    "/v1/jobs": ["payload", "type", "maxAttempts", "id", "delayMs"],
    "/v1/jobs/claim": ["workerId", "types", "max", "waitMs"],
    "heartbeat": ["workerId", "attempt"],
    "complete": ["workerId", "attempt"],
    "release": ["workerId", "attempt"],
    "fail": ["workerId", "attempt", "error", "retryInMs", "final"],
}

BASES: dict[str, dict[str, Any]] = {
    "/v1/jobs": {"payload": 1},
    "/v1/jobs/claim": {"workerId": "fuzzer", "types": ["no-such-type"]},
    "heartbeat": {"workerId": "w1"},
    "complete": {"workerId": "w1"},
    "release": {"workerId": "w1"},
    "fail": {"workerId": "w1", "error": "x"},
}


async def committed(broker: InProcessBroker) -> dict[str, Any]:
    """What :func:`snapshot` answers, read from the leader's committed state
    in-process (either layout)."""
    document = await broker.broker.engine.read(lambda state: state.encode())
    parsed = orjson.loads(document)
    return {k: parsed[k] for k in ("jobs", "dead", "finished", "counters", "nextOrder")}


async def test_hostile_values_in_every_field_never_500(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Every field of every POST route gets every hostile value: the answer is a
    2xx or a known 4xx error, never a 5xx, and a 4xx changed nothing.

    (On a memory store: hundreds of commits, and the store is not what is tested.)"""
    broker = await start_in_process(nursery, settings_for(tmp_path), storage=MemoryStorage())
    async with httpx.AsyncClient(base_url=broker.url, timeout=15, verify=False) as http:
        await _fuzz(broker, http)


async def _fuzz(broker: InProcessBroker, http: httpx.AsyncClient) -> None:
    job_id = await held_job(http)
    checked = 0
    for route, fields in FIELDS.items():
        for field in fields:
            for value in HOSTILE_VALUES:
                body = {**BASES[route], field: value}
                path = route if route.startswith("/") else f"/v1/jobs/{job_id}/{route}"
                before = await committed(broker)
                response = await http.post(path, json=body)
                checked += 1
                status = response.status_code
                assert status < 500, (path, body, response.text)
                if status >= 400:
                    assert response.json()["_tag"] in KNOWN_TAGS[status], (path, body)
                    assert await committed(broker) == before, (path, body, response.text)
                elif not route.startswith("/"):
                    # the held job moved on (completed, failed, released): hold a new one
                    job_id = await held_job(http)
            # and the field's absence (or a batch item with the value)
            if route == "/v1/jobs":
                batch = {"jobs": [{**BASES[route], field: v} for v in HOSTILE_VALUES]}
                response = await http.post("/v1/jobs/batch", json=batch)
                assert response.status_code in (200, 400, 413), response.text
    assert checked == sum(len(f) for f in FIELDS.values()) * len(HOSTILE_VALUES)
    # the broker is still healthy and consistent
    assert (await http.get("/healthz")).json()["role"] == "leader"
    assert (await http.get("/v1/jobs")).status_code == 200
