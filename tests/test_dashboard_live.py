"""What the dashboard's live parts read from the broker (docs/dashboard.md): the
leader's lease age on ``/healthz``, and the stats pushed over the WebSocket after
``subscribeStats``.

The exact timings run in virtual time (``MockClock(autojump_threshold=0)``: an engine
over memory storage, the stored times derived from trio's clock): the lease age grows
while nothing commits and drops at each commit, and a burst of commits is pushed at
most ``STATS_MAX_PER_SECOND`` times a second. Over a real socket (an in-process broker)
the tests wait for events (a push, the pushing task's end), with generous bounds that
only a hang reaches; none sleeps hoping a state arrived.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from httpx_ws import AsyncWebSocketSession, aconnect_ws

from _broker_proc import InProcessBroker, start_in_process
from _waits import wait_for
from trioq._wire import Health
from trioq.broker import _dashboard
from trioq.broker._api import BrokerApi
from trioq.broker._settings import BrokerSettings
from trioq.broker._websocket import (
    STATS_EVERY,
    STATS_MAX_PER_SECOND,
    CommitFeed,
    WebSocketEndpoint,
    push_stats,
)
from trioq.core._config import EngineConfig
from trioq.core._engine import Engine
from trioq.core._state import NewJob
from trioq.storage._memory import MemoryStorage

ADMIN, WORKER, PRODUCER = "live-admin-token", "live-worker-token", "live-producer-token"
TIMEOUT = 20.0
"""Seconds a reply or push may take over a real socket: only a hang reaches it."""

WALL0 = 1_700_000_000_000
_ids = itertools.count(1)


def wall_clock() -> int:
    """Stored times derived from trio's (virtual) clock."""
    return WALL0 + round(trio.current_time() * 1000)


def engine(storage: MemoryStorage, broker_id: str, **timings: float) -> Engine:
    config = EngineConfig(
        group_commit_interval=timings.get("group_commit_interval", 0.05),
        broker_heartbeat_interval=3.0,
        broker_heartbeat_timeout=10.0,
        standby_poll_interval=1.0,
        checkpoint_in_thread=False,
    )
    return Engine(
        storage,
        broker_id=broker_id,
        url=f"http://{broker_id}",
        config=config,
        wall_clock=wall_clock,
    )


def job(job_id: str) -> list[NewJob]:
    return [NewJob(payload=1, id=job_id)]


# ------------------------------------------------------------- the lease age


async def test_the_lease_age_grows_and_each_commit_renews_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = MemoryStorage()
    leader, standby = engine(storage, "a"), engine(storage, "b")
    api, standby_api = BrokerApi(leader), BrokerApi(standby)
    async with trio.open_nursery() as nursery:
        await nursery.start(leader.run)
        await nursery.start(standby.run)
        health = api.health()
        Health.model_validate(health)  # the answer's schema holds the new fields
        assert health["role"] == "leader"
        assert health["leaseMs"] == 10_000
        assert health["leaseAgeMs"] == 0  # it took office (its first write) just now
        await trio.sleep_until(1.0)
        assert api.health()["leaseAgeMs"] == 1000  # nothing committed since
        await leader.enqueue(job("j1"))  # a commit renews it
        committed_at = trio.current_time()
        assert api.health()["leaseAgeMs"] == 0
        await trio.sleep_until(committed_at + 2.5)
        assert api.health()["leaseAgeMs"] == 2500
        # idle: the lease refresh (an empty commit one heartbeat interval after the
        # last) renews it
        await trio.sleep_until(committed_at + 3.5)
        assert api.health()["leaseAgeMs"] == 500
        # a standby knows no lease age of its own: null, and the limit
        other = standby_api.health()
        Health.model_validate(other)
        assert other["role"] == "standby"
        assert other["leaseAgeMs"] is None
        assert other["leaseMs"] == 10_000
        leader.stop()
        standby.stop()


# --------------------------------------------------------------- stats pushes


