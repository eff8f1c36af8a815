"""``trioq.Worker``: decorator-registered handlers run under structured concurrency.

Shape of a running worker::

    Worker.run                probes the broker, then calls task_status.started()
    ├── claim loop            claims as many jobs as there are free slots, long-polls
    ├── stop watcher          turns cancellation of run() into a drain
    └── job host (shielded)   owns one nursery per job:
        └── job nursery       the handler + its heartbeat task

- A ``trio.CapacityLimiter`` bounds concurrency. The claim loop borrows a token per
  free slot before it claims, and hands each token to the job that uses it.
- The heartbeat task renews the lease (carrying the attempt) at least three times per
  granted ``leaseMs``, whatever the configured interval. ``LeaseLost`` or
  ``JobNotFound`` cancels the handler, and so does the local lease deadline: a
  worker that could not renew its lease in time stops rather than run unowned.
- A claim request is shielded (cancelling it could strand the jobs it took for a
  lease). Once a stop is asked for, it is awaited at most one group commit interval
  plus one second, never past the grace, then given up.
- The job host is shielded from the caller's cancellation, so a drain (signal,
  :meth:`Worker.drain`, or cancellation of ``run``) gives running jobs a grace
  period counted from the stop; then they are cancelled and released so another
  worker takes them at once.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import socket
import typing
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from .._errors import JobNotFound, LeaseLost, TrioqError
from ..client import DEFAULT_URL, Claimed, Client
from ..core._jobs import valid_type

log = logging.getLogger("trioq.worker")

RETRY_WINDOW = 2.0
"""Seconds one probe or claim keeps retrying inside the client (connection errors,
503 answers) before the worker logs the failure and backs off."""

BACKOFF_MAX = 10.0
"""Cap on the worker's wait between two failed probes or claims."""

WARN_EVERY = 30.0
"""While the broker keeps failing, the worker repeats its warning at most this often."""

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(slots=True, frozen=True)
class JobContext:
    """What a handler may ask for besides the payload (annotate a parameter with it)."""

    id: str
    type: str
    attempt: int
    worker_id: str
    lease_ms: int


@dataclass(slots=True)
class Handler:
    """A registered handler and how to call it."""

    type: str
    fn: Callable[..., Any]
    timeout: float | None
    is_async: bool
    payload_param: str | None
    context_param: str | None
    validate: Callable[[Any], Any]


class PayloadInvalid(TrioqError):
    """The payload does not match the handler's annotation (dead-lettered, not retried)."""

    tag = "PayloadInvalid"
    status = 400


class JobTimeout(TrioqError):
    """The handler ran past its timeout."""

    tag = "JobTimeout"
    status = 500


@dataclass(slots=True)
class WorkerSettings:
    """Worker options: ``Worker(...)`` arguments over these defaults. Under
    ``python -m trioq.worker`` (or after :meth:`Worker.apply_environment`) the
    environment wins over the arguments, and command-line flags over both."""

    broker_url: str = DEFAULT_URL
    concurrency: int = 1
    poll_interval: float = 1.0
    heartbeat_interval: float = 5.0
    """Seconds between heartbeats; shortened to a third of a job's ``leaseMs`` when
    the broker grants shorter leases."""
    shutdown_grace: float = 30.0
    token: str | None = None
    worker_id: str | None = None
    group_commit_interval: float = 2.0
    """At a stop, a claim in flight is awaited at most the broker's group commit
    interval plus one second. The worker learns the interval from the broker when it
    starts (``groupCommitIntervalMs`` in ``GET /v1/stats``); this is the value used
    until then, or with a broker that does not say (the production recommendation)."""
    release_timeout: float = 5.0
    """Bound on the cleanup call (release/fail) of a cancelled job."""


ENV_NAMES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "broker_url": ("BROKER_URL", str),
    "concurrency": ("TRIOQ_CONCURRENCY", int),
    "poll_interval": ("TRIOQ_POLL_INTERVAL_MS", lambda v: int(v) / 1000),
    "heartbeat_interval": ("TRIOQ_HEARTBEAT_INTERVAL_MS", lambda v: int(v) / 1000),
    "shutdown_grace": ("TRIOQ_SHUTDOWN_GRACE_S", float),
    "token": ("TRIOQ_TOKEN", str),
    "worker_id": ("TRIOQ_WORKER_ID", str),
    "group_commit_interval": ("GROUP_COMMIT_INTERVAL_MS", lambda v: int(v) / 1000),
}


