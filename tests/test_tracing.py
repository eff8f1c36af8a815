"""OpenTelemetry tracing: a job's trace context goes from ``submit`` to its handler
through the broker's stored state (``trioq._tracing``).

The tracer provider is process-global and OpenTelemetry lets it be set once: the
``spans`` fixture installs an SDK provider with an in-memory exporter for one test and
puts the unset state back afterwards (through the API's module attributes, as
OpenTelemetry's own test utilities do), so other tests run with tracing off.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import httpx
import orjson
import pytest
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

import trioq
from trioq import _tracing
from trioq._wire import NewJob
from trioq.core._codec import decode, encode
from trioq.core._state import Limits, QueueState
from trioq.testing import TEST_URL, open_test_broker


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    found: dict[str, ReadableSpan] = {}
    for span in exporter.get_finished_spans():
        assert span.name not in found, f"two spans named {span.name!r}"
        found[span.name] = span
    return found


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_tracing_is_off_without_a_provider() -> None:
    assert not _tracing.active()
    with _tracing.submit_span("t") as carrier:
        assert carrier is None
    assert _tracing.JobTrace.start("j", "t", 1, {"traceparent": "x"}) is None


async def test_a_job_trace_runs_from_submit_to_handler(
    spans: InMemorySpanExporter, autojump_clock: trio.abc.Clock
) -> None:
    tracer = trace.get_tracer("app")
    worker = trioq.Worker()
    inside: list[trace.SpanContext] = []

    @worker.job("email:send")
    async def send(payload: dict[str, str]) -> None:
        inside.append(trace.get_current_span().get_span_context())
        with tracer.start_as_current_span("smtp"):
            pass

    async with open_test_broker() as broker:
        with tracer.start_as_current_span("POST /signup"):
            job_id = await broker.client.submit("email:send", {"to": "a@example.com"})
        await broker.run_worker_until_idle(worker)

    got = by_name(spans)
    request, submit = got["POST /signup"], got["submit email:send"]
    claim, run, complete = (
        got["claim email:send"],
        got["run email:send"],
        got["complete email:send"],
    )
    trace_id = request.context.trace_id
    for span in (submit, claim, run, got["smtp"], complete):
        assert span.context.trace_id == trace_id, span.name
    assert parent_of(submit) == request.context.span_id
    assert submit.kind is SpanKind.PRODUCER
    # the worker's spans hang under the submit: the context the job carried
    assert parent_of(claim) == submit.context.span_id
    assert parent_of(run) == submit.context.span_id
    assert (claim.kind, run.kind, complete.kind) == (SpanKind.CONSUMER,) * 2 + (SpanKind.CLIENT,)
    # the handler ran with `run` current: its own spans are run's children
    assert inside == [run.context]
    assert parent_of(got["smtp"]) == run.context.span_id
    assert parent_of(complete) == run.context.span_id
    assert run.attributes is not None
    assert run.attributes["messaging.message.id"] == job_id
    assert run.attributes["messaging.destination.name"] == "email:send"
    assert run.attributes["trioq.job.attempt"] == 1
    assert claim.end_time is not None
    assert run.start_time is not None
    assert claim.end_time <= run.start_time
    assert run.status.status_code is StatusCode.UNSET


async def test_a_failing_handler_marks_its_run_span(
    spans: InMemorySpanExporter, autojump_clock: trio.abc.Clock
) -> None:
    worker = trioq.Worker()

    @worker.job("boom")
    async def boom(payload: int) -> None:
        raise ValueError(f"bad {payload}")

    async with open_test_broker() as broker:
        await broker.client.submit("boom", 7, max_attempts=2)
        await broker.run_worker_until_idle(worker)

    finished = spans.get_finished_spans()
    runs = [s for s in finished if s.name == "run boom"]
    fails = [s for s in finished if s.name == "fail boom"]
    [submit] = [s for s in finished if s.name == "submit boom"]
    assert [r.attributes["trioq.job.attempt"] for r in runs if r.attributes] == [1, 2]
    for run in runs:
        assert run.status.status_code is StatusCode.ERROR
        assert run.status.description == "ValueError: bad 7"
        # both attempts belong to the trace of the one submit
        assert parent_of(run) == submit.context.span_id
    assert sorted(parent_of(f) for f in fails) == sorted(r.context.span_id for r in runs)


async def test_the_broker_hands_the_carrier_to_the_claim(
    spans: InMemorySpanExporter, autojump_clock: trio.abc.Clock
) -> None:
    async with open_test_broker() as broker:
        await broker.client.submit_many([trioq.JobSpec("a", 1), trioq.JobSpec("b", 2)])
        claimed = await broker.client.claim("w", max=2)
    [submit] = spans.get_finished_spans()
    assert submit.name == "submit (mixed)"
    assert submit.attributes is not None
    assert submit.attributes["messaging.batch.message_count"] == 2
    for job in claimed:
        assert job.trace is not None
        assert job.trace["traceparent"].split("-")[2] == f"{submit.context.span_id:016x}"
        assert isinstance(job.created_at, int)


async def test_no_trace_is_sent_when_tracing_is_off(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_broker() as broker:
        await broker.client.submit("t", 1)
        response = await broker.client._http.post(
            f"{TEST_URL}/v1/jobs/claim", json={"workerId": "w", "max": 1}
        )
        [job] = response.json()["jobs"]
        assert "trace" not in job
        assert job["createdAt"] == trioq.testing.trio_wall_clock()


def test_the_trace_survives_storage_death_and_requeue() -> None:
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    limits = Limits(default_max_attempts=1)
    state = QueueState(limits=limits)
    state.enqueue([NewJob(1, type="t", id="a", trace=carrier)], 1000)
    loaded = decode(QueueState, encode(state), limits, random.Random(1), "queue.json")
    [claimed] = loaded.claim("w", 2000)
    assert claimed.trace == carrier
    loaded.fail("a", "w", 3000, error="x")
    assert loaded.dead["a"].trace == carrier
    again = decode(QueueState, encode(loaded), limits, random.Random(1), "queue.json")
    again.requeue_dead("a", 4000)
    [claimed] = again.claim("w", 5000)
    assert claimed.trace == carrier


@pytest.mark.parametrize(
    ("trace_field", "why"),
    [
        ({"bad key": "v"}, "names"),
        ({"traceparent": "é"}, "printable ASCII"),
        ({f"k{i}": "v" for i in range(9)}, "at most 8"),
        ("00-abc", "an object"),
    ],
)
async def test_a_bad_trace_field_is_a_400_that_changes_nothing(
    trace_field: object, why: str, autojump_clock: trio.abc.Clock
) -> None:
    async with open_test_broker() as broker:
        http = broker.client._http
        response = await http.post(f"{TEST_URL}/v1/jobs", json={"payload": 1, "trace": trace_field})
        assert response.status_code == 400
        body = response.json()
        assert body["_tag"] == "BrokerProtocolError"
        assert "trace" in body["message"]
        assert (await broker.client.stats())["total"] == 0


def test_the_sync_client_carries_the_callers_trace(spans: InMemorySpanExporter) -> None:
    """The SyncClient's calls run in its own thread's event loop: the caller's
    context must go with them."""
    seen: list[dict[str, object]] = []

    def app(request: httpx.Request) -> httpx.Response:
        seen.append(orjson.loads(request.content))
        return httpx.Response(200, json={"results": [{"jobId": "j1"}]})

    tracer = trace.get_tracer("app")
    with (
        trioq.SyncClient("http://trioq.test", transport=httpx.MockTransport(app)) as client,
        tracer.start_as_current_span("view") as view,
    ):
        assert threading.current_thread() is threading.main_thread()
        client.submit("t", 1)
    [submit] = [s for s in spans.get_finished_spans() if s.name == "submit t"]
    assert parent_of(submit) == view.get_span_context().span_id
    [job] = seen[0]["jobs"]  # type: ignore[misc]
    assert job["trace"]["traceparent"].split("-")[2] == f"{submit.context.span_id:016x}"
