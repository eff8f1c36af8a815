"""Submit N jobs to a broker and wait until those jobs have finished.

    python -m trioq.broker                                  # shell 1
    python -m trioq.worker examples.quickstart:worker       # shell 2
    python examples/submit.py 20                            # shell 3

It submits ``N`` ``image:resize`` jobs and one ``flaky`` job (it fails on its first
attempt and completes on its retry), all in one atomic batch, then polls each of its
own jobs by id (``client.get``) until it has finished: other jobs in the queue do not
keep it waiting.

The broker: ``--broker URL`` (a comma-separated list follows whichever broker leads),
else ``$TRIOQ_BROKER_URL``, else ``$BROKER_URL``, else ``http://127.0.0.1:8080``; a
token from ``$TRIOQ_TOKEN``. ``--timeout`` bounds the wait for the jobs (60 s by
default), and each call's retries while the broker is unreachable.

Exit status: 0 when every job completed; 1 when one was dead-lettered or cancelled,
the timeout passed first, or the broker could not be reached; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

import trio

import trioq

FINISHED = frozenset({"completed", "dead", "cancelled"})
"""The statuses a job does not leave."""

POLL_INTERVAL = 0.2
"""Seconds between two rounds of ``client.get`` on the unfinished jobs."""


def default_broker() -> str:
    """``$TRIOQ_BROKER_URL``, else ``$BROKER_URL`` (the worker's variable), else the
    local default."""
    return (
        os.environ.get("TRIOQ_BROKER_URL")
        or os.environ.get("BROKER_URL")
        or "http://127.0.0.1:8080"
    )


async def wait_for_jobs(client: trioq.Client, ids: list[str], statuses: dict[str, str]) -> None:
    """Poll each job in ``ids`` by id until it has finished, recording its latest
    status in ``statuses`` (the caller bounds the wait)."""
    while True:
        waiting = [job_id for job_id in ids if statuses.get(job_id) not in FINISHED]
        if not waiting:
            return
        async with trio.open_nursery() as nursery:
            for job_id in waiting:
                nursery.start_soon(_read_status, client, job_id, statuses)
        if any(statuses[job_id] not in FINISHED for job_id in waiting):
            await trio.sleep(POLL_INTERVAL)


async def _read_status(client: trioq.Client, job_id: str, statuses: dict[str, str]) -> None:
    statuses[job_id] = (await client.get(job_id))["status"]


async def main(count: int, broker: str, limit: float) -> int:
    """Submit the jobs, wait at most ``limit`` seconds for them; the exit status."""
    statuses: dict[str, str] = {}
    # retry_deadline: an unreachable broker is given up within the timeout too
    token = os.environ.get("TRIOQ_TOKEN")
    async with trioq.Client(broker, token=token, retry_deadline=limit) as client:
        specs = [
            trioq.JobSpec("image:resize", {"image": f"photo-{i}.png", "width": 100 + i})
            for i in range(count)
        ]
        specs.append(trioq.JobSpec("flaky", count))
        try:
            ids = await client.submit_many(specs)
        except trioq.TrioqError as exc:
            print(f"could not submit to {broker}: {exc}", file=sys.stderr)
            return 1
        print(f"submitted {len(ids)} jobs to {client.url}", flush=True)
        with trio.move_on_after(limit) as waited:
            try:
                await wait_for_jobs(client, ids, statuses)
            except trioq.TrioqError as exc:
                print(f"lost the broker while waiting: {exc}", file=sys.stderr)
                return 1
    counts = Counter(statuses.get(job_id, "unknown") for job_id in ids)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    if waited.cancelled_caught:
        print(f"timed out after {limit:g} s: {summary}")
        return 1
    if counts["completed"] != len(ids):
        print(f"not all jobs completed: {summary}")
        return 1
    print(f"all {len(ids)} jobs completed")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Submit N image:resize jobs and one flaky job, and wait for them by id. "
            "Exit status 0 when all completed, 1 otherwise (dead, cancelled, timeout, "
            "broker unreachable)."
        )
    )
    parser.add_argument("count", type=int, nargs="?", default=10, help="jobs to submit")
    parser.add_argument(
        "--broker",
        default=default_broker(),
        help=(
            "broker URL, or a comma-separated list (default: $TRIOQ_BROKER_URL, "
            "else $BROKER_URL, else http://127.0.0.1:8080)"
        ),
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the jobs (default 60)"
    )
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error("count must be >= 0")
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(trio.run(main, arguments.count, arguments.broker, arguments.timeout))
