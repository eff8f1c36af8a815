"""Core benchmark: what one mutation and one commit cost at growing queue depths.

Run on demand (it asserts nothing, it prints tables)::

    python benchmarks/bench_core.py            # depths 1k, 10k, 100k
    python benchmarks/bench_core.py --quick    # fewer operations and repetitions

Table 1, "apply": the in-memory cost of one mutation (microseconds per call) on a
queue already holding ``depth`` jobs, 10% of them in progress, spread over four
types. The goal is a flat row: no mutation may scan or copy the job list.

Table 2, "commit": serializing the whole document (``QueueState.encode``) and
writing it (``Storage.write`` with a compare-and-set) at the same depths, with
100-byte payloads, on :class:`~trioq.MemoryStorage` and :class:`~trioq.FileStorage`
(fsync + atomic rename in a temporary directory). "warm" is a normal commit, where
only the jobs a batch touched are re-encoded; "cold" re-encodes every job (the
worst case). The goal for 100k jobs is a warm commit under 250 ms. "decode" is
loading the document (``QueueState.decode``: election, takeover, reload).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
import trio

from trioq import FileStorage, MemoryStorage, Storage
from trioq.core._state import Limits, NewJob, QueueState

PAYLOAD = {"data": "x" * 89}
PAYLOAD_BYTES = len(orjson.dumps(PAYLOAD))
TYPES = ("email", "resize", "report", "sync")
WORKERS = [f"worker-{i:03d}" for i in range(50)]
DEPTHS = (1_000, 10_000, 100_000)
GOAL_MS = 250.0
NOW = 1_750_000_000_000


@dataclass
class Run:
    ops: int
    reps: int


def build(depth: int) -> QueueState:
    """A queue with ``depth`` jobs (10% in progress), as a broker finds it after
    loading the document (fresh indexes, every record's encoding cached)."""
    state = QueueState(limits=Limits(max_queued=10 * depth + 100_000), rng=random.Random(7))
    batch = 1000
    for start in range(0, depth, batch):
        state.enqueue(
            [
                NewJob(PAYLOAD, type=TYPES[i % len(TYPES)], id=f"job-{i:09d}")
                for i in range(start, min(depth, start + batch))
            ],
            NOW,
        )
    for i in range(depth // 10):
        state.claim(WORKERS[i % len(WORKERS)], NOW + 1)
    return QueueState.decode(state.encode(), limits=state.limits, rng=state.rng)


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes (after a garbage collection, so earlier garbage is not billed)."""
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def apply_costs(depth: int, run: Run) -> dict[str, float]:
    """Microseconds per call of each mutation, at ``depth`` (best of ``run.reps``)."""
    best: dict[str, float] = {}
    for rep in range(run.reps):
        for name, seconds in apply_once(depth, min(run.ops, depth // 4), rep).items():
            best[name] = min(best.get(name, float("inf")), seconds)
    return {name: seconds * 1e6 for name, seconds in best.items()}


def apply_once(depth: int, n: int, rep: int) -> dict[str, float]:
    """Seconds per call of each mutation, ``n`` calls each, on a fresh queue."""
    state = build(depth)
    now = NOW + 10
    held: list[tuple[str, str, int]] = []
    new_ids = iter(range(10**8 + rep * 10**6, 10**9))

    def enqueue() -> None:
        for _ in range(n):
            state.enqueue([NewJob(PAYLOAD, type="email", id=f"new-{next(new_ids)}")], now)

    def claim() -> None:
        for i in range(n):
            worker = WORKERS[i % len(WORKERS)]
            for job in state.claim(worker, now):
                held.append((job.id, worker, job.attempt))

    def claim_typed() -> None:
        for i in range(n):
            worker = WORKERS[i % len(WORKERS)]
            for job in state.claim(worker, now, types=("report", "sync")):
                held.append((job.id, worker, job.attempt))

    def heartbeat() -> None:
        for job_id, worker, attempt in held[:n]:
            state.heartbeat(job_id, worker, now + 1, attempt)

    def fail() -> None:
        for job_id, worker, attempt in held[:n]:
            state.fail(job_id, worker, now + 2, error="boom", attempt=attempt)

    def complete() -> None:
        for job_id, worker, attempt in held[n : 2 * n]:
            state.complete(job_id, worker, now + 2, attempt)

    def expire() -> None:
        state.expire(now + state.limits.job_lease_ms + 10)

    def commit() -> None:
        # one commit: a batch of mixed mutations, then the one serialization
        t = now + state.limits.job_lease_ms + 20
        for i in range(n // 4):
            worker = WORKERS[i % len(WORKERS)]
            state.enqueue([NewJob(PAYLOAD, id=f"new-{next(new_ids)}")], t)
            for job in state.claim(worker, t):
                state.heartbeat(job.id, worker, t, job.attempt)
                state.complete(job.id, worker, t, job.attempt)
        state.encode()

    results = {
        "enqueue": timed(enqueue) / n,
        "claim": timed(claim) / n,
        "claim typed": timed(claim_typed) / n,
        "heartbeat": timed(heartbeat) / n,
        "fail (retry)": timed(fail) / n,
        "complete": timed(complete) / n,
    }
    if len(held) < 2 * n:
        raise RuntimeError(f"only {len(held)} claims succeeded; the queue is too shallow")
    results["batch+encode"] = timed(commit)
    expired_before = state.counters["expired"]
    seconds = timed(expire)
    results["expire (per lease)"] = seconds / max(1, state.counters["expired"] - expired_before)
    return results


@dataclass
class CommitCost:
    size: int
    warm_encode: float
    cold_encode: float
    write: float
    decode: float


async def commit_costs(state: QueueState, storage: Storage, reps: int) -> CommitCost:
    key = "queue.json"
    data = state.encode()
    version = await storage.create(key, data)
    warm: list[float] = []
    cold: list[float] = []
    writes: list[float] = []
    decodes: list[float] = []
    jobs = list(state.jobs.values())
    for rep in range(reps):
        # a normal commit: a handful of jobs changed since the last one
        for job in jobs[rep * 50 : rep * 50 + 50]:
            job.encoded = None
        state.seq += 1
        gc.collect()
        start = time.perf_counter()
        data = state.encode()
        warm.append(time.perf_counter() - start)
        start = time.perf_counter()
        version = await storage.write(key, data, if_match=version)
        writes.append(time.perf_counter() - start)
        # the worst case: every job re-encoded
        for job in jobs:
            job.encoded = None
        gc.collect()
        start = time.perf_counter()
        state.encode()
        cold.append(time.perf_counter() - start)
        gc.collect()
        start = time.perf_counter()
        QueueState.decode(data)
        decodes.append(time.perf_counter() - start)
    return CommitCost(
        size=len(data),
        warm_encode=statistics.median(warm),
        cold_encode=statistics.median(cold),
        write=statistics.median(writes),
        decode=statistics.median(decodes),
    )


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    print(f"\n{title}")
    for cells in (header, ["-" * w for w in widths], *rows):
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer operations and repetitions")
    parser.add_argument(
        "--depths", type=int, nargs="+", default=list(DEPTHS), help="queue depths to measure"
    )
    args = parser.parse_args(argv)
    depths: list[int] = args.depths
    run = Run(ops=500, reps=1) if args.quick else Run(ops=2000, reps=3)
    commit_reps = 3 if args.quick else 7
    print(
        f"trioq core benchmark: python {sys.version.split()[0]}, orjson {orjson.__version__}, "
        f"{PAYLOAD_BYTES}-byte payloads, up to {run.ops} calls per mutation "
        f"(depth/4 at most), best of {run.reps}"
    )

    apply = {depth: apply_costs(depth, run) for depth in depths}
    names = list(apply[depths[0]])
    rows = [
        [
            name,
            *(f"{apply[d][name]:.1f}" for d in depths),
            f"{apply[depths[-1]][name] / apply[depths[0]][name]:.2f}x",
        ]
        for name in names
        if name != "batch+encode"
    ]
    print_table(
        "apply cost per mutation (µs per call; goal: flat)",
        ["mutation", *(f"{d:,} jobs" for d in depths), f"{depths[-1]:,}/{depths[0]:,}"],
        rows,
    )
    print(
        "  (one commit, n/4 x enqueue+claim+heartbeat+complete then encode: "
        + ", ".join(f"{apply[d]['batch+encode'] / 1000:.1f} ms at {d:,}" for d in depths)
        + ")"
    )

    rows = []
    with tempfile.TemporaryDirectory(prefix="trioq-bench-") as tmp:
        for depth in depths:
            state = build(depth)
            storages: list[tuple[str, Storage]] = [
                ("memory", MemoryStorage()),
                ("file", FileStorage(f"{tmp}/{depth}")),
            ]
            for name, storage in storages:
                cost = trio.run(commit_costs, state, storage, commit_reps)
                total = (cost.warm_encode + cost.write) * 1000
                rows.append(
                    [
                        f"{depth:,} jobs, {name}",
                        f"{cost.size / 1e6:.1f}",
                        f"{cost.warm_encode * 1000:.1f}",
                        f"{cost.cold_encode * 1000:.1f}",
                        f"{cost.write * 1000:.1f}",
                        f"{total:.1f}",
                        "ok" if depth < 100_000 or total < GOAL_MS else "MISSED",
                        f"{cost.decode * 1000:.0f}",
                    ]
                )
    print_table(
        f"serialize + write the whole document (ms, median of {commit_reps}; "
        f"goal at 100k: warm encode + write < {GOAL_MS:.0f} ms)",
        [
            "depth, storage",
            "MB",
            "encode warm",
            "encode cold",
            "write",
            "warm+write",
            "goal",
            "decode",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
