"""The peer sections of ``bench_e2e.py``: osqueue-style REST, and dramatiq on Redis.

    python benchmarks/bench_peers.py [bench_e2e options]   # = bench_e2e.py --only rest,redis

``rest``: osqueue's protocol, one job per request, against a trioq broker (SeaweedFS,
``--interval-ms``): ``--producers`` (8) coroutines each ``POST /v1/jobs`` one job at a
time, ``--consumers`` (32) coroutines each looping ``POST /v1/jobs/claim`` without
``max`` (osqueue's one-job answer; ``{}``: sleep 50 ms) then
``POST /v1/jobs/{id}/complete``: 3 requests per job, plain httpx, in the loader
process(es) (``_loader.py rest``), never in the broker's. ``--rest-jobs`` jobs (1000,
full 10000). Reports jobs/s (first submit -> last complete answered), requests/s,
submit -> complete p50 / p99, the loaders' CPU and the broker's CPU per job.

``redis``: a reference peer, dramatiq (``pip install dramatiq[redis]``: not a
dependency of trioq) on a ``redis-server`` (Debian package ``redis-server``) started on
127.0.0.1 at a free port, without persistence. For each row ``PxC`` of the ``own``
section: ``python -m dramatiq benchmarks._dramatiq_jobs --processes P --threads C``
(no-op actor, default middleware), the same J jobs sent by the same number of loader
processes (``--submitters`` threads each, one ``send`` per message: dramatiq has no
batch enqueue), measured as trioq's row: first enqueue -> last completion (recorded in
the worker, see ``_dramatiq_jobs.py``; done when the queue's message hash is empty).
Prints trioq / dramatiq e2e jobs/s for the rows both ran in this run. Skipped, with the
reason, when ``redis-server`` is not on PATH or dramatiq is not importable; ``+pN``
rows are run without the prefetch (dramatiq's is its own: 2 messages per thread).
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import sys
import time
from typing import Any

import trio
from _common import Bench, RowSpec, cpu_of, loader_cell, measured_fields, per_job_ms, rate, run_rows
from _procs import (
    ROOT,
    Loaders,
    clean_env,
    cluster,
    loader_summary,
    loaders,
    percentile,
    read_times,
    spawn,
    tree_pids,
    warnings_in,
)

from _servers import free_port

# ------------------------------------------------------------------------- rest


async def wait_loaders(group: Loaders, deadline: float) -> bool:
    """Release the loaders and wait until they exit; False on the deadline."""
    group.go()
    with trio.move_on_at(deadline):
        while True:
            if group.done():
                return True
            await trio.sleep(0.05)
    return False


def rest_row(b: Bench) -> dict[str, Any]:
    a = b.args
    rowdir = b.rowdir("rest", "osqueue")
    shares = b.split(a.rest_jobs)
    n = len(shares)
    with cluster(b.server, rowdir, a.interval_ms) as c:
        argvs = [
            ["rest", "--url", c.url, "--jobs", str(count), "--offset", str(offset),
             "--total", str(a.rest_jobs), "--producers", str(max(1, a.producers // n)),
             "--consumers", str(max(1, a.consumers // n)), "--timeout", str(a.timeout)]
            for offset, count in shares
        ]  # fmt: skip
        with loaders(rowdir, argvs, {}) as group:
            pids = c.pids()
            del pids["workers"]
            cpu0 = cpu_of(pids)
            finished = trio.run(wait_loaders, group, time.time() + a.timeout + 10)
            cpu = {k: v - cpu0[k] for k, v in cpu_of(pids).items()}
            results = group.results()
    load = loader_summary(results)
    latencies = [x for r in results for x in r["latencies"]]
    last = max((r["last_complete"] for r in results if r.get("last_complete")), default=math.nan)
    e2e = last - load["first_submit"]
    requests = sum(r["counts"]["requests"] for r in results)
    cpu["loaders"] = load["loader_cpu_s"]
    return {
        "row": "osqueue", "producers": a.producers, "consumers": a.consumers,
        "jobs": a.rest_jobs, "completed": len(latencies), "timed_out": not finished, **load,
        "e2e_s": e2e, "jobs_per_s": rate(len(latencies), e2e),
        "requests": requests, "requests_per_s": rate(requests, e2e),
        "empty_claims": sum(r["counts"]["empty_claims"] for r in results),
        "complete_p50_ms": 1000 * percentile(latencies, 50),
        "complete_p99_ms": 1000 * percentile(latencies, 99),
        "cpu_s": cpu, "cpu_ms_per_job": per_job_ms(cpu, len(latencies)),
    }  # fmt: skip


def rest_section(b: Bench) -> str:
    a = b.args
    rows = run_rows(b, "rest", [None], lambda _: rest_row(b), lambda _: "osqueue")
    lines = [
        f"osqueue's protocol over plain httpx: {a.producers} producers, {a.consumers} "
        f"consumers (split between {a.loaders} loader process(es)), 3 requests per job, "
        f"interval {a.interval_ms} ms\n",
        "| jobs | jobs/s | requests/s | empty claims | submit→complete p50 / p99 ms "
        "| loaders @ CPU % | CPU ms/job: broker / S3 / loaders |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| error: {r['error']} |")
            continue
        c, flag = r["cpu_ms_per_job"], " (timed out)" if r["timed_out"] else ""
        lines.append(
            f"| {r['completed']}/{r['jobs']}{flag} | {r['jobs_per_s']:.0f} "
            f"| {r['requests_per_s']:.0f} | {r['empty_claims']} "
            f"| {r['complete_p50_ms']:.0f} / {r['complete_p99_ms']:.0f} | {loader_cell(r)} "
            f"| {c['broker']:.2f} / {c['seaweedfs']:.2f} / {c['loaders']:.2f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------ redis


def redis_missing() -> str | None:
    """Why the redis section cannot run (None: it can)."""
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH (Debian: apt-get install redis-server)"
    if importlib.util.find_spec("dramatiq") is None or importlib.util.find_spec("redis") is None:
        return "dramatiq is not installed (pip install 'dramatiq[redis]')"
    return None


def wait_drained(redis_url: str, group: Loaders, deadline: float) -> bool:
    """Release the loaders; wait until they are done and the queue's messages are all
    acknowledged (the ``dramatiq:default.msgs`` hash is empty); False on the deadline."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        group.go()
        while time.time() < deadline:
            if group.done() and client.hlen("dramatiq:default.msgs") == 0:
                return True
            time.sleep(0.05)
        return False
    finally:
        client.close()