def _payload_validator(annotation: Any) -> Callable[[Any], Any]:
    """Turn a parameter annotation into a validator of JSON payloads."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return lambda value: value
    validate_model: Callable[[Any], Any] | None = getattr(annotation, "model_validate", None)
    if callable(validate_model):
        return validate_model  # a pydantic model
    try:
        from pydantic import TypeAdapter

        adapter: Any = TypeAdapter(annotation)
        return lambda value: adapter.validate_python(value, strict=False)
    except ImportError:  # pragma: no cover - pydantic is optional
        pass
    if isinstance(annotation, type):

        def check(value: Any) -> Any:
            if not isinstance(value, annotation):
                raise TypeError(f"expected {annotation.__name__}, got {type(value).__name__}")
            return value

        return check
    return lambda value: value


def _make_handler(job_type: str, fn: Callable[..., Any], timeout: float | None) -> Handler:
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        hints = {}
    payload_param = context_param = None
    validate: Callable[[Any], Any] = lambda value: value  # noqa: E731
    for name, param in signature.parameters.items():
        annotation = hints.get(name, param.annotation)
        if annotation is JobContext:
            context_param = name
        elif payload_param is None:
            payload_param = name
            validate = _payload_validator(annotation)
        else:
            raise TypeError(
                f"handler {fn.__qualname__} for {job_type!r}: parameter {name!r} is neither "
                "the payload nor annotated JobContext"
            )
    return Handler(
        type=job_type,
        fn=fn,
        timeout=timeout,
        is_async=inspect.iscoroutinefunction(fn),
        payload_param=payload_param,
        context_param=context_param,
        validate=validate,
    )


@dataclass(eq=False)
class _Slot:
    """A borrower of one CapacityLimiter token (handed from the claim loop to a job)."""

    job_id: str | None = None


@dataclass(slots=True, frozen=True)
class _Outcome:
    """How a handler call ended: ``error`` is None on success."""

    error: str | None
    final: bool = False


@dataclass(eq=False)
class _Lease:
    deadline: float
    lost: str | None = None
    handler_scope: trio.CancelScope = field(default_factory=trio.CancelScope)


def _label(job: Claimed) -> str:
    """How every job-related log line names its job."""
    return f"job {job.id} ({job.type}, attempt {job.attempt})"


@dataclass(eq=False)
class _Outage:
    """Logs a broker that keeps failing: a warning at the first failure, then at
    most one every :data:`WARN_EVERY` seconds (debug in between), and a line when
    it answers again."""

    urls: str
    since: float | None = None
    failures: int = 0
    warned_at: float = -math.inf

    def failed(self, what: str, exc: TrioqError, retry_in: float) -> None:
        now = trio.current_time()
        if self.since is None:
            self.since = now
        self.failures += 1
        if now - self.warned_at < WARN_EVERY:
            log.debug(
                "broker %s: %s failed again (%s: %s)", self.urls, what, type(exc).__name__, exc
            )
            return
        self.warned_at = now
        if self.failures == 1:
            log.warning(
                "broker %s: %s failed (%s: %s); retrying in %.1f s",
                self.urls,
                what,
                type(exc).__name__,
                exc,
                retry_in,
            )
        else:
            log.warning(
                "broker %s still failing after %.0f s (%d failed calls; last: %s: %s); "
                "retrying in %.1f s",
                self.urls,
                now - self.since,
                self.failures,
                type(exc).__name__,
                exc,
                retry_in,
            )

    def answered(self) -> None:
        if self.since is not None:
            log.info(
                "broker %s answers again after %.0f s", self.urls, trio.current_time() - self.since
            )
        self.since = None
        self.failures = 0
        self.warned_at = -math.inf


Hook = Callable[..., Awaitable[None] | None]


class Worker:
    """Runs registered handlers for claimed jobs.

    ::

        worker = trioq.Worker(concurrency=5)

        @worker.job("email:send", timeout=60)
        async def send_email(payload: Email, ctx: trioq.JobContext) -> None: ...

        # in a trio program:      await nursery.start(worker.run)
        # from the command line:  python -m trioq.worker myapp.jobs:worker

    Under ``python -m trioq.worker`` the environment (``BROKER_URL``,
    ``TRIOQ_CONCURRENCY``, ...) overrides the options given here, and command-line
    flags override both. Embedded in a program, the worker uses these options only;
    call :meth:`apply_environment` before :meth:`run` to honour the environment too.
    """

    def __init__(
        self,
        *,
        broker_url: str | None = None,
        concurrency: int | None = None,
        poll_interval: float | None = None,
        heartbeat_interval: float | None = None,
        shutdown_grace: float | None = None,
        token: str | None = None,
        worker_id: str | None = None,
        group_commit_interval: float | None = None,
        client: Client | None = None,
    ) -> None:
        self._explicit: dict[str, Any] = {
            k: v
            for k, v in {
                "broker_url": broker_url,
                "concurrency": concurrency,
                "poll_interval": poll_interval,
                "heartbeat_interval": heartbeat_interval,
                "shutdown_grace": shutdown_grace,
                "token": token,
                "worker_id": worker_id,
                "group_commit_interval": group_commit_interval,
            }.items()
            if v is not None
        }
        self.settings = WorkerSettings(**self._explicit)
        self.handlers: dict[str, Handler] = {}
        self._client = client
        self._on_claimed: list[Hook] = []
        self._on_completed: list[Hook] = []
        self._on_failed: list[Hook] = []
        self._draining = trio.Event()
        self._abort = trio.Event()
        self._jobs_scope: trio.CancelScope | None = None
        # a wait that a stop ends at once (for a free slot, or for the broker)
        self._interruptible: trio.CancelScope | None = None
        # the claim in flight: shielded; a stop gives it a deadline
        self._claim_scope: trio.CancelScope | None = None
        self._stop_at: float | None = None
        # the broker's group commit interval, once it said (GET /v1/stats)
        self._broker_interval: float | None = None
        self._noted_leases: set[int] = set()
        self._idle = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        self.active: dict[str, JobContext] = {}
        """The jobs running now, by id (read-only; for introspection)."""
        self.counts = {"claimed": 0, "completed": 0, "failed": 0, "released": 0, "lost": 0}

    # ------------------------------------------------------------ registration

    def job(self, job_type: str, *, timeout: float | None = None) -> Callable[[F], F]:
        """Register the decorated function (async, or sync: run in a thread) for a type.

        Use it with the type in parentheses: ``@worker.job("email:send")``. Raises
        TypeError for a bare ``@worker.job`` or a non-string type, ValueError for a
        type that is not 1-128 printable characters, a ``timeout`` that is not a
        positive number of seconds, or a type registered twice.
        """
        if callable(job_type):
            name = getattr(job_type, "__qualname__", repr(job_type))
            raise TypeError(
                f"@worker.job needs the job type: write @worker.job('some:type') above "
                f"{name}, not a bare @worker.job"
            )
        if not isinstance(job_type, str):
            raise TypeError(f"the job type must be a string, not {type(job_type).__name__}")
        if not valid_type(job_type):
            raise ValueError(f"job type {job_type!r} is not 1-128 printable characters")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float):
                raise TypeError(f"timeout must be seconds (a number) or None, not {timeout!r}")
            if not timeout > 0:  # also refuses NaN
                raise ValueError(f"timeout must be > 0 seconds (or None for none), not {timeout!r}")

        def register(fn: F) -> F:
            if job_type in self.handlers:
                raise ValueError(f"a handler for {job_type!r} is already registered")
            self.handlers[job_type] = _make_handler(job_type, fn, timeout)
            return fn

        return register

    def on_claimed(self, fn: Hook) -> Hook:
        """Hook called as ``fn(ctx)`` when a job starts."""
        self._on_claimed.append(fn)
        return fn

    def on_completed(self, fn: Hook) -> Hook:
        """Hook called as ``fn(ctx)`` after a job completed."""
        self._on_completed.append(fn)
        return fn

    def on_failed(self, fn: Hook) -> Hook:
        """Hook called as ``fn(ctx, error_text)`` after a job failed."""
        self._on_failed.append(fn)
        return fn

    def apply_environment(self, environ: dict[str, str] | None = None) -> None:
        """Apply ``BROKER_URL``, ``TRIOQ_CONCURRENCY``, ... over the current settings
        (``python -m trioq.worker`` calls it, then applies its flags; :meth:`run`
        does not). Raises ValueError naming a variable that does not parse."""
        env = os.environ if environ is None else environ
        for attr, (var, convert) in ENV_NAMES.items():
            raw = env.get(var, "")
            if raw != "":
                try:
                    setattr(self.settings, attr, convert(raw))
                except ValueError:
                    raise ValueError(f"{var}={raw!r} is not valid") from None

    # -------------------------------------------------------------- lifecycle

    @property
    def worker_id(self) -> str:
        if self.settings.worker_id is None:
            self.settings.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        return self.settings.worker_id

    def drain(self) -> None:
        """Stop claiming; running jobs get the grace period, then are released.

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
            if self._jobs_scope is not None:
                self._jobs_scope.cancel()
        if self._interruptible is not None:
            self._interruptible.cancel()
        if self._claim_scope is not None:
            self._bound_claim(self._claim_scope)

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
        :data:`WARN_EVERY` seconds after that; a wrong token (any 4xx answer)
        raises. Cancelling ``run`` drains: running jobs get the grace period.
        """
        if not self.handlers:
            raise ValueError("no handlers registered: use @worker.job('type')")
        settings = self.settings
        if settings.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        client = self._client or Client(settings.broker_url, token=settings.token)
        owns_client = self._client is None
        outage = _Outage(", ".join(client.urls))
        try:
            if not await self._wait_for_broker(client, outage):
                task_status.started()
                return
            async with trio.open_nursery() as top:
                jobs: trio.Nursery = await top.start(self._host_jobs)
                top.start_soon(self._stop_when_cancelled)
                try:
                    task_status.started()
                    await self._claim_loop(client, jobs, outage)
                finally:
                    self._stop(abort=False)
                    with trio.CancelScope(shield=True):
                        await self._drain_jobs()
                    top.cancel_scope.cancel(reason="worker stopped")
        finally:
            if owns_client:
                await client.aclose()
            # ready for another run (e.g. trioq.testing's run_worker_until_idle)
            self._draining = trio.Event()
            self._abort = trio.Event()
            self._jobs_scope = None
            self._stop_at = None

    async def _stop_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            # run() was cancelled (or has finished): the same as drain(), so the
            # shielded claim in flight gets its bound too
            self._stop(abort=False)

    async def _wait_for_broker(self, client: Client, outage: _Outage) -> bool:
        """Ask the broker for its stats until it answers (True) or a drain (False)."""
        backoff = 0.0
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
                        backoff = min(max(backoff * 2, 0.5), BACKOFF_MAX)
                        outage.failed("probe", exc, backoff)
                    else:
                        outage.answered()
                        interval = stats.get("groupCommitIntervalMs")
                        if isinstance(interval, int) and interval >= 0:
                            self._broker_interval = interval / 1000
                        return True
                    await trio.sleep(backoff)
            finally:
                self._interruptible = None
        return False

    async def _host_jobs(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        # shielded: the caller's cancellation stops claiming, but jobs get their
        # grace period; _drain_jobs cancels this scope when it is over
        with trio.CancelScope(shield=True) as scope:
            self._jobs_scope = scope
            if self._abort.is_set():
                scope.cancel()
            async with trio.open_nursery() as jobs:
                task_status.started(jobs)
                await trio.sleep_forever()

    async def _drain_jobs(self) -> None:
        assert self._stop_at is not None
        grace_over = self._stop_at + self.settings.shutdown_grace
        if self.active:
            log.info(
                "draining: %d job(s) running, %.0f s grace left",
                len(self.active),
                max(0.0, grace_over - trio.current_time()),
            )
        # the grace counts from the stop, whatever the claim in flight took
        with trio.move_on_at(grace_over):
            while self.active and not self._abort.is_set():
                await self._idle.wait()
        assert self._jobs_scope is not None
        self._jobs_scope.cancel()

    # ------------------------------------------------------------- claim loop

    async def _claim_loop(self, client: Client, jobs: trio.Nursery, outage: _Outage) -> None:
        settings = self.settings
        limiter = trio.CapacityLimiter(settings.concurrency)
        self._limiter = limiter
        types = list(self.handlers)
        backoff = 0.0
        while not self._draining.is_set():
            # borrow one token (waiting for a free slot), then every other free one
            slots = [_Slot()]
            holding = False
            with trio.CancelScope() as self._interruptible:
                await limiter.acquire_on_behalf_of(slots[0])
                holding = True
            self._interruptible = None
            if self._draining.is_set():
                if holding:
                    limiter.release_on_behalf_of(slots[0])
                break
            while limiter.available_tokens:
                slot = _Slot()
                limiter.acquire_on_behalf_of_nowait(slot)
                slots.append(slot)
            claimed: list[Claimed] = []
            try:
                claimed = await self._claim(client, types, len(slots))
                outage.answered()
                backoff = 0.0
            except TrioqError as exc:
                backoff = min(max(backoff * 2, 0.5), BACKOFF_MAX)
                if not self._draining.is_set():
                    outage.failed("claim", exc, backoff)
            claimed_at = trio.current_time()
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
            except trio.Cancelled:
                self._draining.set()
                raise
            finally:
                extra = claimed[len(slots) :]
                if self._draining.is_set():
                    # drained (or cancelled) while the claim was in flight: give the
                    # jobs straight back
                    extra = claimed
                    claimed = []
                for job in extra:
                    await self._release(client, job)
            if self._draining.is_set():
                for slot in slots:
                    limiter.release_on_behalf_of(slot)
                break
            # hand one token to each claimed job; give the rest back
            for job, slot in zip(claimed, slots, strict=False):
                slot.job_id = job.id
                self.counts["claimed"] += 1
                self.active[job.id] = JobContext(
                    job.id, job.type, job.attempt, self.worker_id, job.lease_ms
                )
                if self._idle.is_set():
                    self._idle = trio.Event()
                jobs.start_soon(
                    self._run_job, client, job, slot, claimed_at, name=f"trioq job {job.id}"
                )
            for slot in slots[len(claimed) :]:
                limiter.release_on_behalf_of(slot)
            if backoff:
                with trio.move_on_after(backoff):
                    await self._draining.wait()

    async def _claim(self, client: Client, types: list[str], slots: int) -> list[Claimed]:
        """One claim request, shielded: cancelled in flight, the jobs it took would be
        stranded until their leases run out. A stop bounds it (:meth:`_bound_claim`);
        given up then, it returns nothing."""
        with trio.CancelScope(shield=True) as scope:
            self._claim_scope = scope
            self._bound_claim(scope)
            try:
                return await client.claim(
                    self.worker_id,
                    types=types,
                    max=slots,
                    wait=self.settings.poll_interval,
                    retry_deadline=min(client.retry_deadline, RETRY_WINDOW),
                )
            finally:
                self._claim_scope = None
        log.warning(
            "stopping: gave up a claim to %s that was still unanswered; jobs it may have "
            "taken return to the queue when their leases run out",
            client.url,
        )
        return []

    # -------------------------------------------------------------------- job

    async def _run_job(self, client: Client, job: Claimed, slot: _Slot, claimed_at: float) -> None:
        ctx = self.active[job.id]
        try:
            await self._run_job_inner(client, job, ctx, claimed_at)
        finally:
            # a later attempt of the same job may have been claimed meanwhile (a sync
            # handler runs on after its lease is lost): remove only our own entry
            if self.active.get(job.id) is ctx:
                del self.active[job.id]
            self._limiter.release_on_behalf_of(slot)
            if not self.active:
                self._idle.set()

    async def _run_job_inner(
        self, client: Client, job: Claimed, ctx: JobContext, claimed_at: float
    ) -> None:
        handler = self.handlers.get(job.type)
        if handler is None:
            # the broker gave us a type we did not ask for: give it back untouched
            log.warning("%s: no handler for its type here; releasing it", _label(job))
            await self._release(client, job)
            return
        # the lease runs from the claim: heartbeats cover hooks and validation too
        lease = _Lease(deadline=claimed_at + job.lease_ms / 1000)
        outcome: _Outcome | None = None
        ran = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat, client, job, lease, name=f"heartbeat {job.id}")
                with lease.handler_scope:
                    outcome = await self._execute(handler, job, ctx)
                # handler done (or cancelled by lease loss): stop the heartbeat
                nursery.cancel_scope.cancel(reason="handler finished")
            ran = True
        finally:
            # Cancelled here (drain grace over, or abort) arrives wrapped in an
            # exception group from the job nursery; whatever it was, a job that did
            # not run to the end goes back for someone else
            if not ran and lease.lost is None:
                await self._release(client, job)
        if lease.lost is not None or outcome is None:
            self.counts["lost"] += 1
            log.warning("%s cancelled: %s", _label(job), lease.lost)
            return
        if outcome.error is None:
            try:
                reported = await self._cleanup(
                    job, "completion", client.complete(job.id, self.worker_id, attempt=job.attempt)
                )
            except (LeaseLost, JobNotFound) as exc:
                # the client retries a call whose answer was lost: the first one may
                # have landed (then the job is completed at our attempt)
                reported = await self._recorded(client, job, None)
                if not reported:
                    self.counts["lost"] += 1
                    log.warning("%s finished but its lease was lost: %s", _label(job), exc)
                    return
            if not reported:
                # not recorded: the lease expires and the job runs again elsewhere
                self.counts["lost"] += 1
                return
            self.counts["completed"] += 1
            await self._hooks(self._on_completed, job, ctx)
        else:
            await self._report_failure(client, job, ctx, outcome.error, final=outcome.final)

    async def _execute(self, handler: Handler, job: Claimed, ctx: JobContext) -> _Outcome:
        """Hooks, validation and the handler call (under its timeout)."""
        await self._hooks(self._on_claimed, job, ctx)
        try:
            payload = handler.validate(job.payload)
        except Exception as exc:
            text = f"invalid payload for {job.type!r}: {exc}"
            log.warning("%s: %s (dead-lettered)", _label(job), text)
            return _Outcome(text, final=True)
        timeout = math.inf if handler.timeout is None else handler.timeout
        scope = trio.move_on_after(timeout)
        try:
            with scope:
                await self._call(handler, payload, ctx)
        except Exception as exc:
            if not scope.cancel_called:
                text = f"{type(exc).__name__}: {exc}"
                log.info("%s raised %s", _label(job), text, exc_info=exc)
                return _Outcome(text)
        if scope.cancel_called:
            # also when a sync handler (a thread cannot be interrupted) overran
            log.info("%s timed out after %g s", _label(job), timeout)
            return _Outcome(f"timed out after {timeout:g} s")
        return _Outcome(None)

    async def _report_failure(
        self, client: Client, job: Claimed, ctx: JobContext, error: str, *, final: bool
    ) -> None:
        try:
            reported = await self._cleanup(
                job,
                "failure",
                client.fail(job.id, self.worker_id, error, attempt=job.attempt, final=final),
            )
        except (LeaseLost, JobNotFound) as exc:
            reported = await self._recorded(client, job, error)
            if not reported:
                log.warning("%s failed but its lease was lost: %s", _label(job), exc)
                return
        if not reported:
            return
        self.counts["failed"] += 1
        await self._hooks(self._on_failed, job, ctx, error)

    async def _recorded(self, client: Client, job: Claimed, error: str | None) -> bool:
        """Whether the broker already holds this attempt's outcome (completed, or
        failed with ``error``): an earlier send of the same call landed but its
        answer was lost, and the client's retry then found the job gone."""
        with trio.move_on_after(self.settings.release_timeout, shield=True):
            try:
                record = await client.get(job.id)
            except TrioqError:
                return False
            if record.get("attempts") != job.attempt:
                return False
            if error is None:
                return record.get("status") == "completed"
            last = record.get("lastError")
            return (
                record.get("status") in ("unclaimed", "dead")
                and isinstance(last, str)
                and last.startswith(error[:1000])
            )
        return False

    async def _release(self, client: Client, job: Claimed) -> None:
        try:
            released = await self._cleanup(
                job, "release", client.release(job.id, self.worker_id, attempt=job.attempt)
            )
        except (LeaseLost, JobNotFound) as exc:
            log.info("%s was not ours to release any more: %s", _label(job), exc)
            return
        if released:
            self.counts["released"] += 1

    async def _cleanup(self, job: Claimed, what: str, call: Awaitable[Any]) -> bool:
        """Report a job's outcome (``what``: completion, failure, release): shielded
        and bounded, so a drain cannot lose it and a dead broker cannot hang us (the
        lease expires on its own then). True if the broker took it; LeaseLost and
        JobNotFound are raised."""
        with trio.move_on_after(self.settings.release_timeout, shield=True) as scope:
            try:
                await call
            except (LeaseLost, JobNotFound):
                raise
            except TrioqError as exc:
                log.warning(
                    "%s: could not report its %s (%s: %s); its lease will expire",
                    _label(job),
                    what,
                    type(exc).__name__,
                    exc,
                )
                return False
            return True
        if scope.cancelled_caught:
            log.warning(
                "%s: reporting its %s timed out after %g s; its lease will expire",
                _label(job),
                what,
                self.settings.release_timeout,
            )
        return False

    async def _call(self, handler: Handler, payload: Any, ctx: JobContext) -> None:
        kwargs: dict[str, Any] = {}
        if handler.payload_param is not None:
            kwargs[handler.payload_param] = payload
        if handler.context_param is not None:
            kwargs[handler.context_param] = ctx
        if handler.is_async:
            await handler.fn(**kwargs)
        else:
            # a thread, so a blocking handler cannot starve the heartbeats; it is
            # not abandoned on cancel (the job ends when the function returns)
            await trio.to_thread.run_sync(lambda: handler.fn(**kwargs))

    def _heartbeat_interval(self, lease_ms: int) -> float:
        """The configured interval, shortened to renew at least three times per lease."""
        configured = self.settings.heartbeat_interval
        interval = min(configured, lease_ms / 3000)
        if interval < configured and lease_ms not in self._noted_leases:
            self._noted_leases.add(lease_ms)
            log.info(
                "the broker grants %d ms leases: heartbeats every %g s instead of the "
                "configured %g s (at least three per lease)",
                lease_ms,
                interval,
                configured,
            )
        return interval

    async def _heartbeat(self, client: Client, job: Claimed, lease: _Lease) -> None:
        interval = self._heartbeat_interval(job.lease_ms)
        lease_s = job.lease_ms / 1000
        next_beat = trio.current_time() + interval
        while True:
            # wake for the next beat, or at the local lease deadline, whichever first
            with trio.move_on_at(min(next_beat, lease.deadline)):
                await trio.sleep_forever()
            now = trio.current_time()
            if now >= lease.deadline:
                lease.lost = "its lease could not be renewed in time"
                lease.handler_scope.cancel()
                return
            sent_at = now
            try:
                with trio.move_on_at(lease.deadline):
                    await client.heartbeat(job.id, self.worker_id, attempt=job.attempt)
                    lease.deadline = sent_at + lease_s
                    next_beat = sent_at + interval
                    continue
            except (LeaseLost, JobNotFound) as exc:
                lease.lost = f"the broker says: {exc}"
                lease.handler_scope.cancel()
                return
            except TrioqError as exc:
                log.warning("%s: heartbeat failed: %s: %s", _label(job), type(exc).__name__, exc)
                next_beat = min(trio.current_time() + max(interval / 5, 0.1), lease.deadline)

    async def _hooks(self, hooks: list[Hook], job: Claimed, *args: Any) -> None:
        for hook in hooks:
            try:
                result = hook(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("%s: hook %r failed", _label(job), hook)


def describe(worker: Worker) -> str:
    """One line: the job types a worker handles and the broker it talks to."""
    return (
        f"trioq worker {worker.worker_id}: types {', '.join(sorted(worker.handlers))}; "
        f"broker {worker.settings.broker_url}; concurrency {worker.settings.concurrency}"
    )
