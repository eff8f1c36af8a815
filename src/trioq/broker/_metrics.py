"""Prometheus exposition of a broker's state and engine counters, via ``prometheus_client``.

Each :class:`~trioq.broker._api.BrokerApi` gets its own
:class:`~prometheus_client.CollectorRegistry` (never the process-global one, so two
brokers in one process do not clash) holding one :class:`BrokerCollector`. The
collector reads the engine only through :meth:`~trioq.core.Engine.snapshot` and the
throttle through :meth:`~trioq.broker._api.BrokerApi.throttle_stats`, at scrape time.

``prometheus_client`` strips ``_total`` from a counter family's name and puts it back
on the sample and in the ``# HELP``/``# TYPE`` lines of the text format, so the names
given below are the exposed ones.

:class:`BrokerInstruments` holds what is observed as it happens rather than read at
scrape time: the per-commit histograms (batch size, bytes written), the storage
latency histogram (fed by :class:`~trioq.storage._timed.TimedStorage`) and the
counters by job type. It is registered in the same registry.

Job types are labels chosen by producers, so their number is bounded: the first
:data:`MAX_TYPE_LABELS` types seen keep their own ``type`` label; the rest are
counted together under ``type="_other"``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
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


MAX_TYPE_LABELS = 100
"""Distinct ``type`` label values per broker; later types share ``type="_other"``."""

OTHER_TYPE = "_other"
"""The ``type`` label of the job types past :data:`MAX_TYPE_LABELS`."""

TYPE_EVENTS = (
    "enqueued",
    "claimed",
    "completed",
    "failed",
    "expired",
    "dead",
    "cancelled",
    "requeued",
)
"""The events counted by job type (``trioq_type_<event>_total``)."""

_TYPE_EVENT_HELP = {
    "enqueued": "Jobs enqueued, by type.",
    "claimed": "Jobs claimed (attempts started), by type.",
    "completed": "Jobs completed, by type.",
    "failed": "Failed attempts reported, by type.",
    "expired": "Leases that ran out, by type.",
    "dead": "Jobs dead-lettered, by type.",
    "cancelled": "Cancels accepted (queued jobs at once, running ones at their next report), by type.",
    "requeued": "Dead jobs requeued, by type.",
}

_QUEUED_STATUSES = (("unclaimed", "unclaimed"), ("in_progress", "inProgress"))
"""``trioq_queued_jobs`` status labels and the ``counts_by_type`` key of each."""

BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
BYTES_BUCKETS = tuple(float(4**k * 256) for k in range(10))  # 256 B to 64 MiB
STORAGE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class TypeLabels:
    """The bounded set of ``type`` label values: the first ``limit`` types seen keep
    their name, every later one is :data:`OTHER_TYPE`."""

    def __init__(self, limit: int = MAX_TYPE_LABELS) -> None:
        self.limit = limit
        self._admitted: set[str] = set()

    def __call__(self, job_type: str) -> str:
        if job_type in self._admitted:
            return job_type
        if len(self._admitted) < self.limit:
            self._admitted.add(job_type)
            return job_type
        return OTHER_TYPE


class BrokerInstruments:
    """What one broker observes as it happens; a collector of its registry.

    :meth:`observe_commit` is the engine's ``observe_commit`` hook (a few histogram
    observations and dict updates per commit, O(types in the batch)); and
    :meth:`observe_storage` is the :class:`~trioq.storage._timed.TimedStorage`
    callback.
    """

    def __init__(self, *, max_types: int = MAX_TYPE_LABELS) -> None:
        self.types = TypeLabels(max_types)
        # registry=None: these are exposed through collect(), in the broker's registry
        self.batch_size = Histogram(
            "trioq_commit_batch_size",
            "Mutations per commit that landed.",
            buckets=BATCH_BUCKETS,
            registry=None,
        )
        self.commit_bytes = Histogram(
            "trioq_commit_bytes",
            "Bytes written per commit that landed (the log record, or the document).",
            buckets=BYTES_BUCKETS,
            registry=None,
        )
        self.storage_seconds = Histogram(
            "trioq_storage_request_seconds",
            "Storage request durations, by operation, failed ones included.",
            ["op"],
            buckets=STORAGE_BUCKETS,
            registry=None,
        )
        # one child per op, looked up without the labels() call's lock and checks
        self._storage_ops = {
            op: self.storage_seconds.labels(op)
            for op in ("read", "version", "write", "create", "list_keys", "delete_key")
        }
        self.by_type: dict[tuple[str, str], int] = {}
        """``(event, type label) -> count`` since this broker started."""

    def observe_commit(self, size: int, written: int, events: dict[tuple[str, str], int]) -> None:
        """A commit of ``size`` mutations landed, ``written`` bytes, with ``events``
        (``(event, job type) -> count``)."""
        self.batch_size.observe(size)
        self.commit_bytes.observe(written)
        by_type, label = self.by_type, self.types
        for (event, job_type), count in events.items():
            key = (event, label(job_type))
            by_type[key] = by_type.get(key, 0) + count

    def observe_storage(self, op: str, seconds: float) -> None:
        """One storage request of ``op`` took ``seconds``."""
        child = self._storage_ops.get(op)
        if child is None:
            child = self._storage_ops[op] = self.storage_seconds.labels(op)
        child.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        """The histograms, and one ``trioq_type_<event>_total{type}`` per event."""
        yield from self.batch_size.collect()
        yield from self.commit_bytes.collect()
        yield from self.storage_seconds.collect()
        families = {
            event: CounterMetricFamily(
                f"trioq_type_{event}_total", _TYPE_EVENT_HELP[event], labels=["type"]
            )
            for event in TYPE_EVENTS
        }
        for (event, job_type), count in sorted(self.by_type.items()):
            families[event].add_metric([job_type], count)
        yield from families.values()


def queued_by_type(counts: dict[str, dict[str, int]], labels: TypeLabels) -> GaugeMetricFamily:
    """``trioq_queued_jobs{status,type}`` from ``Engine.committed_by_type``; types
    past the label bound are summed under :data:`OTHER_TYPE`."""
    totals: dict[tuple[str, str], int] = {}
    for job_type, by_status in counts.items():
        label = labels(job_type)
        for status, key in _QUEUED_STATUSES:
            totals[(status, label)] = totals.get((status, label), 0) + by_status.get(key, 0)
    gauge = GaugeMetricFamily(
        "trioq_queued_jobs", "Queued jobs by status and type.", labels=["status", "type"]
    )
    for (status, label), value in sorted(totals.items()):
        gauge.add_metric([status, label], value)
    return gauge


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
            instruments = _instruments.get(api)
            if instruments is not None:
                yield queued_by_type(api.engine.committed_by_type, instruments.types)
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


_instruments: weakref.WeakKeyDictionary[BrokerApi, BrokerInstruments] = weakref.WeakKeyDictionary()


def instrument(api: BrokerApi, instruments: BrokerInstruments) -> None:
    """Expose ``instruments`` (with ``trioq_queued_jobs``) in ``api``'s registry;
    once per ``api``."""
    if api in _instruments:
        raise ValueError("this broker has its instruments already")
    _instruments[api] = instruments
    metrics_registry(api).register(instruments)


def render_metrics(api: BrokerApi) -> bytes:
    """The Prometheus text exposition (format 0.0.4, :data:`CONTENT_TYPE`) of ``api``."""
    return generate_latest(metrics_registry(api))
