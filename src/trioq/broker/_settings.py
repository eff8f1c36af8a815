"""Broker settings: command-line flags over environment variables over defaults."""

from __future__ import annotations

import argparse
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ..core._config import EngineConfig
from ..core._state import Limits

StorageBackend = Literal["file", "s3", "memory"]


class SettingsError(ValueError):
    """An invalid broker setting; the message is one line for the operator."""


@dataclass(slots=True)
class BrokerSettings:
    """Everything ``python -m trioq.broker`` can be told (milliseconds as in osqueue)."""

    host: str = "127.0.0.1"
    port: int = 8080
    advertise_url: str | None = None
    storage: StorageBackend = "file"
    data_dir: str = "./.trioq"
    bucket: str | None = None
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    key: str = "queue.json"
    broker_id: str | None = None
    group_commit_interval_ms: int = 50
    job_heartbeat_timeout_ms: int = 30_000
    broker_heartbeat_interval_ms: int = 3000
    broker_heartbeat_timeout_ms: int = 10_000
    token: str | None = None
    max_writes_per_minute: float = 0
    max_reads_per_minute: float = 0
    max_payload_bytes: int = 1024 * 1024
    max_request_bytes: int = 8 * 1024 * 1024
    max_queued: int = 100_000
    max_document_bytes: int = 256 * 1024 * 1024
    dedup_window_s: int = 86_400
    metrics_public: bool = False
    failover_probe: bool = True
    create: bool = False
    shutdown_grace_s: float = 10.0

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            group_commit_interval=self.group_commit_interval_ms / 1000,
            broker_heartbeat_interval=self.broker_heartbeat_interval_ms / 1000,
            broker_heartbeat_timeout=self.broker_heartbeat_timeout_ms / 1000,
            shutdown_timeout=self.shutdown_grace_s,
        )

    def limits(self) -> Limits:
        return Limits(
            job_lease_ms=self.job_heartbeat_timeout_ms,
            max_queued=self.max_queued,
            max_document_bytes=self.max_document_bytes,
            max_payload_bytes=self.max_payload_bytes,
            dedup_window_ms=self.dedup_window_s * 1000,
        )

    def validate(self) -> None:
        """Raise :class:`SettingsError` for settings that cannot work."""
        if self.storage not in ("file", "s3", "memory"):
            raise SettingsError(f"unknown storage backend {self.storage!r} (file, s3 or memory)")
        if self.storage == "s3" and not self.bucket:
            raise SettingsError("the s3 backend needs a bucket: --bucket or S3_BUCKET")
        if self.storage != "s3":
            for attr, flag, var in _S3_ONLY:
                if getattr(self, attr):
                    raise SettingsError(
                        f"{flag} ({var}) applies to the s3 backend only, but the storage "
                        f"backend is {self.storage!r}: add --storage s3 or drop {flag}"
                    )
        if self.endpoint_url is not None:
            url = urllib.parse.urlsplit(self.endpoint_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise SettingsError(
                    f"--endpoint-url {self.endpoint_url!r} is not an http:// or https:// URL "
                    "(for example http://127.0.0.1:8333)"
                )
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port {self.port} is out of range")
        if self.advertise_url is not None:
            if not self.advertise_url.startswith(("http://", "https://")):
                raise SettingsError("--advertise-url must start with http:// or https://")
            if "0.0.0.0" in self.advertise_url or "[::]" in self.advertise_url:
                raise SettingsError(
                    "--advertise-url must be an address clients can dial, not 0.0.0.0"
                )
        for name in (
            "job_heartbeat_timeout_ms",
            "broker_heartbeat_interval_ms",
            "broker_heartbeat_timeout_ms",
            "max_payload_bytes",
            "max_request_bytes",
            "max_queued",
            "max_document_bytes",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.replace('_', '-')} must be positive")
        if self.group_commit_interval_ms < 0:
            raise SettingsError("group-commit-interval-ms must be >= 0")
        if self.max_payload_bytes > self.max_request_bytes:
            raise SettingsError("max-payload-bytes must not exceed max-request-bytes")
        if self.dedup_window_s < 0:
            raise SettingsError("dedup-window-s must be >= 0")
        try:
            self.engine_config().validate()
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc


# flag, environment variable, attribute, type
_OPTIONS: list[tuple[str, str | None, str, type]] = [
    ("--host", "BROKER_HOST", "host", str),
    ("--port", "BROKER_PORT", "port", int),
    ("--advertise-url", "BROKER_ADVERTISE_URL", "advertise_url", str),
    ("--storage", "STORAGE_BACKEND", "storage", str),
    ("--data-dir", "TRIOQ_DATA_DIR", "data_dir", str),
    ("--bucket", "S3_BUCKET", "bucket", str),
    ("--prefix", "S3_PREFIX", "prefix", str),
    ("--region", "S3_REGION", "region", str),
    ("--endpoint-url", "S3_ENDPOINT_URL", "endpoint_url", str),
    ("--key", "TRIOQ_KEY", "key", str),
    ("--broker-id", "TRIOQ_BROKER_ID", "broker_id", str),
    ("--group-commit-interval-ms", "GROUP_COMMIT_INTERVAL_MS", "group_commit_interval_ms", int),
    ("--job-heartbeat-timeout-ms", "JOB_HEARTBEAT_TIMEOUT_MS", "job_heartbeat_timeout_ms", int),
    (
        "--broker-heartbeat-interval-ms",
        "BROKER_HEARTBEAT_INTERVAL_MS",
        "broker_heartbeat_interval_ms",
        int,
    ),
    (
        "--broker-heartbeat-timeout-ms",
        "BROKER_HEARTBEAT_TIMEOUT_MS",
        "broker_heartbeat_timeout_ms",
        int,
    ),
    ("--token", "TRIOQ_TOKEN", "token", str),
    ("--max-writes-per-minute", "S3_MAX_WRITES_PER_MINUTE", "max_writes_per_minute", float),
    ("--max-reads-per-minute", "S3_MAX_READS_PER_MINUTE", "max_reads_per_minute", float),
    ("--max-payload-bytes", "TRIOQ_MAX_PAYLOAD_BYTES", "max_payload_bytes", int),
    ("--max-request-bytes", "TRIOQ_MAX_REQUEST_BYTES", "max_request_bytes", int),
    ("--max-queued", "TRIOQ_MAX_QUEUED", "max_queued", int),
    ("--max-document-bytes", "TRIOQ_MAX_DOCUMENT_BYTES", "max_document_bytes", int),
    ("--dedup-window-s", "TRIOQ_DEDUP_WINDOW_S", "dedup_window_s", int),
    ("--shutdown-grace-s", "TRIOQ_SHUTDOWN_GRACE_S", "shutdown_grace_s", float),
]


_S3_ONLY = (
    ("bucket", "--bucket", "S3_BUCKET"),
    ("prefix", "--prefix", "S3_PREFIX"),
    ("region", "--region", "S3_REGION"),
    ("endpoint_url", "--endpoint-url", "S3_ENDPOINT_URL"),
)

# on/off settings: flag (with its --no- form), environment variable, attribute
_SWITCHES: list[tuple[str, str, str, type]] = [
    ("--metrics-public", "TRIOQ_METRICS_PUBLIC", "metrics_public", bool),
    ("--failover-probe", "TRIOQ_FAILOVER_PROBE", "failover_probe", bool),
    ("--create", "TRIOQ_CREATE", "create", bool),
]
_SWITCH_HELP = {
    "metrics_public": "serve /metrics without the token",
    "failover_probe": "standby: probe the leader and take over after two failed probes "
    "(--no-failover-probe: wait for the lease timeout)",
    "create": "create a new, empty queue if none is stored at the key; without it a "
    "broker refuses to start where the queue is missing (the file backend creates one "
    "in a new or empty directory, the memory backend always)",
}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _switch(var: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{var}: {raw!r} is not a valid switch (1/0, true/false, yes/no, on/off)")


def parse_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    prog: str = "python -m trioq.broker",
) -> BrokerSettings:
    """Build settings from flags, then the environment, then defaults; validated."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a trioq broker (leader or standby) over a queue document.",
    )
    for flag, var, attr, _ in _OPTIONS:
        default = getattr(BrokerSettings(), attr)
        help_text = f"env {var}; default {default!r}" if var else f"default {default!r}"
        parser.add_argument(flag, dest=attr, default=None, help=help_text)
    for flag, var, attr, _ in _SWITCHES:
        default = getattr(BrokerSettings(), attr)
        parser.add_argument(
            flag,
            dest=attr,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"{_SWITCH_HELP[attr]} (env {var}=1/0; default {'on' if default else 'off'})",
        )
    args = parser.parse_args(argv)
    settings = BrokerSettings()
    for flag, var, attr, kind in _OPTIONS:
        raw = getattr(args, attr)
        source = flag
        if raw is None and var is not None and env.get(var, "") != "":
            raw, source = env[var], var
        if raw is None:
            continue
        if attr == "storage":
            raw = raw.strip().lower()  # S3_BUCKET users write STORAGE_BACKEND=S3 too
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{source}: {raw!r} is not a valid {kind.__name__}") from None
        setattr(settings, attr, value)
    for _flag, var, attr, _ in _SWITCHES:
        value = getattr(args, attr)
        if value is None and env.get(var, "") != "":
            value = _switch(var, env[var])
        if value is not None:
            setattr(settings, attr, value)
    settings.validate()
    return settings
