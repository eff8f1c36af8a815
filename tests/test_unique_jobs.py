"""Uniqueness keys through the API: while a job with a key is queued or running, a
submit with that key returns that job's id as a duplicate and enqueues nothing."""

from __future__ import annotations

import trio

import trioq
from trioq.testing import TEST_URL, open_test_broker


async def test_a_key_held_by_a_queued_or_running_job_makes_a_duplicate(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_broker() as broker:
        client = broker.client
        first = await client.submit("report", {"day": 1}, unique_key="report:day-1")
        # another payload, another id: still the first job while it is queued
        again = await client.submit("report", {"day": 1, "v": 2}, unique_key="report:day-1")
        assert again == first
        [result] = await client.submit_bulk(
            [trioq.JobSpec("report", 3, id="explicit", unique_key="report:day-1")]
        )
        assert result == trioq.Submitted(first, duplicate=True)
        assert (await client.stats())["total"] == 1
        # running: still held
        [claimed] = await client.claim("w")
        assert await client.submit("report", 4, unique_key="report:day-1") == first
        # finished: the key is free again
        await client.complete(claimed.id, "w")
        fresh = await client.submit("report", 5, unique_key="report:day-1")
        assert fresh != first
        record = await client.get(fresh)
        assert record["uniqueKey"] == "report:day-1"


async def test_keys_within_one_batch_and_a_dead_job_frees_its_key(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_broker() as broker:
        client = broker.client
        ids = await client.submit_many(
            [
                trioq.JobSpec("t", 1, unique_key="k"),
                trioq.JobSpec("t", 2, unique_key="k"),
                trioq.JobSpec("t", 3, unique_key="other"),
            ]
        )
        assert ids[0] == ids[1] != ids[2]
        assert (await client.stats())["total"] == 2
        [claimed] = await client.claim("w", types=["t"])
        assert claimed.id == ids[0]
        await client.fail(claimed.id, "w", error="no", final=True)  # dead: key free
        replacement = await client.submit("t", 4, unique_key="k")
        assert replacement != ids[0]
        # requeueing the dead one while the replacement holds the key: both queued,
        # and the key stays with the replacement (the first in queue order)
        await client.requeue(ids[0])
        assert await client.submit("t", 5, unique_key="k") == replacement


async def test_a_bad_unique_key_is_a_400_that_changes_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_broker() as broker:
        http = broker.client._http
        for bad in ("", "x" * 257, "a\nb", 7):
            response = await http.post(f"{TEST_URL}/v1/jobs", json={"payload": 1, "uniqueKey": bad})
            assert response.status_code == 400, bad
            body = response.json()
            assert body["_tag"] == "BrokerProtocolError"
            assert "uniqueKey must be a string of 1-256 characters" in body["message"]
        assert (await broker.client.stats())["total"] == 0
