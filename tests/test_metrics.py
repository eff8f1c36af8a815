"""GET /metrics: prometheus_client's exposition of a broker, names pinned, values live."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import prometheus_client
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import trioq
from trioq.broker._api import BrokerApi
from trioq.broker._metrics import CONTENT_TYPE, metrics_registry, render_metrics
from trioq.core import Engine
from trioq.storage import MemoryStorage, ThrottledStorage
from trioq.testing import TEST_URL, TestBroker, open_test_broker, trio_wall_clock

ENGINE_METRICS = {
    "trioq_broker_leader": "gauge",
    "trioq_broker_epoch": "gauge",
    "trioq_commits_total": "counter",
    "trioq_mutations_total": "counter",
    "trioq_commit_conflicts_total": "counter",
    "trioq_commit_write_errors_total": "counter",
    "trioq_failed_batches_total": "counter",
    "trioq_takeovers_total": "counter",
    "trioq_step_downs_total": "counter",
    "trioq_checkpoints_total": "counter",
    "trioq_commit_seconds_bucket": "histogram",
    "trioq_commit_seconds_count": "histogram",
    "trioq_commit_seconds_sum": "histogram",
    "trioq_collected_objects_total": "counter",
    "trioq_last_commit_seconds": "gauge",
    "trioq_last_batch_size": "gauge",
    "trioq_pending_mutations": "gauge",
    "trioq_waiting_claims": "gauge",
}
"""Served by every broker (the names of the hand-written exposition this replaced)."""

LEADER_METRICS = {
    "trioq_jobs": "gauge",
    "trioq_jobs_enqueued_total": "counter",
    "trioq_jobs_completed_total": "counter",
    "trioq_jobs_failed_total": "counter",
    "trioq_jobs_dead_total": "counter",
    "trioq_jobs_dead_dropped_total": "counter",
    "trioq_jobs_expired_total": "counter",
    "trioq_jobs_cancelled_total": "counter",
    "trioq_jobs_requeued_total": "counter",
    "trioq_document_bytes": "gauge",
}
"""Served by the leader only."""

THROTTLE_METRICS = {
    "trioq_storage_reads_total": "counter",
    "trioq_storage_writes_total": "counter",
    "trioq_storage_throttled_reads_total": "counter",
    "trioq_storage_throttled_writes_total": "counter",
}
"""Served when the storage is throttled."""


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """``({sample name: family type}, {(sample name, labels): value})`` of an exposition."""
    types: dict[str, str] = {}
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            types[sample.name] = family.type
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in values, f"duplicate sample {key}"
            values[key] = sample.value
    return types, values


def families(types: dict[str, str]) -> set[str]:
    """The family names of ``{sample name: type}`` (a histogram's samples end in
    ``_bucket``, ``_count`` and ``_sum``)."""
    return {name.rsplit("_", 1)[0] if kind == "histogram" else name for name, kind in types.items()}


def exposed_lines(text: str) -> set[str]:
    """The ``# HELP`` / ``# TYPE`` lines' metric names: what a scraper sees."""
    return {line.split()[2] for line in text.splitlines() if line.startswith("# ")}


async def scrape(broker: TestBroker) -> str:
    async with httpx.AsyncClient(transport=broker.transport, base_url=TEST_URL) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    return response.text


def make_worker() -> trioq.Worker:
    worker = trioq.Worker(concurrency=4, poll_interval=0.05)

    @worker.job("ok")
    async def ok(payload: int, ctx: trioq.JobContext) -> None:
        await trio.sleep(1)

    @worker.job("bad")
    async def bad(payload: int, ctx: trioq.JobContext) -> None:
        raise RuntimeError("boom")

    return worker


