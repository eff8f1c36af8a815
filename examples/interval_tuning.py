"""What the group commit interval costs and buys: storage writes against submit latency.

    python examples/interval_tuning.py --seconds 5 --rate 200

For each interval (``--intervals``, default 50, 500 and 2000 ms) this starts a broker
(``python -m trioq.broker --storage file``, on a new directory, 127.0.0.1, a free
port, ``--group-commit-interval-ms`` set), offers it the same fixed load for
``--seconds`` (``--rate`` submits a second, each started on schedule whether or not
the earlier ones have been answered: an open loop, so a slow row cannot lower its own
load), and counts:

- **writes**: the broker's commits in the window, from its ``/metrics``
  (``trioq_commits_total``): one storage write each (a log record; an idle broker
  also commits once per broker heartbeat, 3 s). A window shorter than the interval
  may hold no write at all; **jobs/write** divides the submits by the commits that
  carried them (from the window's start until the last submit was answered);
- **objects**: the objects created in the broker's data directory in the same window,
  counted on disk (the log records, and any checkpoint): the storage's own count;
- **submit latency**: from the call to ``client.submit`` to its answer, which comes
  once the commit holding the job is written. All submits go through one
  ``trioq.Client``, which coalesces concurrent submits into bulk requests and keeps
  at most two of them out at once: under a steady load, the jobs that arrive while
  both wait for a commit go in the commit after it, so p50 is about one and a half
  intervals (not half of one) and p99 about two.

It prints one row per interval, in the shape of the table in docs/performance.md::

    | interval | submits/s | writes/s | writes/min | jobs/write | objects | p50 ms | p99 ms |

The interval is the minimum spacing between two writes, so writes/s stays near
``1000 / interval`` whatever the load: the price is latency. Every broker is stopped (SIGTERM, then SIGKILL) and
its directory removed before the next row; a row takes ``--seconds``, plus about
two of its intervals for the last submits' answers, plus a second or two to start
and stop its broker. Exit status 0 when every row completed its submits, 1 otherwise,
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

import trioq

READY_LINE = re.compile(r"^trioq broker \S+ listening on (http://\S+) as leader")
COMMITS = re.compile(r"^trioq_commits_total (\S+)$", re.MULTILINE)
START_TIMEOUT = 30.0
"""Seconds a broker gets to print its ready line."""
STOP_TIMEOUT = 10.0
"""Seconds a broker gets to stop after SIGTERM before SIGKILL."""


@dataclass
class Row:
    """One interval's measurements."""

    interval_ms: int
    seconds: float
    submitted: int
    failed: int
    writes: int
    """Commits in the window."""
    carrying: int
    """Commits from the window's start until the last submit was answered: the ones
    that carried the submits (jobs/write divides by these)."""
    objects: int
    latencies: list[float]

    def cells(self) -> list[str]:
        """The row's table cells."""
        per_write = f"{self.submitted / self.carrying:.1f}" if self.carrying else "-"
        return [
            f"{self.interval_ms} ms",
            f"{self.submitted / self.seconds:.0f}",
            f"{self.writes / self.seconds:.1f}",
            f"{self.writes / self.seconds * 60:.0f}",
            per_write,
            str(self.objects),
            f"{percentile(self.latencies, 50) * 1000:.0f}",
            f"{percentile(self.latencies, 99) * 1000:.0f}",
        ]


HEADER = ["interval", "submits/s", "writes/s", "writes/min", "jobs/write", "objects"]
HEADER += ["p50 ms", "p99 ms"]


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile of ``values`` (NaN for none)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def count_objects(directory: Path) -> set[str]:
    """The file backend's objects in ``directory``: one file each (the names that
    start with a dot are its lock and temp files, not objects)."""
    return {entry.name for entry in directory.iterdir() if not entry.name.startswith(".")}


async def commits(http: httpx.AsyncClient, url: str) -> int:
    """The broker's ``trioq_commits_total``."""
    answer = await http.get(f"{url}/metrics")
    answer.raise_for_status()
    match = COMMITS.search(answer.text)
    if match is None:
        raise RuntimeError(f"no trioq_commits_total in {url}/metrics")
    return int(float(match[1]))


