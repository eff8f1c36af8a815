"""The broker service: engine + HTTP server + fast-failover probe in one nursery."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from .._errors import DocumentInvalid, QueueNotFound, StorageUnavailable
from .._logging import configure_logging
from .._signals import run_until_signalled
from .._tokens import Scope
from ..core._engine import Candidacy, Engine, Role
from ..storage._faulty import FaultyStorage
from ..storage._file import FileStorage
from ..storage._memory import MemoryStorage
from ..storage._protocol import Storage
from ..storage._throttled import ThrottledStorage
from ..storage._timed import Observe, TimedStorage
from ._api import BrokerApi
from ._faults import FaultCollector, describe_faults, failures_paused, faults_in, with_faults
from ._guard import ConnectionGuard, guard_connections
from ._http import create_app
from ._metrics import BrokerInstruments, instrument, metrics_registry
from ._settings import BrokerSettings, SettingsError, parse_settings

log = logging.getLogger("trioq.broker")

PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 0.5
PROBE_FAILURES = 2


def build_storage(
    settings: BrokerSettings, *, bare: bool = False, observe: Observe | None = None
) -> Storage:
    """The backend the settings name, timed if ``observe`` is given (innermost: the
    latency is the store's own), with faults if ``--fault-*`` turn them on (they are
    the store's), throttled if limits are set. ``bare``: the backend alone, and a
    missing data directory stays missing (for ``trioq inspect``, which only looks)."""
    storage: Storage
    if settings.storage == "file":
        storage = FileStorage(settings.data_dir, create_directory=not bare)
    elif settings.storage == "s3":
        from ..storage._s3 import S3Storage

        assert settings.bucket is not None
        storage = S3Storage(
            settings.bucket,
            prefix=settings.prefix,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
        )
    elif settings.storage == "gcs":
        from ..storage._gcs import GCSStorage

        assert settings.gcs_bucket is not None
        # credentials from Google's chain; STORAGE_EMULATOR_HOST points at an emulator
        storage = GCSStorage(settings.gcs_bucket, prefix=settings.gcs_prefix)
    else:
        storage = MemoryStorage()
    if bare:
        return storage
    if observe is not None:
        storage = TimedStorage(storage, observe)
    storage = with_faults(storage, settings)
    if settings.max_reads_per_minute > 0 or settings.max_writes_per_minute > 0:
        storage = ThrottledStorage(
            storage,
            max_reads_per_minute=settings.max_reads_per_minute,
            max_writes_per_minute=settings.max_writes_per_minute,
        )
    return storage


def _unwrapped(storage: Storage) -> Storage:
    while isinstance(storage, ThrottledStorage | FaultyStorage | TimedStorage):
        storage = storage.inner
    return storage


def is_new_location(storage: Storage, key: str) -> bool:
    """Whether ``key`` provably never held a queue in ``storage`` (blocking I/O).

    Memory storage always starts empty; a file backend whose directory does not
    exist or is empty is new (the lock file a queue leaves behind when its document
    is deleted makes the directory not new). An S3 bucket never is: a missing object
    there may have been deleted, or the prefix may be wrong.
    """
    storage = _unwrapped(storage)
    if isinstance(storage, MemoryStorage):
        return True
    if isinstance(storage, FileStorage):
        directory = storage.directory
        return not directory.is_dir() or not os.listdir(directory)
    return False


def _in_main_thread() -> bool:
    """Whether signals can be received here (only the main thread gets them)."""
    return threading.current_thread() is threading.main_thread()


def _advertised(settings: BrokerSettings, binds: Sequence[str]) -> str:
    if settings.advertise_url:
        return settings.advertise_url.rstrip("/")
    # hypercorn names its binds https:// when it serves TLS
    scheme = "https" if settings.tls else "http"
    bound = binds[0] if binds else f"{scheme}://{settings.host}:{settings.port}"
    if "0.0.0.0" in bound or "[::]" in bound:
        port = bound.rsplit(":", 1)[1]
        return f"{scheme}://{socket.gethostname()}:{port}"
    return bound


def _warn_if_few_descriptors(max_connections: int) -> None:
    """Log a warning when the process may run out of file descriptors before it
    reaches ``--max-connections`` (each connection holds one; storage and logs a few)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return  # no such limit here (Windows)
    if soft != resource.RLIM_INFINITY and soft < max_connections + 64:
        log.warning(
            "--max-connections is %d but the open-file limit is %d: raise it (ulimit -n) "
            "or lower --max-connections, or new connections fail once the files run out",
            max_connections,
            soft,
        )


class _InFlight:
    """ASGI wrapper that counts the HTTP requests and WebSockets being served."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0
        self._idle = trio.Event()
        self._idle.set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.count == 0:
            self._idle = trio.Event()
        self.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        while self.count:
            await self._idle.wait()


class Broker:
    """One broker process's worth of service: run it with ``nursery.start(broker.run)``.

    ``task_status.started(url)`` fires once the HTTP server is bound and the engine
    leads or stands by; ``url`` is the advertised URL.
    """

    def __init__(self, settings: BrokerSettings, *, storage: Storage | None = None) -> None:
        settings.validate()
        self.settings = settings
        self.instruments = BrokerInstruments()
        """The histograms and by-type counters of ``/metrics`` (see :mod:`._metrics`)."""
        observe = self.instruments.observe_storage
        self.storage = (
            build_storage(settings, observe=observe)
            if storage is None
            else with_faults(TimedStorage(storage, observe), settings)
        )
        self.faults = faults_in(self.storage) if settings.storage_faults() else None
        """The :class:`FaultyStorage` the ``--fault-*`` settings put in, if any."""
        config = settings.engine_config()
        config.freeze_loaded_state = True
        self._candidacy: Candidacy | None = None
        # how the engine stands for election is known in run(), once the server is
        # bound (the URL) and the location was looked at (whether it may create a
        # queue: that is I/O); the engine asks for it when it starts

        def candidacy() -> Candidacy:
            if self._candidacy is None:
                raise RuntimeError("a broker's engine runs from Broker.run, once it is bound")
            return self._candidacy

        self.engine = Engine(
            self.storage,
            key=settings.key,
            broker_id=settings.broker_id,
            config=config,
            limits=settings.limits(),
            candidacy=candidacy,
        )
        throttle: Callable[[], dict[str, Any]] | None = None
        if isinstance(self.storage, ThrottledStorage):
            throttle = self.storage.stats
        self.api = BrokerApi(self.engine, throttle_stats=throttle)
        self.engine.observe_commit = self.instruments.observe_commit
        instrument(self.api, self.instruments)
        self._shutdown = trio.Event()
        self.tokens = settings.token_table()
        """The tokens the broker accepts (never logged: only their count by scope)."""
        self.app = create_app(
            self.api,
            # asked on every request: a reload (SIGHUP) takes effect at once
            tokens=lambda: self.tokens,
            max_request_bytes=settings.max_request_bytes,
            metrics_public=settings.metrics_public,
            closing=self._shutdown,
        )
        # limits (docs/limits.md): a request body must arrive within the client
        # timeout, and long-poll claims waiting at once are bounded
        self.app.config["BODY_TIMEOUT"] = settings.client_timeout
        self.engine.book.max_waiting = settings.max_waiting_claims
        self.connections = ConnectionGuard(settings.max_connections, settings.client_timeout)
        """The bounds of the HTTP server's connections, and how many are open."""
        if self.faults is not None:
            metrics_registry(self.api).register(FaultCollector(self.faults))
        self.url: str | None = None
        self._stop_probe = False

    def stop(self) -> None:
        """Graceful stop: stop accepting, commit what is pending, release the lease."""
        self._shutdown.set()
        self.engine.stop()

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        settings = self.settings
        if not self.tokens and settings.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "binding %s without a token: anyone who can reach it can use the queue",
                settings.host,
            )
        if self.tokens:
            # how many, never which
            log.info(
                "auth on: %s",
                ", ".join(f"{self.tokens.count(s)} {s} token(s)" for s in Scope),
            )
        if self.faults is not None:
            log.warning(
                "storage fault injection is ON (for tests, never production): %s",
                describe_faults(settings),
            )
        config = HypercornConfig()
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        config.bind = [f"{host}:{settings.port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = settings.shutdown_grace_s
        config.websocket_max_message_size = settings.max_request_bytes
        config.h11_max_incomplete_size = 64 * 1024  # a longer request head: 431, closed
        # an idle connection closes after this; a request head must arrive within it
        config.keep_alive_timeout = settings.keep_alive_timeout
        guard_connections(config, self.connections)
        _warn_if_few_descriptors(settings.max_connections)
        if settings.certfile is not None and settings.keyfile is not None:
            config.certfile = settings.certfile
            config.keyfile = settings.keyfile
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(self._serve, config)
            self.url = _advertised(settings, binds)
            # a URL we derived from our own bind is ours alone (unless a loopback URL
            # is shared through a remote bucket): a document led from it was led by
            # our previous life, crashed, and we may take over at once
            loopback = settings.host in ("127.0.0.1", "localhost", "::1")
            self._candidacy = Candidacy(
                url=self.url,
                exclusive_url=settings.advertise_url is None
                and (settings.storage == "file" or not loopback),
                create=settings.create
                or await trio.to_thread.run_sync(is_new_location, self.storage, settings.key),
            )
            with failures_paused(self.faults):
                await nursery.start(self._run_engine)
            if settings.failover_probe:
                nursery.start_soon(self._probe_leader)
            if settings.tokens_file is not None and _in_main_thread():
                await nursery.start(self._reload_tokens_on_sighup)
            task_status.started(self.url)

    async def _serve(
        self, config: HypercornConfig, *, task_status: trio.TaskStatus[list[str]]
    ) -> None:
        """hypercorn until the shutdown, then until the requests in flight are
        answered (at most the grace period).

        hypercorn's own graceful stop also waits out the grace period for idle
        keep-alive connections (every pooled client holds one), so once nothing is
        in flight the server is cancelled instead: idle connections just close.
        """
        app = _InFlight(self.app)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                partial(serve, app, config, shutdown_trigger=self._shutdown.wait)
            )
            task_status.started(binds)
            await self._shutdown.wait()
            with trio.move_on_after(self.settings.shutdown_grace_s):
                await app.wait_idle()
            nursery.cancel_scope.cancel()

    def reload_tokens(self) -> bool:
        """Read ``--tokens-file`` again (with the flag and variable tokens): the new
        table answers the next request. On an error the old table stays, and the
        error (which never quotes a token) is logged."""
        try:
            tokens = self.settings.token_table()
        except ValueError as exc:
            log.error("tokens not reloaded, the previous ones stay in force: %s", exc)
            return False
        self.tokens = tokens
        log.info("tokens reloaded: %s", ", ".join(f"{tokens.count(s)} {s} token(s)" for s in Scope))
        return True

    async def _reload_tokens_on_sighup(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Rotation without a restart: each SIGHUP reloads the tokens file, until
        the broker shuts down."""
        with trio.open_signal_receiver(signal.SIGHUP) as hangups:
            async with trio.open_nursery() as nursery:
                task_status.started()

                async def stop_at_shutdown() -> None:
                    await self._shutdown.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_at_shutdown)
                async for _ in hangups:
                    await trio.to_thread.run_sync(self.reload_tokens)  # reads a file

    async def _run_engine(
        self, *, task_status: trio.TaskStatus[Role] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await self.engine.run(task_status=task_status)
        finally:
            # the engine is done (stopped, or failed): take the HTTP server and the
            # probe down with it
            self._shutdown.set()
            self._stop_probe = True

    async def _probe_leader(self) -> None:
        """Fast failover: probe the leader; after two failures in a row with the
        document unchanged in between, ask the engine to take over at once.

        The version is read from the store at each failure (a HEAD: of the document, or
        of the log record after the standby's last), not taken from the standby's last
        poll: under load the leader commits many times a second,
        so a cached version is almost always older than the dead leader's last
        commit, and comparing it would throw away a failed probe every time.
        """
        engine = self.engine
        failures = 0
        version_at_first: str | None = None
        # the leader's certificate is verified (--ca-file for a private CA): a probe
        # answered by an impostor would hold a takeover back
        async with httpx.AsyncClient(
            timeout=PROBE_TIMEOUT, verify=self.settings.probe_verify()
        ) as client:
            while not self._stop_probe and not self._shutdown.is_set():
                with trio.move_on_after(PROBE_INTERVAL):
                    await self._shutdown.wait()
                leader = engine.leader_url
                if engine.role is not Role.STANDBY or not leader or leader == engine.url:
                    failures = 0
                    continue
                if await self._leader_answers(client, leader):
                    failures = 0
                    continue
                try:
                    version = await engine.stored_version()
                except DocumentInvalid:
                    failures = 0  # a damaged document: the standby loop halts on it
                    continue
                except StorageUnavailable as exc:
                    log.warning("probe: cannot read the version of %s: %s", engine.key, exc)
                    failures = 0
                    continue
                if version is None:
                    failures = 0  # the document is gone: the standby loop elects
                    continue
                failures += 1
                if failures == 1 or version != version_at_first:
                    # the first failure, or the document moved: someone still commits
                    failures, version_at_first = 1, version
                    continue
                if failures >= PROBE_FAILURES:
                    log.warning(
                        "leader %s failed %d probes with %s unchanged: taking over",
                        leader,
                        failures,
                        engine.key,
                    )
                    engine.request_takeover(version)
                    failures = 0

    async def _leader_answers(self, client: httpx.AsyncClient, leader: str) -> bool:
        try:
            response = await client.get(f"{leader}/healthz")
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return False
        return (
            response.status_code == 200 and isinstance(body, dict) and body.get("role") == "leader"
        )


GC_THRESHOLDS = (20_000, 50, 100)
"""The broker process's collector thresholds (CPython's default: 700, 10, 10)."""


def tune_collector() -> None:
    """Make the cyclic garbage collector cheap for a broker process (not for an engine
    run inside someone else's program: that process's collector is its own).

    A broker allocates a great deal per request and keeps what it allocates (the
    queue's jobs) for long, so the collector's young collections ran every 700
    allocations and its full ones scanned the whole queue: measured with
    ``bench_e2e.py`` (4x64+p2000, log layout), 10,133 jobs/s on an empty queue and
    8,951 on 100,000 delayed jobs with the default collector; 13,520 and 13,946
    with the interpreter's start-up objects frozen (``gc.freeze``) and these
    thresholds. Garbage without cycles is freed by reference counting as before;
    cycles are still collected, a little later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: list[str] | None = None, *, prog: str = "python -m trioq.broker") -> int:
    """``python -m trioq.broker``: run a broker until SIGINT/SIGTERM."""
    # the text format at INFO until the settings are read: their errors are printed
    configure_logging()
    try:
        settings = parse_settings(argv, prog=prog)
        # httpx logs every request at INFO: a standby's probe alone would write a
        # line a second (86,400 a day), so configure_logging keeps it at WARNING
        configure_logging(settings.log_level, settings.log_format)
        broker = Broker(settings)
    except SettingsError as exc:
        print(f"trioq broker: {exc}", file=sys.stderr)
        return 2
    tune_collector()
    try:
        return trio.run(_serve_until_signalled, broker)
    except Exception as exc:
        # trio's nurseries wrap what failed in exception groups: dig out the cause
        # an operator can act on and say it in one line
        cause = _operator_error(exc)
        if cause is None:
            raise
        if isinstance(cause, OSError):
            print(
                f"trioq broker: cannot serve on {settings.host}:{settings.port}: {cause}",
                file=sys.stderr,
            )
        elif isinstance(cause, DocumentInvalid):
            print(
                f"trioq broker: refusing to lead: {cause}; it was left unchanged (show it "
                "with `trioq inspect` and the same storage options; docs/storage.md)",
                file=sys.stderr,
            )
        else:
            print(f"trioq broker: {cause}", file=sys.stderr)
        return 1


def _operator_error(exc: BaseException) -> BaseException | None:
    """The first storage, document or socket error in ``exc`` (or its groups)."""
    if isinstance(exc, StorageUnavailable | DocumentInvalid | QueueNotFound | OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _operator_error(inner)
            if found is not None:
                return found
    return None


async def _serve_until_signalled(broker: Broker) -> int:
    """Serve until a signal: the first stops gracefully (exit 0), the second at once
    (130)."""

    async def serve() -> int:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(broker.run)
            engine = broker.engine
            print(
                f"trioq broker {engine.broker_id} listening on {url} as {engine.role.value} "
                f"(storage: {broker.storage.describe()})",
                flush=True,
            )
        return 0

    return await run_until_signalled(serve, drain=broker.stop, log=log)
