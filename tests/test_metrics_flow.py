"""The broker's observed metrics with jobs flowing: a ``python -m trioq.broker``
subprocess and a real worker; ``/metrics`` parsed with prometheus_client's parser.

Counters by job type, the per-commit histograms (batch size, bytes), the storage
latency histogram by operation, the queued depth by status and type, and the bound
on the ``type`` label.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import trio
from prometheus_client.parser import text_string_to_metric_families

import trioq
from _broker_proc import broker_process
from _waits import wait_for
from trioq.broker._metrics import OTHER_TYPE, BrokerInstruments, queued_by_type

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

STORAGE_OPS = {"read", "version", "write", "create", "list_keys", "delete_key"}


def samples(text: str) -> Samples:
    """``{(sample name, sorted labels): value}`` of an exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def by_type(values: Samples, event: str) -> dict[str, float]:
    """``trioq_type_<event>_total`` by its ``type`` label."""
    name = f"trioq_type_{event}_total"
    return {dict(labels)["type"]: v for (n, labels), v in values.items() if n == name}


def make_worker(url: str) -> trioq.Worker:
    worker = trioq.Worker(broker_url=url, concurrency=4, poll_interval=0.05)

    @worker.job("ok")
    async def ok(payload: int, ctx: trioq.JobContext) -> None:
        await trio.lowlevel.checkpoint()

    @worker.job("boom")
    async def boom(payload: int, ctx: trioq.JobContext) -> None:
        raise RuntimeError("boom")

    return worker


async def test_counters_and_histograms_move_as_jobs_flow(tmp_path: Path) -> None:
    args = ["--port", "0", "--data-dir", str(tmp_path / "data"), "--log-format", "json"]
    async with (
        broker_process(args, log_path=tmp_path / "broker.log") as broker,
        httpx.AsyncClient(base_url=broker.url) as http,
        trioq.Client(broker.url) as client,
    ):

        async def scrape() -> Samples:
            response = await http.get("/metrics")
            assert response.status_code == 200
            return samples(response.text)

        before = await scrape()
        assert by_type(before, "enqueued") == {}
        assert ("trioq_commit_batch_size_count", ()) in before

        for i in range(3):
            await client.submit("ok", i)
        await client.submit("boom", 0, max_attempts=1)
        await client.submit("later", 0, delay=3600)  # no worker handles it: stays queued

        async with trio.open_nursery() as nursery:
            worker = make_worker(broker.url)
            await nursery.start(worker.run)

            async def flowed() -> bool:
                values = await scrape()
                return (
                    by_type(values, "completed").get("ok") == 3
                    and by_type(values, "dead").get("boom") == 1
                )

            await wait_for(flowed, what="3 ok jobs completed and 1 boom job dead")
            worker.drain()

        after = await scrape()
        assert by_type(after, "enqueued") == {"ok": 3, "boom": 1, "later": 1}
        assert by_type(after, "claimed") == {"ok": 3, "boom": 1}
        assert by_type(after, "completed") == {"ok": 3}
        assert by_type(after, "failed") == {"boom": 1}
        assert by_type(after, "dead") == {"boom": 1}
        assert by_type(after, "expired") == {}
        assert by_type(after, "cancelled") == by_type(after, "requeued") == {}
        # a cancel and a requeue count by type too
        await client.requeue((await client.dead())["jobs"][0]["jobId"])
        later = (await client.jobs(type="later"))["jobs"][0]["jobId"]
        assert await client.cancel(later) == "cancelled"
        counted = await scrape()
        assert by_type(counted, "requeued") == {"boom": 1}
        assert by_type(counted, "cancelled") == {"later": 1}
        queued = {
            dict(labels)["type"]: (dict(labels)["status"], v)
            for (name, labels), v in counted.items()
            if name == "trioq_queued_jobs" and v
        }
        assert queued == {"boom": ("unclaimed", 1)}  # requeued; "later" was cancelled

        # every commit that landed is in both per-commit histograms
        commits = after[("trioq_commits_total", ())]
        assert after[("trioq_commit_batch_size_count", ())] == commits
        assert after[("trioq_commit_bytes_count", ())] == commits
        assert after[("trioq_commit_bytes_sum", ())] > 0
        assert after[("trioq_commit_batch_size_sum", ())] >= 5  # at least the submits
        ops = {
            dict(labels)["op"]: v
            for (name, labels), v in after.items()
            if name == "trioq_storage_request_seconds_count"
        }
        assert set(ops) <= STORAGE_OPS
        # the log layout creates one record a commit (the document layout writes)
        assert ops.get("create", 0) + ops.get("write", 0) >= commits

    # --log-format json: every line of the broker's log is one JSON object
    lines = (tmp_path / "broker.log").read_text().splitlines()
    assert lines
    for line in lines:
        record = orjson.loads(line)
        assert {"ts", "level", "logger", "msg"} <= set(record)


def test_type_labels_are_bounded() -> None:
    instruments = BrokerInstruments(max_types=2)
    instruments.observe_commit(
        3, 100, {("enqueued", "a"): 1, ("enqueued", "b"): 2, ("enqueued", "c"): 4}
    )
    instruments.observe_commit(1, 10, {("enqueued", "d"): 1, ("completed", "a"): 1})
    values: Samples = {}
    for family in instruments.collect():
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert by_type(values, "enqueued") == {"a": 1, "b": 2, OTHER_TYPE: 5}
    assert by_type(values, "completed") == {"a": 1}
    assert values[("trioq_commit_batch_size_count", ())] == 2
    assert values[("trioq_commit_bytes_sum", ())] == 110

    # the queued gauge shares the bound: types past it are summed under _other
    gauge = queued_by_type(
        {
            "a": {"unclaimed": 1, "inProgress": 0},
            "z": {"unclaimed": 2, "inProgress": 3},
            "y": {"unclaimed": 4, "inProgress": 0},
        },
        instruments.types,
    )
    depth = {tuple(s.labels.values()): s.value for s in gauge.samples}
    assert depth == {
        ("unclaimed", "a"): 1,
        ("in_progress", "a"): 0,
        ("unclaimed", OTHER_TYPE): 6,
        ("in_progress", OTHER_TYPE): 3,
    }
