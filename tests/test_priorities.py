"""Job priorities through the API: claims take the highest priority first, then
(ready time, enqueue order); type filters still apply; bad values are 400s."""

from __future__ import annotations

import trio

import trioq
from trioq.testing import TEST_URL, open_test_broker


async def test_claims_follow_priority_under_mixed_types(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_broker() as broker:
        client = broker.client
        await client.submit("email", "e-low", id="e-low", priority=-1)
        await client.submit("email", "e-0", id="e-0")
        await client.submit("report", "r-5", id="r-5", priority=5)
        await client.submit_many(
            [
                trioq.JobSpec("email", "e-5", id="e-5", priority=5),
                trioq.JobSpec("report", "r-9", id="r-9", priority=9),
                trioq.JobSpec("report", "r-0", id="r-0"),
            ]
        )
        await client.submit("email", "e-later", id="e-later", priority=50, delay=5)
        # one type: its own jobs, highest first; equal priorities in enqueue order
        emails = await client.claim("w", types=["email"], max=2)
        assert [j.id for j in emails] == ["e-5", "e-0"]
        rest = await client.claim("w", max=10)
        assert [j.id for j in rest] == ["r-9", "r-5", "r-0", "e-low"]
        # the delayed job waits for its time, then goes first
        assert await client.claim("w", max=10) == []
        await trio.sleep(5)
        await client.submit("report", "r-1", id="r-1", priority=1)
        assert [j.id for j in await client.claim("w", max=10)] == ["e-later", "r-1"]
        record = await client.get("e-later")
        assert record["priority"] == 50
        assert "priority" not in await client.get("e-0")  # the default is not written


async def test_a_bad_priority_is_a_400_that_changes_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_broker() as broker:
        http = broker.client._http
        for bad in (2**31, -(2**31) - 1, 1.5, "1", True):
            response = await http.post(f"{TEST_URL}/v1/jobs", json={"payload": 1, "priority": bad})
            assert response.status_code == 400, bad
            body = response.json()
            assert body["_tag"] == "BrokerProtocolError"
            assert "priority must be an integer from -2147483648 to 2147483647" in body["message"]
        assert (await broker.client.stats())["total"] == 0
