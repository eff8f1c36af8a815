"""``python -m trioq.worker module:attr``: run a :class:`~trioq.Worker` from the shell.

Options: a command-line flag wins over the environment (``BROKER_URL``,
``TRIOQ_CONCURRENCY``, ...), which wins over the arguments given to ``Worker(...)``,
which win over the defaults (the rule of every trioq setting: :mod:`trioq._settings`).
Exit codes: 0 after a drain (SIGINT/SIGTERM), 1 when the broker cannot be used, 2 for
a usage error (bad target, bad option).

With ``--processes N`` (N > 1) the command supervises N worker processes
(:mod:`._supervisor`), each started as this command with the same arguments plus
``--processes 1`` (and ``--worker-id ID-k``, ``--metrics-port PORT+k-1`` for child
``k`` when those are set).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import trio

from .._errors import NotLeader, TrioqError
from .._logging import check_level, configure_logging
from .._settings import SettingsError
from .._signals import run_until_signalled
from ..client import Client
from ._settings import WorkerSettings
from ._supervisor import STOP_MARGIN, Supervisor
from ._worker import Worker

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
    except SettingsError as exc:  # a Worker(...) at import time, with a bad variable
        raise UsageError(str(exc)) from None
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
    try:
        target.check_handlers()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return target


def _path_hint(module_name: str, attr: str) -> str:
    """A hint when a file path was given where a module path belongs."""
    if not module_name.endswith(".py") and "/" not in module_name and os.sep not in module_name:
        return ""
    dotted = module_name.removesuffix(".py").replace(os.sep, "/").removeprefix("./")
    dotted = ".".join(part for part in dotted.split("/") if part)
    return f" (a module path, not a file: did you mean {dotted}:{attr}?)"


def _parser(prog: str = "python -m trioq.worker") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a trioq worker's registered handlers."
    )
    parser.add_argument("target", help="module:attr naming a trioq.Worker")
    WorkerSettings.add_arguments(parser)
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="log level: DEBUG (job starts and completions too), "
        "INFO, WARNING, ERROR (default: INFO)",
    )
    return parser


def configure(
    argv: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    prog: str = "python -m trioq.worker",
) -> tuple[Worker, str]:
    """Load the target worker and settle its settings (flags, then the environment,
    then its arguments); returns the worker and the log level.

    Raises :class:`UsageError` with a one-line message for the operator.
    """
    args = _parser(prog).parse_args(argv)
    worker = load_worker(args.target)
    try:
        worker._configure(environ=environ, args=args)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    try:
        level = check_level(args.log_level)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return worker, level


def describe(worker: Worker) -> str:
    """One line: the job types a worker handles and the broker it talks to."""
    settings = worker.settings
    prefetch = f"; prefetch {settings.prefetch}" if settings.prefetch else ""
    return (
        f"trioq worker {worker.worker_id}: types {', '.join(sorted(worker.handlers))}; "
        f"broker {settings.broker_url}; concurrency {settings.concurrency}{prefetch}"
    )


def main(argv: list[str] | None = None, *, prog: str = "python -m trioq.worker") -> int:
    """Entry point; returns the exit code."""
    try:
        worker, level = configure(argv, prog=prog)
    except UsageError as exc:
        print(f"trioq worker: {exc}", file=sys.stderr)
        return 2
    # text or JSON lines (--log-format); httpx kept at WARNING (a line per request)
    configure_logging(level, worker.settings.log_format)
    if worker.settings.processes > 1:
        try:
            commands = child_commands(sys.argv[1:] if argv is None else argv, worker.settings)
        except UsageError as exc:
            print(f"trioq worker: {exc}", file=sys.stderr)
            return 2
        return trio.run(_supervise, worker, commands)
    # Everything imported so far lives as long as the process: out of the collector's
    # sight, a full collection no longer walks it (a worker allocates a few objects
    # per job, and gen-2 passes over the startup heap cost ~10 us a job)
    gc.freeze()
    try:
        return trio.run(_run_until_signalled, worker)
    except TrioqError as exc:
        print(f"trioq worker: {exc}", file=sys.stderr)
        return 1


async def _run_until_signalled(worker: Worker) -> int:
    """Probe the broker, run the worker; the first signal drains, the second aborts."""

    async def serve() -> int:
        if not await _broker_usable(worker.settings):
            return 1
        async with contextlib.AsyncExitStack() as stack:
            if worker._client is None:
                # the worker's own client would not know --ca-file: hand it one that
                # does (the worker leaves a client it was given open; the stack closes it)
                worker._client = await stack.enter_async_context(_client(worker.settings))
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                print(describe(worker), flush=True)  # the ready line: claiming now
        return 0

    return await run_until_signalled(serve, drain=worker.drain, abort=worker.abort, log=log)


def child_commands(argv: list[str], settings: WorkerSettings) -> list[list[str]]:
    """The command of each supervised worker process: this one's arguments, and
    ``--processes 1`` (a later flag wins); child ``k`` (1..N) gets ``--worker-id
    ID-k`` when a worker id is set, and ``--metrics-port PORT+k-1`` when a non-zero
    metrics port is (0 stays 0: each a free port)."""
    count = settings.processes
    port = settings.metrics_port
    if port and port + count - 1 > 65535:
        raise UsageError(
            f"--metrics-port {port} with --processes {count}: the last worker's port "
            f"would be {port + count - 1}, above 65535"
        )
    commands = []
    for k in range(1, count + 1):
        command = [sys.executable, "-m", "trioq.worker", *argv, "--processes", "1"]
        if settings.worker_id is not None:
            command += ["--worker-id", f"{settings.worker_id}-{k}"]
        if port:
            command += ["--metrics-port", str(port + k - 1)]
        commands.append(command)
    return commands


async def _supervise(worker: Worker, commands: list[list[str]]) -> int:
    """Probe the broker, then supervise the worker processes until a signal (the
    first stops them with a drain, the second makes each stop at once)."""
    settings = worker.settings
    supervisor = Supervisor(commands, stop_deadline=settings.shutdown_grace + STOP_MARGIN)

    async def serve() -> int:
        if not await _broker_usable(settings):
            return 1
        # the ready line: the worker processes are being started
        print(
            f"trioq worker supervisor (pid {os.getpid()}): {len(commands)} worker "
            f"processes; types {', '.join(sorted(worker.handlers))}; "
            f"broker {settings.broker_url}",
            flush=True,
        )
        return await supervisor.run()

    return await run_until_signalled(serve, drain=supervisor.stop, abort=supervisor.abort, log=log)


async def _broker_usable(settings: WorkerSettings) -> bool:
    """Whether the broker answers (within :data:`PROBE_DEADLINE`); if not, says why.

    A broker that answers ``NotLeader`` is usable: the brokers are electing (the
    leader just died, a standby waits out its lease), and the worker's claims wait
    for the new leader as they do after any failover. What fails the start is what
    waiting does not fix: no broker answering (a wrong URL), a refused token."""
    async with _client(settings, retry_deadline=PROBE_DEADLINE) as probe:
        try:
            await probe.stats()
        except NotLeader as exc:
            log.warning("no broker leads yet (%s); starting, claims wait for a leader", exc)
        except TrioqError as exc:
            print(
                f"trioq worker: broker {settings.broker_url} is not usable: "
                f"{type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
            return False
    return True


def _client(settings: WorkerSettings, *, retry_deadline: float | None = None) -> Client:
    """A client of the settings' broker, with their token and CA bundle (and the
    client's default retry deadline unless told)."""
    if retry_deadline is None:
        return Client(settings.broker_url, token=settings.token, verify=settings.verify)
    return Client(
        settings.broker_url,
        token=settings.token,
        verify=settings.verify,
        retry_deadline=retry_deadline,
    )