def redis_row(b: Bench, spec: RowSpec) -> dict[str, Any]:
    a = b.args
    name = f"{spec.processes}x{spec.concurrency}"
    rowdir = b.rowdir("redis", name)
    rowdir.mkdir(parents=True)
    jobs = b.jobs(spec)
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    redis_argv = [
        "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
        "--appendonly", "no", "--dir", str(rowdir), "--protected-mode", "yes",
    ]  # fmt: skip
    env = clean_env(
        {
            "PYTHONPATH": str(ROOT),
            "TRIOQ_BENCH_DIR": str(rowdir),
            "TRIOQ_BENCH_REDIS_URL": redis_url,
        }
    )
    worker_argv = [
        sys.executable, "-m", "dramatiq", "benchmarks._dramatiq_jobs", "--path", str(ROOT),
        "--processes", str(spec.processes), "--threads", str(spec.concurrency),
    ]  # fmt: skip
    argvs = [
        ["dramatiq", "--redis-url", redis_url, "--jobs", str(count), "--offset", str(offset),
         "--submitters", str(a.submitters), "--timeout", str(a.timeout)]
        for offset, count in b.split(jobs)
    ]  # fmt: skip
    started = time.monotonic()
    with (
        spawn(redis_argv, env, rowdir / "redis.out", "Ready to accept connections") as (server, _),
        spawn(
            worker_argv, env, rowdir / "w-dramatiq.out", "Worker process is ready for action",
            count=spec.processes,
        ) as (master, _),
        loaders(rowdir, argvs, {"TRIOQ_BENCH_DIR": str(rowdir)}) as group,
    ):  # fmt: skip
        pids = {"workers": tree_pids(master.pid), "redis": [server.pid]}
        cpu0 = cpu_of(pids)
        drained = wait_drained(redis_url, group, time.time() + a.timeout)
        cpu = {k: v - cpu0[k] for k, v in cpu_of(pids).items()}
        load = loader_summary(group.results())
    # the master's SIGTERM stopped its workers, which flushed their time files
    times = read_times(rowdir, "times-dramatiq-*.txt")
    warnings = warnings_in(rowdir, "w-dramatiq.log")
    cpu["loaders"] = load["loader_cpu_s"]
    return {
        "row": name, "processes": spec.processes, "concurrency": spec.concurrency,
        "jobs": jobs, "recorded": len(times), "timed_out": not drained, **load,
        **measured_fields(times, load, cpu, warnings, started),
    }  # fmt: skip


def redis_section(b: Bench, specs: list[RowSpec]) -> str:
    missing = redis_missing()
    if missing is not None:
        b.results["redis"] = [{"row": "all", "skipped": missing}]
        return f"skipped: {missing}"
    names = list(dict.fromkeys(f"{s.processes}x{s.concurrency}" for s in specs))
    plain = [RowSpec(*map(int, n.split("x"))) for n in names]
    rows = run_rows(b, "redis", plain, lambda s: redis_row(b, s), lambda s: s.name)
    own = {r["row"]: r for r in b.results.get("own", []) if "error" not in r}
    lines = [
        "dramatiq + Redis, same jobs and processes x threads; trioq / dramatiq: e2e jobs/s "
        "of the own row of the same name in this run\n",
        "| row | jobs | e2e jobs/s | trioq / dramatiq | submit jobs/s "
        "| submit→start p50 / p99 ms | submit→complete p50 / p99 ms | loaders @ CPU % "
        "| CPU ms/job: workers / redis / loaders |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error']} |")
            continue
        c, flag = r["cpu_ms_per_job"], " (timed out)" if r["timed_out"] else ""
        mine = own.get(r["row"], {}).get("e2e_jobs_per_s", math.nan)
        r["trioq_over_dramatiq"] = mine / r["e2e_jobs_per_s"]
        lines.append(
            f"| {r['row']} | {r['recorded']}/{r['jobs']}{flag} | {r['e2e_jobs_per_s']:.0f} "
            f"| {r['trioq_over_dramatiq']:.2f} | {r['submit_jobs_per_s']:.0f} "
            f"| {r['start_p50_ms']:.0f} / {r['start_p99_ms']:.0f} "
            f"| {r['complete_p50_ms']:.0f} / {r['complete_p99_ms']:.0f} | {loader_cell(r)} "
            f"| {c['workers']:.2f} / {c['redis']:.2f} / {c['loaders']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import bench_e2e

    bench_e2e.main(default_only="rest,redis")
