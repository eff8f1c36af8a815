"""A worker's Prometheus metrics, and the tiny HTTP server that exposes them.

Every :class:`~trioq.Worker` records into a :class:`WorkerMetrics` of its own (a few
dict updates and histogram observations per job); ``/metrics`` is served only when
asked: ``--metrics-port`` (``TRIOQ_WORKER_METRICS_PORT``; ``0`` = a free port, logged)
on ``--metrics-host`` (``127.0.0.1``), by :func:`serve_metrics`, a hypercorn task in
the worker's nursery serving ``prometheus_client``'s ASGI app.

Job types come from the worker's own handlers (a job of another type is released
unrun and never observed), so the ``type`` label is bounded by the registrations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CollectorRegistry, Gauge, Histogram, make_asgi_app
from prometheus_client.core import CounterMetricFamily, Metric

log = logging.getLogger("trioq.worker")

DURATION_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
)  # fmt: skip
"""Upper bounds (seconds) of the duration histograms: 1 ms to an hour."""

OUTCOMES = ("completed", "failed", "dead", "cancelled")
"""``outcome`` labels of ``trioq_worker_job_seconds``: the handler returned, raised
or timed out (failed), met an invalid payload (dead: never retried), or was
cancelled (lease lost, drain grace over, abort)."""


class WorkerMetrics:
    """One worker's metrics, in ``registry`` (its own one by default: never the
    process-global ``REGISTRY``, so two workers in one process do not clash).

    - ``trioq_worker_job_seconds{type,outcome}``: handler start to end;
    - ``trioq_worker_slot_wait_seconds{type}``: claim to handler start (the wait
      for a free slot, prefetched jobs' mostly);
    - ``trioq_worker_queue_wait_seconds{type}``: submit to handler start, first
      attempts only (the broker's ``createdAt`` against this machine's clock, so
      clock skew between them shows here; a requested delay is included);
    - ``trioq_worker_jobs_in_progress``: handlers running now;
    - ``trioq_worker_jobs_total{outcome}``: the worker's ``counts`` (claimed,
      completed, failed, released, lost), read at scrape time.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        self.job_seconds = Histogram(
            "trioq_worker_job_seconds",
            "Handler durations (start to end), by type and outcome.",
            ["type", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.slot_wait_seconds = Histogram(
            "trioq_worker_slot_wait_seconds",
            "From a job's claim to its handler's start, by type.",
            ["type"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            "trioq_worker_queue_wait_seconds",
            "From a job's submit (the broker's clock) to its handler's start, first "
            "attempts only, by type.",
            ["type"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "trioq_worker_jobs_in_progress", "Handlers running now.", registry=self.registry
        )
        self._counts: Callable[[], dict[str, int]] | None = None
        self.registry.register(_Counts(self))

    def count(self, counts: Callable[[], dict[str, int]]) -> None:
        """Expose ``counts()`` (the worker's outcome counters) as
        ``trioq_worker_jobs_total{outcome}``."""
        self._counts = counts

    def started(self, job_type: str, waited: float, queue_wait: float | None = None) -> None:
        """A handler starts, ``waited`` seconds after its job was claimed and
        ``queue_wait`` seconds after it was submitted (None: not observed)."""
        self.slot_wait_seconds.labels(job_type).observe(max(0.0, waited))
        if queue_wait is not None:
            self.queue_wait_seconds.labels(job_type).observe(max(0.0, queue_wait))
        self.in_progress.inc()

    def ended(self, job_type: str, outcome: str, seconds: float) -> None:
        """A handler that :meth:`started` ended with ``outcome`` after ``seconds``."""
        self.in_progress.dec()
        self.job_seconds.labels(job_type, outcome).observe(seconds)


class _Counts:
    """The collector of ``trioq_worker_jobs_total`` (the worker's ``counts``)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "trioq_worker_jobs_total", "Jobs by what became of them here.", labels=["outcome"]
        )
        source = self._metrics._counts
        for outcome, value in sorted(({} if source is None else source()).items()):
            family.add_metric([outcome], value)
        yield family


async def serve_metrics(
    metrics: WorkerMetrics,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``metrics`` at ``http://host:port/metrics`` until cancelled;
    ``task_status.started(url)`` once bound (``port`` 0: a free one)."""
    config = HypercornConfig()
    bind_host = f"[{host}]" if ":" in host else host
    config.bind = [f"{bind_host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    app = make_asgi_app(metrics.registry)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        url = f"{binds[0]}/metrics"
        log.info("serving metrics at %s", url)
        task_status.started(url)
