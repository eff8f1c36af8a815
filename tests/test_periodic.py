"""Periodic jobs: schedules in the queue state, fired by the leader's commit loop.

- The queue model (times in ms, no clock): fixed intervals and cron expressions in a
  time zone, the missed-occurrence policies, a full queue, replacing a schedule,
  and the schedules surviving an encode/decode and a log record's replay.
- The API on an in-process broker in virtual time: occurrences enqueued at their
  times, each with its deterministic id; bad schedules are 400s.
- Real processes: two brokers on SeaweedFS, the leader killed with ``kill -9`` while
  a schedule runs every second: no occurrence is enqueued twice, none is skipped
  silently (the outage's are collapsed into one, as the ``once`` policy says, and
  logged).
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from contextlib import AsyncExitStack
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import trio

import trioq
from _broker_proc import wait_until
from _servers import S3Server
from test_broker_failover import all_jobs, is_ready, start_pair
from trioq._errors import BrokerProtocolError, NotFound
from trioq._wire import NewJob, ScheduleRequest
from trioq.core._changes import apply_record, encode_record
from trioq.core._state import Limits, QueueState
from trioq.testing import TEST_URL, open_test_broker

T = 1_700_000_000_000
DEEP: list[object] = []
for _ in range(70):
    DEEP = [DEEP]


def make(**limits: int) -> QueueState:
    return QueueState(limits=Limits(**limits), rng=random.Random(5))


def every(seconds: float, **fields: object) -> ScheduleRequest:
    return ScheduleRequest.model_validate(
        {"type": "tick", "everyMs": round(seconds * 1000), **fields}
    )


def queued_ids(state: QueueState) -> list[str]:
    return list(state.jobs)


# ----------------------------------------------------------------- the model


def test_a_fixed_interval_fires_each_occurrence_once_with_its_own_id() -> None:
    state = make()
    stored = state.put_schedule("t", every(10, payload={"n": 1}, priority=3), T)
    assert (stored.anchor_ms, stored.next_at) == (T, T + 10_000)
    assert state.fire_schedules(T + 9_999) == (False, [])
    assert state.fire_schedules(T + 10_000) == (True, [f"periodic:t:{T + 10_000}"])
    assert state.fire_schedules(T + 10_001) == (False, [])  # not twice
    assert state.fire_schedules(T + 20_500) == (True, [f"periodic:t:{T + 20_000}"])
    assert state.next_schedule_at() == T + 30_000
    job = state.jobs[f"periodic:t:{T + 20_000}"]
    assert (job.type, job.payload, job.priority) == ("tick", {"n": 1}, 3)


def test_missed_occurrences_once_enqueues_the_latest_skip_drops_late_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = make()
    state.put_schedule("once", every(10), T)
    state.put_schedule("skip", every(10, missed="skip", graceMs=5_000), T)
    # an outage: no commit from T+10s to T+47s
    moved, ids = state.fire_schedules(T + 47_000)
    assert moved
    assert ids == [f"periodic:once:{T + 40_000}"]  # skip: 7 s late > 5 s grace
    assert "missed its occurrences" in caplog.text
    # both go on from the next occurrence after now
    assert {s.next_at for s in state.schedules.values()} == {T + 50_000}
    # a skip schedule still fires an occurrence that is late within its grace
    assert state.fire_schedules(T + 54_000)[1] == [
        f"periodic:once:{T + 50_000}",
        f"periodic:skip:{T + 50_000}",
    ]


def test_a_full_queue_keeps_the_occurrence_due_until_there_is_room() -> None:
    state = make(max_queued=1)
    state.enqueue([NewJob(1, id="filler")], T)
    state.put_schedule("t", every(10), T)
    assert state.fire_schedules(T + 10_000) == (False, [])
    assert state.schedules["t"].next_at == T + 10_000  # still due, not skipped
    state.cancel("filler", T + 11_000)
    assert state.fire_schedules(T + 12_000) == (True, [f"periodic:t:{T + 10_000}"])


def test_cron_in_a_time_zone_across_a_dst_change() -> None:
    paris = ZoneInfo("Europe/Paris")
    start = int(dt.datetime(2026, 3, 27, 12, 0, tzinfo=paris).timestamp() * 1000)
    state = make()
    request = ScheduleRequest.model_validate(
        {"type": "report", "cron": "0 9 * * *", "timezone": "Europe/Paris"}
    )
    state.put_schedule("daily", request, start)
    fired = []
    now = start
    for _ in range(3):
        now = state.schedules["daily"].next_at
        fired += state.fire_schedules(now)[1]
    local = [dt.datetime.fromtimestamp(int(i.rsplit(":", 1)[1]) / 1000, tz=paris) for i in fired]
    # 09:00 Paris time each day, before and after the clocks moved on March 29
    assert [(d.day, d.hour, d.minute) for d in local] == [(28, 9, 0), (29, 9, 0), (30, 9, 0)]
    assert {d.utcoffset() for d in local} == {dt.timedelta(hours=1), dt.timedelta(hours=2)}


def test_replacing_keeps_the_next_occurrence_unless_the_timing_changed() -> None:
    state = make()
    state.put_schedule("t", every(10), T)
    state.put_schedule("t", every(10, payload="new", priority=9), T + 7_000)
    assert state.schedules["t"].next_at == T + 10_000
    assert state.schedules["t"].payload == "new"
    state.put_schedule("t", every(60), T + 8_000)
    assert state.schedules["t"].next_at == T + 68_000


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        ("bad name", {"everyMs": 1000}, "schedule name must be"),
        ("t", {}, "exactly one of cron and everyMs"),
        ("t", {"everyMs": 1000, "cron": "* * * * *"}, "exactly one of cron and everyMs"),
        ("t", {"cron": "61 * * * *"}, "not a valid cron expression"),
        ("t", {"cron": "* * *"}, "not a valid cron expression"),
        ("t", {"cron": "* * * * *", "timezone": "Mars/Olympus"}, "not an IANA time zone"),
        ("t", {"everyMs": 1000, "payload": DEEP}, "nested more than 64"),
    ],
)
def test_a_bad_schedule_changes_nothing(name: str, fields: dict[str, object], message: str) -> None:
    state = make()
    with pytest.raises(BrokerProtocolError, match=message):
        state.put_schedule(name, ScheduleRequest.model_validate({"type": "t", **fields}), T)
    assert state.schedules == {}
    with pytest.raises(NotFound):
        state.delete_schedule("t")


def test_schedules_survive_encode_decode_and_log_replay() -> None:
    state = make()
    state.track_changes()
    state.put_schedule("t", every(10, payload=[1, 2]), T)
    state.fire_schedules(T + 10_000)
    record = encode_record(
        state,
        state.take_changes(),
        seq=1,
        epoch=1,
        broker_id="b",
        url="http://x",
        lease_at=T,
        released=False,
    )
    replayed = make()
    apply_record(replayed, record)
    decoded = QueueState.decode(state.encode(), limits=state.limits, rng=random.Random(1))
    for copy in (replayed, decoded):
        [schedule] = copy.schedules.values()
        assert (schedule.payload, schedule.next_at, schedule.last_at) == (
            [1, 2],
            T + 20_000,
            T + 10_000,
        )
        assert copy.fire_schedules(T + 10_500) == (False, [])  # fired already
    # a queue without schedules is stored as before: no "schedules" field
    assert b"schedules" not in make().encode()


# ------------------------------------------------------------------- the API


async def test_the_api_sets_lists_fires_and_deletes(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_broker() as broker:
        client = broker.client
        stored = await client.set_schedule("tick", "tick", {"a": 1}, every=2)
        assert stored["everyMs"] == 2000
        assert [s["name"] for s in await client.schedules()] == ["tick"]
        await trio.sleep(5)
        page = await client.jobs()
        occurrences = sorted(int(j["id"].rsplit(":", 1)[1]) for j in page["jobs"])
        assert [o - stored["anchorMs"] for o in occurrences] == [2000, 4000]
        await client.delete_schedule("tick")
        await trio.sleep(5)
        assert (await client.stats())["total"] == 2
        with pytest.raises(NotFound):
            await client.delete_schedule("tick")
        with pytest.raises(BrokerProtocolError, match="everyMs"):
            await client.set_schedule("x", "t", every=0.5)  # refused before sending
        response = await client._http.put(f"{TEST_URL}/v1/schedules/x", json={"cron": "nope"})
        assert response.status_code == 400
        assert response.json()["_tag"] == "BrokerProtocolError"


# ----------------------------------------------------------- real processes


async def test_a_leader_kill_neither_repeats_nor_silently_skips_an_occurrence(
    seaweedfs: S3Server, seaweedfs_bucket: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack, httpx.AsyncClient() as http:
        a, b = await start_pair(stack, seaweedfs, seaweedfs_bucket, tmp_path)
        response = await http.put(
            f"{a.url}/v1/schedules/tick", json={"type": "tick", "everyMs": 1000}
        )
        assert response.status_code == 200, response.text

        async def queued(url: str, at_least: int) -> bool:
            try:
                stats = (await http.get(f"{url}/v1/stats", timeout=1)).json()
            except httpx.HTTPError:
                return False
            return bool(stats.get("total", 0) >= at_least)

        await wait_until(lambda: queued(a.url, 3), within=15, what="3 occurrences")
        a.kill()
        await wait_until(lambda: is_ready(http, b.url), within=15, what="the standby leads")
        before = len(await all_jobs(http, b.url))
        await wait_until(lambda: queued(b.url, before + 3), within=15, what="3 more")
        ids = [job["id"] for job in await all_jobs(http, b.url)]

    occurrences = [int(i.rsplit(":", 1)[1]) for i in ids]
    assert all(i.startswith("periodic:tick:") for i in ids)
    assert len(set(occurrences)) == len(occurrences)  # none twice
    occurrences.sort()
    steps = [later - earlier for earlier, later in itertools.pairwise(occurrences)]
    assert all(step % 1000 == 0 for step in steps), steps
    # one second apart but for the outage, which the "once" policy collapses into
    # the latest missed occurrence, saying so in the new leader's log
    gaps = [step for step in steps if step > 1000]
    assert len(gaps) <= 1, steps
    if gaps:
        assert "missed its occurrences" in b.log()


async def test_a_worker_declares_its_schedules_at_start(autojump_clock: trio.abc.Clock) -> None:
    worker = trioq.Worker(poll_interval=0.1)
    runs: list[float] = []

    @worker.periodic(every=10, payload={"scope": "all"})
    @worker.job("cleanup")
    async def cleanup(payload: dict[str, str]) -> str:
        runs.append(trio.current_time())
        return payload["scope"]

    with pytest.raises(ValueError, match=r"above @worker\.job"):
        worker.periodic(every=5)(lambda payload: None)
    with pytest.raises(ValueError, match="exactly one of cron and every"):
        worker.periodic()

    async with open_test_broker() as broker:
        broker.attach(worker)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            [stored] = await broker.client.schedules()
            assert (stored["name"], stored["type"], stored["everyMs"]) == (
                "cleanup",
                "cleanup",
                10_000,
            )
            await trio.sleep(35)
            worker.drain()
    assert len(runs) == 3  # at 10, 20 and 30 s