async def test_a_burst_of_commits_is_pushed_at_most_n_times_a_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    leader = engine(MemoryStorage(), "a", group_commit_interval=0.0)
    api = BrokerApi(leader)
    feed = CommitFeed(leader)
    pushes: list[tuple[float, dict[str, Any]]] = []

    async def send(event: dict[str, Any]) -> None:
        pushes.append((trio.current_time(), event))

    async with trio.open_nursery() as nursery:
        await nursery.start(leader.run)
        nursery.start_soon(push_stats, api, feed, send)
        await trio.testing.wait_all_tasks_blocked()
        assert [e["data"]["total"] for _, e in pushes] == [0]  # the current stats at once
        # 200 commits, one every 10 ms, from t=1 to t=3 (each one its own commit)
        await trio.sleep_until(1.0)
        for n in range(200):
            await leader.enqueue(job(f"j{n}"))
            await trio.sleep(0.01)
        burst_end = trio.current_time()
        assert leader.metrics["commits"] >= 200
        await trio.sleep_until(burst_end + 1.0)
        during = [at for at, _ in pushes if 1.0 <= at <= burst_end + 1.0]
        # the bound: starts at least 1/N s apart, so at most N a second (+1 at the edge)
        gaps = [b - a for a, b in itertools.pairwise(at for at, _ in pushes)]
        assert min(gaps) >= 1 / STATS_MAX_PER_SECOND - 1e-9
        assert len(during) <= (burst_end + 1.0 - 1.0) * STATS_MAX_PER_SECOND + 1
        assert len(during) >= (burst_end - 1.0) * STATS_MAX_PER_SECOND - 1  # and as many
        # the last commit's stats were pushed (coalescing drops none at the end)
        assert pushes[-1][1]["data"]["total"] == 200
        # idle: one push every STATS_EVERY seconds, though nothing changed
        before = len(pushes)
        await trio.sleep(5 * STATS_EVERY + 0.01)
        assert len(pushes) - before == 5
        nursery.cancel_scope.cancel()
    assert feed.pushers == 0


# ------------------------------------------------------------ over the socket


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def broker(nursery: trio.Nursery, tmp_path: Path) -> InProcessBroker:
    settings = BrokerSettings.load(
        {
            "port": 0,
            "data_dir": str(tmp_path / "data"),
            "group_commit_interval": 0,
            "admin_tokens": ADMIN,
            "worker_tokens": WORKER,
            "producer_tokens": PRODUCER,
        },
        environ={},
    )
    return await start_in_process(nursery, settings)


def endpoint_of(broker: InProcessBroker) -> WebSocketEndpoint:
    serve = broker.broker.app.view_functions["ws"]
    endpoint = getattr(serve, "__self__", None)
    assert isinstance(endpoint, WebSocketEndpoint)
    return endpoint


@pytest.fixture
async def http(broker: InProcessBroker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=broker.url, headers=bearer(ADMIN)) as client:
        yield client


async def call(ws: AsyncWebSocketSession, method: str) -> dict[str, Any]:
    """A call's reply (pushes received meanwhile would fail the test: none is
    expected before a subscription's reply)."""
    request_id = next(_ids)
    await ws.send_json({"id": request_id, "method": method})
    with trio.fail_after(TIMEOUT):
        reply: dict[str, Any] = await ws.receive_json()
    assert reply.get("id") == request_id, reply
    return reply


async def next_push(ws: AsyncWebSocketSession) -> dict[str, Any]:
    with trio.fail_after(TIMEOUT):
        message: dict[str, Any] = await ws.receive_json()
    assert "id" not in message, message  # never taken for a reply
    assert message["event"] == "stats", message
    return message


