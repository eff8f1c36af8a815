"""Broker settings: :class:`BrokerSettings`, each field with its flag and environment
variable (osqueue's names where osqueue has one).

Precedence and units are those of every trioq setting (:mod:`trioq._settings`): flags
over the environment over constructor arguments over defaults; durations in seconds
here, milliseconds only in the ``-ms`` flags and ``_MS`` variables.
"""

from __future__ import annotations

import argparse
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal, Self

from pydantic import BeforeValidator, Field, field_validator, model_validator

from .._logging import LogFormat, check_level
from .._settings import LegacyName, Public, Settings, SettingsError
from .._tokens import (
    Scope,
    Secret,
    TokenTable,
    check_token,
    read_tokens_file,
    split_tokens,
    ssl_context,
)
from ..core._archive import DEDUP_CAP
from ..core._config import EngineConfig
from ..core._pending import MAX_WAITING
from ..core._state import Limits
from ._guard import MAX_CONNECTIONS

__all__ = [
    "STORAGE_FIELDS",
    "BrokerSettings",
    "SettingsError",
    "StorageBackend",
    "add_storage_arguments",
    "parse_settings",
]

StorageBackend = Literal["file", "s3", "gcs", "memory"]
StorageLayout = Literal["document", "log"]

_S3_ONLY = ("bucket", "prefix", "region", "endpoint_url")
_GCS_ONLY = ("gcs_bucket", "gcs_prefix")


def _backend(value: object) -> object:
    if isinstance(value, str):
        value = value.strip().lower()  # S3_BUCKET users write STORAGE_BACKEND=S3 too
        if value not in ("file", "s3", "gcs", "memory"):
            raise ValueError(f"unknown storage backend {value!r} (file, s3, gcs or memory)")
    return value


def _ms(seconds: float) -> int:
    """Seconds as the whole milliseconds the queue model counts in."""
    return round(seconds * 1000)


