"""Storage fault injection for test runs (``--fault-*``): the wrapper, its log line,
its metrics, and the start-up pause (see docs/storage.md, "Fault injection")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..storage._faulty import FAULT_KINDS, FaultyStorage
from ..storage._protocol import Storage
from ..storage._throttled import ThrottledStorage
from ._settings import BrokerSettings


def with_faults(storage: Storage, settings: BrokerSettings) -> Storage:
    """``storage`` wrapped in a :class:`FaultyStorage` if the settings turn storage
    faults on (``--fault-*``, for tests), else ``storage`` itself."""
    if not settings.storage_faults():
        return storage
    return FaultyStorage(
        storage,
        seed=settings.fault_seed,
        error_rate=settings.fault_error_rate,
        ambiguous_write_rate=settings.fault_ambiguous_write_rate,
        ambiguous_lost_rate=settings.fault_lost_write_rate,
        latency=settings.fault_latency,
        spike_rate=settings.fault_spike_rate,
        spike=settings.fault_spike,
    )


def faults_in(storage: Storage) -> FaultyStorage | None:
    """The :class:`FaultyStorage` in a chain of storage wrappers, if there is one."""
    while isinstance(storage, ThrottledStorage | FaultyStorage):
        if isinstance(storage, FaultyStorage):
            return storage
        storage = storage.inner
    return None


def describe_faults(settings: BrokerSettings) -> str:
    """The storage faults the settings turn on, for the log: ``errors 20%, ...``."""
    faults = settings.storage_faults()
    names = {
        "error_rate": ("errors", ""),
        "ambiguous_write_rate": ("ambiguous writes", " (land, then report an unknown outcome)"),
        "ambiguous_lost_rate": ("lost writes", " (do not land, report an unknown outcome)"),
    }
    parts = [
        f"{name} {faults[key] * 100:g}%{what}"
        for key, (name, what) in names.items()
        if key in faults
    ]
    if "latency" in faults:
        parts.append(f"latency {faults['latency']:g} s on every call")
    if "spike_rate" in faults:
        parts.append(
            f"latency spikes of {faults['spike']:g} s on {faults['spike_rate'] * 100:g}% of calls"
        )
    seed = "random" if settings.fault_seed is None else str(settings.fault_seed)
    return f"{', '.join(parts)}; seed {seed}"


_FAILING_RATES = ("error_rate", "ambiguous_write_rate", "ambiguous_lost_rate")


@contextmanager
def failures_paused(faulty: FaultyStorage | None) -> Iterator[None]:
    """No failing storage call (latency still applies) until the block ends.

    A broker that cannot reach its storage while it starts exits with one line by
    design; injected failures there would only test that. They start once it leads
    or stands by.
    """
    if faulty is None:
        yield
        return
    rates = {name: getattr(faulty, name) for name in _FAILING_RATES}
    for name in rates:
        setattr(faulty, name, 0.0)
    try:
        yield
    finally:
        for name, rate in rates.items():
            setattr(faulty, name, rate)


class FaultCollector:
    """Metrics of a broker whose storage injects faults: that it does, and what."""

    def __init__(self, storage: FaultyStorage) -> None:
        self._storage = storage

    def collect(self) -> Iterator[Metric]:
        """``trioq_storage_faults_enabled`` (1) and the faults injected so far."""
        yield GaugeMetricFamily(
            "trioq_storage_faults_enabled",
            "1: storage fault injection is on (--fault-*; for tests only).",
            value=1,
        )
        injected = CounterMetricFamily(
            "trioq_storage_faults_injected_total",
            "Storage faults injected, by FaultyStorage kind.",
            labels=["kind"],
        )
        for kind in FAULT_KINDS:
            injected.add_metric([kind], self._storage.injected.get(kind, 0))
        yield injected
        yield CounterMetricFamily(
            "trioq_storage_fault_spikes_total",
            "Storage calls delayed by a latency spike.",
            value=self._storage.spikes,
        )
