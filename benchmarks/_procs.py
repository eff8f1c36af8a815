"""Process helpers of the end-to-end benchmarks (``bench_e2e.py``, ``bench_peers.py``).

Every process binds 127.0.0.1 (brokers on ``--port 0``, Redis on a free port), writes
its stdout and stderr to files in the row's directory, is awaited with a bounded
deadline (:data:`READY_TIMEOUT`) for a "ready" line, and is stopped in a ``finally``
block: its signal (SIGTERM by default), up to :data:`STOP_TIMEOUT` seconds, then
SIGKILL.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT / "tests"))

from _servers import S3Server  # noqa: E402

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# settings a broker or worker would read from this process's environment
_CLEAR_ENV = ("BROKER_", "STORAGE_BACKEND", "S3_", "TRIOQ_", "GROUP_COMMIT_", "JOB_HEARTBEAT_")


# ---------------------------------------------------------------- /proc and env


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (0.0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _processes() -> Iterator[tuple[int, str, int]]:
    """(pid, command name, parent pid) of every process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        yield int(entry.name), comm, int(text[text.rindex(")") + 2 :].split()[1])


def child_pids(name: str) -> list[int]:
    """Pids of this process's children whose command name is ``name``."""
    return [pid for pid, comm, ppid in _processes() if comm == name and ppid == os.getpid()]


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants (dramatiq's master and its worker processes)."""
    children = collections.defaultdict(list)
    for pid, _, ppid in _processes():
        children[ppid].append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children[pid])
    return found


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEAR_ENV)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def log_tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# -------------------------------------------------------------------- processes


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """``sig``, wait up to :data:`STOP_TIMEOUT` seconds, then SIGKILL and reap."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(
    process: subprocess.Popen[bytes], out: Path, ready: str, count: int = 1, log: Path | None = None
) -> str:
    """The first line of ``out`` (or of its stderr file ``log``) containing ``ready``,
    once ``count`` lines do (bounded)."""
    log = log or out.with_suffix(".log")
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        text = out.read_text(errors="replace") + "\n" + log_tail(log, 1 << 20)
        lines = [x for x in text.splitlines() if ready in x]
        if len(lines) >= count:
            return lines[0]
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log_tail(log)
            raise RuntimeError(
                f"{shlex_head(process)} did not start (exit {process.poll()}):\n{tail}"
            )
        time.sleep(0.02)


def shlex_head(process: subprocess.Popen[bytes]) -> str:
    args = process.args
    return " ".join(str(a) for a in (args[:5] if isinstance(args, list) else [args]))


@contextlib.contextmanager
def spawn(
    argv: Sequence[str],
    env: dict[str, str],
    out: Path,
    ready: str,
    *,
    count: int = 1,
    stop_signal: int = signal.SIGTERM,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run ``argv`` (stdout to ``out``, stderr to ``out.log``) until ``count`` lines of
    its stdout contain ``ready``; yields it and the first such line; stops it after."""
    with out.open("wb") as stdout, out.with_suffix(".log").open("wb") as stderr:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env, cwd=ROOT
        )
    try:
        yield process, wait_ready(process, out, ready, count)
    finally:
        stop(process, stop_signal)


