"""Storage fault injection chosen in the broker's settings (``--fault-*``, for tests):
where the wrapper sits, the warning it logs, its metrics, and a broker that serves
through 20 % errors and 10 % ambiguous writes without losing an acknowledged job."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import trio

from _broker_proc import broker_process, start_in_process
from _waits import wait_for
from trioq._inspect import read_state
from trioq.broker._faults import describe_faults, faults_in, with_faults
from trioq.broker._service import build_storage
from trioq.broker._settings import BrokerSettings, parse_settings
from trioq.storage._faulty import FaultyStorage
from trioq.storage._file import FileStorage
from trioq.storage._memory import MemoryStorage
from trioq.storage._protocol import Storage
from trioq.storage._throttled import ThrottledStorage

CHAOS = ["--fault-error-rate", "0.2", "--fault-ambiguous-write-rate", "0.1", "--fault-seed", "7"]
"""20 % of storage calls fail, 10 % of writes land and then report an unknown outcome."""

JOBS = 30
ATTEMPTS = 100
"""Bound on the tries of one request: at 20 % errors, far more than it ever takes."""


def settings(*argv: str) -> BrokerSettings:
    return parse_settings(["--storage", "memory", "--port", "0", *argv], {})


def test_no_fault_by_default() -> None:
    plain = settings()
    assert plain.storage_faults() == {}
    assert isinstance(build_storage(plain), MemoryStorage)
    assert faults_in(build_storage(plain)) is None


def test_the_faults_wrap_the_store_inside_the_throttle() -> None:
    chosen = settings(*CHAOS, "--fault-lost-write-rate", "0.05", "--max-writes-per-minute", "600")
    storage = build_storage(chosen)
    assert isinstance(storage, ThrottledStorage)
    faulty = storage.inner
    assert isinstance(faulty, FaultyStorage)
    assert isinstance(faulty.inner, MemoryStorage)
    assert faults_in(storage) is faulty
    assert (faulty.error_rate, faulty.ambiguous_write_rate) == (0.2, 0.1)
    assert faulty.ambiguous_lost_rate == 0.05
    assert "with injected faults" in storage.describe()


def test_a_given_storage_gets_the_faults_too() -> None:
    given = MemoryStorage()
    assert with_faults(given, settings()) is given
    wrapped = with_faults(given, settings("--fault-latency-s", "0.01"))
    assert isinstance(wrapped, FaultyStorage)
    assert (wrapped.inner, wrapped.latency) == (given, 0.01)


async def _fault_kinds(storage: Storage, calls: int) -> list[str]:
    faulty = faults_in(storage)
    assert faulty is not None
    version = await faulty.inner.create("k", b"0")
    for n in range(calls):
        try:
            version = await storage.write("k", str(n).encode(), if_match=version)
        except Exception:
            got = await faulty.inner.read("k")
            assert got is not None
            version = got.version
    return [fault.kind for fault in faulty.faults]


async def test_a_seed_gives_the_same_faults() -> None:
    first = await _fault_kinds(build_storage(settings(*CHAOS)), 200)
    assert {"error", "ambiguous"} <= set(first)
    assert await _fault_kinds(build_storage(settings(*CHAOS)), 200) == first
    other = settings(*CHAOS[:-1], "8")
    assert await _fault_kinds(build_storage(other), 200) != first


def test_the_summary_names_every_active_fault() -> None:
    chosen = settings(
        *CHAOS,
        *("--fault-lost-write-rate", "0.05", "--fault-latency-s", "0.002"),
        *("--fault-spike-rate", "0.01", "--fault-spike-s", "0.5"),
    )
    assert describe_faults(chosen) == (
        "errors 20%, ambiguous writes 10% (land, then report an unknown outcome), "
        "lost writes 5% (do not land, report an unknown outcome), "
        "latency 0.002 s on every call, latency spikes of 0.5 s on 1% of calls; seed 7"
    )
    assert describe_faults(settings("--fault-error-rate", "0.5")) == "errors 50%; seed random"


# ------------------------------------------------------------ a broker serving


async def _until_answered(http: httpx.AsyncClient, path: str, body: object) -> httpx.Response:
    """POST until the broker answers other than 503 (a storage fault it could not
    hide); bounded by :data:`ATTEMPTS`."""
    for _ in range(ATTEMPTS):
        response = await http.post(path, json=body)
        if response.status_code != 503:
            return response
    raise AssertionError(f"{path}: still 503 after {ATTEMPTS} attempts: {response.text}")


async def _submit_claim_complete(http: httpx.AsyncClient) -> set[str]:
    """Submit :data:`JOBS` jobs, then claim and complete until all are completed; the
    ids whose submit was acknowledged.

    A claim or complete answered 503 may have landed all the same: a lost claim's job
    comes back when its (short) lease expires, and the claim that waits for a job
    (``waitMs``) is answered by the commit that re-queues it.
    """
    acknowledged = set()
    for n in range(JOBS):
        response = await _until_answered(http, "/v1/jobs", {"payload": n, "id": f"job-{n}"})
        assert response.status_code in (200, 201), response.text
        acknowledged.add(response.json()["jobId"])
    for _ in range(JOBS * ATTEMPTS):
        if (await http.get("/v1/stats")).json()["completedTotal"] == JOBS:
            return acknowledged
        body = {"workerId": "w", "waitMs": 2000}
        claim = await _until_answered(http, "/v1/jobs/claim", body)
        assert claim.status_code == 200, claim.text
        job_id = claim.json().get("jobId")
        if job_id is not None:
            done = await _until_answered(http, f"/v1/jobs/{job_id}/complete", {"workerId": "w"})
            # 409: a 503-answered try had completed it after all
            assert done.status_code in (204, 409), done.text
    raise AssertionError(f"not every job completed: {(await http.get('/v1/stats')).text}")


async def _check_stored(storage: Storage, key: str, acknowledged: set[str]) -> None:
    """Every acknowledged job is in the stored state (either layout), completed."""
    state = await read_state(storage, key)
    missing = [job_id for job_id in acknowledged if not state.knows(job_id)]
    assert not missing, f"acknowledged jobs lost: {missing}"
    assert state.counters["completed"] == len(acknowledged)


async def test_an_in_process_broker_serves_through_the_faults(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="trioq.broker")
    chosen = settings(*CHAOS, "--group-commit-interval-ms", "0", "--job-lease-ms", "1000")
    async with trio.open_nursery() as nursery:
        served = await start_in_process(nursery, chosen)
        faulty = served.broker.faults
        assert faulty is not None
        async with httpx.AsyncClient(base_url=served.url) as http:
            acknowledged = await _submit_claim_complete(http)
            metrics = (await http.get("/metrics")).text
        served.broker.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        "storage fault injection is ON (for tests, never production): errors 20%, ambiguous "
        "writes 10% (land, then report an unknown outcome); seed 7"
    ) in warnings
    assert faulty.injected["error"] > 0
    assert faulty.injected["ambiguous"] > 0
    assert "trioq_storage_faults_enabled 1.0" in metrics
    assert 'trioq_storage_faults_injected_total{kind="error"}' in metrics
    await _check_stored(faulty.inner, chosen.key, acknowledged)


async def test_a_broker_process_on_files_serves_through_the_faults(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    args = ["--port", "0", "--data-dir", str(data_dir), "--group-commit-interval-ms", "0"]
    args += [*CHAOS, "--job-lease-ms", "1000"]
    log_path = tmp_path / "log"
    async with broker_process(args, log_path=log_path) as broker:
        assert "with injected faults" in broker.storage
        await wait_for(
            lambda: "storage fault injection is ON" in log_path.read_text(),
            what="the fault warning in the log",
        )
        async with httpx.AsyncClient(base_url=broker.url) as http:
            acknowledged = await _submit_claim_complete(http)
            metrics = (await http.get("/metrics")).text
        assert "trioq_storage_faults_enabled 1.0" in metrics
        broker.kill()  # kill -9: only what was written counts
        await broker.wait(within=10)
    await _check_stored(FileStorage(data_dir), "queue.json", acknowledged)
