"""``python -m trioq.worker module:attr``: run a :class:`~trioq.Worker` from the shell.

Options: a command-line flag wins over the environment (``BROKER_URL``,
``TRIOQ_CONCURRENCY``, ...), which wins over the arguments given to ``Worker(...)``,
which win over the defaults. Exit codes: 0 after a drain (SIGINT/SIGTERM), 1 when
the broker cannot be used, 2 for a usage error (bad target, bad option).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

import trio

from .._errors import TrioqError
from ..client import DEFAULT_URL, Client, parse_urls
from ._runtime import Worker, describe

log = logging.getLogger("trioq.worker")

PROBE_DEADLINE = 5.0
"""Seconds the worker keeps trying to reach a broker at startup before it gives up."""


class UsageError(ValueError):
    """A bad target or option; the message is one line for the operator."""


def load_worker(spec: str) -> Worker:
    """Import ``module:attr`` and return the Worker it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{spec!r} is not module:attr (for example myapp.jobs:worker)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except (ImportError, TypeError) as exc:  # TypeError: a relative name (".jobs")
        raise UsageError(
            f"cannot import {module_name!r}: {exc}{_path_hint(module_name, attr)}"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(target, Worker):
        raise UsageError(f"{spec} is a {type(target).__name__}, not a trioq.Worker")
    if not target.handlers:
        raise UsageError(f"{spec} has no handlers registered (use @worker.job('type'))")
    return target


def _path_hint(module_name: str, attr: str) -> str:
    """A hint when a file path was given where a module path belongs."""
    if not module_name.endswith(".py") and "/" not in module_name and os.sep not in module_name:
        return ""
    dotted = module_name.removesuffix(".py").replace(os.sep, "/").removeprefix("./")
    dotted = ".".join(part for part in dotted.split("/") if part)
    return f" (a module path, not a file: did you mean {dotted}:{attr}?)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trioq.worker", description="Run a trioq worker's registered handlers."
    )
    parser.add_argument("target", help="module:attr naming a trioq.Worker")
    parser.add_argument(
        "--broker-url",
        help=f"broker URL(s), comma-separated (env BROKER_URL; default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--concurrency", type=int, help="jobs at once (env TRIOQ_CONCURRENCY; default 1)"
    )
    parser.add_argument(
        "--poll-interval-ms",
        type=int,
        help="long-poll wait of a claim (env TRIOQ_POLL_INTERVAL_MS; default 1000)",
    )
    parser.add_argument(
        "--heartbeat-interval-ms",
        type=int,
        help="job heartbeat interval, shortened to a third of the lease the broker grants "
        "(env TRIOQ_HEARTBEAT_INTERVAL_MS; default 5000)",
    )
    parser.add_argument(
        "--shutdown-grace-s",
        type=float,
        help="grace for running jobs at shutdown (env TRIOQ_SHUTDOWN_GRACE_S; default 30)",
    )
    parser.add_argument(
        "--group-commit-interval-ms",
        type=int,
        help="the broker's group commit interval: a stopping worker awaits a claim in "
        "flight at most this plus 1 s (env GROUP_COMMIT_INTERVAL_MS; default 2000)",
    )
    parser.add_argument("--token", help="bearer token (env TRIOQ_TOKEN)")
    parser.add_argument("--worker-id", help="env TRIOQ_WORKER_ID; default host-pid-random")
    parser.add_argument("--log-level", default="INFO")
    return parser


def configure(
    argv: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Worker, str]:
    """Load the target worker and apply the environment, then the flags; returns the
    worker and the log level.

    Raises :class:`UsageError` with a one-line message for the operator.
    """
    args = _parser().parse_args(argv)
    worker = load_worker(args.target)
    try:
        worker.apply_environment(dict(os.environ if environ is None else environ))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    s = worker.settings
    if args.broker_url:
        s.broker_url = args.broker_url
    if args.concurrency is not None:
        s.concurrency = args.concurrency
    if args.poll_interval_ms is not None:
        s.poll_interval = args.poll_interval_ms / 1000
    if args.heartbeat_interval_ms is not None:
        s.heartbeat_interval = args.heartbeat_interval_ms / 1000
    if args.shutdown_grace_s is not None:
        s.shutdown_grace = args.shutdown_grace_s
    if args.group_commit_interval_ms is not None:
        s.group_commit_interval = args.group_commit_interval_ms / 1000
    if args.token:
        s.token = args.token
    if args.worker_id:
        s.worker_id = args.worker_id
    if s.concurrency < 1:
        raise UsageError(f"concurrency must be >= 1, not {s.concurrency}")
    if (
        s.poll_interval < 0
        or s.heartbeat_interval <= 0
        or s.shutdown_grace < 0
        or s.group_commit_interval < 0
    ):
        raise UsageError(
            "poll interval, shutdown grace and group commit interval must be >= 0, "
            "heartbeat interval > 0"
        )
    try:
        # the URLs are checked here, so a typo is a usage error, not a retry loop
        parse_urls(s.broker_url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    level = str(args.log_level).upper()
    if not isinstance(logging.getLevelName(level), int):
        raise UsageError(f"unknown log level {args.log_level!r}")
    return worker, level


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    try:
        worker, level = configure(argv)
    except UsageError as exc:
        print(f"trioq worker: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return trio.run(_run_until_signalled, worker)
    except TrioqError as exc:
        print(f"trioq worker: {exc}", file=sys.stderr)
        return 1


async def _run_until_signalled(worker: Worker) -> int:
    """Probe the broker, run the worker; the first signal drains, the second aborts."""
    settings = worker.settings
    code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                count = 0
                async for signum in signals:
                    count += 1
                    if count == 1:
                        log.info(
                            "%s: draining (again to stop at once)", signal.Signals(signum).name
                        )
                        worker.drain()
                    else:
                        log.warning("%s again: stopping at once", signal.Signals(signum).name)
                        worker.abort()

            async def run(*, task_status: trio.TaskStatus[None]) -> None:
                await worker.run(task_status=task_status)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            async with Client(
                settings.broker_url, token=settings.token, retry_deadline=PROBE_DEADLINE
            ) as probe:
                try:
                    await probe.stats()
                except TrioqError as exc:
                    print(
                        f"trioq worker: broker {settings.broker_url} is not usable: "
                        f"{type(exc).__name__}: {exc}",
                        file=sys.stderr,
                    )
                    code = 1
                    nursery.cancel_scope.cancel()
                    return code
            await nursery.start(run)
            # the ready line: the worker is claiming now
            print(describe(worker), flush=True)
    return code
