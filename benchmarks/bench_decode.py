"""Decode benchmark: how long loading a large queue document takes, and how long the
event loop goes without running while it loads.

Run on demand (it asserts nothing, it prints a table)::

    python benchmarks/bench_decode.py             # 100k jobs
    python benchmarks/bench_decode.py --jobs 10000

A broker decodes the whole document when it takes over, and when it reloads after a
write whose outcome it could not establish. ``decode_async`` works in steps of a few
hundred records with a checkpoint between them; a ticker task measures the longest
gap between two of its 1 ms sleeps meanwhile. Rows: the line layout this trioq writes
and the compact layout of trioq 0.1 (parsed whole in a thread: one GIL-holding
``orjson.loads``), each with the collector running as usual and with the engine's
``freeze_loaded_state`` (collector paused, loaded records frozen).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import orjson
import trio

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import build

from trioq.core._state import QueueState


async def measure(data: bytes, *, freeze: bool) -> tuple[float, float]:
    """(seconds to decode, longest loop gap in seconds)."""
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done:
            await trio.sleep(0.001)
            now = time.perf_counter()
            worst, last = max(worst, now - last), now

    gc.collect()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.sleep(0.01)
        if freeze:
            gc.disable()
        start = time.perf_counter()
        state = await QueueState.decode_async(data)
        took = time.perf_counter() - start
        if freeze:
            gc.freeze()
            gc.enable()
        done = True
    del state
    if freeze:
        gc.unfreeze()
    return took, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    data = build(args.jobs).encode()
    legacy = orjson.dumps(orjson.loads(data))
    start = time.perf_counter()
    QueueState.decode(data)
    sync = time.perf_counter() - start
    print(f"{args.jobs} jobs, {len(data) / 1e6:.1f} MB; QueueState.decode (sync): {sync:.2f} s")
    print("| layout | collector | decode_async s | longest loop gap ms |")
    print("|---|---|---|---|")
    for name, document in (("line (this trioq)", data), ("compact (trioq 0.1)", legacy)):
        for freeze in (False, True):
            took, worst = trio.run(lambda d=document, f=freeze: measure(d, freeze=f))
            collector = "paused + frozen" if freeze else "as usual"
            print(f"| {name} | {collector} | {took:.2f} | {worst * 1000:.0f} |")


if __name__ == "__main__":
    main()
