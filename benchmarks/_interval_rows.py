"""What the group commit interval costs: the ``writes`` and ``fill`` sections of
``bench_e2e.py``.

``writes``: for each ``--writes-intervals`` interval (50, 500, 2000 ms), a broker with
``GROUP_COMMIT_INTERVAL_MS`` at that interval and one worker (``--concurrency``
``--writes-concurrency``, 512: enough slots to keep up even at 2000 ms),
and the loaders submitting ``--writes-rate`` (100) jobs/s for ``--writes-seconds``
(5, full 15); measured from the loaders' start until the queue is empty again:

- storage writes and reads: ``trioq_storage_writes_total`` / ``_reads_total``. The
  broker exports them only when its storage is throttled, so it runs with
  ``--max-writes-per-minute`` and ``--max-reads-per-minute`` at 10^9 (a budget no load
  here reaches: nothing waits, everything is counted);
- commits (``trioq_commits_total``) and CAS conflicts;
- bytes written: *estimated*, as the broker exports no byte counter: ``/metrics`` is
  scraped every 200 ms and each scrape adds (commits since the last scrape) x (the mean
  of ``trioq_document_bytes`` at the two scrapes), the document being written whole at
  every commit;
- the check "at most one storage write per interval": writes <= elapsed x 1000 /
  interval x 1.05 + 2.

``fill``: for each ``--fill-slots`` (5, 100) and ``--fill-intervals`` interval, the
time until all C slots of one worker (``--concurrency C``) run a handler, with 2 C
``sleep`` jobs (``_noop_jobs.py``; each sleeps the row timeout and notes its start at
once) in the queue:

- ``cold``: the jobs are queued first, then the worker process is started: time from
  the spawn (interpreter start and imports included; ``worker ready`` is when this
  process saw its ready line, polled every 20 ms, so it may come after the first
  handler) to the first handler and to the C-th;
- ``warm``: the worker is started on an empty queue and left idle for 1 s (waiting in
  its claim), then the jobs are submitted in one ``submit_many``: time from that call.

Both in ms and in units of the interval.
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
import trio
from _common import Bench, paced_argvs, run_rows
from _procs import Loaders, cluster, latency_fields, loader_summary, loaders, read_times, scrape

import trioq

HUGE = "1000000000"
UNCLAIMED = 'trioq_jobs{status="unclaimed"}'
IN_PROGRESS = 'trioq_jobs{status="in_progress"}'


# --------------------------------------------------------------------- writes


async def watch_writes(url: str, group: Loaders, deadline: float) -> dict[str, Any]:
    seen: dict[str, Any] = {"timed_out": True}
    written = 0.0
    async with httpx.AsyncClient(timeout=30) as raw:
        m0 = prev = m = await scrape(raw, url)
        t0 = group.go()
        with trio.move_on_at(deadline):
            while True:
                await trio.sleep(0.2)
                m = await scrape(raw, url)
                commits = m["trioq_commits_total"] - prev["trioq_commits_total"]
                written += commits * (m["trioq_document_bytes"] + prev["trioq_document_bytes"]) / 2
                prev = m
                if group.done() and m[UNCLAIMED] + m[IN_PROGRESS] == 0:
                    seen["timed_out"] = False
                    break
    seen["elapsed_s"] = time.time() - t0
    seen["bytes_estimated"] = written
    seen["document_bytes_max"] = m["trioq_document_bytes"]
    for key, name in [
        ("writes", "trioq_storage_writes_total"),
        ("reads", "trioq_storage_reads_total"),
        ("commits", "trioq_commits_total"),
        ("conflicts", "trioq_commit_conflicts_total"),
    ]:
        seen[key] = m.get(name, math.nan) - m0.get(name, math.nan)
    return seen


def writes_row(b: Bench, interval: int) -> dict[str, Any]:
    a = b.args
    rowdir = b.rowdir("writes", f"{interval}ms")
    extra = ["--max-writes-per-minute", HUGE, "--max-reads-per-minute", HUGE]
    with cluster(b.server, rowdir, interval, processes=1, concurrency=64, broker_extra=extra) as c:
        with loaders(rowdir, paced_argvs(b, c.url, a.writes_rate, a.writes_seconds), {}) as group:
            deadline = time.time() + a.writes_seconds + a.timeout
            seen = trio.run(watch_writes, c.url, group, deadline)
            load = loader_summary(group.results())
        c.stop_workers()
    times = read_times(rowdir)
    jobs = max(load["submitted"], 1)
    elapsed = seen["elapsed_s"]
    limit = elapsed * 1000 / interval * 1.05 + 2
    return {
        "row": f"{interval}ms", "interval_ms": interval, "rate": a.writes_rate, **load, **seen,
        "recorded": len(times), **latency_fields(times),
        "writes_per_s": seen["writes"] / elapsed, "writes_per_job": seen["writes"] / jobs,
        "reads_per_s": seen["reads"] / elapsed, "commits_per_s": seen["commits"] / elapsed,
        "bytes_per_job": seen["bytes_estimated"] / jobs,
        "bytes_per_s": seen["bytes_estimated"] / elapsed,
        "write_limit": limit, "at_most_one_write_per_interval": seen["writes"] <= limit,
    }  # fmt: skip


def writes_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| interval | jobs | s | writes | writes/s of 1000/interval | writes/job "
        "| bytes/job (est.) | kB/s (est.) | reads/s | commits | conflicts "
        "| submit→complete p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error']} |")
            continue
        check = "ok" if r["at_most_one_write_per_interval"] else "EXCEEDED"
        flag = " (timed out)" if r["timed_out"] else ""
        lines.append(
            f"| {r['interval_ms']} ms | {r['submitted']}{flag} | {r['elapsed_s']:.1f} "
            f"| {r['writes']:.0f} | {r['writes_per_s']:.2f} of {1000 / r['interval_ms']:g}: "
            f"{check} | {r['writes_per_job']:.3f} "
            f"| {r['bytes_per_job']:.0f} | {r['bytes_per_s'] / 1e3:.1f} | {r['reads_per_s']:.2f} "
            f"| {r['commits']:.0f} | {r['conflicts']:.0f} | {r['complete_p50_ms']:.0f} |"
        )
    return "\n".join(lines)


def writes_section(b: Bench) -> str:
    intervals = [int(x) for x in b.args.writes_intervals.split(",")]
    rows = run_rows(b, "writes", intervals, lambda i: writes_row(b, i), lambda i: f"{i}ms")
    return (
        f"{b.args.writes_rate:g} jobs/s for {b.args.writes_seconds:g} s, "
        f"1 worker x {b.args.writes_concurrency}; "
        "bytes estimated from trioq_document_bytes x commits (no byte counter exported)\n\n"
        + writes_table(rows)
    )


# ----------------------------------------------------------------------- fill


async def submit_sleepers(url: str, count: int, seconds: float) -> float:
    """Submit ``count`` sleep jobs in one call; returns the ``time.time()`` before it."""
    async with trioq.Client(url, timeout=60) as client:
        now = time.time()
        await client.submit_many([trioq.JobSpec("sleep", {"s": seconds, "t": now})] * count)
    return now


def wait_starts(rowdir: Any, count: int, deadline: float) -> list[float]:
    """The sorted handler start times in ``starts-*.txt``, once ``count`` are there."""
    while True:
        starts = sorted(
            float(line.split()[2])
            for path in rowdir.glob("starts-*.txt")
            for line in path.read_text().splitlines()
            if line.strip()
        )
        if len(starts) >= count or time.time() > deadline:
            return starts
        time.sleep(0.005)


def fill_row(b: Bench, slots: int, interval: int, mode: str) -> dict[str, Any]:
    a = b.args
    name = f"{slots}-{interval}ms-{mode}"
    rowdir = b.rowdir("fill", name)
    with cluster(b.server, rowdir, interval) as c:
        if mode == "cold":
            trio.run(submit_sleepers, c.url, 2 * slots, a.timeout)
            t0 = c.start_worker(slots, a.prefetch)
            ready = time.time() - t0
        else:
            c.start_worker(slots, a.prefetch)
            time.sleep(1.0)  # idle: waiting in its claim
            t0 = trio.run(submit_sleepers, c.url, 2 * slots, a.timeout)
            ready = math.nan
        starts = wait_starts(rowdir, slots, time.time() + a.timeout)
        c.stop_workers()
    first = 1000 * (starts[0] - t0) if starts else math.nan
    full = 1000 * (starts[slots - 1] - t0) if len(starts) >= slots else math.nan
    return {
        "row": name, "slots": slots, "interval_ms": interval, "mode": mode,
        "running": min(len(starts), slots), "ready_ms": 1000 * ready, "first_ms": first,
        "all_ms": full, "first_intervals": first / interval, "all_intervals": full / interval,
        "starts_ms": [round(1000 * (s - t0), 1) for s in starts[:slots]],
    }  # fmt: skip


def fill_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| slots | interval | from | worker ready ms | first handler ms (intervals) "
        "| all slots running ms (intervals) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error']} |")
            continue
        origin = "worker spawn" if r["mode"] == "cold" else "submit (worker idle)"
        missing = "" if r["running"] >= r["slots"] else f" (only {r['running']} ran)"
        lines.append(
            f"| {r['slots']} | {r['interval_ms']} ms | {origin} | {r['ready_ms']:.0f} "
            f"| {r['first_ms']:.0f} ({r['first_intervals']:.1f}) "
            f"| {r['all_ms']:.0f} ({r['all_intervals']:.1f}){missing} |"
        )
    return "\n".join(lines)


def fill_section(b: Bench) -> str:
    items = [
        (slots, interval, mode)
        for interval in (int(x) for x in b.args.fill_intervals.split(","))
        for slots in (int(x) for x in b.args.fill_slots.split(","))
        for mode in ("cold", "warm")
    ]
    rows = run_rows(
        b, "fill", items, lambda i: fill_row(b, *i), lambda i: f"{i[0]}-{i[1]}ms-{i[2]}"
    )
    return "2 x slots sleep jobs queued\n\n" + fill_table(rows)
