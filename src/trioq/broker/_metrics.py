"""Prometheus text exposition of a broker's state and engine counters."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._api import BrokerApi


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """A sample value, exact: integers in full (``{:g}`` would print 1234567 as
    ``1.23457e+06``), floats as their shortest round-tripping repr."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return repr(float(value))


def render_metrics(api: BrokerApi) -> bytes:
    """Every broker serves this, leader or standby; queue gauges only on the leader."""
    engine = api.engine
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{labels} {_number(value)}")

    broker = f'broker_id="{_escape(engine.broker_id)}"'
    metric(
        "trioq_broker_leader",
        "gauge",
        "1 if this broker leads the queue.",
        [(f"{{{broker}}}", 1 if engine.is_leader else 0)],
    )
    metric("trioq_broker_epoch", "gauge", "Leader epoch last seen.", [("", engine.epoch)])
    names = {
        "commits": ("trioq_commits_total", "Commits written."),
        "mutations": ("trioq_mutations_total", "Mutations acknowledged by commits."),
        "conflicts": ("trioq_commit_conflicts_total", "Commits that met a CAS conflict."),
        "writeErrors": ("trioq_commit_write_errors_total", "Storage errors while committing."),
        "failedBatches": ("trioq_failed_batches_total", "Batches answered with an error."),
        "takeovers": ("trioq_takeovers_total", "Elections won by takeover."),
        "stepDowns": ("trioq_step_downs_total", "Times this broker lost leadership."),
    }
    for key, (name, help_text) in names.items():
        metric(name, "counter", help_text, [("", engine.metrics.get(key, 0))])
    metric(
        "trioq_last_commit_seconds",
        "gauge",
        "Duration of the last commit (apply, encode, write).",
        [("", engine.last_commit_seconds)],
    )
    metric(
        "trioq_last_batch_size",
        "gauge",
        "Mutations in the last commit.",
        [("", engine.last_batch_size)],
    )
    stats = engine.committed_stats if engine.is_leader else None
    if stats:
        metric(
            "trioq_jobs",
            "gauge",
            "Jobs by status.",
            [
                ('{status="unclaimed"}', stats["unclaimed"]),
                ('{status="in_progress"}', stats["inProgress"]),
                ('{status="dead"}', stats["dead"]),
            ],
        )
        for counter, value in engine.committed_counters.items():
            snake = "".join("_" + c.lower() if c.isupper() else c for c in counter)
            metric(
                f"trioq_jobs_{snake}_total",
                "counter",
                f"Jobs {counter} since the queue was created.",
                [("", value)],
            )
        document = engine.document
        metric(
            "trioq_document_bytes",
            "gauge",
            "Size of the last committed queue document.",
            [("", len(document) if document else 0)],
        )
    throttle = api.throttle_stats()
    if throttle.get("throttling"):
        for key, name, help_text in (
            ("totalReads", "reads", "Storage reads through the throttle."),
            ("totalWrites", "writes", "Storage writes through the throttle."),
            ("throttledReads", "throttled_reads", "Storage reads that waited for a token."),
            ("throttledWrites", "throttled_writes", "Storage writes that waited for a token."),
        ):
            metric(f"trioq_storage_{name}_total", "counter", help_text, [("", throttle[key])])
    return ("\n".join(lines) + "\n").encode()
