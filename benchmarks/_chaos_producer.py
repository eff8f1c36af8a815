"""A producer process of the chaos harness (``benchmarks/chaos.py``).

    python benchmarks/_chaos_producer.py --urls URL[,URL...] --mode ids|noid --n N \\
        --rate R --seconds S --seed SEED --out PATH

Submits ``chaos`` jobs (``{"k": key, "s": seconds}``) through one ``trioq.Client`` on
every broker URL, about ``--rate`` per second (exponential gaps), for ``--seconds``,
then exits by itself:

- ``ids``: each job has a client-chosen id (``ids-<n>-<count>``); a failed submit is
  retried with the same id until it is acknowledged;
- ``noid``: no id; a failed (possibly ambiguous) submit is retried as a new submit, as
  an osqueue client does, with a 3 s client retry deadline so that such failures
  surface. The same payload key may then be stored under two ids.

Payload keys are ``<mode>-k<n>-<count>``, unique across producers. Every line goes to
``--out``, line-buffered, so a ``kill -9`` loses at most the line being written::

    T <id or -> <key>            about to submit (the id the ids mode will use)
    A <id> <key> <time.time()>   acknowledged
    F <exception type> <time>    a failed submit, retried
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import IO

import trio

import trioq


async def produce(args: argparse.Namespace, out: IO[str]) -> None:
    with_ids = args.mode == "ids"
    rng = random.Random(f"{args.seed}-{args.mode}-{args.n}")
    deadline = 30.0 if with_ids else 3.0  # noid: ambiguous failures surface sooner
    async with trioq.Client(args.urls.split(","), retry_deadline=deadline) as client:
        for count in range(1, 10**9):
            key = f"{args.mode}-k{args.n}-{count}"
            payload = {"k": key, "s": round(rng.uniform(0.02, 0.3), 3)}
            job_id = f"ids-{args.n}-{count}" if with_ids else None
            out.write(f"T {job_id or '-'} {key}\n")
            while True:
                try:
                    got = await client.submit("chaos", payload, id=job_id, max_attempts=1000)
                except Exception as exc:  # every failure is retried (bounded by the run)
                    out.write(f"F {type(exc).__name__} {time.time()!r}\n")
                    await trio.sleep(0.2)
                    continue
                out.write(f"A {got} {key} {time.time()!r}\n")
                break
            await trio.sleep(rng.expovariate(args.rate))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--urls", required=True)
    parser.add_argument("--mode", choices=("ids", "noid"), required=True)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    async def run() -> None:
        # a submit in flight at the end may land or not: it is not acknowledged
        with trio.move_on_after(args.seconds):
            await produce(args, out)

    with open(args.out, "a", buffering=1) as out:
        print("producer ready", flush=True)
        trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