class BrokerSettings(Settings):
    """Everything ``python -m trioq.broker`` can be told; ``Broker(settings)`` in code.

    ``BrokerSettings(port=0)`` reads the environment too, and the environment wins
    over the arguments (see :mod:`trioq._settings`); use ``BrokerSettings.load(...,
    environ={})`` for settings that ignore it.
    """

    host: Annotated[
        str,
        Public("--host", "BROKER_HOST", "bind address (non-loopback without a token: a warning)"),
    ] = "127.0.0.1"
    port: Annotated[int, Public("--port", "BROKER_PORT", "bind port (0: any free port)")] = 8080
    advertise_url: Annotated[
        str | None,
        Public(
            "--advertise-url",
            "BROKER_ADVERTISE_URL",
            "URL written into the document for clients",
            shown_default="the bound address",
        ),
    ] = None
    storage: Annotated[
        StorageBackend,
        BeforeValidator(_backend),
        Public("--storage", "STORAGE_BACKEND", "storage backend: file, s3, gcs or memory"),
    ] = "file"
    data_dir: Annotated[
        str, Public("--data-dir", "TRIOQ_DATA_DIR", "directory of the file backend")
    ] = "./.trioq"
    bucket: Annotated[str | None, Public("--bucket", "S3_BUCKET", "S3 bucket")] = None
    prefix: Annotated[str, Public("--prefix", "S3_PREFIX", "key prefix in the bucket")] = ""
    gcs_bucket: Annotated[
        str | None, Public("--gcs-bucket", "GCS_BUCKET", "Google Cloud Storage bucket")
    ] = None
    gcs_prefix: Annotated[
        str, Public("--gcs-prefix", "GCS_PREFIX", "key prefix in the GCS bucket")
    ] = ""
    region: Annotated[
        str | None, Public("--region", "S3_REGION", "S3 region", shown_default="AWS chain")
    ] = None
    endpoint_url: Annotated[
        str | None,
        Public(
            "--endpoint-url",
            "S3_ENDPOINT_URL",
            "S3-compatible endpoint (SeaweedFS, MinIO, R2, ...)",
            shown_default="AWS",
        ),
    ] = None
    key: Annotated[str, Public("--key", "TRIOQ_KEY", "the document's key")] = "queue.json"
    layout: Annotated[
        StorageLayout,
        Public(
            "--layout",
            "TRIOQ_LAYOUT",
            "how the queue is stored: document (one object rewritten by every commit) or "
            "log (one object a commit; docs/log-layout.md)",
        ),
    ] = "log"
    checkpoint_commits: Annotated[
        int,
        Field(ge=1),
        Public(
            "--checkpoint-every-commits",
            "TRIOQ_CHECKPOINT_EVERY_COMMITS",
            "log layout: write a checkpoint after this many commits",
        ),
    ] = 1000
    checkpoint_interval: Annotated[
        float,
        Field(gt=0, allow_inf_nan=False),
        Public(
            "--checkpoint-every-s",
            "TRIOQ_CHECKPOINT_EVERY_S",
            "log layout: ... or after this many seconds",
        ),
    ] = 600.0
    checkpoint_min_bytes: Annotated[
        int,
        Field(ge=1),
        Public(
            "--checkpoint-min-bytes",
            "TRIOQ_CHECKPOINT_MIN_BYTES",
            "log layout: ... or after as many bytes of log as the last checkpoint, and "
            "at least this many",
        ),
    ] = 1 << 20
    gc_grace: Annotated[
        float,
        Field(ge=0, allow_inf_nan=False),
        Public(
            "--gc-grace-s",
            "TRIOQ_GC_GRACE_S",
            "log layout: how long a checkpoint exists before what it replaces is deleted",
        ),
    ] = 30.0
    broker_id: Annotated[
        str | None,
        Public("--broker-id", "TRIOQ_BROKER_ID", "this broker's id", shown_default="random"),
    ] = None
    group_commit_interval: Annotated[
        float,
        Field(ge=0),
        Public(
            "--group-commit-interval-ms",
            "GROUP_COMMIT_INTERVAL_MS",
            "minimum spacing between the starts of two commits (2000 in production)",
            ms=True,
        ),
    ] = 0.050
    job_lease: Annotated[
        float,
        Field(gt=0),
        Public(
            "--job-heartbeat-timeout-ms",
            "JOB_HEARTBEAT_TIMEOUT_MS",
            "a claimed job's lease (leaseMs): keep it 2-3x the workers' heartbeat interval",
            ms=True,
            aliases=("--job-lease-ms",),
        ),
    ] = 30.0
    broker_heartbeat_interval: Annotated[
        float,
        Field(gt=0),
        Public(
            "--broker-heartbeat-interval-ms",
            "BROKER_HEARTBEAT_INTERVAL_MS",
            "the leader commits at least this often",
            ms=True,
        ),
    ] = 3.0
    broker_heartbeat_timeout: Annotated[
        float,
        Field(gt=0),
        Public(
            "--broker-heartbeat-timeout-ms",
            "BROKER_HEARTBEAT_TIMEOUT_MS",
            "a standby takes over when the document has not changed for this long",
            ms=True,
        ),
    ] = 10.0
    token: Annotated[
        Secret | None,
        Public(
            "--token",
            "TRIOQ_TOKEN",
            "an admin token: require Authorization: Bearer <token> (see docs/security.md)",
        ),
    ] = None
    tokens_file: Annotated[
        str | None,
        Public(
            "--tokens-file",
            "TRIOQ_TOKENS_FILE",
            "file of '<scope> <token>' lines (scopes: producer, worker, admin)",
        ),
    ] = None
    admin_tokens: Annotated[
        Secret | None,
        Public("--admin-tokens", "TRIOQ_ADMIN_TOKENS", "admin tokens, comma-separated"),
    ] = None
    worker_tokens: Annotated[
        Secret | None,
        Public("--worker-tokens", "TRIOQ_WORKER_TOKENS", "worker tokens, comma-separated"),
    ] = None
    producer_tokens: Annotated[
        Secret | None,
        Public("--producer-tokens", "TRIOQ_PRODUCER_TOKENS", "producer tokens, comma-separated"),
    ] = None
    certfile: Annotated[
        str | None,
        Public("--certfile", "TRIOQ_CERTFILE", "serve HTTPS with this certificate chain (PEM)"),
    ] = None
    keyfile: Annotated[
        str | None,
        Public("--keyfile", "TRIOQ_KEYFILE", "the private key of --certfile (PEM)"),
    ] = None
    ca_file: Annotated[
        str | None,
        Public(
            "--ca-file",
            "TRIOQ_CA_FILE",
            "CA bundle (PEM) that verifies other brokers' certificates in failover probes",
            shown_default="the system's CAs",
        ),
    ] = None
    max_writes_per_minute: Annotated[
        float,
        Field(ge=0),
        Public("--max-writes-per-minute", "S3_MAX_WRITES_PER_MINUTE", "throttle writes (0: off)"),
    ] = 0
    max_reads_per_minute: Annotated[
        float,
        Field(ge=0),
        Public("--max-reads-per-minute", "S3_MAX_READS_PER_MINUTE", "throttle reads (0: off)"),
    ] = 0
    max_payload_bytes: Annotated[
        int,
        Field(gt=0),
        Public("--max-payload-bytes", "TRIOQ_MAX_PAYLOAD_BYTES", "largest job payload"),
    ] = 1024 * 1024
    max_result_bytes: Annotated[
        int,
        Field(gt=0),
        Public(
            "--max-result-bytes",
            "TRIOQ_MAX_RESULT_BYTES",
            "largest job result kept (a handler's return value, as JSON)",
        ),
    ] = 64 * 1024
    max_request_bytes: Annotated[
        int,
        Field(gt=0),
        Public(
            "--max-request-bytes",
            "TRIOQ_MAX_REQUEST_BYTES",
            "largest request body or WebSocket message",
        ),
    ] = 8 * 1024 * 1024
    max_queued: Annotated[
        int,
        Field(gt=0),
        Public("--max-queued", "TRIOQ_MAX_QUEUED", "cap on queued + in-progress jobs"),
    ] = 100_000
    max_document_bytes: Annotated[
        int,
        Field(gt=0),
        Public("--max-document-bytes", "TRIOQ_MAX_DOCUMENT_BYTES", "cap on the document's size"),
    ] = 256 * 1024 * 1024
    dedup_window: Annotated[
        float,
        Field(ge=0),
        Public(
            "--dedup-window-s", "TRIOQ_DEDUP_WINDOW_S", "how long finished job ids are remembered"
        ),
    ] = 86_400.0
    dedup_cap: Annotated[
        int,
        Field(ge=0),
        Public(
            "--dedup-cap",
            "TRIOQ_DEDUP_CAP",
            "most finished job ids remembered (each rides in every commit: see "
            "docs/performance.md)",
        ),
    ] = DEDUP_CAP
    max_connections: Annotated[
        int,
        Field(gt=0),
        Public(
            "--max-connections",
            "TRIOQ_MAX_CONNECTIONS",
            "open client connections served at once; one more is answered 503 Overloaded "
            "and closed (keep it under the process's open-file limit)",
        ),
    ] = MAX_CONNECTIONS
    max_waiting_claims: Annotated[
        int,
        Field(gt=0),
        Public(
            "--max-waiting-claims",
            "TRIOQ_MAX_WAITING_CLAIMS",
            "long-poll claims waiting at once; one more is answered 503 Overloaded",
        ),
    ] = MAX_WAITING
    client_timeout: Annotated[
        float,
        Field(gt=0, allow_inf_nan=False),
        Public(
            "--client-timeout-s",
            "TRIOQ_CLIENT_TIMEOUT_S",
            "a request body must arrive within this (408 beyond), and a client must take "
            "each 64 KiB of an answer within this (the connection is closed beyond)",
        ),
    ] = 30.0
    keep_alive_timeout: Annotated[
        float,
        Field(gt=0, allow_inf_nan=False),
        Public(
            "--keep-alive-timeout-s",
            "TRIOQ_KEEP_ALIVE_TIMEOUT_S",
            "an idle connection is closed after this; a request's line and headers must "
            "arrive within it (keep it above the clients' idle expiry: httpx's is 5 s)",
        ),
    ] = 10.0
    metrics_public: Annotated[
        bool, Public("--metrics-public", "TRIOQ_METRICS_PUBLIC", "serve /metrics without the token")
    ] = False
    log_level: Annotated[
        str,
        Public("--log-level", "TRIOQ_LOG_LEVEL", "log level: DEBUG, INFO, WARNING, ERROR"),
    ] = "INFO"
    log_format: Annotated[
        LogFormat,
        Public(
            "--log-format",
            "TRIOQ_LOG_FORMAT",
            "log lines as text or json (one JSON object a line)",
        ),
    ] = "text"
    failover_probe: Annotated[
        bool,
        Public(
            "--failover-probe",
            "TRIOQ_FAILOVER_PROBE",
            "standby: probe the leader and take over after two failed probes "
            "(--no-failover-probe: wait for the lease timeout)",
        ),
    ] = True
    create: Annotated[
        bool,
        Public(
            "--create",
            "TRIOQ_CREATE",
            "create a new, empty queue if none is stored at the key; without it a broker "
            "refuses to start where the queue is missing (the file backend creates one in "
            "a new or empty directory, the memory backend always)",
        ),
    ] = False
    shutdown_grace: Annotated[
        float,
        Field(ge=0),
        Public("--shutdown-grace-s", "TRIOQ_SHUTDOWN_GRACE_S", "bound on the graceful stop"),
    ] = 10.0
    storage_wait: Annotated[
        float,
        Field(ge=0, allow_inf_nan=False),
        Public(
            "--storage-wait-s",
            "TRIOQ_STORAGE_WAIT_S",
            "at startup, wait this long for an unreachable store before exiting",
        ),
    ] = 30.0
    fault_error_rate: Annotated[
        float,
        Field(ge=0, le=1, allow_inf_nan=False),
        Public(
            "--fault-error-rate",
            "TRIOQ_FAULT_ERROR_RATE",
            "TESTS ONLY: share of storage calls that fail as unreachable without reaching "
            "the store (0: off)",
        ),
    ] = 0.0
    fault_ambiguous_write_rate: Annotated[
        float,
        Field(ge=0, le=1, allow_inf_nan=False),
        Public(
            "--fault-ambiguous-write-rate",
            "TRIOQ_FAULT_AMBIGUOUS_WRITE_RATE",
            "TESTS ONLY: share of storage writes that land, then report an unknown outcome "
            "(0: off)",
        ),
    ] = 0.0
    fault_lost_write_rate: Annotated[
        float,
        Field(ge=0, le=1, allow_inf_nan=False),
        Public(
            "--fault-lost-write-rate",
            "TRIOQ_FAULT_LOST_WRITE_RATE",
            "TESTS ONLY: share of storage writes lost on the way: they do not land and "
            "report an unknown outcome (0: off)",
        ),
    ] = 0.0
    fault_latency: Annotated[
        float,
        Field(ge=0, allow_inf_nan=False),
        Public(
            "--fault-latency-s",
            "TRIOQ_FAULT_LATENCY_S",
            "TESTS ONLY: delay added to every storage call (0: off)",
        ),
    ] = 0.0
    fault_spike_rate: Annotated[
        float,
        Field(ge=0, le=1, allow_inf_nan=False),
        Public(
            "--fault-spike-rate",
            "TRIOQ_FAULT_SPIKE_RATE",
            "TESTS ONLY: share of storage calls delayed by a latency spike (0: off)",
        ),
    ] = 0.0
    fault_spike: Annotated[
        float,
        Field(ge=0, allow_inf_nan=False),
        Public(
            "--fault-spike-s", "TRIOQ_FAULT_SPIKE_S", "TESTS ONLY: the delay a latency spike adds"
        ),
    ] = 1.0
    fault_seed: Annotated[
        int | None,
        Public(
            "--fault-seed",
            "TRIOQ_FAULT_SEED",
            "TESTS ONLY: seed of the fault draws (the same seed and calls: the same faults)",
            shown_default="random",
        ),
    ] = None

    # the names these settings had while durations were milliseconds here
    group_commit_interval_ms = LegacyName("group_commit_interval", 1000)
    job_heartbeat_timeout_ms = LegacyName("job_lease", 1000)
    broker_heartbeat_interval_ms = LegacyName("broker_heartbeat_interval", 1000)
    broker_heartbeat_timeout_ms = LegacyName("broker_heartbeat_timeout", 1000)
    dedup_window_s = LegacyName("dedup_window", 1)
    shutdown_grace_s = LegacyName("shutdown_grace", 1)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, level: str) -> str:
        return check_level(level)

    @field_validator("port")
    @classmethod
    def _port(cls, port: int) -> int:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range (0-65535)")
        return port

    @field_validator("advertise_url")
    @classmethod
    def _advertise_url(cls, url: str | None) -> str | None:
        if url is not None:
            if not url.startswith(("http://", "https://")):
                raise ValueError("the advertised URL must start with http:// or https://")
            if "0.0.0.0" in url or "[::]" in url:
                raise ValueError(
                    "the advertised URL must be an address clients can dial, not 0.0.0.0"
                )
        return url

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_url(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"{url!r} is not an http:// or https:// URL (for example http://127.0.0.1:8333)"
                )
        return url

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.storage == "s3" and not self.bucket:
            raise ValueError("the s3 backend needs a bucket: --bucket or S3_BUCKET")
        if self.storage == "gcs" and not self.gcs_bucket:
            raise ValueError("the gcs backend needs a bucket: --gcs-bucket or GCS_BUCKET")
        if (
            self.storage == "gcs"
            and self.layout == "document"
            and (self.group_commit_interval < 1.0)
        ):
            # GCS takes about one write a second to one object name: the document
            # layout rewrites one object every commit
            raise ValueError(
                "--layout document on gcs rewrites one object every commit, and GCS allows "
                "about one write a second to an object: set --group-commit-interval-ms to "
                "1000 or more, or use --layout log (docs/gcs.md)"
            )
        for name in _GCS_ONLY if self.storage != "gcs" else ():
            if getattr(self, name):
                flag = self.public_name(name).split()[0]
                raise ValueError(
                    f"{self.public_name(name)} applies to the gcs backend only, but the "
                    f"storage backend is {self.storage!r}: add --storage gcs or drop {flag}"
                )
        if self.storage != "s3":
            for name in _S3_ONLY:
                if getattr(self, name):
                    flag = self.public_name(name).split()[0]
                    raise ValueError(
                        f"{self.public_name(name)} applies to the s3 backend only, but the "
                        f"storage backend is {self.storage!r}: add --storage s3 or drop {flag}"
                    )
        write_faults = (
            self.fault_error_rate + self.fault_ambiguous_write_rate + self.fault_lost_write_rate
        )
        if write_faults > 1:
            raise ValueError(
                "--fault-error-rate, --fault-ambiguous-write-rate and --fault-lost-write-rate "
                f"add up to {write_faults:g}, more than 1"
            )
        if self.max_payload_bytes > self.max_request_bytes:
            raise ValueError("--max-payload-bytes must not exceed --max-request-bytes")
        self.token_table()  # ValueError: a bad, empty or ambiguous token
        self._check_tls()
        self.engine_config().validate()  # ValueError: the timings do not fit together
        return self

    def validate(self) -> None:  # type: ignore[override]  # pydantic's is a deprecated classmethod
        """Raise :class:`SettingsError` if the settings cannot work (they are checked
        when built and when assigned; this checks again)."""
        type(self).load(self.model_dump(), environ={})

    def token_table(self) -> TokenTable:
        """Every token these settings accept, by scope (reads ``--tokens-file``);
        ValueError, never quoting a token, if one is empty, malformed or given two
        scopes. Empty: auth is off."""
        given: dict[Scope, list[str]] = {scope: [] for scope in Scope}
        if self.token is not None:
            check_token(self.token.get_secret_value(), self.public_name("token"))
            given[Scope.ADMIN].append(self.token.get_secret_value())
        for name, scope in (
            ("admin_tokens", Scope.ADMIN),
            ("worker_tokens", Scope.WORKER),
            ("producer_tokens", Scope.PRODUCER),
        ):
            listed: Secret | None = getattr(self, name)
            if listed is not None:
                where = self.public_name(name)
                given[scope] += split_tokens(listed.get_secret_value(), where)
        if self.tokens_file is not None:
            for scope, tokens in read_tokens_file(self.tokens_file).items():
                given[scope] += tokens
        return TokenTable.build(given)

    def _check_tls(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("--certfile and --keyfile go together: give both or neither")
        if self.certfile is not None and self.keyfile is not None:
            try:
                server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                server.load_cert_chain(self.certfile, self.keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"cannot load --certfile {self.certfile} with --keyfile {self.keyfile}: {exc}"
                ) from None
        if self.ca_file is not None:
            ssl_context(self.ca_file)  # ValueError: unreadable

    @property
    def tls(self) -> bool:
        """Whether the broker serves HTTPS (``--certfile`` and ``--keyfile``)."""
        return self.certfile is not None

    def probe_verify(self) -> ssl.SSLContext | bool:
        """How the failover probe verifies another broker's certificate."""
        return True if self.ca_file is None else ssl_context(self.ca_file)

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            group_commit_interval=self.group_commit_interval,
            broker_heartbeat_interval=self.broker_heartbeat_interval,
            broker_heartbeat_timeout=self.broker_heartbeat_timeout,
            shutdown_timeout=self.shutdown_grace,
            startup_storage_wait=self.storage_wait,
            layout=self.layout,
            checkpoint_commits=self.checkpoint_commits,
            checkpoint_interval=self.checkpoint_interval,
            checkpoint_min_bytes=self.checkpoint_min_bytes,
            gc_grace=self.gc_grace,
        )

    def storage_faults(self) -> dict[str, float]:
        """The storage faults these settings turn on, as :class:`~trioq.FaultyStorage`
        arguments without the seed (empty: fault injection is off, the default)."""
        faults = {
            "error_rate": self.fault_error_rate,
            "ambiguous_write_rate": self.fault_ambiguous_write_rate,
            "ambiguous_lost_rate": self.fault_lost_write_rate,
            "latency": self.fault_latency,
        }
        if self.fault_spike_rate and self.fault_spike:
            faults |= {"spike_rate": self.fault_spike_rate, "spike": self.fault_spike}
        return {name: value for name, value in faults.items() if value}

    def limits(self) -> Limits:
        """The queue model's bounds, in the milliseconds its stored times count in."""
        return Limits(
            job_lease_ms=max(1, _ms(self.job_lease)),
            max_queued=self.max_queued,
            max_document_bytes=self.max_document_bytes,
            max_payload_bytes=self.max_payload_bytes,
            max_result_bytes=self.max_result_bytes,
            dedup_window_ms=_ms(self.dedup_window),
            dedup_cap=self.dedup_cap,
        )


STORAGE_FIELDS = (
    "storage",
    "data_dir",
    "bucket",
    "prefix",
    "region",
    "endpoint_url",
    "gcs_bucket",
    "gcs_prefix",
    "key",
)
"""The settings that say where the queue is stored: what a command that reads the
stored document without a broker (``trioq inspect``) takes."""


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """The broker's flags for :data:`STORAGE_FIELDS` only, the same flags with the
    same help; parse with ``BrokerSettings.load(args=parser.parse_args(...))``."""
    every = argparse.ArgumentParser(add_help=False)
    BrokerSettings.add_arguments(every)
    for action in every._actions:  # argparse has no public way to copy one flag
        if action.dest in STORAGE_FIELDS:
            parser._add_action(action)


def parse_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    prog: str = "python -m trioq.broker",
) -> BrokerSettings:
    """Settings from flags, then the environment (default ``os.environ``), then
    defaults; raises :class:`SettingsError` (one line) if they cannot work."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a trioq broker (leader or standby) over a queue document."
    )
    BrokerSettings.add_arguments(parser)
    return BrokerSettings.load(environ=environ, args=parser.parse_args(argv))
