"""A worker's ``/metrics``: served only when asked (``--metrics-port``, 127.0.0.1 by
default), parsed with prometheus_client's parser, moving as jobs run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import trioq
from _broker_proc import start_in_process
from _waits import wait_for
from _worker_proc import worker_process
from trioq.broker._settings import BrokerSettings
from trioq.worker._cli import configure
from trioq.worker._metrics import WorkerMetrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def make_worker(url: str, **kwargs: object) -> trioq.Worker:
    worker = trioq.Worker(broker_url=url, concurrency=2, poll_interval=0.05, **kwargs)  # type: ignore[arg-type]

    @worker.job("ok")
    async def ok(payload: int, ctx: trioq.JobContext) -> None:
        await trio.lowlevel.checkpoint()

    @worker.job("boom")
    async def boom(payload: int, ctx: trioq.JobContext) -> None:
        raise RuntimeError("boom")

    return worker


async def test_worker_serves_metrics_that_move() -> None:
    async with trio.open_nursery() as nursery:
        broker = await start_in_process(nursery, BrokerSettings(storage="memory", port=0))
        worker = make_worker(broker.url)
        worker.settings.metrics_port = 0  # a free port
        async with trioq.Client(broker.url) as client, httpx.AsyncClient() as http:
            await nursery.start(worker.run)
            url = worker.metrics_url
            assert url is not None
            assert url.startswith("http://127.0.0.1:")
            assert url.endswith("/metrics")

            async def scrape() -> Samples:
                response = await http.get(url)
                assert response.status_code == 200
                return samples(response.text)

            before = await scrape()
            assert before[("trioq_worker_jobs_in_progress", ())] == 0
            assert before[("trioq_worker_jobs_total", (("outcome", "completed"),))] == 0

            for i in range(2):
                await client.submit("ok", i)
            await client.submit("boom", 0, max_attempts=1)

            async def done() -> bool:
                values = await scrape()
                return (
                    values[("trioq_worker_jobs_total", (("outcome", "completed"),))] == 2
                    and values[("trioq_worker_jobs_total", (("outcome", "failed"),))] == 1
                )

            await wait_for(done, what="2 jobs completed and 1 failed, as /metrics says")
            after = await scrape()
            worker.drain()
        nursery.cancel_scope.cancel()

    ok = (("outcome", "completed"), ("type", "ok"))
    boom = (("outcome", "failed"), ("type", "boom"))
    assert after[("trioq_worker_job_seconds_count", ok)] == 2
    assert after[("trioq_worker_job_seconds_count", boom)] == 1
    assert after[("trioq_worker_slot_wait_seconds_count", (("type", "ok"),))] == 2
    assert after[("trioq_worker_slot_wait_seconds_count", (("type", "boom"),))] == 1
    # submit -> start, from the claim's createdAt: in seconds (a units check, not timing)
    assert after[("trioq_worker_queue_wait_seconds_count", (("type", "ok"),))] == 2
    assert 0 <= after[("trioq_worker_queue_wait_seconds_sum", (("type", "ok"),))] < 120
    assert after[("trioq_worker_jobs_in_progress", ())] == 0
    assert after[("trioq_worker_jobs_total", (("outcome", "claimed"),))] == 3
    assert worker.metrics_url is None  # the server stopped with the worker


async def test_no_metrics_server_unless_asked_and_an_own_registry() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    async with trio.open_nursery() as nursery:
        broker = await start_in_process(nursery, BrokerSettings(storage="memory", port=0))
        worker = make_worker(broker.url, metrics=metrics)
        assert worker.metrics is metrics
        await nursery.start(worker.run)
        assert worker.metrics_url is None
        async with trioq.Client(broker.url) as client:
            await client.submit("ok", 1)
            await wait_for(lambda: worker.counts["completed"] == 1, what="the job completed")
        worker.drain()
        nursery.cancel_scope.cancel()
    # embedded: the worker recorded into the registry it was given
    ok = {"type": "ok", "outcome": "completed"}
    assert registry.get_sample_value("trioq_worker_job_seconds_count", ok) == 1


@pytest.mark.parametrize(
    ("argv", "environ", "port", "host"),
    [
        ([], {}, None, "127.0.0.1"),
        (["--metrics-port", "0"], {}, 0, "127.0.0.1"),
        ([], {"TRIOQ_WORKER_METRICS_PORT": "9105"}, 9105, "127.0.0.1"),
        (["--metrics-port", "9106", "--metrics-host", "127.0.0.2"], {}, 9106, "127.0.0.2"),
    ],
)
def test_metrics_flags(
    argv: list[str], environ: dict[str, str], port: int | None, host: str
) -> None:
    worker, _ = configure(["_jobs_for_tests:worker", *argv], environ)
    assert worker.settings.metrics_port == port
    assert worker.settings.metrics_host == host


async def test_worker_process_serves_metrics_and_logs_json(tmp_path: Path) -> None:
    """``python -m trioq.worker --metrics-port 0 --log-format json``: the URL is in the
    log, ``/metrics`` moves, and every log line is a JSON object."""
    async with trio.open_nursery() as nursery:
        broker = await start_in_process(nursery, BrokerSettings(storage="memory", port=0))
        flags = ["--metrics-port", "0", "--log-format", "json", "--log-level", "debug"]
        async with (
            worker_process(tmp_path, broker.url, *flags) as worker,
            trioq.Client(broker.url) as client,
            httpx.AsyncClient() as http,
        ):
            await worker.ready()

            def log_lines() -> list[dict[str, Any]]:
                return [orjson.loads(line) for line in worker.log_path.read_text().splitlines()]

            def metrics_url() -> str | None:
                for line in log_lines():
                    if line["msg"].startswith("serving metrics at "):
                        return str(line["msg"].removeprefix("serving metrics at "))
                return None

            await wait_for(lambda: metrics_url() is not None, what="the metrics URL logged")
            url = metrics_url()
            assert url is not None
            assert url.startswith("http://127.0.0.1:")
            job_id = await client.submit("record", {"sleep": 0})

            async def completed() -> bool:
                values = samples((await http.get(url)).text)
                return values.get(("trioq_worker_jobs_total", (("outcome", "completed"),))) == 1

            await wait_for(completed, what="the job completed, as /metrics says")
            await wait_for(
                lambda: any(line.get("event") == "completed" for line in log_lines()),
                what="the completed line logged",
            )
        nursery.cancel_scope.cancel()
    events = {line["event"]: line for line in log_lines() if "event" in line}
    assert events["completed"]["jobId"] == job_id
    assert (events["started"]["type"], events["started"]["attempt"]) == ("record", 1)
    assert "payload" not in events["started"]
