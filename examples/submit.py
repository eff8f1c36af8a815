"""Submit N jobs to a broker and wait until they are done: ``python examples/submit.py 20``."""

from __future__ import annotations

import os
import sys

import trio

import trioq


async def main(count: int) -> None:
    url = os.environ.get("BROKER_URL", "http://127.0.0.1:8080")
    async with trioq.Client(url, token=os.environ.get("TRIOQ_TOKEN")) as client:
        specs = [
            trioq.JobSpec("image:resize", {"image": f"photo-{i}.png", "width": 100 + i})
            for i in range(count)
        ]
        specs.append(trioq.JobSpec("flaky", count))
        ids = await client.submit_many(specs)
        print(f"submitted {len(ids)} jobs to {client.url}")
        with trio.move_on_after(60):
            while True:
                stats = await client.stats()
                if stats["total"] == 0:
                    break
                print(f"waiting: {stats['unclaimed']} queued, {stats['inProgress']} running")
                await trio.sleep(1)
        print(await client.stats())


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 10)
