"""Prometheus exposition of a broker's state and engine counters, via ``prometheus_client``.

Each :class:`~trioq.broker._api.BrokerApi` gets its own
:class:`~prometheus_client.CollectorRegistry` (never the process-global one, so two
brokers in one process do not clash) holding one :class:`BrokerCollector`. The
collector reads the engine only through :meth:`~trioq.core.Engine.snapshot` and the
throttle through :meth:`~trioq.broker._api.BrokerApi.throttle_stats`, at scrape time.

``prometheus_client`` strips ``_total`` from a counter family's name and puts it back
on the sample and in the ``# HELP``/``# TYPE`` lines of the text format, so the names
given below are the exposed ones.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..core._engine import Role

if TYPE_CHECKING:
    from ._api import BrokerApi

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of :func:`render_metrics` (the Prometheus text format 0.0.4)."""

_ENGINE_COUNTERS = {
    "commits": ("trioq_commits_total", "Commits written."),
    "mutations": ("trioq_mutations_total", "Mutations acknowledged by commits."),
    "conflicts": ("trioq_commit_conflicts_total", "Commits that met a CAS conflict."),
    "writeErrors": ("trioq_commit_write_errors_total", "Storage errors while committing."),
    "failedBatches": ("trioq_failed_batches_total", "Batches answered with an error."),
    "takeovers": ("trioq_takeovers_total", "Elections won by takeover."),
    "stepDowns": ("trioq_step_downs_total", "Times this broker lost leadership."),
    "checkpoints": ("trioq_checkpoints_total", "Checkpoints written (log layout)."),
    "collected": (
        "trioq_collected_objects_total",
        "Log records and checkpoints deleted by garbage collection (log layout).",
    ),
}
"""Engine event counters (keys of ``EngineSnapshot.counters``) and their metrics."""

_JOB_STATUSES = (("unclaimed", "unclaimed"), ("in_progress", "inProgress"), ("dead", "dead"))
"""``trioq_jobs`` label values and the ``EngineSnapshot.queue`` key of each."""

_STORAGE_COUNTERS = (
    ("totalReads", "trioq_storage_reads_total", "Storage reads through the throttle."),
    ("totalWrites", "trioq_storage_writes_total", "Storage writes through the throttle."),
    (
        "throttledReads",
        "trioq_storage_throttled_reads_total",
        "Storage reads that waited for a token.",
    ),
    (
        "throttledWrites",
        "trioq_storage_throttled_writes_total",
        "Storage writes that waited for a token.",
    ),
)
"""Keys of ``BrokerApi.throttle_stats()`` and their metrics (only when throttling)."""


def _snake(name: str) -> str:
    """``deadDropped`` -> ``dead_dropped``."""
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


class BrokerCollector:
    """A custom collector: every metric of one broker, computed at each scrape.

    Every broker serves these, leader or standby; the queue metrics (``trioq_jobs``,
    ``trioq_jobs_*_total``, ``trioq_document_bytes``) only while it leads, and the
    ``trioq_storage_*_total`` counters only when its storage is throttled.
    """

    def __init__(self, api: BrokerApi) -> None:
        # weak: the registry of ``api`` holds this collector and must not keep ``api`` alive
        self._api = weakref.ref(api)

    def collect(self) -> Iterator[Metric]:
        """The metric families, from one :meth:`~trioq.core.Engine.snapshot`."""
        api = self._api()
        if api is None:
            return
        snap = api.engine.snapshot()
        leader = GaugeMetricFamily(
            "trioq_broker_leader", "1 if this broker leads the queue.", labels=["broker_id"]
        )
        leader.add_metric([snap.broker_id], 1 if snap.role is Role.LEADER else 0)
        yield leader
        yield GaugeMetricFamily("trioq_broker_epoch", "Leader epoch last seen.", value=snap.epoch)
        for key, (name, help_text) in _ENGINE_COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=snap.counters.get(key, 0))
        yield GaugeMetricFamily(
            "trioq_last_commit_seconds",
            "Duration of the last commit (apply, encode, write).",
            value=snap.last_commit_seconds,
        )
        if snap.commit_seconds is not None:
            histogram = snap.commit_seconds
            yield HistogramMetricFamily(
                "trioq_commit_seconds",
                "Durations of the commits that landed: apply, encode and write.",
                buckets=[
                    ("+Inf" if bound == float("inf") else repr(bound), count)
                    for bound, count in histogram.cumulative()
                ],
                sum_value=histogram.total,
            )
        yield GaugeMetricFamily(
            "trioq_pending_mutations",
            "Mutations waiting for the commit that answers them.",
            value=snap.pending,
        )
        yield GaugeMetricFamily(
            "trioq_waiting_claims", "Long-poll claims waiting for a job.", value=snap.waiting_claims
        )
        yield GaugeMetricFamily(
            "trioq_last_batch_size", "Mutations in the last commit.", value=snap.last_batch_size
        )
        if snap.queue is not None:
            jobs = GaugeMetricFamily("trioq_jobs", "Jobs by status.", labels=["status"])
            for status, key in _JOB_STATUSES:
                jobs.add_metric([status], snap.queue.get(key, 0))
            yield jobs
            for counter, value in (snap.queue_counters or {}).items():
                yield CounterMetricFamily(
                    f"trioq_jobs_{_snake(counter)}_total",
                    f"Jobs {counter} since the queue was created.",
                    value=value,
                )
            yield GaugeMetricFamily(
                "trioq_document_bytes",
                "Size of the last committed queue document.",
                value=snap.document_bytes,
            )
        throttle = api.throttle_stats()
        if throttle.get("throttling"):
            for key, name, help_text in _STORAGE_COUNTERS:
                yield CounterMetricFamily(name, help_text, value=throttle.get(key, 0))


_registries: weakref.WeakKeyDictionary[BrokerApi, CollectorRegistry] = weakref.WeakKeyDictionary()


def metrics_registry(api: BrokerApi) -> CollectorRegistry:
    """The registry of ``api`` (created with its :class:`BrokerCollector` on first use,
    dropped with ``api``)."""
    registry = _registries.get(api)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(BrokerCollector(api))
        _registries[api] = registry
    return registry


def render_metrics(api: BrokerApi) -> bytes:
    """The Prometheus text exposition (format 0.0.4, :data:`CONTENT_TYPE`) of ``api``."""
    return generate_latest(metrics_registry(api))