@functools.cache
def worker_flags() -> frozenset[str]:
    """The flags ``python -m trioq.worker --help`` lists (``--prefetch`` is new)."""
    text = subprocess.run(
        [sys.executable, "-m", "trioq.worker", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env({}),
        check=False,
    ).stdout
    return frozenset(word.strip("[],") for word in text.split() if word.startswith(("--", "[--")))


def broker_argv(
    server: S3Server, bucket: str, interval_ms: int, extra: Sequence[str] = ()
) -> tuple[list[str], dict[str, str]]:
    argv = [
        sys.executable, "-m", "trioq.broker", "--host", "127.0.0.1", "--port", "0",
        "--storage", "s3", "--bucket", bucket, "--endpoint-url", server.endpoint_url,
        "--create", "--max-queued", "1000000", *extra,
    ]  # fmt: skip
    env = {
        "AWS_ACCESS_KEY_ID": server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": server.secret_access_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "GROUP_COMMIT_INTERVAL_MS": str(interval_ms),
    }
    return argv, env


def worker_argv(
    url: str, concurrency: int, interval_ms: int, prefetch: int | None = None
) -> list[str]:
    argv = [
        sys.executable, "-m", "trioq.worker", "benchmarks._noop_jobs:worker",
        "--concurrency", str(concurrency), "--broker-url", url, "--log-level", "WARNING",
        "--group-commit-interval-ms", str(interval_ms), "--shutdown-grace-s", "2",
    ]  # fmt: skip
    if prefetch is not None:
        argv += ["--prefetch", str(prefetch)]
    return argv


@dataclass
class Cluster:
    """A broker on a new bucket, and the workers started on it (see :func:`cluster`)."""

    url: str
    broker: subprocess.Popen[bytes]
    rowdir: Path
    interval_ms: int
    stack: contextlib.ExitStack
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self, concurrency: int, prefetch: int | None = None) -> float:
        """Start one more worker process; returns when it printed its ready line, with
        the ``time.time()`` it was spawned at."""
        env = clean_env({"PYTHONPATH": str(ROOT), "TRIOQ_BENCH_DIR": str(self.rowdir)})
        spawned = time.time()
        out = self.rowdir / f"w{len(self.workers)}.out"
        argv = worker_argv(self.url, concurrency, self.interval_ms, prefetch)
        process, _ = self.stack.enter_context(spawn(argv, env, out, "trioq worker "))
        self.workers.append(process)
        return spawned

    def stop_workers(self) -> None:
        """SIGTERM every worker (they drain and flush their time files) and reap them."""
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)  # once: a second one stops it at once
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self.workers:
            try:
                worker.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()

    def pids(self) -> dict[str, list[int]]:
        return {
            "workers": [w.pid for w in self.workers],
            "broker": [self.broker.pid],
            "seaweedfs": child_pids("weed"),
        }


@contextlib.contextmanager
def cluster(
    server: S3Server,
    rowdir: Path,
    interval_ms: int,
    *,
    processes: int = 0,
    concurrency: int = 1,
    prefetch: int | None = None,
    broker_extra: Sequence[str] = (),
) -> Iterator[Cluster]:
    """A broker subprocess on a new bucket of ``server`` and ``processes`` workers."""
    rowdir.mkdir(parents=True)
    argv, env = broker_argv(server, server.create_bucket(), interval_ms, broker_extra)
    with contextlib.ExitStack() as stack:
        broker, line = stack.enter_context(
            spawn(argv, clean_env(env), rowdir / "broker.out", "listening on")
        )
        url = line.split("listening on ", 1)[1].split()[0]
        group = Cluster(url, broker, rowdir, interval_ms, stack)
        for _ in range(processes):
            group.start_worker(concurrency, prefetch)
        yield group


# ---------------------------------------------------------------------- loaders


class Loaders:
    """``python benchmarks/_loader.py`` subprocesses: started, each waits on its stdin
    for "go", runs, and prints one JSON line of results (see ``_loader.py``)."""

    def __init__(self, rowdir: Path, argvs: list[list[str]], env: dict[str, str]) -> None:
        self.rowdir = rowdir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.outs: list[Path] = []
        for i, argv in enumerate(argvs):
            out = rowdir / f"loader{i}.out"
            with out.open("wb") as stdout, out.with_suffix(".log").open("wb") as stderr:
                process = subprocess.Popen(
                    [sys.executable, str(BENCH / "_loader.py"), *argv],
                    stdin=subprocess.PIPE,
                    stdout=stdout,
                    stderr=stderr,
                    env=env,
                    cwd=ROOT,
                )
            self.processes.append(process)
            self.outs.append(out)

    def wait_ready(self) -> None:
        for process, out in zip(self.processes, self.outs, strict=True):
            wait_ready(process, out, "ready")

    def go(self) -> float:
        """Start them all; returns ``time.time()``."""
        now = time.time()
        for process in self.processes:
            stdin: IO[bytes] | None = process.stdin
            assert stdin is not None
            stdin.write(b"go\n")
            stdin.close()
        return now

    def done(self) -> bool:
        return all(p.poll() is not None for p in self.processes)

    def results(self) -> list[dict[str, Any]]:
        found = []
        for process, out in zip(self.processes, self.outs, strict=True):
            stop(process)  # normally already exited
            lines = out.read_text(errors="replace").splitlines()
            if process.returncode != 0 or not lines or not lines[-1].startswith("{"):
                tail = log_tail(out.with_suffix(".log"))
                raise RuntimeError(f"loader exited with {process.returncode}:\n{tail}")
            found.append(json.loads(lines[-1]))
        return found

    def stop(self) -> None:
        for process in self.processes:
            if process.stdin is not None and not process.stdin.closed:
                process.stdin.close()
            stop(process)


