"""Queue operations: a per-job deadline (TTL), cancelling and purging in bulk by
filter, and the broker's warning about types that no worker claims (the queue model
in ms; the API in virtual time)."""

from __future__ import annotations

import logging
import random

import pytest
import trio

import trioq
from trioq._wire import NewJob
from trioq.core._claim_watch import WINDOW, ClaimWatch
from trioq.core._state import QueueState
from trioq.testing import open_test_broker

T = 1_700_000_000_000


def make() -> QueueState:
    return QueueState(rng=random.Random(9))


# --------------------------------------------------------------------- deadlines


def test_an_unclaimed_job_past_its_deadline_is_dead_lettered() -> None:
    state = make()
    state.enqueue([NewJob(1, id="short", ttl_ms=1000), NewJob(2, id="long", ttl_ms=60_000)], T)
    assert state.kill_overdue(T + 999) == []
    assert state.kill_overdue(T + 1000) == ["short"]
    dead = state.dead["short"]
    assert (dead.reason, dead.last_error) == (
        "deadline",
        "its deadline passed before a worker took it",
    )
    # a claim never hands out a job past its deadline, swept or not
    assert state.claim("w", T + 60_000) == []
    assert state.dead["long"].reason == "deadline"


def test_a_running_job_is_not_touched_but_a_retry_past_the_deadline_is() -> None:
    state = make()
    state.enqueue([NewJob(1, id="j", ttl_ms=5000)], T)
    state = QueueState.decode(state.encode(), limits=state.limits, rng=random.Random(1))
    assert state.jobs["j"].deadline_at == T + 5000
    [claimed] = state.claim("w", T + 100)
    assert state.kill_overdue(T + 9000) == []  # in progress: its lease decides
    state.fail("j", "w", T + 9000, error="boom", retry_in_ms=0)
    assert state.kill_overdue(T + 9000) == ["j"]
    # a requeue from the dead letters is an operator's decision: no deadline then
    state.requeue_dead("j", T + 10_000)
    assert state.jobs["j"].deadline_at is None
    assert [c.id for c in state.claim("w", T + 99_000)] == ["j"]
    assert claimed.id == "j"


async def test_ttl_through_the_client(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_broker() as broker:
        job_id = await broker.client.submit("nobody-runs-this", 1, ttl=5)
        await trio.sleep(9)  # past the deadline and a lease refresh's commit
        with pytest.raises(trioq.JobFailed, match="deadline passed") as failed:
            await broker.client.result(job_id)
        assert failed.value.reason == "deadline"
        bad = await broker.client._http.post(
            f"{trioq.testing.TEST_URL}/v1/jobs", json={"payload": 1, "ttlMs": 0}
        )
        assert bad.status_code == 400
        assert "ttlMs must be an integer from 1" in bad.json()["message"]


# ------------------------------------------------------------------ bulk actions


async def test_cancel_matching_and_purge_dead(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_broker() as broker:
        client = broker.client
        await client.submit_many(
            [trioq.JobSpec("a", i) for i in range(3)] + [trioq.JobSpec("b", i) for i in range(2)]
        )
        [running] = await client.claim("w", types=["a"])
        assert await client.cancel_matching(type="a") == {"cancelled": 2, "cancelling": 1}
        assert (await client.stats())["byType"] == {
            "a": {"unclaimed": 0, "inProgress": 1},
            "b": {"unclaimed": 2, "inProgress": 0},
        }
        assert await client.cancel_matching(status="unclaimed") == {"cancelled": 2, "cancelling": 0}
        # dead letters: purge one type, then all
        for job_type in ("x", "x", "y"):
            job_id = await client.submit(job_type, 1, max_attempts=1)
            [held] = await client.claim("w", types=[job_type])
            await client.fail(held.id, "w", "no")
        assert await client.purge_dead(type="x") == 2
        assert [d["type"] for d in (await client.dead())["jobs"]] == ["y"]
        assert await client.purge_dead() == 1
        with pytest.raises(trioq.JobNotFound):
            await client.get(job_id)  # forgotten
        assert running.id


# ------------------------------------------------------ types nobody claims


def test_the_claim_watch_warns_once_per_type_until_claimed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = ClaimWatch()
    watch.reset(0.0)
    waiting = {"report": {"unclaimed": 4, "inProgress": 0}, "mail": {"unclaimed": 0}}
    watch.claimed(["mail"], 1.0)
    assert watch.check(waiting, WINDOW - 1) == []  # too early: workers may reconnect
    assert watch.check(waiting, WINDOW + 30) == ["report"]
    assert "4 jobs of type 'report' are waiting" in caplog.text
    assert watch.check(waiting, WINDOW + 60) == []  # once
    watch.claimed(["report"], WINDOW + 61)
    assert watch.check(waiting, 2 * WINDOW + 50) == []
    assert watch.check(waiting, 2 * WINDOW + 80) == ["report"]  # unclaimed again
    watch.claimed(None, 2 * WINDOW + 81)  # a worker for any type: no warning
    assert watch.check(waiting, 2 * WINDOW + 120) == []


async def test_the_broker_warns_about_a_type_no_worker_claims(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trioq.broker")
    async with open_test_broker() as broker:
        await broker.client.submit("orphan", 1)
        for _ in range(8):  # a worker that asks only for another type, every 10 s
            await broker.client.claim("w", types=["other"])
            await trio.sleep(10)
    assert "jobs of type 'orphan' are waiting" in caplog.text
    assert "'other'" not in caplog.text
