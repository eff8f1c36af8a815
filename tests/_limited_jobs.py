"""A worker for ``test_type_rules``: ``slow`` sleeps 0.3 s in a thread and returns
its own start and end (wall clock), so a test can count how many ran at once."""

from __future__ import annotations

import time

import trioq

worker = trioq.Worker(concurrency=4, poll_interval=0.05)


@worker.job("slow")
def slow(payload: int) -> list[float]:
    started = time.time()
    time.sleep(0.3)
    return [started, time.time()]