@contextlib.contextmanager
def loaders(rowdir: Path, argvs: list[list[str]], extra_env: dict[str, str]) -> Iterator[Loaders]:
    group = Loaders(rowdir, argvs, clean_env({"PYTHONPATH": str(ROOT), **extra_env}))
    try:
        group.wait_ready()
        yield group
    finally:
        group.stop()


def loader_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over loader processes: their first and last submit, CPU, CPU % of wall."""
    first = min((r["first"] for r in results), default=math.nan)
    last = max((r["last"] for r in results), default=math.nan)
    cpu = sum(r["cpu"] for r in results)
    busiest = max((r["cpu"] / r["wall"] for r in results if r["wall"] > 0), default=math.nan)
    return {
        "loaders": len(results),
        "first_submit": first,
        "last_submitted": last,
        "submitted": sum(r["submitted"] for r in results),
        "loader_cpu_s": cpu,
        "loader_cpu_pct": 100 * busiest,
        "loader_saturated": busiest > 0.9,
        "loader_errors": [e for r in results for e in r.get("errors", [])][:5],
    }


# ---------------------------------------------------------------- measurements


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: ``name`` or ``name{labels}`` -> value."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                found[name] = float(value)
    return found


async def scrape(raw: httpx.AsyncClient, url: str) -> dict[str, float]:
    return parse_metrics((await raw.get(f"{url}/metrics")).text)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def read_times(rowdir: Path, pattern: str = "times-*.txt") -> list[tuple[float, float, float]]:
    """(submitted, started, completed) per job, from the workers' time files."""
    times = []
    for path in rowdir.glob(pattern):
        for record in path.read_text().splitlines():
            _, submitted, began, completed = record.split()
            times.append((float(submitted), float(began), float(completed)))
    return times


def latency_fields(times: list[tuple[float, float, float]]) -> dict[str, float]:
    to_start = [b - s for s, b, _ in times if not math.isnan(s)]
    to_done = [c - s for s, _, c in times if not math.isnan(s)]
    return {
        "start_p50_ms": 1000 * percentile(to_start, 50),
        "start_p99_ms": 1000 * percentile(to_start, 99),
        "complete_p50_ms": 1000 * percentile(to_done, 50),
        "complete_p99_ms": 1000 * percentile(to_done, 99),
    }


def warnings_in(rowdir: Path, pattern: str = "w*.log") -> collections.Counter[str]:
    """Worker log lines at WARNING and above, without their timestamps."""
    found: collections.Counter[str] = collections.Counter()
    for path in rowdir.glob(pattern):
        for record in path.read_text(errors="replace").splitlines():
            for level in (" WARNING ", " ERROR ", " CRITICAL "):
                if level in record:
                    found[level.strip() + " " + record.split(level, 1)[1][:160]] += 1
    return found


# ------------------------------------------------------------------ profiling


@contextlib.contextmanager
def py_spy(pid: int, out: Path) -> Iterator[None]:
    """``py-spy record`` on ``pid`` for the block (stopped with SIGINT: it then writes)."""
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None:
        print("py-spy not found: no profile", file=sys.stderr)
        yield
        return
    argv = [exe, "record", "-p", str(pid), "-f", "raw", "--nonblocking", "-r", "100"]
    with out.with_suffix(".log").open("wb") as log:
        process = subprocess.Popen(
            [*argv, "-o", str(out)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
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
