"""Worker settings: :class:`WorkerSettings`, each field with its flag and environment
variable.

Precedence and units are those of every trioq setting (:mod:`trioq._settings`): flags
(``python -m trioq.worker`` only) over the environment over ``Worker(...)``
arguments over defaults, embedded or not; durations in seconds here, milliseconds only
in the ``-ms`` flags and ``_MS`` variables.
"""

from __future__ import annotations

import hmac
import ssl
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator

from .._logging import LogFormat
from .._settings import Public, Settings
from .._tokens import Secret, check_token, read_token_file, ssl_context
from ..client import DEFAULT_URL, parse_urls


class WorkerSettings(Settings):
    """What a :class:`~trioq.Worker` runs with (``worker.settings``)."""

    broker_url: Annotated[
        str, Public("--broker-url", "BROKER_URL", "broker URL(s), comma-separated")
    ] = DEFAULT_URL
    concurrency: Annotated[
        int, Field(ge=1), Public("--concurrency", "TRIOQ_CONCURRENCY", "jobs at once")
    ] = 1
    prefetch: Annotated[
        int,
        Field(ge=0),
        Public(
            "--prefetch",
            "TRIOQ_PREFETCH",
            "jobs held beyond --concurrency, their leases kept while they wait for a slot",
        ),
    ] = 0
    """Jobs claimed ahead of a free slot: the worker holds at most ``concurrency +
    prefetch`` jobs. Raise it for short jobs (each broker commit can then hand the
    worker more than ``concurrency`` jobs); keep it 0 for long ones, whose prefetched
    jobs would wait here while another worker sits idle."""
    poll_interval: Annotated[
        float,
        Field(ge=0),
        Public(
            "--poll-interval-ms", "TRIOQ_POLL_INTERVAL_MS", "long-poll wait of a claim", ms=True
        ),
    ] = 1.0
    heartbeat_interval: Annotated[
        float,
        Field(gt=0),
        Public(
            "--heartbeat-interval-ms",
            "TRIOQ_HEARTBEAT_INTERVAL_MS",
            "job heartbeat interval, shortened to a third of the lease the broker grants",
            ms=True,
        ),
    ] = 5.0
    """Between heartbeats; shortened to a third of a job's ``leaseMs`` when the broker
    grants shorter leases."""
    shutdown_grace: Annotated[
        float,
        Field(ge=0),
        Public(
            "--shutdown-grace-s", "TRIOQ_SHUTDOWN_GRACE_S", "grace for running jobs at shutdown"
        ),
    ] = 30.0
    token: Annotated[
        Secret | None, Public("--token", "TRIOQ_TOKEN", "bearer token (a worker-scope token)")
    ] = None
    """Masked in every repr; ``token.get_secret_value()`` is the text."""
    token_file: Annotated[
        str | None,
        Public(
            "--token-file",
            "TRIOQ_TOKEN_FILE",
            "file holding the bearer token (instead of --token: it stays out of ps and "
            "the environment)",
        ),
    ] = None
    ca_file: Annotated[
        str | None,
        Public(
            "--ca-file",
            "TRIOQ_CA_FILE",
            "CA bundle (PEM) that verifies an https:// broker's certificate",
            shown_default="the system's CAs",
        ),
    ] = None
    worker_id: Annotated[
        str | None,
        Public(
            "--worker-id", "TRIOQ_WORKER_ID", "this worker's id", shown_default="host-pid-random"
        ),
    ] = None
    group_commit_interval: Annotated[
        float,
        Field(ge=0),
        Public(
            "--group-commit-interval-ms",
            "GROUP_COMMIT_INTERVAL_MS",
            "the broker's group commit interval: a stopping worker awaits a claim in "
            "flight at most this plus 1 s",
            ms=True,
        ),
    ] = 2.0
    """At a stop, a claim in flight is awaited at most the broker's group commit
    interval plus one second. The worker learns the interval from the broker when it
    starts (``groupCommitIntervalMs`` in ``GET /v1/stats``); this is the value used
    until then, or with a broker that does not say (the production recommendation)."""
    metrics_port: Annotated[
        int | None,
        Field(ge=0, le=65535),
        Public(
            "--metrics-port",
            "TRIOQ_WORKER_METRICS_PORT",
            "serve Prometheus /metrics on this port (0: a free one, logged)",
            shown_default="off",
        ),
    ] = None
    """Where ``/metrics`` is served (:mod:`trioq.worker._metrics`); None: nowhere."""
    metrics_host: Annotated[
        str,
        Public("--metrics-host", "TRIOQ_WORKER_METRICS_HOST", "bind address of --metrics-port"),
    ] = "127.0.0.1"
    log_format: Annotated[
        LogFormat,
        Public(
            "--log-format",
            "TRIOQ_LOG_FORMAT",
            "log lines as text or json (one JSON object a line; python -m trioq.worker)",
        ),
    ] = "text"
    log_payloads: Annotated[
        bool,
        Public(
            "--log-payloads",
            "TRIOQ_LOG_PAYLOADS",
            "put job payloads in the job event log lines (they may hold secrets)",
        ),
    ] = False
    """Payloads are never logged unless this is on."""
    process_pool: Annotated[
        int | None,
        Field(ge=1),
        Public(
            "--process-pool",
            "TRIOQ_PROCESS_POOL",
            "processes at most at once for run='process' handlers (each job also takes a "
            "--concurrency slot)",
            shown_default="the CPU count",
        ),
    ] = None
    """Size of the pool that runs ``run="process"`` handlers (:mod:`._processes`);
    None: ``os.cpu_count()``. A process job also holds one of the ``concurrency``
    slots, so at most ``min(concurrency, process_pool)`` run at once."""
    processes: Annotated[
        int,
        Field(ge=1, le=256),
        Public(
            "--processes",
            "TRIOQ_WORKER_PROCESSES",
            "worker processes run and restarted by a supervisor (python -m trioq.worker)",
        ),
    ] = 1
    """``python -m trioq.worker`` only: above 1, the command supervises this many
    worker processes (:mod:`._supervisor`); 1 runs the worker in the process itself."""
    release_timeout: Annotated[float, Field(gt=0)] = 5.0
    """Bound on each outcome report (complete, fail, release) of a job."""

    @field_validator("broker_url")
    @classmethod
    def _urls(cls, urls: str) -> str:
        parse_urls(urls)  # a typo is an error now, not a retry loop later
        return urls

    @model_validator(mode="after")
    def _token_and_tls(self) -> Self:
        if self.token_file is not None:
            token = read_token_file(self.token_file, "--token-file (TRIOQ_TOKEN_FILE)")
            # constant time: a token is never compared otherwise
            if self.token is not None and not hmac.compare_digest(
                self.token.get_secret_value().encode(), token.encode()
            ):
                raise ValueError(
                    "--token (TRIOQ_TOKEN) and --token-file (TRIOQ_TOKEN_FILE) are both "
                    "set, to different tokens: give one"
                )
            # set without validation: this validator runs on assignment too
            object.__setattr__(self, "token", Secret(token))
        elif self.token is not None:
            check_token(self.token.get_secret_value(), "--token (TRIOQ_TOKEN)")
        if self.ca_file is not None:
            ssl_context(self.ca_file)  # ValueError: unreadable, not a CA bundle
        return self

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """How the worker checks an ``https://`` broker's certificate (``Client``'s
        ``verify``): the ``--ca-file`` bundle, else the system's CAs."""
        return True if self.ca_file is None else ssl_context(self.ca_file)
