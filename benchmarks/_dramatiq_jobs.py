"""The dramatiq side of ``bench_peers.py``: a Redis broker and a no-op actor.

    python -m dramatiq benchmarks._dramatiq_jobs --processes P --threads C

(from the repository root; needs ``pip install dramatiq[redis]``). The broker is a
``RedisBroker`` on ``$TRIOQ_BENCH_REDIS_URL`` with dramatiq's default middleware. As in
``_noop_jobs.py``, every message carries its submit time; a middleware notes the start in
``before_process_message`` (just before the actor runs), and in
``after_process_message`` (after the actor returned, just before the consumer
acknowledges the message to Redis) writes
``<message id> <submitted> <started> <completed>`` to
``$TRIOQ_BENCH_DIR/times-dramatiq-<pid>.txt`` through a 1 MB buffer, flushed when the
worker shuts down.
"""

from __future__ import annotations

import os
import threading
import time
from typing import IO, Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

_started: dict[str, tuple[float, float]] = {}
_lock = threading.Lock()
_out: IO[str] | None = None


class Timings(Middleware):
    """Record each message's times; flush them at worker shutdown."""

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        global _out
        directory = os.environ.get("TRIOQ_BENCH_DIR")
        if directory:
            name = f"times-dramatiq-{os.getpid()}.txt"
            _out = open(os.path.join(directory, name), "a", buffering=1 << 20)  # noqa: SIM115

    def before_process_message(self, broker: Any, message: Any) -> None:
        submitted = message.args[0] if message.args else float("nan")
        _started[message.message_id] = (submitted, time.time())

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        completed = time.time()
        submitted, started = _started.pop(message.message_id, (float("nan"), float("nan")))
        if _out is not None:
            with _lock:
                _out.write(f"{message.message_id} {submitted!r} {started!r} {completed!r}\n")

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        if _out is not None:
            with _lock:
                _out.close()


broker = RedisBroker(url=os.environ.get("TRIOQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
broker.add_middleware(Timings())
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def noop(submitted: float, index: int) -> None:
    """Do nothing (the middleware records the times)."""
