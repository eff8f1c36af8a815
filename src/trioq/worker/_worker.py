"""``trioq.Worker``: decorator-registered handlers run under structured concurrency.

Shape of a running worker::

    Worker.run                probes the broker, then calls task_status.started()
    ├── courier (shielded)    every report and claim, one exchange per round  (_courier)
    │   └── exchange tasks    at most two with reports, plus one long-poll claim
    ├── stop watcher          turns cancellation of run() into a drain
    ├── metrics server        /metrics, only with --metrics-port     (_metrics)
    ├── (process pool)        run="process" handlers' processes  (_processes; not a task)
    └── job host (shielded)   owns one nursery per held job       (_host.JobHost)
        └── job nursery       its heartbeat task + the handler    (_job.JobRunner)

- The worker holds at most ``concurrency + prefetch`` jobs. The courier claims the
  free room in each exchange, and starts a job task for each job it gets.
- A ``trio.CapacityLimiter`` (``concurrency`` tokens) is taken inside each job's
  nursery around its handler, so prefetched jobs wait for a slot with their leases
  kept.
- The heartbeat task renews the lease at least three times per granted ``leaseMs``
  through the courier, and cancels the handler when the lease is lost (see
  :mod:`._job`).
- An exchange that carries a claim is never cancelled outright (that could strand
  the jobs it took for a lease). Once a stop is asked for, it is awaited at most one
  group commit interval plus one second, never past the grace, then given up; jobs
  it brings are released at once.
- ``run="process"`` handlers run in a pool of processes (``trio-parallel``) held open
  around the nursery: a job's cancellation (lease lost, timeout, grace over) kills
  its process.
- The job host and the courier are shielded from the caller's cancellation, so a
  drain (signal, :meth:`Worker.drain`, or cancellation of ``run``) releases the
  prefetched jobs at once and gives running ones a grace period counted from the
  stop; then they are cancelled and released so another worker takes them at once.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import trio

from .._backoff import backoff_delay
from .._errors import TrioqError
from ..client import Client
from ._courier import Courier
from ._handlers import (
    Handler,
    Hook,
    Hooks,
    JobContext,
    RetryPolicy,
    RunMode,
    check_registration,
    make_handler,
)
from ._host import JobHost, Slots
from ._job import JobRunner
from ._metrics import WorkerMetrics, serve_metrics
from ._outage import Outage
from ._processes import ProcessPool, check_picklable, default_size
from ._settings import WorkerSettings

log = logging.getLogger("trioq.worker")

RETRY_WINDOW = 2.0
"""Seconds one probe or exchange keeps retrying inside the client (connection errors,
503 answers) before the worker logs the failure and backs off."""

BACKOFF_BASE = 0.5
"""The worker's first wait after a failed probe or exchange; it doubles with each
failure in a row, with jitter (:func:`trioq._backoff.backoff_delay`)."""

BACKOFF_MAX = 10.0
"""Cap on the worker's wait between two failed probes or exchanges."""

F = TypeVar("F", bound=Callable[..., Any])


