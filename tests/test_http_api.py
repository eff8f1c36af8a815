"""The broker's HTTP API against real brokers (hypercorn on a free port, in-process),
on the local file backend and on SeaweedFS: every route, in osqueue's exact shapes.

Error statuses live in ``test_http_errors.py``, auth in ``test_http_auth.py``.

No test sleeps to let a state arrive. The brokers run in the test's own trio run, so
"every task is blocked" (:func:`trio.testing.wait_all_tasks_blocked`) says that a
long-poll claim has reached the engine and waits there; when a job was handed out is
read from its record (the broker's own commit times), not from a stopwatch. Real
time appears only as generous timeouts, and as the lower bound a long poll's wait
itself promises.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from _broker_proc import InProcessBroker, start_in_process
from _servers import S3Server
from trioq.broker._settings import BrokerSettings
from trioq.storage._file import FileStorage
from trioq.storage._protocol import Storage
from trioq.storage._s3 import S3Storage
from trioq.storage._throttled import ThrottledStorage

StorageFactory = Callable[[], tuple[BrokerSettings, Storage]]

STATS_KEYS = {"total", "unclaimed", "inProgress", "completedTotal", "brokerAddress"}
CLAIM_KEYS = {"jobId", "type", "payload", "attempt", "leaseMs", "createdAt", "maxAttempts"}
"""osqueue's claim fields, and trioq's ``attempt``, ``leaseMs``, ``createdAt`` and
``maxAttempts`` (``trace`` and ``lastError`` too, when the job has them)."""


COMMIT_INTERVAL_MS = 0
"""The group commit interval of these brokers: no spacing between commits, so the
many small sequential requests here do not each wait out an interval."""


@pytest.fixture(scope="module")
def seaweedfs_storage(seaweedfs: S3Server) -> Iterator[tuple[S3Server, str, S3Storage]]:
    """One bucket and one storage for the module (its boto3 clients take half a
    second to build); each test gets a queue document of its own in it."""
    bucket = seaweedfs.create_bucket()
    storage = S3Storage(
        bucket,
        endpoint_url=seaweedfs.endpoint_url,
        region="us-east-1",
        access_key_id=seaweedfs.access_key_id,
        secret_access_key=seaweedfs.secret_access_key,
    )
    yield seaweedfs, bucket, storage
    storage.close()


@pytest.fixture(params=["file", "seaweedfs", "seaweedfs-log"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StorageFactory:
    """Settings and storage of a broker on each backend, with a fresh queue (and on
    SeaweedFS in the log layout too)."""
    if request.param == "file":

        def file_backend() -> tuple[BrokerSettings, Storage]:
            settings = BrokerSettings(
                port=0,
                storage="file",
                data_dir=str(tmp_path / "data"),
                group_commit_interval_ms=COMMIT_INTERVAL_MS,
            )
            return settings, FileStorage(tmp_path / "data")

        return file_backend
    server, bucket, storage = request.getfixturevalue("seaweedfs_storage")

    def s3_backend() -> tuple[BrokerSettings, Storage]:
        settings = BrokerSettings(
            port=0,
            storage="s3",
            bucket=bucket,
            endpoint_url=server.endpoint_url,
            key=f"{uuid.uuid4().hex}/queue.json",
            group_commit_interval_ms=COMMIT_INTERVAL_MS,
            create=True,  # a new key in a shared bucket
            layout="log" if request.param == "seaweedfs-log" else "document",
        )
        return settings, storage

    return s3_backend


@pytest.fixture
async def broker(nursery: trio.Nursery, backend: StorageFactory) -> InProcessBroker:
    settings, storage = backend()
    return await start_in_process(nursery, settings, storage=storage)


@pytest.fixture
async def http(broker: InProcessBroker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=broker.url, timeout=15, verify=False) as client:
        yield client


async def submit(http: httpx.AsyncClient, payload: Any = None, **fields: Any) -> str:
    response = await http.post("/v1/jobs", json={"payload": payload, **fields})
    assert response.status_code == 200, response.text
    job_id = response.json()["jobId"]
    assert isinstance(job_id, str)
    return job_id


async def claim(http: httpx.AsyncClient, worker: str = "w1", **fields: Any) -> dict[str, Any]:
    response = await http.post("/v1/jobs/claim", json={"workerId": worker, **fields})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def job(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def stats(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/v1/stats")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --------------------------------------------------------------------- health


async def test_healthz_readyz_and_state(broker: InProcessBroker, http: httpx.AsyncClient) -> None:
    engine = broker.broker.engine
    health = await http.get("/healthz")
    assert health.status_code == 200
    assert health.headers["content-type"].startswith("application/json")
    body = health.json()
    assert body["status"] == "ok"
    assert body["brokerId"] == engine.broker_id
    assert body["role"] == "leader"
    assert body["epoch"] == 1

    ready = await http.get("/readyz")
    assert ready.status_code == 200

    state = await http.get("/state")
    assert state.status_code == 200
    document = state.json()
    assert document["format"] == "trioq.queue"
    assert document["leader"]["url"] == broker.url
    assert document["leader"]["epoch"] == 1
    assert document["jobs"] == []


# --------------------------------------------------------------------- submit


async def test_submit_answers_job_id_and_duplicate(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/jobs", json={"payload": {"to": "a@example.com"}})
    assert response.status_code == 200
    assert set(response.json()) == {"jobId"}

    first = await http.post("/v1/jobs", json={"payload": 1, "id": "order-1:a.b_c"})
    assert first.json() == {"jobId": "order-1:a.b_c"}
    again = await http.post("/v1/jobs", json={"payload": 2, "id": "order-1:a.b_c"})
    assert again.status_code == 200
    assert again.json() == {"jobId": "order-1:a.b_c", "duplicate": True}
    # the duplicate created nothing and changed nothing
    assert (await stats(http))["total"] == 2
    assert (await job(http, "order-1:a.b_c"))["payload"] == 1


async def test_submit_fields_are_stored(http: httpx.AsyncClient) -> None:
    job_id = await submit(
        http, {"n": [1, 2.5, "x", None, True]}, type="email:send", maxAttempts=7, delayMs=60_000
    )
    record = await job(http, job_id)
    assert record["jobId"] == job_id
    assert record["type"] == "email:send"
    assert record["payload"] == {"n": [1, 2.5, "x", None, True]}
    assert record["maxAttempts"] == 7
    assert record["status"] == "unclaimed"
    assert record["attempts"] == 0
    assert record["readyAt"] - record["createdAt"] == 60_000
    # delayed: not claimable yet
    assert await claim(http) == {}
    defaults = await job(http, await submit(http, "x"))
    assert defaults["type"] == "default"
    assert defaults["maxAttempts"] == 3


async def test_batch_submit(http: httpx.AsyncClient) -> None:
    await submit(http, 0, id="known")
    response = await http.post(
        "/v1/jobs/batch",
        json={
            "jobs": [
                {"payload": 1, "id": "b1"},
                {"payload": 2, "type": "t2"},
                {"payload": 3, "id": "known"},
                {"payload": 4, "id": "b1"},
            ]
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"jobIds", "duplicates"}
    assert len(body["jobIds"]) == 4
    assert body["jobIds"][0] == "b1"
    assert body["jobIds"][2:] == ["known", "b1"]
    assert body["duplicates"] == ["known", "b1"]
    assert (await stats(http))["total"] == 3


async def test_batch_is_validated_as_a_whole(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/jobs/batch",
        json={"jobs": [{"payload": 1, "id": "ok-1"}, {"payload": 2, "maxAttempts": 0}]},
    )
    assert response.status_code == 400
    assert response.json()["_tag"] == "BrokerProtocolError"
    assert (await stats(http))["total"] == 0
    assert (await http.get("/v1/jobs/ok-1")).status_code == 404


# ---------------------------------------------------------------------- claim


async def test_claim_osqueue_shape(broker: InProcessBroker, http: httpx.AsyncClient) -> None:
    assert await claim(http) == {}
    job_id = await submit(http, {"k": "v"}, type="resize")
    claimed = await claim(http)
    assert set(claimed) == CLAIM_KEYS
    assert claimed["jobId"] == job_id
    assert claimed["type"] == "resize"
    assert claimed["payload"] == {"k": "v"}
    assert claimed["attempt"] == 1
    assert claimed["leaseMs"] == broker.settings.job_heartbeat_timeout_ms
    record = await job(http, job_id)
    assert record["status"] == "in_progress"
    assert record["workerId"] == "w1"
    assert await claim(http) == {}


async def test_claim_many_in_fifo_order_and_types(http: httpx.AsyncClient) -> None:
    assert await claim(http, max=5) == {"jobs": []}
    ids = [await submit(http, n, type="a" if n % 2 else "b") for n in range(6)]
    got = await claim(http, max=2, types=["a"])
    assert [j["jobId"] for j in got["jobs"]] == [ids[1], ids[3]]
    assert all(set(j) == CLAIM_KEYS for j in got["jobs"])
    rest = await claim(http, "w2", max=10)
    assert [j["jobId"] for j in rest["jobs"]] == [ids[0], ids[2], ids[4], ids[5]]
    assert {j["attempt"] for j in rest["jobs"]} == {1}
    s = await stats(http)
    assert (s["unclaimed"], s["inProgress"]) == (0, 6)


async def claim_waiting() -> None:
    """Return once a claim just sent waits at the engine: the broker runs in this
    trio run, so when every task is blocked, the claim has been received, found no
    job and been parked (the cushion lets socket I/O settle)."""
    await trio.testing.wait_all_tasks_blocked(cushion=0.02)


async def test_long_poll_claim_gets_a_job_submitted_during_the_wait(
    http: httpx.AsyncClient,
) -> None:
    answered: list[dict[str, Any]] = []

    async def long_poll() -> None:
        answered.append(await claim(http, waitMs=30_000))

    with trio.fail_after(20):  # a hang guard: the wait below is far shorter
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await claim_waiting()
            assert not answered
            job_id = await submit(http, "late")
    [body] = answered
    assert body["jobId"] == job_id
    assert body["attempt"] == 1
    # served inside the commit that enqueued the job: claimed at its creation time
    record = await job(http, job_id)
    assert record["heartbeatAt"] == record["createdAt"], record


async def test_long_poll_claim_times_out_empty(http: httpx.AsyncClient) -> None:
    for extra, empty in (({}, {}), ({"max": 3}, {"jobs": []})):
        start = trio.current_time()
        assert await claim(http, waitMs=300, **extra) == empty
        # the wait is the requirement: a lower bound, which load only makes easier
        assert trio.current_time() - start >= 0.29


async def test_long_poll_claim_gets_a_delayed_job_when_it_is_due(http: httpx.AsyncClient) -> None:
    job_id = await submit(http, "soon", delayMs=400)
    with trio.fail_after(20):  # a hang guard, shorter than the wait
        body = await claim(http, waitMs=30_000)
    assert body["jobId"] == job_id
    # by the broker's own clock: not before it was due, and not at the wait's end
    # (30 s); the upper bound only has to tell those apart
    record = await job(http, job_id)
    assert record["readyAt"] <= record["heartbeatAt"] < record["readyAt"] + 15_000, record


# -------------------------------------------------------------- job lifecycle


async def test_heartbeat_and_complete(http: httpx.AsyncClient) -> None:
    job_id = await submit(http, "x", id="hb-1")
    claimed = await claim(http)
    # osqueue clients send only workerId
    beat = await http.post(f"/v1/jobs/{job_id}/heartbeat", json={"workerId": "w1"})
    assert beat.status_code == 204
    assert beat.content == b""
    beat = await http.post(
        f"/v1/jobs/{job_id}/heartbeat", json={"workerId": "w1", "attempt": claimed["attempt"]}
    )
    assert beat.status_code == 204
    done = await http.post(f"/v1/jobs/{job_id}/complete", json={"workerId": "w1"})
    assert done.status_code == 204
    assert done.content == b""
    record = await job(http, job_id)
    assert record["status"] == "completed"
    s = await stats(http)
    assert s["completedTotal"] == 1
    assert s["total"] == 0
    # finished jobs stay known for the dedup window: resubmitting creates nothing
    again = await http.post("/v1/jobs", json={"payload": "x", "id": "hb-1"})
    assert again.json() == {"jobId": "hb-1", "duplicate": True}
    assert (await stats(http))["total"] == 0


async def test_complete_with_attempt(http: httpx.AsyncClient) -> None:
    job_id = await submit(http, "x")
    claimed = await claim(http)
    done = await http.post(
        f"/v1/jobs/{job_id}/complete", json={"workerId": "w1", "attempt": claimed["attempt"]}
    )
    assert done.status_code == 204


async def test_fail_retry_dead_and_requeue(http: httpx.AsyncClient) -> None:
    job_id = await submit(http, "x", maxAttempts=2)
    await claim(http)
    failed = await http.post(
        f"/v1/jobs/{job_id}/fail",
        json={"workerId": "w1", "attempt": 1, "error": "boom", "retryInMs": 0},
    )
    assert failed.status_code == 200
    assert failed.json() == {"jobId": job_id, "status": "retrying"}
    record = await job(http, job_id)
    assert (record["status"], record["lastError"]) == ("unclaimed", "boom")

    second = await claim(http, "w2")
    assert second["attempt"] == 2
    dead = await http.post(
        f"/v1/jobs/{job_id}/fail", json={"workerId": "w2", "error": "again", "attempt": 2}
    )
    assert dead.json() == {"jobId": job_id, "status": "dead"}
    record = await job(http, job_id)
    assert record["status"] == "dead"
    assert record["reason"] == "exhausted"

    listing = (await http.get("/v1/dead")).json()
    assert listing["total"] == 1
    assert [d["jobId"] for d in listing["jobs"]] == [job_id]
    assert listing["nextCursor"] is None

    requeued = await http.post(f"/v1/dead/{job_id}/requeue")
    assert requeued.status_code == 200
    assert requeued.json() == {"jobId": job_id, "status": "unclaimed"}
    assert (await http.get("/v1/dead")).json()["total"] == 0
    third = await claim(http, "w3")
    assert (third["jobId"], third["attempt"]) == (job_id, 1)


async def test_fail_final_goes_dead_at_once(http: httpx.AsyncClient) -> None:
    job_id = await submit(http, "x", maxAttempts=5)
    await claim(http)
    failed = await http.post(
        f"/v1/jobs/{job_id}/fail", json={"workerId": "w1", "error": "bad input", "final": True}
    )
    assert failed.json() == {"jobId": job_id, "status": "dead"}
    assert (await job(http, job_id))["reason"] == "final"


async def test_fail_with_retry_delay(http: httpx.AsyncClient) -> None:
    job_id = await submit(http, "x")
    await claim(http)
    failed = await http.post(
        f"/v1/jobs/{job_id}/fail", json={"workerId": "w1", "error": "later", "retryInMs": 60_000}
    )
    assert failed.json()["status"] == "retrying"
    assert await claim(http) == {}


async def test_release(http: httpx.AsyncClient) -> None:
    job_id = await submit(http, "x")
    await claim(http)
    released = await http.post(f"/v1/jobs/{job_id}/release", json={"workerId": "w1"})
    assert released.status_code == 204
    assert released.content == b""
    again = await claim(http, "w2")
    # a release does not count the attempt
    assert (again["jobId"], again["attempt"]) == (job_id, 1)


async def test_cancel(http: httpx.AsyncClient) -> None:
    queued = await submit(http, "x")
    cancelled = await http.post(f"/v1/jobs/{queued}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json() == {"jobId": queued, "status": "cancelled"}
    assert (await job(http, queued))["status"] == "cancelled"

    running = await submit(http, "y")
    await claim(http)
    cancelling = await http.post(f"/v1/jobs/{running}/cancel", json={})
    assert cancelling.json() == {"jobId": running, "status": "cancelling"}
    beat = await http.post(f"/v1/jobs/{running}/heartbeat", json={"workerId": "w1"})
    assert beat.status_code == 409
    assert beat.json()["_tag"] == "LeaseLost"
    assert (await job(http, running))["status"] == "cancelled"
    # cancelling a finished job again is harmless
    again = await http.post(f"/v1/jobs/{running}/cancel")
    assert again.json() == {"jobId": running, "status": "cancelled"}


# ---------------------------------------------------------------------- reads


async def test_stats_shape(broker: InProcessBroker, http: httpx.AsyncClient) -> None:
    await submit(http, 1)
    await submit(http, 2)
    await claim(http)
    body = await stats(http)
    assert set(body) == STATS_KEYS | {"groupCommitIntervalMs", "byType"}
    assert body == {
        "total": 2,
        "unclaimed": 1,
        "inProgress": 1,
        "completedTotal": 0,
        "brokerAddress": broker.url,
        "groupCommitIntervalMs": COMMIT_INTERVAL_MS,
        "byType": {"default": {"unclaimed": 1, "inProgress": 1}},
    }


async def test_list_jobs_shape_and_pagination(
    broker: InProcessBroker, http: httpx.AsyncClient
) -> None:
    response = await http.post("/v1/jobs/batch", json={"jobs": [{"payload": n} for n in range(25)]})
    ids = response.json()["jobIds"]
    first = (await http.get("/v1/jobs", params={"limit": 10})).json()
    assert set(first) == STATS_KEYS | {"jobs", "nextCursor"}
    assert first["total"] == 25
    assert first["brokerAddress"] == broker.url
    assert first["jobs"][0]["jobId"] == ids[0]
    assert first["jobs"][0]["payload"] == 0
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while pages < 10:
        params: dict[str, Any] = {"limit": 10}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await http.get("/v1/jobs", params=params)).json()
        pages += 1
        seen.extend(j["jobId"] for j in page["jobs"])
        cursor = page["nextCursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
    assert pages == 3
    assert seen == ids


async def test_list_jobs_default_and_max_limit(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/jobs/batch", json={"jobs": [{"payload": n} for n in range(1001)]}
    )
    assert response.status_code == 200
    default = (await http.get("/v1/jobs")).json()
    assert len(default["jobs"]) == 1000
    assert default["nextCursor"] is not None
    most = (await http.get("/v1/jobs", params={"limit": 1000})).json()
    assert len(most["jobs"]) == 1000
    rest = (await http.get("/v1/jobs", params={"cursor": default["nextCursor"]})).json()
    assert [j["payload"] for j in rest["jobs"]] == [1000]
    assert rest["nextCursor"] is None
    over = await http.get("/v1/jobs", params={"limit": 1001})
    assert over.status_code == 400


async def test_list_dead_pagination(http: httpx.AsyncClient) -> None:
    ids = [await submit(http, n, maxAttempts=1) for n in range(5)]
    claimed = await claim(http, max=5)
    for item in claimed["jobs"]:
        response = await http.post(
            f"/v1/jobs/{item['jobId']}/fail", json={"workerId": "w1", "error": "x"}
        )
        assert response.json()["status"] == "dead"
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await http.get("/v1/dead", params=params)).json()
        assert page["total"] == 5
        assert len(page["jobs"]) <= 2
        seen.extend(j["jobId"] for j in page["jobs"])
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == ids
    assert all(j["status"] == "dead" for j in (await http.get("/v1/dead")).json()["jobs"])


async def test_get_job_not_found(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/jobs/nope")
    assert response.status_code == 404
    assert response.json()["_tag"] == "JobNotFound"


async def test_throttle_stats_off(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/throttle-stats")
    assert response.status_code == 200
    assert response.json() == {"throttling": False}


async def test_metrics(broker: InProcessBroker, http: httpx.AsyncClient) -> None:
    await submit(http, 1)
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    broker_id = broker.broker.engine.broker_id
    assert samples[f'trioq_broker_leader{{broker_id="{broker_id}"}}'] == 1
    assert samples['trioq_jobs{status="unclaimed"}'] == 1
    assert samples["trioq_jobs_enqueued_total"] == 1
    assert samples["trioq_commits_total"] >= 1


def _samples(text: str) -> dict[str, float]:
    """Every sample by name with labels (prometheus_client writes values as floats,
    exact for integers below 2**53)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


