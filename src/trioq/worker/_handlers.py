"""Handlers: what ``@worker.job`` registers and checks, the :class:`JobContext` a
handler may ask for, the hooks, and how one handler is called.

How a handler runs (``@worker.job(..., run=...)``, :data:`RunMode`): ``"async"`` on
the event loop (an ``async def``), ``"thread"`` in a worker thread (a plain ``def``:
the default for one), ``"process"`` in the worker's process pool (a plain ``def``
defined at a module's top level; :mod:`._processes`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import trio
from pydantic import TypeAdapter

from .._errors import TrioqError
from ..client import Claimed
from ..core._jobs import valid_type
from ._processes import ProcessPool, check_by_reference

log = logging.getLogger("trioq.worker")

RunMode = Literal["async", "thread", "process"]
"""Where a handler runs: on the event loop, in a thread, or in a pool process."""
RUN_MODES: tuple[str, ...] = get_args(RunMode)


@dataclass(slots=True, frozen=True)
class JobContext:
    """What a handler may ask for besides the payload (annotate a parameter with it)."""

    id: str
    type: str
    attempt: int
    worker_id: str
    lease_ms: int
    """The lease the broker granted (its ``leaseMs``)."""
    max_attempts: int | None = None
    """The job's attempts in all (the broker's; a handler's own ``max_attempts`` may
    stop sooner)."""
    last_error: str | None = None
    """The error its previous attempt failed with (None on a first attempt)."""
    reporter: Callable[[Any], Awaitable[None]] | None = field(
        default=None, repr=False, compare=False
    )
    """How :meth:`progress` reaches the broker (None: this context has no worker)."""

    async def progress(self, value: Any) -> None:
        """Report the job's progress: a small JSON value (at most 4 KiB by default),
        sent with a heartbeat at once and kept with the job while it runs (``get``,
        ``trioq get``, the dashboard's job detail show it). Returns once the broker
        has it. Raises ValueError for a value that is not JSON or that the broker
        refuses (too large), and RuntimeError in a context without a worker (a
        ``run="process"`` handler's copy). From a sync handler (a thread):
        ``trio.from_thread.run(ctx.progress, value)``."""
        if self.reporter is None:
            raise RuntimeError(
                "this JobContext cannot report progress (a run='process' handler's copy, "
                "or one made by hand)"
            )
        await self.reporter(value)


class Retry(Exception):
    """Raised by a handler: this attempt failed, retry the job in ``delay`` seconds
    (None: the handler's backoff, or the broker's). Counts as an attempt: once the
    attempts are used up, the job is dead-lettered."""

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(message)
        if delay is not None and not delay >= 0:
            raise ValueError(f"delay must be >= 0 seconds, not {delay!r}")
        self.delay = delay


class Fatal(Exception):
    """Raised by a handler: fail the job now and dead-letter it, whatever attempts are
    left (a retry could not succeed)."""


class PayloadInvalid(TrioqError):
    """The payload does not match the handler's annotation (dead-lettered, not retried)."""

    tag = "PayloadInvalid"
    status = 400


class JobTimeout(TrioqError):
    """The handler ran past its timeout."""

    tag = "JobTimeout"
    status = 500


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
    run: RunMode = "async"
    pool: ProcessPool | None = None
    """The worker's pool, for ``run="process"``."""
    retry: RetryPolicy | None = None
    """The handler's own retry policy (None: the broker's)."""


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """``@worker.job(..., max_attempts=, backoff=)``: stop after ``max_attempts``
    attempts (dead-letter the job; None: the job's own), and wait ``backoff(attempt)``
    seconds before the next (None: the broker's backoff)."""

    max_attempts: int | None = None
    backoff: Callable[[int], float] | None = None

    @classmethod
    def of(cls, max_attempts: object, backoff: object) -> RetryPolicy | None:
        """The policy the decorator's arguments ask for (ValueError/TypeError for
        bad ones): ``backoff`` is a callable of the attempt, or a number of seconds
        that doubles with each attempt (``base * 2 ** (attempt - 1)``, at most an
        hour)."""
        if max_attempts is None and backoff is None:
            return None
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise ValueError(f"max_attempts must be an integer >= 1, not {max_attempts!r}")
        delay: Callable[[int], float] | None
        if backoff is None or callable(backoff):
            delay = backoff
        elif isinstance(backoff, int | float) and not isinstance(backoff, bool) and backoff >= 0:
            base = float(backoff)

            def delay(attempt: int) -> float:
                return min(3600.0, base * 2.0 ** max(0, attempt - 1))

        else:
            raise TypeError(f"backoff must be seconds (>= 0) or a function, not {backoff!r}")
        return cls(max_attempts, delay)


Hook = Callable[..., Awaitable[None] | None]


@dataclass(slots=True)
class Hooks:
    """The hooks registered on a worker, called in order."""

    claimed: list[Hook] = field(default_factory=list)
    """``fn(ctx)`` when a job starts."""
    completed: list[Hook] = field(default_factory=list)
    """``fn(ctx)`` after a job completed."""
    failed: list[Hook] = field(default_factory=list)
    """``fn(ctx, error_text)`` after a job failed."""


def label(job: Claimed) -> str:
    """How every job-related log line names its job."""
    return f"job {job.id} ({job.type}, attempt {job.attempt})"


def check_registration(job_type: object, timeout: object, run: object = None) -> None:
    """The mistakes ``@worker.job(...)`` refuses before it sees the function."""
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
    if run is not None and run not in RUN_MODES:
        raise ValueError(f"run must be one of {', '.join(map(repr, RUN_MODES))}, not {run!r}")


def make_handler(
    job_type: str,
    fn: Callable[..., Any],
    timeout: float | None,
    run: RunMode | None = None,
    pool: ProcessPool | None = None,
    retry: RetryPolicy | None = None,
) -> Handler:
    """``fn``'s parameters: the payload (validated against its annotation) and at most
    one annotated :class:`JobContext`; anything else is a TypeError. ``run``: None
    picks ``"async"`` for an async function and ``"thread"`` for a sync one; a mode
    that does not fit the function is a ValueError (``"process"`` also needs a
    function a process can import by name, and ``pool``)."""
    is_async = inspect.iscoroutinefunction(fn)
    mode: RunMode = run if run is not None else ("async" if is_async else "thread")
    if mode == "process":
        check_by_reference(job_type, fn)
        if pool is None:
            raise ValueError(f"handler for {job_type!r}: run='process' needs a process pool")
    elif mode == "async" and not is_async:
        raise ValueError(
            f"handler for {job_type!r}: run='async' needs an async function, and "
            f"{fn.__qualname__} is sync (use run='thread' or run='process')"
        )
    elif mode == "thread" and is_async:
        raise ValueError(
            f"handler for {job_type!r}: run='thread' needs a sync function, and "
            f"{fn.__qualname__} is async (drop run=: it runs on the event loop)"
        )
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        hints = {}
    payload_param = context_param = None
    validate: Callable[[Any], Any] = _unchecked
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
        is_async=is_async,
        payload_param=payload_param,
        context_param=context_param,
        validate=validate,
        run=mode,
        pool=pool if mode == "process" else None,
        retry=retry,
    )


def _unchecked(value: Any) -> Any:
    return value


def _payload_validator(annotation: Any) -> Callable[[Any], Any]:
    """A parameter annotation as a validator of JSON payloads (pydantic's rules)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return _unchecked
    validate_model: Callable[[Any], Any] | None = getattr(annotation, "model_validate", None)
    if callable(validate_model):
        return validate_model  # a pydantic model
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    return lambda value: adapter.validate_python(value, strict=False)


async def call_handler(handler: Handler, payload: Any, ctx: JobContext) -> Any:
    """Call the handler; what it returned (its result)."""
    kwargs: dict[str, Any] = {}
    if handler.payload_param is not None:
        kwargs[handler.payload_param] = payload
    if handler.context_param is not None:
        kwargs[handler.context_param] = ctx
    if handler.run == "process":
        # only the validated payload and a copy of the context cross; the function
        # goes by name. A cancellation (lease lost, timeout, grace over) kills it
        assert handler.pool is not None
        if handler.context_param is not None:
            kwargs[handler.context_param] = dataclasses.replace(ctx, reporter=None)
        return await handler.pool.run(handler.fn, kwargs)
    if handler.is_async:
        return await handler.fn(**kwargs)
    # a thread, so a blocking handler cannot starve the heartbeats; it is not
    # abandoned on cancel (the job ends when the function returns)
    return await trio.to_thread.run_sync(lambda: handler.fn(**kwargs))


async def run_hooks(hooks: list[Hook], job: Claimed, *args: Any) -> None:
    """Call each hook; one that raises is logged, and the job goes on."""
    for hook in hooks:
        try:
            result = hook(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("%s: hook %r failed", label(job), hook)
