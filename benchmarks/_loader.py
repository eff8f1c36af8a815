"""A load-generator process of the end-to-end benchmarks (started by ``_procs.Loaders``).

    python benchmarks/_loader.py batch --url U --jobs J [--offset O] [--batch B] [--submitters S]
    python benchmarks/_loader.py paced --url U --rate R --seconds S [--batch B] [--submitters S]
    python benchmarks/_loader.py rest --url U --jobs J --total T --producers P --consumers W
    python benchmarks/_loader.py dramatiq --redis-url U --jobs J [--offset O] [--submitters S]

Prints ``ready`` once imported, waits for a line on stdin (the "go" of the parent, so
that start-up is not measured and several loaders start together), runs, and prints one
JSON line: ``first`` and ``last`` (``time.time()`` of the first submit and of the last
answered submit), ``submitted``, ``cpu`` (``time.process_time`` over the run), ``wall``,
``errors`` (the first few), and per mode:

- ``batch``: J ``noop`` jobs with ``Client.submit_many``, B jobs a call, S calls in flight;
- ``paced``: ``noop`` jobs at R jobs/s for S seconds: every 20 ms the jobs due so far
  are sent (B a call, at most S calls in flight; what cannot be sent waits for the next
  tick, and ``behind`` says how many were still due at the end);
- ``rest``: osqueue's protocol over plain httpx, one job per request: P producers
  ``POST /v1/jobs`` J jobs one at a time, W consumers each loop ``POST /v1/jobs/claim``
  (no ``max``: osqueue's one-job answer, ``{}`` when none: then sleep 50 ms) and
  ``POST /v1/jobs/{id}/complete``; consumers stop once ``GET /v1/stats`` says T jobs
  completed (polled every 100 ms). ``latencies``: submit -> complete answered, seconds;
  ``last_complete``: when the last complete was answered; ``counts``: requests made
  and empty claims;
- ``dramatiq``: J messages to the ``noop`` actor of ``_dramatiq_jobs.py``, from S threads.

Every loop is bounded by its count and by ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import trio

import trioq

TICK = 0.02
REST_IDLE = 0.05


class Run:
    def __init__(self) -> None:
        self.first = math.nan
        self.last = math.nan
        self.submitted = 0
        self.errors: list[str] = []
        self.extra: dict[str, Any] = {}

    def sent(self, count: int, started: float) -> None:
        if math.isnan(self.first) or started < self.first:
            self.first = started
        self.last = time.time()
        self.submitted += count

    def error(self, exc: BaseException) -> None:
        if len(self.errors) < 5:
            self.errors.append(f"{type(exc).__name__}: {exc}"[:300])


async def batch(args: argparse.Namespace, run: Run) -> None:
    starts = iter(range(args.offset, args.offset + args.jobs, args.batch))
    end = args.offset + args.jobs
    async with trioq.Client(args.url, timeout=60) as client:

        async def submitter() -> None:
            for start in starts:
                now = time.time()
                specs = [
                    trioq.JobSpec(args.type, {"t": now, "i": i})
                    for i in range(start, min(start + args.batch, end))
                ]
                try:
                    await client.submit_many(specs)
                except (httpx.HTTPError, trioq.TrioqError) as exc:
                    run.error(exc)
                else:
                    run.sent(len(specs), now)

        with trio.move_on_after(args.timeout):
            async with trio.open_nursery() as nursery:
                for _ in range(args.submitters):
                    nursery.start_soon(submitter)


async def paced(args: argparse.Namespace, run: Run) -> None:
    total = int(args.rate * args.seconds)
    limiter = trio.CapacityLimiter(args.submitters)
    sent = args.offset
    async with trioq.Client(args.url, timeout=60) as client:

        async def send(start: int, end: int) -> None:
            try:
                now = time.time()
                specs = [trioq.JobSpec(args.type, {"t": now, "i": i}) for i in range(start, end)]
                await client.submit_many(specs)
            except (httpx.HTTPError, trioq.TrioqError) as exc:
                run.error(exc)
            else:
                run.sent(len(specs), now)
            finally:
                limiter.release_on_behalf_of(start)

        t0 = trio.current_time()
        with trio.move_on_after(args.seconds + args.timeout):
            async with trio.open_nursery() as nursery:
                for tick in itertools.count(1):
                    await trio.sleep_until(t0 + tick * TICK)
                    elapsed = trio.current_time() - t0
                    due = args.offset + min(total, math.ceil(elapsed * args.rate))
                    while sent < due and limiter.available_tokens:
                        end = min(due, sent + args.batch)
                        limiter.acquire_on_behalf_of_nowait(sent)
                        nursery.start_soon(send, sent, end)
                        sent = end
                    if sent >= args.offset + total or elapsed >= args.seconds + 1:
                        break
        run.extra["behind"] = args.offset + total - sent


async def rest(args: argparse.Namespace, run: Run) -> None:
    """osqueue's single-job protocol (3 requests per job) over plain httpx."""
    latencies: list[float] = []
    counts = {"requests": 0, "empty_claims": 0}
    run.extra.update(latencies=latencies, counts=counts)
    jobs = iter(range(args.offset, args.offset + args.jobs))
    limits = httpx.Limits(max_connections=args.producers + args.consumers + 1)
    async with httpx.AsyncClient(base_url=args.url, timeout=60, limits=limits) as http:

        async def post(path: str, body: dict[str, Any]) -> Any:
            counts["requests"] += 1
            response = await http.post(path, json=body)
            response.raise_for_status()
            return response.json() if response.content else {}

        async def producer() -> None:
            for i in jobs:
                now = time.time()
                try:
                    await post("/v1/jobs", {"type": "noop", "payload": {"t": now, "i": i}})
                except httpx.HTTPError as exc:
                    run.error(exc)
                else:
                    run.sent(1, now)

        async def consumer(worker_id: str) -> None:
            while True:
                try:
                    job = await post("/v1/jobs/claim", {"workerId": worker_id})
                    if not job:
                        counts["empty_claims"] += 1
                        await trio.sleep(REST_IDLE)
                        continue
                    await post(f"/v1/jobs/{job['jobId']}/complete", {"workerId": worker_id})
                    run.extra["last_complete"] = now = time.time()
                    latencies.append(now - job["payload"]["t"])
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    run.error(exc)
                    await trio.sleep(REST_IDLE)

        async def watch(cancel: trio.CancelScope) -> None:
            """Cancel the consumers once ``args.total`` jobs completed (in all loaders)."""
            while True:
                stats = (await http.get("/v1/stats")).json()
                if stats["completedTotal"] >= args.total:
                    cancel.cancel()
                await trio.sleep(0.1)

        with trio.move_on_after(args.timeout):
            async with trio.open_nursery() as nursery:
                for _ in range(args.producers):
                    nursery.start_soon(producer)
                for i in range(args.consumers):
                    nursery.start_soon(consumer, f"rest-{args.offset}-{i}")
                nursery.start_soon(watch, nursery.cancel_scope)


