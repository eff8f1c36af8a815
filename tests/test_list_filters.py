"""``GET /v1/jobs?status=&type=`` (filters, and paging through filtered pages) and
``byType`` of ``GET /v1/stats``, over HTTP on an in-process broker on the file
backend; and the per-type counts of the state's index under every way a job comes
and goes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from _broker_proc import InProcessBroker, start_in_process
from trioq import Client
from trioq.broker._settings import BrokerSettings
from trioq.core._state import NewJob, QueueState


@pytest.fixture
async def broker(nursery: trio.Nursery, tmp_path: Path) -> InProcessBroker:
    settings = BrokerSettings(
        port=0, storage="file", data_dir=str(tmp_path / "data"), group_commit_interval_ms=0
    )
    return await start_in_process(nursery, settings)


@pytest.fixture
async def http(broker: InProcessBroker) -> Any:
    async with httpx.AsyncClient(base_url=broker.url, timeout=15) as client:
        yield client


async def submit_types(http: httpx.AsyncClient, types: list[str]) -> list[str]:
    response = await http.post(
        "/v1/jobs/batch", json={"jobs": [{"type": t, "payload": i} for i, t in enumerate(types)]}
    )
    assert response.status_code == 200, response.text
    ids: list[str] = response.json()["jobIds"]
    return ids


async def claim(http: httpx.AsyncClient, job_type: str, count: int) -> list[str]:
    response = await http.post(
        "/v1/jobs/claim", json={"workerId": "w1", "types": [job_type], "max": count}
    )
    assert response.status_code == 200, response.text
    return [job["jobId"] for job in response.json()["jobs"]]


async def page_ids(http: httpx.AsyncClient, **params: Any) -> list[str]:
    response = await http.get("/v1/jobs", params=params)
    assert response.status_code == 200, response.text
    return [job["jobId"] for job in response.json()["jobs"]]


async def all_pages(http: httpx.AsyncClient, **params: Any) -> tuple[list[str], int]:
    """Every job id the filtered listing pages through, and how many pages it took."""
    ids: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = dict(params) | ({"cursor": cursor} if cursor else {})
        response = await http.get("/v1/jobs", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        ids += [job["jobId"] for job in body["jobs"]]
        for job in body["jobs"]:
            if "type" in params:
                assert job["type"] == params["type"]
            if "status" in params:
                assert job["status"] == params["status"]
        cursor = body["nextCursor"]
        if cursor is None:
            return ids, pages


async def test_filters_by_status_and_type_combined(http: httpx.AsyncClient) -> None:
    ids = await submit_types(http, ["a", "b", "a", "b", "a"])
    a1, b1, a2, b2, a3 = ids
    claimed = await claim(http, "a", 1)
    assert claimed == [a1]
    assert await page_ids(http, type="a") == [a1, a2, a3]
    assert await page_ids(http, status="in_progress") == [a1]
    assert await page_ids(http, status="unclaimed") == [b1, a2, b2, a3]
    assert await page_ids(http, status="unclaimed", type="a") == [a2, a3]
    assert await page_ids(http, status="in_progress", type="b") == []
    assert await page_ids(http, type="nope") == []
    # blank filters are no filters, as a blank limit or cursor is
    assert await page_ids(http, status="", type="") == ids


async def test_paging_with_filters_spans_pages(http: httpx.AsyncClient) -> None:
    types = ["x" if i % 3 == 0 else "y" for i in range(40)]
    ids = await submit_types(http, types)
    xs = [job_id for job_id, t in zip(ids, types, strict=True) if t == "x"]
    got, pages = await all_pages(http, type="x", limit=3)
    assert got == xs
    assert pages == 5  # 14 jobs, 3 a page
    claimed = await claim(http, "y", 5)
    got, pages = await all_pages(http, type="y", status="unclaimed", limit=4)
    ys = [job_id for job_id, t in zip(ids, types, strict=True) if t == "y"]
    assert got == [job_id for job_id in ys if job_id not in claimed]
    assert pages == 6  # 21 jobs, 4 a page


@pytest.mark.parametrize(
    "params",
    [{"status": "dead"}, {"status": "UNCLAIMED"}, {"type": "x" * 1000}, {"limit": "0"}],
)
async def test_a_bad_filter_is_a_400_that_changes_nothing(
    http: httpx.AsyncClient, params: dict[str, str]
) -> None:
    await submit_types(http, ["a", "b"])
    before = (await http.get("/v1/stats")).json()
    response = await http.get("/v1/jobs", params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["_tag"] == "BrokerProtocolError"
    assert body["message"]
    assert (await http.get("/v1/stats")).json() == before


async def test_by_type_follows_submit_claim_complete(
    broker: InProcessBroker, http: httpx.AsyncClient
) -> None:
    async def by_type() -> dict[str, Any]:
        body = (await http.get("/v1/stats")).json()
        assert body["total"] == sum(
            c["unclaimed"] + c["inProgress"] for c in body["byType"].values()
        )
        result: dict[str, Any] = body["byType"]
        return result

    assert await by_type() == {}
    await submit_types(http, ["a", "a", "b"])
    assert await by_type() == {
        "a": {"unclaimed": 2, "inProgress": 0},
        "b": {"unclaimed": 1, "inProgress": 0},
    }
    [a1] = await claim(http, "a", 1)
    [b1] = await claim(http, "b", 1)
    assert await by_type() == {
        "a": {"unclaimed": 1, "inProgress": 1},
        "b": {"unclaimed": 0, "inProgress": 1},
    }
    async with Client(broker.url) as client:
        await client.complete(b1, "w1")
        assert await by_type() == {"a": {"unclaimed": 1, "inProgress": 1}}
        await client.fail(a1, "w1", error="boom", final=True)
        assert await by_type() == {"a": {"unclaimed": 1, "inProgress": 0}}
        await client.requeue(a1)
        assert await by_type() == {"a": {"unclaimed": 2, "inProgress": 0}}
        page = await client.jobs(status="unclaimed", type="a", limit=1)
        assert [job["type"] for job in page["jobs"]] == ["a"]
        rest = await client.jobs(status="unclaimed", type="a", cursor=page["nextCursor"])
        assert rest["nextCursor"] is None
        assert {job["jobId"] for job in page["jobs"] + rest["jobs"]} >= {a1}


def counts_by_scan(state: QueueState) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for job in state.jobs.values():
        entry = counts.setdefault(job.type, {"unclaimed": 0, "inProgress": 0})
        entry["unclaimed" if job.status == "unclaimed" else "inProgress"] += 1
    return dict(sorted(counts.items()))


def test_index_counts_match_a_scan_through_every_transition() -> None:
    state = QueueState()
    state.track_changes()
    now = 1_000
    state.enqueue([NewJob(type=t, payload=i) for i, t in enumerate("aabbc")], now)
    assert state.counts_by_type() == counts_by_scan(state)
    claimed = state.claim("w", now, max_jobs=4)
    assert state.counts_by_type() == counts_by_scan(state)
    first, second, third, fourth = (job.id for job in claimed)
    state.complete(first, "w", now)
    state.fail(second, "w", now, error="again")  # back to the queue, later
    state.fail(third, "w", now, error="gone", final=True)
    state.cancel(fourth, now)  # in progress: finishes at the worker's next call
    assert state.counts_by_type() == counts_by_scan(state)
    state.expire(now + state.limits.job_lease_ms + 1)
    assert state.counts_by_type() == counts_by_scan(state)
    state.requeue_dead(third, now)
    assert state.counts_by_type() == counts_by_scan(state)
    # a decoded copy (the index built by load) counts the same
    decoded = QueueState.decode(state.encode())
    assert decoded.counts_by_type() == counts_by_scan(state)
    assert copy.deepcopy(state.jobs).by_type == state.jobs.by_type
    with pytest.raises(TypeError):
        state.jobs.clear()
