"""Submit N jobs from plain, non-async code with ``trioq.SyncClient`` and wait until
they have finished, polling each job's status.

    python -m trioq.worker examples.quickstart:worker      # in another shell
    python examples/sync_submit.py 20 --broker http://127.0.0.1:8080 --timeout 60

The broker URL comes from ``--broker``, else ``$TRIOQ_BROKER_URL``, else
``http://127.0.0.1:8080``; a token from ``$TRIOQ_TOKEN``. Exit status 0 when every
job completed, 1 when one was dead-lettered or cancelled or the timeout passed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import trioq

FINISHED = ("completed", "dead", "cancelled")
"""The statuses a job does not leave."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Submit jobs with trioq.SyncClient and wait for them to finish."
    )
    parser.add_argument("count", type=int, nargs="?", default=10, help="jobs to submit")
    parser.add_argument(
        "--broker",
        default=os.environ.get("TRIOQ_BROKER_URL", "http://127.0.0.1:8080"),
        help="broker URL (default: $TRIOQ_BROKER_URL or http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the jobs to finish"
    )
    args = parser.parse_args(argv)

    with trioq.SyncClient(args.broker, token=os.environ.get("TRIOQ_TOKEN")) as client:
        ids = [
            client.submit("image:resize", {"image": f"photo-{i}.png", "width": 100 + i})
            for i in range(args.count)
        ]
        print(f"submitted {len(ids)} jobs to {client.url}", flush=True)

        statuses: dict[str, str] = {}
        deadline = time.monotonic() + args.timeout
        while True:
            for job_id in ids:
                if statuses.get(job_id) not in FINISHED:
                    statuses[job_id] = client.get(job_id)["status"]
            waiting = [job_id for job_id in ids if statuses[job_id] not in FINISHED]
            if not waiting:
                break
            if time.monotonic() >= deadline:
                print(f"{len(waiting)} of {len(ids)} jobs not finished after {args.timeout:g} s")
                return 1
            time.sleep(0.2)  # a poll interval: the next round asks again

    failed = [job_id for job_id in ids if statuses[job_id] != "completed"]
    if failed:
        print(f"{len(failed)} of {len(ids)} jobs did not complete: {failed}")
        return 1
    print(f"all {len(ids)} jobs completed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