# ----------------------------------------------- one backend: special brokers


async def test_throttle_stats_on(nursery: trio.Nursery, tmp_path: Path) -> None:
    settings = BrokerSettings(
        port=0, data_dir=str(tmp_path), max_writes_per_minute=6000, max_reads_per_minute=6000
    )
    broker = await start_in_process(nursery, settings)
    assert isinstance(broker.broker.storage, ThrottledStorage)
    async with httpx.AsyncClient(base_url=broker.url, verify=False) as http:
        await submit(http, 1)
        body = (await http.get("/v1/throttle-stats")).json()
        assert body["throttling"] is True
        assert body["maxWritesPerMinute"] == 6000
        assert body["totalWrites"] >= 2
        metrics = _samples((await http.get("/metrics")).text)
        assert metrics["trioq_storage_writes_total"] >= 2


async def test_metrics_counters_are_exact_integers(nursery: trio.Nursery, tmp_path: Path) -> None:
    broker = await start_in_process(nursery, BrokerSettings(port=0, data_dir=str(tmp_path)))
    broker.broker.engine.metrics["mutations"] = 12_345_678
    async with httpx.AsyncClient(base_url=broker.url, verify=False) as http:
        metrics = _samples((await http.get("/metrics")).text)
    assert metrics["trioq_mutations_total"] == 12_345_678
