"""What the sections of ``bench_e2e.py`` share: row specs, the run's context, loader
command lines, and running rows so that one failing row does not stop the others."""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _procs import cpu_seconds, latency_fields

if TYPE_CHECKING:
    from _servers import S3Server


@dataclass(frozen=True)
class RowSpec:
    """``PxC`` or ``PxC+pN``: P worker processes, concurrency C, prefetch N."""

    processes: int
    concurrency: int
    prefetch: int | None = None

    @property
    def name(self) -> str:
        base = f"{self.processes}x{self.concurrency}"
        return base if self.prefetch is None else f"{base}+p{self.prefetch}"

    @classmethod
    def parse(cls, text: str, prefetch: int | None) -> RowSpec:
        match = re.fullmatch(r"(\d+)x(\d+)(?:\+p(\d+))?", text.strip())
        if not match:
            raise SystemExit(f"bad row {text!r}: expected PxC or PxC+pN (e.g. 1x64+p512)")
        p, c, n = match.groups()
        return cls(int(p), int(c), int(n) if n else prefetch)


@dataclass
class Bench:
    """One run: its options, SeaweedFS, its directory, and the results so far."""

    args: argparse.Namespace
    server: S3Server
    workdir: Path
    results: dict[str, list[dict[str, Any]]]

    def rowdir(self, section: str, name: str) -> Path:
        return self.workdir / f"{section}-{name}"

    def jobs(self, spec: RowSpec) -> int:
        jobs: int = self.args.jobs
        return max(self.args.batch, jobs // 10) if spec.concurrency == 1 else jobs

    def split(self, total: int) -> list[tuple[int, int]]:
        """(offset, count) of each loader's share of ``total``."""
        n = self.args.loaders
        shares = [total // n + (1 if i < total % n else 0) for i in range(n)]
        return [(sum(shares[:i]), s) for i, s in enumerate(shares) if s]


def cpu_of(pids: dict[str, list[int]]) -> dict[str, float]:
    return {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}


def per_job_ms(cpu: dict[str, float], jobs: int) -> dict[str, float]:
    return {k: 1000 * v / max(jobs, 1) for k, v in cpu.items()}


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


def batch_argvs(b: Bench, url: str, jobs: int) -> list[list[str]]:
    a = b.args
    return [
        ["batch", "--url", url, "--jobs", str(n), "--offset", str(o), "--batch", str(a.batch),
         "--submitters", str(a.submitters), "--timeout", str(a.timeout)]
        for o, n in b.split(jobs)
    ]  # fmt: skip


def paced_argvs(b: Bench, url: str, rate: float, seconds: float) -> list[list[str]]:
    """``rate`` jobs/s for ``seconds``, split between the loaders."""
    a = b.args
    total = max(1, round(rate * seconds))
    return [
        ["paced", "--url", url, "--rate", str(rate * n / total), "--seconds", str(seconds),
         "--offset", str(o), "--batch", str(a.batch), "--submitters", str(a.submitters),
         "--timeout", str(a.timeout)]
        for o, n in b.split(total)
    ]  # fmt: skip


def loader_cell(r: dict[str, Any]) -> str:
    flag = "!" if r.get("loader_saturated") else ""
    return f"{r['loaders']} @ {r['loader_cpu_pct']:.0f}%{flag}"


def run_rows(
    b: Bench,
    section: str,
    items: list[Any],
    run: Callable[[Any], dict[str, Any]],
    name: Callable[[Any], str],
) -> list[dict[str, Any]]:
    """``run`` each item; a failure is kept as a row with its error."""
    rows = b.results.setdefault(section, [])
    for item in items:
        began = time.monotonic()
        try:
            row = run(item)
        except Exception as exc:
            traceback.print_exc()
            row = {"row": name(item), "error": f"{type(exc).__name__}: {exc}"[:300]}
        rows.append(row)
        print(f"{section} {name(item)}: {time.monotonic() - began:.1f} s", file=sys.stderr)
        for sample in row.get("worker_warning_samples", [])[:3]:
            print(f"  {sample}", file=sys.stderr)
    return rows


def measured_fields(
    times: list[tuple[float, float, float]],
    load: dict[str, Any],
    cpu: dict[str, float],
    warnings: Any,
    started: float,
) -> dict[str, Any]:
    """The fields every end-to-end row reports (trioq's and the peers'): end-to-end
    and submit-only rates, latencies, CPU per job, the workers' warnings. ``times``
    are (submitted, started, completed) per job; ``warnings`` a Counter of lines."""
    e2e = max((t[2] for t in times), default=math.nan) - load["first_submit"]
    submit = load["last_submitted"] - load["first_submit"]
    return {
        "e2e_s": e2e, "e2e_jobs_per_s": rate(len(times), e2e),
        "submit_s": submit, "submit_jobs_per_s": rate(load["submitted"], submit),
        **latency_fields(times), "cpu_s": cpu, "cpu_ms_per_job": per_job_ms(cpu, len(times)),
        "worker_warnings": sum(warnings.values()),
        "worker_warning_samples": [w for w, _ in warnings.most_common(5)],
        "wall_s": time.monotonic() - started,
    }  # fmt: skip