async def test_metrics_parse_and_counters_move_as_jobs_flow(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_broker() as broker:
        text = await scrape(broker)
        types, before = parse(text)
        assert types == ENGINE_METRICS | LEADER_METRICS
        assert exposed_lines(text) == families(ENGINE_METRICS | LEADER_METRICS)
        assert before[("trioq_broker_leader", (("broker_id", broker.engine.broker_id),))] == 1
        assert before[("trioq_broker_epoch", ())] == broker.engine.epoch >= 1
        for status in ("unclaimed", "in_progress", "dead"):
            assert before[("trioq_jobs", (("status", status),))] == 0
        assert before[("trioq_jobs_enqueued_total", ())] == 0

        for i in range(5):
            await broker.client.submit("ok", i)
        await broker.client.submit("bad", 0, max_attempts=1)
        _, queued = parse(await scrape(broker))
        assert queued[("trioq_jobs", (("status", "unclaimed"),))] == 6
        assert queued[("trioq_jobs_enqueued_total", ())] == 6

        await broker.run_worker_until_idle(make_worker())
        text = await scrape(broker)
        types_after, after = parse(text)
        assert types_after == types  # the same metrics, before and after jobs flowed
        assert exposed_lines(text) == families(ENGINE_METRICS | LEADER_METRICS)

    assert after[("trioq_jobs_enqueued_total", ())] == 6
    assert after[("trioq_jobs_completed_total", ())] == 5
    assert after[("trioq_jobs_failed_total", ())] == 1
    assert after[("trioq_jobs_dead_total", ())] == 1
    assert after[("trioq_jobs", (("status", "unclaimed"),))] == 0
    assert after[("trioq_jobs", (("status", "in_progress"),))] == 0
    assert after[("trioq_jobs", (("status", "dead"),))] == 1
    assert after[("trioq_commits_total", ())] > before[("trioq_commits_total", ())]
    # 6 submits, then the worker's exchanges (its claims and reports, batched)
    assert after[("trioq_mutations_total", ())] >= before[("trioq_mutations_total", ())] + 7
    assert after[("trioq_last_batch_size", ())] >= 1
    assert after[("trioq_last_commit_seconds", ())] >= 0
    # every commit that landed is in the histogram (the election's first is not)
    assert after[("trioq_commit_seconds_count", ())] == after[("trioq_commits_total", ())]
    assert (
        after[("trioq_commit_seconds_bucket", (("le", "+Inf"),))]
        == after[("trioq_commit_seconds_count", ())]
    )
    assert after[("trioq_document_bytes", ())] > before[("trioq_document_bytes", ())] > 0
    for name, kind in ENGINE_METRICS.items():
        if kind == "counter" and name not in ("trioq_commits_total", "trioq_mutations_total"):
            assert after[(name, ())] == 0, name


@asynccontextmanager
async def standby_of(broker: TestBroker, broker_id: str) -> AsyncIterator[Engine]:
    """A second engine on the same storage, standing by while ``broker`` leads."""
    engine = Engine(
        broker.storage, url="http://standby.test", broker_id=broker_id, wall_clock=trio_wall_clock
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        try:
            yield engine
        finally:
            engine.stop()


async def test_standby_serves_engine_metrics_only(autojump_clock: trio.abc.Clock) -> None:
    # a broker id that needs escaping in a label value comes back intact
    odd_id = 'standby "1" \\ one'
    async with open_test_broker() as broker, standby_of(broker, odd_id) as standby:
        assert not standby.is_leader
        text = render_metrics(BrokerApi(standby)).decode()
    types, values = parse(text)
    assert types == ENGINE_METRICS
    assert exposed_lines(text) == families(ENGINE_METRICS)
    assert values[("trioq_broker_leader", (("broker_id", odd_id),))] == 0
    assert values[("trioq_broker_epoch", ())] >= 1


async def test_throttled_storage_counters(autojump_clock: trio.abc.Clock) -> None:
    throttled = ThrottledStorage(MemoryStorage(), max_reads_per_minute=60, max_writes_per_minute=60)
    async with open_test_broker() as broker:
        api = BrokerApi(broker.engine, throttle_stats=throttled.stats)
        types, values = parse(render_metrics(api).decode())
        assert types == ENGINE_METRICS | LEADER_METRICS | THROTTLE_METRICS
        assert all(values[(name, ())] == 0 for name in THROTTLE_METRICS)

        for _ in range(3):  # one token in the bucket: the next two wait for theirs
            await throttled.read("queue.json")
        await throttled.create("queue.json", b"{}")
        _, values = parse(render_metrics(api).decode())
    assert values[("trioq_storage_reads_total", ())] == 3
    assert values[("trioq_storage_throttled_reads_total", ())] == 2
    assert values[("trioq_storage_writes_total", ())] == 1  # create is a write
    assert values[("trioq_storage_throttled_writes_total", ())] == 0


async def test_each_api_has_its_own_registry_not_the_global_one(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_broker() as broker:
        one, two = BrokerApi(broker.engine), BrokerApi(broker.engine)
        assert metrics_registry(one) is metrics_registry(one)
        assert metrics_registry(one) is not metrics_registry(two)
        assert metrics_registry(one) is not prometheus_client.REGISTRY
        # rendering twice (registry reused) gives the same metrics
        assert parse(render_metrics(one).decode())[0] == parse(render_metrics(one).decode())[0]
        # the registry goes with its api (it holds the api only weakly)
        gone = weakref.ref(one)
        del one
        gc.collect()
        assert gone() is None
    global_names = {
        sample.name for family in prometheus_client.REGISTRY.collect() for sample in family.samples
    }
    assert not {name for name in global_names if name.startswith("trioq_")}


@pytest.mark.parametrize("value", [1_234_567_890_123, 2**53])
async def test_large_counter_values_parse_exactly(
    autojump_clock: trio.abc.Clock, value: int
) -> None:
    async with open_test_broker() as broker:
        broker.engine.metrics["commits"] = value
        _, values = parse(render_metrics(BrokerApi(broker.engine)).decode())
    assert values[("trioq_commits_total", ())] == value
