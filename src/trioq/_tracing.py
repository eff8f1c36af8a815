"""OpenTelemetry tracing: a job's trace context travels with it from ``submit`` to the
handler (the ``otel`` extra: ``pip install 'trioq[otel]'``).

Tracing is on when ``opentelemetry-api`` is importable and the application has set a
tracer provider (``opentelemetry.trace.set_tracer_provider``, which the SDK's setup
and auto-instrumentation do); otherwise every function here does nothing and costs
one check. The broker takes no part: it stores the carrier a producer gave (the job's
``trace`` field, whatever the configured propagator writes: ``traceparent`` and
``tracestate`` for W3C) and hands it to the worker with the claim.

Spans (``messaging.system = "trioq"``, the destination is the job type):

- ``submit TYPE`` (PRODUCER), in the producer: from the call to the broker's
  acknowledgement. Its context is what the job carries. A batch is one span.
- ``claim TYPE`` (CONSUMER), in the worker, a child of the job's context: from the
  claim's answer to the handler's start (the wait for a free slot).
- ``run TYPE`` (CONSUMER), a child of the job's context, current while the handler
  runs (spans the handler makes are its children); status ERROR when it raised.
- ``complete TYPE`` / ``fail TYPE`` (CLIENT), children of ``run``: from the handler's
  end to the broker's acknowledgement.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, SpanKind

    _INSTALLED = True
except ImportError:  # the otel extra is not installed
    _INSTALLED = False

_T = TypeVar("_T")

SYSTEM = "trioq"
TRACER_NAME = "trioq"

Carrier = dict[str, str]
"""A job's ``trace`` field: the propagator's fields (``traceparent``, ...)."""


def active() -> bool:
    """Whether spans are recorded: the API is installed and a provider is set."""
    if not _INSTALLED:
        return False
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider)


def _tracer() -> Any:
    return trace.get_tracer(TRACER_NAME)


@contextmanager
def submit_span(job_type: str, count: int = 1) -> Iterator[Carrier | None]:
    """A ``submit`` span around a submit call; yields the carrier each job it sends
    takes (None when tracing is off or the propagator writes nothing)."""
    if not active():
        yield None
        return
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.destination.name": job_type,
    }
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    with _tracer().start_as_current_span(
        f"submit {job_type}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        carrier: Carrier = {}
        propagate.inject(carrier)
        yield carrier or None


def capture() -> object | None:
    """The calling thread's current context, to run a call in another thread under
    it (:func:`within`); None when tracing is off."""
    if not active():
        return None
    return otel_context.get_current()


async def within(ctx: object | None, func: Callable[[], Awaitable[_T]]) -> _T:
    """``await func()`` with ``ctx`` (from :func:`capture`) as the current context."""
    if ctx is None:
        return await func()
    token = otel_context.attach(ctx)  # type: ignore[arg-type]
    try:
        return await func()
    finally:
        otel_context.detach(token)


class JobTrace:
    """A claimed job's spans in the worker: made only when tracing is on."""

    __slots__ = ("_attributes", "_claimed_ns", "_parent", "_run", "_type")

    def __init__(
        self, job_id: str, job_type: str, attempt: int, carrier: Mapping[str, str] | None
    ) -> None:
        self._claimed_ns = time.time_ns()
        self._type = job_type
        self._parent: Context = propagate.extract(carrier or {})
        self._attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.destination.name": job_type,
            "messaging.message.id": job_id,
            "trioq.job.attempt": attempt,
        }
        self._run: Span | None = None

    @classmethod
    def start(
        cls, job_id: str, job_type: str, attempt: int, carrier: Mapping[str, str] | None
    ) -> JobTrace | None:
        """The spans of a job claimed now, or None when tracing is off."""
        return cls(job_id, job_type, attempt, carrier) if active() else None

    @contextmanager
    def running(self, queue_wait: float | None) -> Iterator[Span]:
        """Ends the ``claim`` span and opens ``run``, current inside the block."""
        tracer = _tracer()
        claim = tracer.start_span(
            f"claim {self._type}",
            context=self._parent,
            kind=SpanKind.CONSUMER,
            attributes={**self._attributes, "messaging.operation.type": "receive"},
            start_time=self._claimed_ns,
        )
        claim.end()
        attributes = {**self._attributes, "messaging.operation.type": "process"}
        if queue_wait is not None:
            attributes["trioq.job.queue_wait_ms"] = round(queue_wait * 1000)
        run = tracer.start_span(
            f"run {self._type}", context=self._parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        self._run = run
        with trace.use_span(run, end_on_exit=True, record_exception=False):
            yield run

    @staticmethod
    def failed(span: Span, error: str) -> None:
        """Marks ``span`` (a ``run``) as failed with ``error``."""
        span.set_status(trace.Status(trace.StatusCode.ERROR, error[:1000]))

    @contextmanager
    def reporting(self, what: str) -> Iterator[None]:
        """A ``complete``/``fail`` span, a child of ``run``, around the report."""
        parent = self._run
        context = trace.set_span_in_context(parent) if parent is not None else self._parent
        with _tracer().start_as_current_span(
            f"{what} {self._type}",
            context=context,
            kind=SpanKind.CLIENT,
            attributes={**self._attributes, "messaging.operation.type": "settle"},
        ):
            yield
