"""``trioq.Worker``: decorator-registered handlers run under structured concurrency.

Shape of a running worker::

    Worker.run
    ├── claim loop            claims as many jobs as there are free slots, long-polls
    └── job host (shielded)   owns one nursery per job:
        └── job nursery       the handler + its heartbeat task

- A ``trio.CapacityLimiter`` bounds concurrency. The claim loop borrows a token per
  free slot before it claims, and hands each token to the job that uses it.
- The heartbeat task renews the lease (carrying the attempt). ``LeaseLost`` or
  ``JobNotFound`` cancels the handler, and so does the local lease deadline: a
  worker that could not renew its lease in time stops rather than run unowned.
- The job host is shielded from the caller's cancellation, so a drain (signal,
  :meth:`Worker.drain`, or cancellation of ``run``) gives running jobs a grace
  period; then they are cancelled and released so another worker takes them at once.
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

from ._client import Claimed, Client
from ._errors import JobNotFound, LeaseLost, TrioqError

log = logging.getLogger("trioq.worker")

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
    """Worker options (flag > environment > ``Worker(...)`` > these defaults)."""

    broker_url: str = "http://127.0.0.1:8080"
    concurrency: int = 1
    poll_interval: float = 1.0
    heartbeat_interval: float = 5.0
    shutdown_grace: float = 30.0
    token: str | None = None
    worker_id: str | None = None
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


Hook = Callable[..., Awaitable[None] | None]


class Worker:
    """Runs registered handlers for claimed jobs.

    ::

        worker = trioq.Worker(concurrency=5)

        @worker.job("email:send", timeout=60)
        async def send_email(payload: Email, ctx: trioq.JobContext) -> None: ...

        # in a trio program:      await nursery.start(worker.run)
        # from the command line:  python -m trioq.worker myapp.jobs:worker

    Options given here are overridden by the environment (``BROKER_URL``,
    ``TRIOQ_CONCURRENCY``, ...) and by command-line flags.
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
        self._wait_slot_scope: trio.CancelScope | None = None
        self._idle = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        self.active: dict[str, JobContext] = {}
        """The jobs running now, by id (read-only; for introspection)."""
        self.counts = {"claimed": 0, "completed": 0, "failed": 0, "released": 0, "lost": 0}

    # ------------------------------------------------------------ registration

    def job(self, job_type: str, *, timeout: float | None = None) -> Callable[[F], F]:
        """Register the decorated function (async, or sync: run in a thread) for a type."""

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
        """Apply ``BROKER_URL``, ``TRIOQ_CONCURRENCY``, ... (the environment wins over
        ``Worker(...)`` arguments; command-line flags win over both)."""
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
        """Stop claiming; running jobs get the grace period, then are released."""
        self._draining.set()
        if self._wait_slot_scope is not None:
            self._wait_slot_scope.cancel()

    def abort(self) -> None:
        """Cancel running jobs now (they are released) and stop."""
        self.drain()
        self._abort.set()
        if self._jobs_scope is not None:
            self._jobs_scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Claim and run jobs until :meth:`drain`, :meth:`abort` or cancellation."""
        if not self.handlers:
            raise ValueError("no handlers registered: use @worker.job('type')")
        settings = self.settings
        if settings.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        client = self._client or Client(settings.broker_url, token=settings.token)
        owns_client = self._client is None
        try:
            async with trio.open_nursery() as top:
                jobs: trio.Nursery = await top.start(self._host_jobs)
                try:
                    task_status.started()
                    await self._claim_loop(client, jobs)
                finally:
                    self._draining.set()
                    with trio.CancelScope(shield=True):
                        await self._drain_jobs()
        finally:
            if owns_client:
                await client.aclose()
            # ready for another run (e.g. trioq.testing's run_worker_until_idle)
            self._draining = trio.Event()
            self._abort = trio.Event()
            self._jobs_scope = None

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
        if self.active:
            log.info(
                "draining: %d job(s) running, %.0f s grace",
                len(self.active),
                self.settings.shutdown_grace,
            )
        with trio.move_on_after(self.settings.shutdown_grace):
            while self.active and not self._abort.is_set():
                await self._idle.wait()
        assert self._jobs_scope is not None
        self._jobs_scope.cancel()

    # ------------------------------------------------------------- claim loop

    async def _claim_loop(self, client: Client, jobs: trio.Nursery) -> None:
        settings = self.settings
        limiter = trio.CapacityLimiter(settings.concurrency)
        self._limiter = limiter
        types = list(self.handlers)
        backoff = 0.0
        while not self._draining.is_set():
            # borrow one token (waiting for a free slot), then every other free one
            slots = [_Slot()]
            holding = False
            with trio.CancelScope() as self._wait_slot_scope:
                await limiter.acquire_on_behalf_of(slots[0])
                holding = True
            self._wait_slot_scope = None
            if self._draining.is_set():
                if holding:
                    limiter.release_on_behalf_of(slots[0])
                break
            while limiter.available_tokens:
                slot = _Slot()
                limiter.acquire_on_behalf_of_nowait(slot)
                slots.append(slot)
            claimed: list[Claimed] = []
            # A claim in flight is not cancelled (its answer would be lost and the
            # jobs it took stranded for a lease): cancellation waits for it, bounded
            # by the long-poll wait plus the request timeout.
            bound = settings.poll_interval + client.timeout + 1.0
            with trio.move_on_after(bound, shield=True):
                try:
                    claimed = await client.claim(
                        self.worker_id, types=types, max=len(slots), wait=settings.poll_interval
                    )
                    backoff = 0.0
                except TrioqError as exc:
                    backoff = min(max(backoff * 2, 0.5), 10.0)
                    log.warning("claim failed (%s); retrying in %.1f s", exc, backoff)
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
            log.warning("job %s cancelled: %s", job.id, lease.lost)
            return
        if outcome.error is None:
            try:
                reported = await self._cleanup(
                    client.complete(job.id, self.worker_id, attempt=job.attempt)
                )
            except (LeaseLost, JobNotFound) as exc:
                # the client retries a call whose answer was lost: the first one may
                # have landed (then the job is completed at our attempt)
                reported = await self._recorded(client, job, None)
                if not reported:
                    self.counts["lost"] += 1
                    log.warning("job %s finished but its lease was lost: %s", job.id, exc)
                    return
            if not reported:
                # not recorded: the lease expires and the job runs again elsewhere
                self.counts["lost"] += 1
                return
            self.counts["completed"] += 1
            await self._hooks(self._on_completed, ctx)
        else:
            await self._report_failure(client, job, ctx, outcome.error, final=outcome.final)

    async def _execute(self, handler: Handler, job: Claimed, ctx: JobContext) -> _Outcome:
        """Hooks, validation and the handler call (under its timeout)."""
        await self._hooks(self._on_claimed, ctx)
        try:
            payload = handler.validate(job.payload)
        except Exception as exc:
            text = f"invalid payload for {job.type!r}: {exc}"
            log.warning("job %s: %s (dead-lettered)", job.id, text)
            return _Outcome(text, final=True)
        timeout = math.inf if handler.timeout is None else handler.timeout
        scope = trio.move_on_after(timeout)
        try:
            with scope:
                await self._call(handler, payload, ctx)
        except Exception as exc:
            if not scope.cancel_called:
                text = f"{type(exc).__name__}: {exc}"
                log.info("job %s (%s) raised %s", job.id, job.type, text, exc_info=exc)
                return _Outcome(text)
        if scope.cancel_called:
            # also when a sync handler (a thread cannot be interrupted) overran
            log.info("job %s (%s) timed out after %g s", job.id, job.type, timeout)
            return _Outcome(f"timed out after {timeout:g} s")
        return _Outcome(None)

    async def _report_failure(
        self, client: Client, job: Claimed, ctx: JobContext, error: str, *, final: bool
    ) -> None:
        try:
            reported = await self._cleanup(
                client.fail(job.id, self.worker_id, error, attempt=job.attempt, final=final)
            )
        except (LeaseLost, JobNotFound) as exc:
            reported = await self._recorded(client, job, error)
            if not reported:
                log.warning("job %s failed but its lease was lost: %s", job.id, exc)
                return
        if not reported:
            return
        self.counts["failed"] += 1
        await self._hooks(self._on_failed, ctx, error)

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
                client.release(job.id, self.worker_id, attempt=job.attempt)
            )
        except (LeaseLost, JobNotFound) as exc:
            log.info("job %s was not ours to release any more: %s", job.id, exc)
            return
        if released:
            self.counts["released"] += 1

    async def _cleanup(self, call: Awaitable[Any]) -> bool:
        """Report a job's outcome: shielded and bounded, so a drain cannot lose it
        and a dead broker cannot hang us (the lease expires on its own then).
        True if the broker took it; LeaseLost and JobNotFound are raised."""
        with trio.move_on_after(self.settings.release_timeout, shield=True) as scope:
            try:
                await call
            except (LeaseLost, JobNotFound):
                raise
            except TrioqError as exc:
                log.warning("could not report a job's outcome: %s", exc)
                return False
            return True
        if scope.cancelled_caught:
            log.warning("reporting a job's outcome timed out; its lease will expire")
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

    async def _heartbeat(self, client: Client, job: Claimed, lease: _Lease) -> None:
        interval = self.settings.heartbeat_interval
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
                log.warning("heartbeat for job %s failed: %s", job.id, exc)
                next_beat = min(trio.current_time() + max(interval / 5, 0.1), lease.deadline)

    async def _hooks(self, hooks: list[Hook], *args: Any) -> None:
        for hook in hooks:
            try:
                result = hook(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("hook %r failed", hook)


def describe(worker: Worker) -> str:
    """One line: the job types a worker handles and the broker it talks to."""
    return (
        f"trioq worker {worker.worker_id}: types {', '.join(sorted(worker.handlers))}; "
        f"broker {worker.settings.broker_url}; concurrency {worker.settings.concurrency}"
    )
