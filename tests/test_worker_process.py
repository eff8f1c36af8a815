"""Workers as real processes (``python -m trioq.worker``) against broker subprocesses on
SeaweedFS. Real time and real sockets, so the bounds are generous; the exact timings
are pinned in virtual time by tests/test_worker.py.

The handlers (tests/_jobs_for_tests.py) log start / done / cancelled events with
wall-clock times to one file per worker process; the tests read those files.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio

import _broker_proc
import trioq
from _servers import S3Server
from _worker_proc import Event, Proc, broker_process, read_events, worker_process

pytestmark = pytest.mark.slow

LIMIT = 30.0
"""Upper bound, in seconds, on any wait for the system to reach a state."""


async def eventually(
    check: Callable[[], Awaitable[bool]], *, limit: float = LIMIT, interval: float = 0.05
) -> None:
    """Poll ``check`` until it is true; fail after ``limit`` seconds."""
    with trio.fail_after(limit):
        while True:
            if await check():
                return
            await trio.sleep(interval)


def events_of(directory: Path, kind: str, job_id: str | None = None) -> list[Event]:
    return [
        e
        for e in read_events(directory)
        if e.event == kind and (job_id is None or e.job_id == job_id)
    ]


def counted(directory: Path, kind: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(events_of(directory, kind)) >= n

    return check


def stats_show(client: trioq.Client, **expected: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        stats = await client.stats()
        return all(stats[k] == v for k, v in expected.items())

    return check


def record(sleep: float, job_id: str) -> trioq.JobSpec:
    return trioq.JobSpec("record", {"sleep": sleep}, id=job_id)


@pytest.fixture
def events_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "events"  # worker_process's default for its handlers' events
    directory.mkdir()
    return directory


# ------------------------------------------------------------ end to end


async def test_three_workers_run_300_jobs_each_exactly_once(
    tmp_path: Path, events_dir: Path, seaweedfs: S3Server, seaweedfs_bucket: str
) -> None:
    ids = [f"e2e-{i:03d}" for i in range(300)]
    async with broker_process(tmp_path, s3=seaweedfs, bucket=seaweedfs_bucket) as broker:
        assert broker.role == "leader"
        async with (
            worker_process(tmp_path, broker.url, "--concurrency", "5", name="w1") as w1,
            worker_process(tmp_path, broker.url, "--concurrency", "5", name="w2") as w2,
            worker_process(tmp_path, broker.url, "--concurrency", "5", name="w3") as w3,
        ):
            workers = [w1, w2, w3]
            for w in workers:
                line = await w.ready()
                assert "types fail, record, typed" in line
                assert f"broker {broker.url}" in line
                assert "concurrency 5" in line
            async with trioq.Client(broker.url) as client:
                await client.submit_many([record(0.02, i) for i in ids])
                await eventually(stats_show(client, completedTotal=300, total=0), limit=60)
            for w in workers:
                w.signal(signal.SIGTERM)
            with trio.fail_after(LIMIT):
                codes = [await w.exited() for w in workers]
            assert codes == [0, 0, 0]

    events = read_events(events_dir)
    done = Counter(e.job_id for e in events if e.event == "done")
    started = Counter(e.job_id for e in events if e.event == "start")
    assert set(done) == set(ids)
    assert set(done.values()) == {1}, [i for i, n in done.items() if n > 1]
    assert set(started.values()) == {1}  # nothing crashed: no job ran twice
    by_worker = Counter(e.pid for e in events if e.event == "done")
    assert set(by_worker) == {w.pid for w in workers}


async def test_full_concurrency_one_round_trip_after_submit(
    tmp_path: Path, events_dir: Path, seaweedfs: S3Server, seaweedfs_bucket: str
) -> None:
    async with (
        broker_process(tmp_path, s3=seaweedfs, bucket=seaweedfs_bucket) as broker,
        worker_process(
            tmp_path, broker.url, "--concurrency", "5", "--poll-interval-ms", "1000"
        ) as worker,
        trioq.Client(broker.url) as client,
    ):
        await worker.ready()
        await trio.sleep(0.5)  # from empty: the worker's long-poll claim is waiting
        submitted = time.time()
        await client.submit_many([record(3.0, f"burst-{i}") for i in range(5)])
        await eventually(counted(events_dir, "start", 5), limit=10)
        starts = events_of(events_dir, "start")
        latency = max(e.at for e in starts) - submitted
        print(f"\ntime to full concurrency (5 jobs, 1 s poll): {latency * 1000:.0f} ms")
        # osqueue's one-claim-per-poll worker needs about 4 s for this
        assert latency < 1.5, latency
        assert events_of(events_dir, "done") == []  # all five run at once


# ---------------------------------------------------------------- crashes


async def test_jobs_of_a_killed_worker_complete_elsewhere(
    tmp_path: Path, events_dir: Path, seaweedfs: S3Server, seaweedfs_bucket: str
) -> None:
    async with (
        broker_process(
            tmp_path,
            s3=seaweedfs,
            bucket=seaweedfs_bucket,
            args=["--job-heartbeat-timeout-ms", "3000"],
        ) as broker,
        trioq.Client(broker.url) as client,
    ):
        beat = ["--heartbeat-interval-ms", "500", "--concurrency", "2"]
        async with worker_process(tmp_path, broker.url, *beat, name="victim") as victim:
            await victim.ready()
            await client.submit_many([record(1.5, "k-1"), record(1.5, "k-2")])
            await eventually(counted(events_dir, "start", 2))
            victim.signal(signal.SIGKILL)  # mid-job: both are running
            killed = time.time()
            # the rescuer starts while the victim's leases run out
            async with worker_process(tmp_path, broker.url, *beat, name="rescuer") as rescuer:
                await rescuer.ready()
                await eventually(stats_show(client, completedTotal=2, total=0))
                dead = await client.dead()

        starts = events_of(events_dir, "start")
        done = events_of(events_dir, "done")
        assert {e.pid for e in starts[:2]} == {victim.pid}
        assert sorted((e.job_id, e.pid, e.attempt) for e in done) == [
            ("k-1", rescuer.pid, 2),
            ("k-2", rescuer.pid, 2),
        ]
        # taken over once the lease (3 s from the last heartbeat) ran out, not before
        retaken = [e.at - killed for e in starts if e.pid == rescuer.pid]
        assert all(2.0 <= t <= 15.0 for t in retaken), retaken
        assert dead["jobs"] == []  # nothing lost


async def test_a_job_whose_lease_cannot_be_renewed_is_cancelled_locally(
    tmp_path: Path, events_dir: Path, seaweedfs: S3Server, seaweedfs_bucket: str
) -> None:
    async with (
        broker_process(
            tmp_path,
            s3=seaweedfs,
            bucket=seaweedfs_bucket,
            args=["--job-heartbeat-timeout-ms", "3000"],
        ) as broker,
        worker_process(tmp_path, broker.url, "--heartbeat-interval-ms", "500") as worker,
        trioq.Client(broker.url, retry_deadline=LIMIT) as client,
    ):
        await worker.ready()
        await client.submit("record", {"sleep": 60}, id="stuck")
        await eventually(counted(events_dir, "start", 1))
        await trio.sleep(1.0)  # a few heartbeats renew the lease
        broker.signal(signal.SIGSTOP)  # heartbeats now go unanswered
        stopped = time.time()
        await eventually(counted(events_dir, "cancelled", 1), limit=15)
        [cancelled] = events_of(events_dir, "cancelled")
        # the local deadline: 3 s (leaseMs) after the last renewal, at most 0.5 s
        # before the broker stopped
        assert 1.5 <= cancelled.at - stopped <= 6.0, cancelled.at - stopped
        assert cancelled.attempt == 1
        broker.signal(signal.SIGCONT)

        async def retried() -> bool:
            return int((await client.get("stuck"))["attempts"]) >= 2

        await eventually(retried)
        assert (await client.stats())["completedTotal"] == 0
        assert worker.process.returncode is None
    assert [e for e in read_events(events_dir) if e.event == "done"] == []


# --------------------------------------------------------------- shutdown


async def test_sigterm_lets_jobs_finish_in_the_grace_period_then_releases(
    tmp_path: Path, events_dir: Path, seaweedfs: S3Server, seaweedfs_bucket: str
) -> None:
    async with (
        broker_process(tmp_path, s3=seaweedfs, bucket=seaweedfs_bucket) as broker,
        trioq.Client(broker.url) as client,
        worker_process(
            tmp_path, broker.url, "--concurrency", "3", "--shutdown-grace-s", "3", name="first"
        ) as first,
    ):
        await first.ready()
        await client.submit_many(
            [record(1.5, "short-1"), record(1.5, "short-2"), record(60, "long")]
        )
        await eventually(counted(events_dir, "start", 3))
        async with worker_process(tmp_path, broker.url, name="second") as second:
            first.signal(signal.SIGTERM)
            terminated = time.time()
            await second.ready()
            second_ready = time.time()
            with trio.fail_after(LIMIT):
                assert await first.exited() == 0
            exited = time.time() - terminated

            async def long_taken() -> bool:
                return any(e.pid == second.pid for e in events_of(events_dir, "start"))

            await eventually(long_taken)
            long_status = await client.get("long")
            stats = await client.stats()

    done = {e.job_id: e for e in events_of(events_dir, "done")}
    assert {done["short-1"].pid, done["short-2"].pid} == {first.pid}
    finished = [done[j].at - terminated for j in ("short-1", "short-2")]
    assert all(t < 3.0 for t in finished), finished
    [cancelled] = events_of(events_dir, "cancelled")
    assert (cancelled.job_id, cancelled.pid) == ("long", first.pid)
    assert 2.5 <= cancelled.at - terminated <= 8.0, cancelled.at - terminated  # 3 s grace
    assert 2.5 <= exited <= 10.0, exited
    # released, so the other worker takes it at once (attempt not counted), long
    # before the 30 s job heartbeat timeout would have returned it
    [taken] = [e for e in events_of(events_dir, "start") if e.pid == second.pid]
    assert (taken.job_id, taken.attempt) == ("long", 1)
    # (the second worker may still be starting when the job comes back)
    picked_up = taken.at - max(cancelled.at, second_ready)
    assert picked_up < 3.0, picked_up
    assert long_status["status"] == "in_progress"
    assert stats["completedTotal"] == 2


async def test_a_second_signal_stops_at_once(tmp_path: Path, events_dir: Path) -> None:
    async with (
        broker_process(tmp_path, data_dir=tmp_path / "data") as broker,
        trioq.Client(broker.url) as client,
    ):
        async with worker_process(tmp_path, broker.url, "--shutdown-grace-s", "30") as worker:
            await worker.ready()
            await client.submit("record", {"sleep": 60}, id="long")
            await eventually(counted(events_dir, "start", 1))
            worker.signal(signal.SIGINT)
            await trio.sleep(0.3)
            worker.signal(signal.SIGTERM)
            with trio.fail_after(10):  # far less than the 30 s grace
                assert await worker.exited() == 0
        record_ = await client.get("long")
    assert (record_["status"], record_["attempts"]) == ("unclaimed", 0)
    assert len(events_of(events_dir, "cancelled")) == 1


# ------------------------------------------------------- failures, retries


async def test_invalid_payloads_and_failing_handlers(
    tmp_path: Path, events_dir: Path, seaweedfs: S3Server, seaweedfs_bucket: str
) -> None:
    async with (
        broker_process(tmp_path, s3=seaweedfs, bucket=seaweedfs_bucket) as broker,
        worker_process(tmp_path, broker.url, "--concurrency", "3") as worker,
        trioq.Client(broker.url) as client,
    ):
        await worker.ready()
        await client.submit_many(
            [
                trioq.JobSpec("typed", {"n": "not a number"}, id="invalid"),
                trioq.JobSpec("fail", "boom", id="failing", max_attempts=2),
                trioq.JobSpec("typed", {"n": 3}, id="valid"),
            ]
        )

        async def two_dead() -> bool:
            return len((await client.dead())["jobs"]) == 2

        await eventually(two_dead)
        dead = {d["jobId"]: d for d in (await client.dead())["jobs"]}
        assert (await client.get("valid"))["status"] == "completed"

    invalid = dead["invalid"]
    assert (invalid["reason"], invalid["attempts"]) == ("final", 1)
    assert invalid["lastError"].startswith("invalid payload for 'typed'")
    assert "valid integer" in invalid["lastError"]
    assert events_of(events_dir, "start", "invalid") == []  # never reached the handler

    failing = dead["failing"]
    assert (failing["reason"], failing["attempts"]) == ("exhausted", 2)
    assert failing["lastError"] == "RuntimeError: boom at attempt 2"
    first, second = events_of(events_dir, "start", "failing")
    assert (first.attempt, second.attempt) == (1, 2)
    assert second.at - first.at >= 0.75  # the broker's backoff: 1 s +- 20 %


# --------------------------------------------------------------- failover


async def test_workers_follow_the_leader_across_its_crash(
    tmp_path: Path, events_dir: Path, seaweedfs: S3Server, seaweedfs_bucket: str
) -> None:
    async with (
        broker_process(tmp_path, s3=seaweedfs, bucket=seaweedfs_bucket, name="leader") as leader,
        broker_process(tmp_path, s3=seaweedfs, bucket=seaweedfs_bucket, name="standby") as standby,
    ):
        assert (leader.role, standby.role) == ("leader", "standby")
        urls = f"{leader.url},{standby.url}"
        async with (
            worker_process(tmp_path, urls, "--concurrency", "4") as worker,
            trioq.Client(urls) as client,
        ):
            await worker.ready()
            await client.submit_many(
                [record(0.05, f"before-{i}") for i in range(3)] + [record(4.0, "across")]
            )
            await eventually(stats_show(client, completedTotal=3))
            leader.signal(signal.SIGKILL)
            crashed = time.time()
            await client.submit_many([record(0.05, f"after-{i}") for i in range(3)])
            assert client.url == standby.url
            # generous: a standby broker may leave a request that follows its NotLeader
            # answer on the same connection unanswered until the client's timeout
            # (10 s); without that, this takes about 3 s
            await eventually(stats_show(client, completedTotal=7, total=0), limit=45)
            recovered = time.time() - crashed
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{standby.url}/healthz")).json()
            assert health["role"] == "leader"
            assert worker.process.returncode is None

    done = Counter(e.job_id for e in events_of(events_dir, "done"))
    assert set(done) == {f"before-{i}" for i in range(3)} | {f"after-{i}" for i in range(3)} | {
        "across"
    }
    # the job running through the crash completed once, on its first attempt: the
    # new leader renewed its lease and the worker's heartbeats found their way there
    assert done["across"] == 1
    assert [e.attempt for e in events_of(events_dir, "start", "across")] == [1]
    assert recovered < 45, recovered


# ----------------------------------------------------- leases, a dead broker


async def test_a_worker_renews_a_short_lease_and_a_drain_completes_every_job_once(
    tmp_path: Path, events_dir: Path
) -> None:
    # the broker grants 3 s leases; the worker runs at its defaults (5 s heartbeats)
    args = ["--host", "127.0.0.1", "--port", "0", "--storage", "file"]
    async with (
        _broker_proc.broker_process(
            [*args, "--data-dir", str(tmp_path / "data")],
            log_path=tmp_path / "broker.log",
            env={"JOB_HEARTBEAT_TIMEOUT_MS": "3000"},
        ) as broker,
        trioq.Client(broker.url) as client,
        worker_process(tmp_path, broker.url, "--concurrency", "5") as worker,
    ):
        await worker.ready()
        ids = [f"lease-{i}" for i in range(5)]
        await client.submit_many([record(3.0, job_id) for job_id in ids])
        await eventually(counted(events_dir, "start", 5))
        worker.signal(signal.SIGTERM)  # while all five run
        with trio.fail_after(LIMIT):
            code = await worker.exited()
        records = [await client.get(job_id) for job_id in ids]

    log = worker.log_path.read_text()
    assert code == 0, worker.log_tail()
    assert "lease was lost" not in log, log
    assert "could not be renewed" not in log, log
    assert log.count("the broker grants 3000 ms leases: heartbeats every 1 s") == 1, log
    assert Counter(e.job_id for e in events_of(events_dir, "done")) == dict.fromkeys(ids, 1)
    assert Counter(e.job_id for e in events_of(events_dir, "start")) == dict.fromkeys(ids, 1)
    assert events_of(events_dir, "cancelled") == []
    assert [(r["outcome"], r["attempts"]) for r in records] == [("completed", 1)] * 5


def warned_about(worker: Proc, url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return f"WARNING trioq.worker: broker {url}: claim failed" in worker.log_tail(200)

    return check


async def test_a_worker_whose_broker_dies_warns_and_stops_within_the_claim_bound(
    tmp_path: Path, events_dir: Path
) -> None:
    async with (
        broker_process(tmp_path, data_dir=tmp_path / "data") as broker,
        worker_process(tmp_path, broker.url, "--group-commit-interval-ms", "50") as worker,
    ):
        await worker.ready()
        broker.signal(signal.SIGKILL)
        await eventually(warned_about(worker, broker.url), limit=15)
        # (a claim may be in flight now, retried inside the client: it gets at
        # most one commit interval plus one second, 1.05 s)
        worker.signal(signal.SIGTERM)
        terminated = time.monotonic()
        with trio.fail_after(LIMIT):
            code = await worker.exited()
        took = time.monotonic() - terminated
    assert code == 0, worker.log_tail()
    assert took < 4.0, (took, worker.log_tail())  # 1.05 s, plus the process's own exit


async def test_a_stop_gives_up_a_claim_the_broker_never_answers(
    tmp_path: Path, events_dir: Path
) -> None:
    async with (
        broker_process(tmp_path, data_dir=tmp_path / "data") as broker,
        worker_process(tmp_path, broker.url, "--group-commit-interval-ms", "50") as worker,
    ):
        await worker.ready()
        # an idle worker always has a long-poll claim out (or sends the next one
        # into the listen backlog): a frozen broker leaves it unanswered
        broker.signal(signal.SIGSTOP)
        worker.signal(signal.SIGTERM)
        terminated = time.monotonic()
        with trio.fail_after(LIMIT):
            code = await worker.exited()
        took = time.monotonic() - terminated
    assert code == 0, worker.log_tail()
    assert "gave up a claim" in worker.log_tail(), worker.log_tail()
    # one commit interval plus one second (1.05 s), plus the process's own exit; the
    # request timeout (10 s) would be the bound otherwise
    assert took < 3.0, (took, worker.log_tail())