class Worker:
    """Runs registered handlers for claimed jobs.

    ::

        worker = trioq.Worker(concurrency=5)

        @worker.job("email:send", timeout=60)
        async def send_email(payload: Email, ctx: trioq.JobContext) -> None: ...

        # in a trio program:      await nursery.start(worker.run)
        # from the command line:  python -m trioq.worker myapp.jobs:worker

    The environment (``BROKER_URL``, ``TRIOQ_CONCURRENCY``, ...) wins over the
    arguments given here, embedded or not, and under ``python -m trioq.worker`` its
    flags win over both (:class:`~trioq.worker._settings.WorkerSettings`). Durations
    are seconds. An invalid value raises ``ValueError`` (one line) here.
    """

    def __init__(
        self,
        *,
        broker_url: str | None = None,
        concurrency: int | None = None,
        prefetch: int | None = None,
        poll_interval: float | None = None,
        heartbeat_interval: float | None = None,
        shutdown_grace: float | None = None,
        token: str | None = None,
        worker_id: str | None = None,
        group_commit_interval: float | None = None,
        client: Client | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        given = {
            "broker_url": broker_url,
            "concurrency": concurrency,
            "prefetch": prefetch,
            "poll_interval": poll_interval,
            "heartbeat_interval": heartbeat_interval,
            "shutdown_grace": shutdown_grace,
            "token": token,
            "worker_id": worker_id,
            "group_commit_interval": group_commit_interval,
        }
        self._arguments: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        self.settings = WorkerSettings(**self._arguments)
        self.handlers: dict[str, Handler] = {}
        self.schedules: list[dict[str, Any]] = []
        """The schedules declared with :meth:`periodic`, set on the broker at start."""
        self._client = client
        self._hooks = Hooks()
        self._draining = trio.Event()
        self._abort = trio.Event()
        # a wait that a stop ends at once (for the broker)
        self._interruptible: trio.CancelScope | None = None
        # the running courier: a stop ends its claims
        self._courier: Courier | None = None
        self._stop_at: float | None = None
        # the broker's group commit interval, once it said (GET /v1/stats)
        self._broker_interval: float | None = None
        self._noted_leases: set[int] = set()
        self._rng = random.Random()  # backoff jitter
        self._host = JobHost()
        self._pool = ProcessPool()  # open while run() runs, if a handler needs it
        self.counts = {"claimed": 0, "completed": 0, "failed": 0, "released": 0, "lost": 0}
        self.metrics = WorkerMetrics() if metrics is None else metrics
        """What this worker records for Prometheus (pass ``metrics=`` to record into
        a registry of your own); served at ``/metrics`` only with ``metrics_port``."""
        self.metrics.count(lambda: dict(self.counts))
        self.metrics_url: str | None = None
        """``http://host:port/metrics`` while the metrics server runs."""

    # ------------------------------------------------------------ registration

    def job(
        self,
        job_type: str,
        *,
        timeout: float | None = None,
        run: RunMode | None = None,
        max_attempts: int | None = None,
        backoff: float | Callable[[int], float] | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function (async, or sync: run in a thread) for a type.

        Use it with the type in parentheses: ``@worker.job("email:send")``. ``run``
        says where it runs: ``"async"`` (an async function, on the event loop),
        ``"thread"`` (a sync function, in a thread: the default for one) or
        ``"process"`` (a sync function defined at a module's top level, in the
        worker's process pool, killed when the job is cancelled: for CPU-bound work).
        ``max_attempts`` and ``backoff`` are the handler's retry policy: at most that
        many attempts (then the job is dead-lettered), and ``backoff`` seconds before
        a retry (doubling each attempt) or ``backoff(attempt)`` seconds; left out,
        the job's own attempts and the broker's backoff. A handler can also raise
        ``trioq.Retry(delay=...)`` or ``trioq.Fatal(...)``.

        Raises TypeError for a bare ``@worker.job`` or a non-string type, ValueError
        for a type that is not 1-128 printable characters, a ``timeout`` that is not
        a positive number of seconds, a type registered twice, or a ``run`` that does
        not fit the function (``"process"`` with an async function, a lambda, a
        nested function or a closure).
        """
        check_registration(job_type, timeout, run)
        retry = RetryPolicy.of(max_attempts, backoff)

        def register(fn: F) -> F:
            if job_type in self.handlers:
                raise ValueError(f"a handler for {job_type!r} is already registered")
            self.handlers[job_type] = make_handler(job_type, fn, timeout, run, self._pool, retry)
            return fn

        return register

    def periodic(
        self,
        cron: str | None = None,
        *,
        every: float | None = None,
        name: str | None = None,
        payload: Any = None,
        timezone: str = "UTC",
        missed: str = "once",
        grace: float = 60.0,
        max_attempts: int | None = None,
        priority: int = 0,
    ) -> Callable[[F], F]:
        """Declare a schedule for a handler, above its ``@worker.job``::

            @worker.periodic("*/5 * * * *")
            @worker.job("cleanup")
            async def cleanup(payload: None) -> None: ...

        At start, :meth:`run` creates or updates the schedule ``name`` (default: the
        job type) on the broker (``Client.set_schedule``: the stored set is the
        truth; removing the decorator does not delete a schedule, ``trioq
        schedules delete NAME`` does). ValueError if the function has no
        ``@worker.job`` below, or for exactly-one-of ``cron`` / ``every``."""
        if (cron is None) == (every is None):
            raise ValueError("give exactly one of cron and every")

        def declare(fn: F) -> F:
            types = [h.type for h in self.handlers.values() if h.fn is fn]
            if not types:
                raise ValueError(
                    f"{getattr(fn, '__qualname__', fn)!r} is no handler: put "
                    "@worker.periodic(...) above @worker.job(...)"
                )
            self.schedules.append(
                {
                    "name": name or types[0],
                    "type": types[0],
                    "payload": payload,
                    "cron": cron,
                    "every": every,
                    "timezone": timezone,
                    "missed": missed,
                    "grace": grace,
                    "max_attempts": max_attempts,
                    "priority": priority,
                }
            )
            return fn

        return declare

    async def _declare_schedules(self, client: Client) -> None:
        """Create or update the declared schedules (once, at start)."""
        for spec in self.schedules:
            args = dict(spec)
            name, job_type, payload = args.pop("name"), args.pop("type"), args.pop("payload")
            stored = await client.set_schedule(name, job_type, payload, **args)
            log.info("schedule %r of %r: next at %s", name, job_type, stored.get("nextAt"))

    def check_handlers(self) -> None:
        """Raise ValueError for a ``run="process"`` handler that a process could not
        import by name (its module attribute is not the registered function: wrapped
        by another decorator, or replaced). :meth:`run` checks this first."""
        for handler in self.handlers.values():
            if handler.run == "process":
                check_picklable(handler.type, handler.fn)

    def on_claimed(self, fn: Hook) -> Hook:
        """Hook called as ``fn(ctx)`` when a job starts."""
        self._hooks.claimed.append(fn)
        return fn

    def on_completed(self, fn: Hook) -> Hook:
        """Hook called as ``fn(ctx)`` after a job completed."""
        self._hooks.completed.append(fn)
        return fn

    def on_failed(self, fn: Hook) -> Hook:
        """Hook called as ``fn(ctx, error_text)`` after a job failed."""
        self._hooks.failed.append(fn)
        return fn

    def apply_environment(self, environ: Mapping[str, str] | None = None) -> None:
        """Read the environment again (``os.environ``, or ``environ``) over the
        arguments given to ``Worker(...)``: the constructor read it already, so this is
        for a program that changed it since. Raises ValueError naming a variable that
        does not parse."""
        self._configure(environ=environ)

    def _configure(self, *, environ: Mapping[str, str] | None = None, args: Any = None) -> None:
        """Settings from flags (``args``, from the CLI), the environment, then the
        constructor's arguments: the one rule, applied again."""
        self.settings = WorkerSettings.load(self._arguments, environ=environ, args=args)

    # -------------------------------------------------------------- lifecycle

    @property
    def active(self) -> dict[str, JobContext]:
        """The jobs held now, by id: running, or prefetched and waiting for a slot
        (read-only; for introspection)."""
        return self._host.active

    @property
    def worker_id(self) -> str:
        if self.settings.worker_id is None:
            self.settings.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        return self.settings.worker_id

    def drain(self) -> None:
        """Stop claiming; prefetched jobs are released at once, running jobs get the
        grace period, then are released.

        A claim already sent is awaited at most one group commit interval plus one
        second (never past the grace), then given up.
        """
        self._stop(abort=False)

    def abort(self) -> None:
        """Cancel running jobs now (they are released), give up a claim in flight,
        and stop."""
        self._stop(abort=True)

    def _stop(self, *, abort: bool) -> None:
        if self._stop_at is None:
            self._stop_at = trio.current_time()
        self._draining.set()
        if abort:
            self._abort.set()
            self._host.cancel()
        else:
            self._host.stop()
        if self._interruptible is not None:
            self._interruptible.cancel()
        if self._courier is not None:
            self._courier.stop(self._bound_claim)

    def _bound_claim(self, scope: trio.CancelScope) -> None:
        """Once stopping: give the claim in flight its last deadline."""
        if self._abort.is_set():
            scope.cancel()
        elif self._stop_at is not None:
            settings = self.settings
            interval = self._broker_interval
            if interval is None:
                interval = settings.group_commit_interval
            bound = min(interval + 1.0, settings.shutdown_grace)
            scope.deadline = min(scope.deadline, self._stop_at + bound)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Claim and run jobs until :meth:`drain`, :meth:`abort` or cancellation.

        ``task_status.started()`` is called once the broker has answered (or a drain
        came first). Until then the worker keeps asking, with a warning naming the
        broker after the first failed attempts and at most every
        :data:`~trioq.worker._outage.WARN_EVERY` seconds after that; a wrong token
        (any 4xx answer) raises. Cancelling ``run`` drains: running jobs get the
        grace period.
        """
        if not self.handlers:
            raise ValueError("no handlers registered: use @worker.job('type')")
        self.check_handlers()
        settings = self.settings
        client = self._client or Client(
            settings.broker_url, token=settings.token, verify=settings.verify
        )
        owns_client = self._client is None
        outage = Outage(", ".join(client.urls))
        try:
            if not await self._wait_for_broker(client, outage):
                task_status.started()
                return
            await self._declare_schedules(client)
            async with AsyncExitStack() as stack:
                if any(handler.run == "process" for handler in self.handlers.values()):
                    # each process job also holds a slot: more could never be used
                    size = min(settings.concurrency, settings.process_pool or default_size())
                    await stack.enter_async_context(self._pool.open(size))
                await self._serve(client, outage, task_status)
        finally:
            self._courier = None
            self.metrics_url = None
            if owns_client:
                await client.aclose()
            # ready for another run (e.g. trioq.testing's run_worker_until_idle)
            self._draining = trio.Event()
            self._abort = trio.Event()
            self._stop_at = None

    async def _serve(
        self, client: Client, outage: Outage, task_status: trio.TaskStatus[None]
    ) -> None:
        """The worker's nursery (see the module docstring), until it has stopped."""
        settings = self.settings
        courier = self._courier = self._new_courier(client, outage)
        slots = self._host.slots = Slots(settings.concurrency)
        runner = JobRunner(
            client,
            courier,
            slots,
            self.worker_id,
            settings,
            self.handlers,
            self._hooks,
            self.counts,
            self._noted_leases,
            self.metrics,
        )
        async with trio.open_nursery() as top:
            if settings.metrics_port is not None:
                self.metrics_url = await top.start(
                    serve_metrics, self.metrics, settings.metrics_host, settings.metrics_port
                )
            await top.start(self._host.serve, self._abort)
            await top.start(courier.run, functools.partial(self._host.start, runner))
            if self._pool.size is not None:
                top.start_soon(self._pool.warm, self._pool.size, name="process pool warm-up")
            top.start_soon(self._stop_when_cancelled)
            try:
                task_status.started()
                await self._draining.wait()
            finally:
                await self._wind_down(courier)
                top.cancel_scope.cancel(reason="worker stopped")

    def _new_courier(self, client: Client, outage: Outage) -> Courier:
        settings = self.settings
        courier = Courier(
            client,
            self.worker_id,
            types=list(self.handlers),
            capacity=settings.concurrency + settings.prefetch,
            poll_wait=settings.poll_interval,
            retry_deadline=min(client.retry_deadline, RETRY_WINDOW),
            backoff=self._backoff,
            outage=outage,
            report_timeout=settings.release_timeout,
        )
        if self._stop_at is not None:  # a stop came while it was being made
            courier.stop(self._bound_claim)
        return courier

    async def _wind_down(self, courier: Courier) -> None:
        """After a stop: the claims in flight end (bounded), the jobs drain with
        their grace (counted from the stop, whatever the claims took), their last
        reports go, then the courier closes."""
        self._stop(abort=False)
        assert self._stop_at is not None
        with trio.CancelScope(shield=True):
            await courier.claims_settled()
            await self._host.drain(self._stop_at + self.settings.shutdown_grace, self._abort)
            courier.close()

    async def _stop_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            # run() was cancelled (or has finished): the same as drain(), so the
            # shielded claim in flight gets its bound too
            self._stop(abort=False)

    def _backoff(self, failures: int) -> float:
        return backoff_delay(failures, base=BACKOFF_BASE, cap=BACKOFF_MAX, rng=self._rng)

    async def _wait_for_broker(self, client: Client, outage: Outage) -> bool:
        """Ask the broker for its stats until it answers (True) or a drain (False)."""
        failures = 0
        delay = 0.0
        while not self._draining.is_set():
            try:
                with trio.CancelScope() as self._interruptible:
                    try:
                        stats = await client.stats(
                            retry_deadline=min(client.retry_deadline, RETRY_WINDOW)
                        )
                    except TrioqError as exc:
                        if exc.status < 500:
                            raise  # a wrong token, or not a trioq broker: waiting cannot help
                        failures += 1
                        delay = self._backoff(failures)
                        outage.failed("probe", exc, delay)
                    else:
                        outage.answered()
                        interval = stats.get("groupCommitIntervalMs")
                        if isinstance(interval, int) and interval >= 0:
                            self._broker_interval = interval / 1000
                        return True
                    await trio.sleep(delay)
            finally:
                self._interruptible = None
        return False