async def read_ready_line(process: trio.Process) -> str:
    """The broker's URL, from the first line it prints."""
    assert process.stdout is not None
    buffer = b""
    with trio.fail_after(START_TIMEOUT):
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some(4096)
            if not chunk:
                break
            buffer += chunk
    line = buffer.decode(errors="replace").split("\n", 1)[0]
    match = READY_LINE.match(line)
    if match is None:
        raise RuntimeError(f"the broker did not start (exit {process.poll()}): {line!r}")
    return match[1]


async def stop(process: trio.Process) -> None:
    """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT` seconds; reaps it."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.terminate()
            with trio.move_on_after(STOP_TIMEOUT):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


async def measure(interval_ms: int, seconds: float, rate: float, workdir: Path) -> Row:
    """Start a broker with this interval, offer it the load, stop it; its row."""
    data = workdir / f"queue-{interval_ms}ms"
    with (workdir / f"broker-{interval_ms}ms.log").open("wb") as log:
        process = await trio.lowlevel.open_process(
            [
                sys.executable, "-m", "trioq.broker", "--storage", "file",
                "--data-dir", str(data), "--host", "127.0.0.1", "--port", "0",
                "--group-commit-interval-ms", str(interval_ms),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )  # fmt: skip
    try:
        url = await read_ready_line(process)
        async with (
            trioq.Client(url, retry_deadline=10) as client,
            httpx.AsyncClient(timeout=5) as http,
        ):
            await client.submit("tuning:noop", -1)  # the first commit after startup
            latencies: list[float] = []
            failed = 0

            async def one(n: int) -> None:
                nonlocal failed
                began = trio.current_time()
                try:
                    await client.submit("tuning:noop", n)
                except trioq.TrioqError:
                    failed += 1
                else:
                    latencies.append(trio.current_time() - began)

            before_objects = await trio.to_thread.run_sync(count_objects, data)
            before = await commits(http, url)
            start = trio.current_time()
            total = math.floor(seconds * rate)
            async with trio.open_nursery() as nursery:
                for n in range(total):
                    await trio.sleep_until(start + n / rate)
                    nursery.start_soon(one, n)
                await trio.sleep_until(start + seconds)
                # the window ends here; the submits still out are waited for below
                after = await commits(http, url)
                objects = len(await trio.to_thread.run_sync(count_objects, data) - before_objects)
                nursery.cancel_scope.deadline = trio.current_time() + interval_ms / 1000 + 10
            carrying = await commits(http, url) - before
        failed = total - len(latencies)  # refused, or cut off by that deadline
        return Row(
            interval_ms,
            seconds,
            len(latencies),
            failed,
            after - before,
            carrying,
            objects,
            latencies,
        )
    finally:
        await stop(process)


def table(rows: list[Row]) -> str:
    """A markdown table of the rows."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


async def main(intervals: list[int], seconds: float, rate: float) -> int:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="trioq-tuning-") as workdir:
        for interval_ms in intervals:
            row = await measure(interval_ms, seconds, rate, Path(workdir))
            print(
                f"interval {interval_ms} ms: {row.submitted} submits, {row.writes} writes, "
                f"{row.failed} failed",
                flush=True,
            )
            rows.append(row)
    print(f"\n{rate:g} submits/s offered for {seconds:g} s per interval, file storage\n")
    print(table(rows), flush=True)
    return 1 if any(row.failed for row in rows) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Storage writes/s and submit latency per group commit interval."
    )
    parser.add_argument(
        "--intervals",
        default="50,500,2000",
        help="group commit intervals in ms, comma-separated (50,500,2000)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration per interval (5)")
    parser.add_argument("--rate", type=float, default=200.0, help="submits per second (200)")
    args = parser.parse_args(argv)
    try:
        args.intervals = [int(part) for part in args.intervals.split(",")]
    except ValueError:
        parser.error("--intervals: comma-separated integers (milliseconds)")
    if any(ms < 0 for ms in args.intervals) or args.seconds <= 0 or args.rate <= 0:
        parser.error("intervals must be >= 0, --seconds and --rate > 0")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(trio.run(main, arguments.intervals, arguments.seconds, arguments.rate))