def pushing_tasks() -> list[trio.lowlevel.Task]:
    """Every task of this run whose coroutine pushes stats."""
    found: list[trio.lowlevel.Task] = []
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task is None:
            continue
        if task.name.endswith(("_Connection._push", ".push_stats")):
            found.append(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found


async def test_healthz_answers_the_lease(broker: InProcessBroker) -> None:
    """Over HTTP, without a token, beside the fields osqueue's client reads."""
    async with httpx.AsyncClient(base_url=broker.url) as anonymous:
        health = (await anonymous.get("/healthz")).json()
    assert {"status", "brokerId", "role", "epoch", "leader"} <= set(health)
    timeout = broker.broker.engine.config.broker_heartbeat_timeout
    assert health["leaseMs"] == round(timeout * 1000)
    assert isinstance(health["leaseAgeMs"], int)
    # renewed at least every heartbeat interval, by the leader's commits
    interval = broker.broker.engine.config.broker_heartbeat_interval
    assert 0 <= health["leaseAgeMs"] <= interval * 1000 + 5000  # + a slow machine's margin


async def test_a_subscriber_gets_a_push_after_a_submit_commits(
    broker: InProcessBroker, http: httpx.AsyncClient
) -> None:
    endpoint = endpoint_of(broker)
    async with (
        httpx.AsyncClient() as client,
        aconnect_ws(f"{broker.url}/v1/ws", client, headers=bearer(ADMIN)) as ws,
    ):
        reply = await call(ws, "subscribeStats")
        assert reply["ok"] is True, reply
        assert reply["result"] == {
            "subscribed": True,
            "event": "stats",
            "maxPerSecond": STATS_MAX_PER_SECOND,
            "everyMs": round(STATS_EVERY * 1000),
        }
        first = await next_push(ws)
        assert first["data"]["total"] == 0
        assert first["data"]["brokerAddress"] == broker.url
        assert (await call(ws, "subscribeStats"))["ok"] is True  # again: no second pusher
        assert endpoint.feed.pushers == 1
        submitted = await http.post("/v1/jobs", json={"id": "pushed", "payload": 1})
        assert submitted.status_code == 200, submitted.text
        push = await next_push(ws)
        while push["data"]["total"] == 0:  # a periodic push may come first
            push = await next_push(ws)
        assert push["data"]["total"] == 1
        assert push["data"]["unclaimed"] == 1
        # the other calls still answer, pushes or not
        assert (await ws_call_skipping_pushes(ws, "getStats"))["result"]["total"] == 1
        reply = await ws_call_skipping_pushes(ws, "unsubscribeStats")
        assert reply["result"] == {"subscribed": False}
        await wait_for(lambda: endpoint.feed.pushers == 0, within=TIMEOUT, what="unsubscribed")
        assert pushing_tasks() == []
        # subscribed again, then the socket closes: the pushing task ends with it
        await ws_call_skipping_pushes(ws, "subscribeStats")
        await next_push(ws)
        assert endpoint.feed.pushers == 1
        assert len(pushing_tasks()) == 1
    await wait_for(lambda: endpoint.feed.pushers == 0, within=TIMEOUT, what="pusher ended")
    assert pushing_tasks() == []


async def ws_call_skipping_pushes(ws: AsyncWebSocketSession, method: str) -> dict[str, Any]:
    request_id = next(_ids)
    await ws.send_json({"id": request_id, "method": method})
    with trio.fail_after(TIMEOUT):
        while True:
            message: dict[str, Any] = await ws.receive_json()
            if "id" in message:
                assert message["id"] == request_id, message
                assert message["ok"] is True, message
                return message
            assert message["event"] == "stats"


async def test_who_may_subscribe_and_a_connection_that_does_not_gets_no_push(
    broker: InProcessBroker,
) -> None:
    encoded = base64.urlsafe_b64encode(WORKER.encode()).decode().rstrip("=")
    subprotocols = ["trioq", f"{_dashboard.BEARER_PREFIX}{encoded}"]
    async with httpx.AsyncClient() as client:
        # a worker token (the dashboard's way: the bearer subprotocol) may: it may
        # read the stats
        async with aconnect_ws(f"{broker.url}/v1/ws", client, subprotocols=subprotocols) as ws:
            assert (await call(ws, "subscribeStats"))["ok"] is True
            assert (await next_push(ws))["data"]["total"] == 0
        # a producer's may not, as it may not call getStats; the socket stays open
        async with aconnect_ws(f"{broker.url}/v1/ws", client, headers=bearer(PRODUCER)) as ws:
            reply = await call(ws, "subscribeStats")
            assert reply["ok"] is False
            assert reply["error"]["_tag"] == "Forbidden"
            assert "may not call subscribeStats" in reply["error"]["message"]
            # a connection that never subscribed: only replies, in order
            for _ in range(3):
                assert (await call(ws, "getJob"))["ok"] is False  # no params: refused
    feed = endpoint_of(broker).feed
    await wait_for(lambda: feed.pushers == 0, within=TIMEOUT, what="the worker's pusher ended")


async def test_the_broker_closing_ends_the_pushes(broker: InProcessBroker) -> None:
    endpoint = endpoint_of(broker)
    async with (
        httpx.AsyncClient() as client,
        aconnect_ws(f"{broker.url}/v1/ws", client, headers=bearer(ADMIN)) as ws,
    ):
        assert (await call(ws, "subscribeStats"))["ok"] is True
        await next_push(ws)
        broker.broker.stop()
        await wait_for(lambda: endpoint.feed.pushers == 0, within=TIMEOUT, what="pusher ended")
    assert pushing_tasks() == []