def dramatiq_load(args: argparse.Namespace, run: Run) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from _dramatiq_jobs import noop

    indices = iter(range(args.offset, args.offset + args.jobs))
    deadline = time.monotonic() + args.timeout

    def sender() -> None:
        for i in indices:
            if time.monotonic() > deadline:
                return
            now = time.time()
            try:
                noop.send(now, i)
            except Exception as exc:
                run.error(exc)
            else:
                run.sent(1, now)

    with ThreadPoolExecutor(args.submitters) as pool:
        for future in [pool.submit(sender) for _ in range(args.submitters)]:
            future.result()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["batch", "paced", "rest", "dramatiq"])
    parser.add_argument("--url")
    parser.add_argument("--redis-url")
    parser.add_argument("--type", default="noop")
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--total", type=int, default=0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--submitters", type=int, default=4)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--consumers", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    if args.mode == "dramatiq":
        os.environ["TRIOQ_BENCH_REDIS_URL"] = args.redis_url
    print("ready", flush=True)
    sys.stdin.readline()
    run = Run()
    cpu0, wall0 = time.process_time(), time.time()
    if args.mode == "dramatiq":
        dramatiq_load(args, run)
    else:
        trio.run({"batch": batch, "paced": paced, "rest": rest}[args.mode], args, run)
    result = {
        "first": run.first,
        "last": run.last,
        "submitted": run.submitted,
        "cpu": time.process_time() - cpu0,
        "wall": time.time() - wall0,
        "errors": run.errors,
        **run.extra,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
