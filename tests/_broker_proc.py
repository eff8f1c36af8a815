"""Real brokers for the HTTP tests: in-process (hypercorn on a free port) or as a
``python -m trioq.broker`` subprocess.

- :func:`start_in_process` starts a :class:`~trioq.broker.Broker` in a nursery the
  test owns (``await nursery.start(broker.run)``) on 127.0.0.1, port 0, and returns
  its URL; cancelling the nursery stops it.
- :func:`broker_process` is an async context manager around a subprocess: it waits
  for the ready line (``trioq broker <id> listening on <url> as <role> (...)``) with
  a deadline, and SIGKILLs and reaps the process on the way out, whatever happened.
  Its stderr (the log) goes to a file; :meth:`BrokerProcess.log` reads it for
  failure messages.
- :func:`s3_args` / :func:`s3_env` turn an :class:`~_servers.S3Server` and a bucket
  into the flags and environment a broker subprocess needs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from _servers import S3Server
from trioq.broker._service import Broker
from trioq.broker._settings import BrokerSettings
from trioq.storage._protocol import Storage

READY_TIMEOUT = 20.0
"""Seconds a broker subprocess gets to print its ready line."""

KILL_TIMEOUT = 5.0
"""Seconds to wait for a SIGKILLed process to be reaped."""

READY_LINE = re.compile(
    r"^trioq broker (?P<id>\S+) listening on (?P<url>http://\S+) as (?P<role>leader|standby) "
    r"\(storage: (?P<storage>.*)\)$"
)


# ---------------------------------------------------------------- in process


@dataclass
class InProcessBroker:
    """A broker served by hypercorn in the test's own trio run."""

    broker: Broker
    url: str

    @property
    def settings(self) -> BrokerSettings:
        return self.broker.settings


async def start_in_process(
    nursery: trio.Nursery, settings: BrokerSettings, *, storage: Storage | None = None
) -> InProcessBroker:
    """Start a broker in ``nursery`` (on 127.0.0.1, port 0 unless ``settings`` says
    otherwise); returns once it is bound and leads or stands by."""
    settings.host = "127.0.0.1"
    broker = Broker(settings, storage=storage)
    url = await nursery.start(broker.run)
    return InProcessBroker(broker, url)


# ---------------------------------------------------------------- subprocess


@dataclass
class BrokerProcess:
    """A running ``python -m trioq.broker``."""

    process: trio.Process
    broker_id: str
    url: str
    role: str
    storage: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def kill(self) -> None:
        """``kill -9``."""
        if self.process.returncode is None:
            self.process.kill()

    def terminate(self) -> None:
        """SIGTERM: a graceful stop."""
        self.send_signal(signal.SIGTERM)

    def send_signal(self, signum: int) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signum)

    async def wait(self, within: float) -> int:
        """The exit code, waiting at most ``within`` seconds (else ``TooSlowError``)."""
        with trio.fail_after(within):
            return await self.process.wait()

    def log(self, lines: int = 60) -> str:
        """The tail of the broker's log (stderr), for assertion messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"
        return "\n".join(text.splitlines()[-lines:])


def broker_argv(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "trioq.broker", *args]


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any broker setting, plus ``extra``."""
    # every TRIOQ_* setting too (the fault-injection ones, and any added later)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in BROKER_ENV_VARS and not k.startswith("TRIOQ_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


BROKER_ENV_VARS = frozenset(
    {
        "BROKER_HOST",
        "BROKER_PORT",
        "BROKER_URL",
        "BROKER_ADVERTISE_URL",
        "STORAGE_BACKEND",
        "TRIOQ_DATA_DIR",
        "S3_BUCKET",
        "S3_PREFIX",
        "S3_REGION",
        "S3_ENDPOINT_URL",
        "TRIOQ_KEY",
        "TRIOQ_BROKER_ID",
        "GROUP_COMMIT_INTERVAL_MS",
        "JOB_HEARTBEAT_TIMEOUT_MS",
        "BROKER_HEARTBEAT_INTERVAL_MS",
        "BROKER_HEARTBEAT_TIMEOUT_MS",
        "TRIOQ_TOKEN",
        "S3_MAX_WRITES_PER_MINUTE",
        "S3_MAX_READS_PER_MINUTE",
        "TRIOQ_MAX_PAYLOAD_BYTES",
        "TRIOQ_MAX_REQUEST_BYTES",
        "TRIOQ_MAX_QUEUED",
        "TRIOQ_DEDUP_WINDOW_S",
        "TRIOQ_SHUTDOWN_GRACE_S",
        "TRIOQ_METRICS_PUBLIC",
        "TRIOQ_FAILOVER_PROBE",
        "TRIOQ_CREATE",
    }
)


async def _read_ready_line(stdout: trio.abc.ReceiveStream, deadline: float) -> str:
    buffer = b""
    with trio.fail_after(max(0.0, deadline - trio.current_time())):
        while b"\n" not in buffer:
            chunk = await stdout.receive_some(4096)
            if not chunk:
                break
            buffer += chunk
    return buffer.decode(errors="replace").split("\n", 1)[0].strip()


@asynccontextmanager
async def broker_process(
    args: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = READY_TIMEOUT,
) -> AsyncIterator[BrokerProcess]:
    """Run ``python -m trioq.broker *args`` until the block ends, then SIGKILL it.

    ``env`` is added to a copy of this process's environment (from which every
    broker setting has been removed, so only ``args`` and ``env`` configure it).
    """
    with log_path.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            broker_argv(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=subprocess_env(env),
        )
    try:
        assert process.stdout is not None
        try:
            line = await _read_ready_line(process.stdout, trio.current_time() + ready_timeout)
        except trio.TooSlowError:
            raise AssertionError(
                f"broker {list(args)} printed no ready line within {ready_timeout} s; log:\n"
                + _tail(log_path)
            ) from None
        match = READY_LINE.match(line)
        if match is None:
            raise AssertionError(
                f"broker {list(args)} did not start (exit code {process.poll()}); "
                f"stdout: {line!r}; log:\n{_tail(log_path)}"
            )
        yield BrokerProcess(
            process,
            match["id"],
            match["url"],
            match["role"],
            match["storage"],
            log_path,
        )
    finally:
        with trio.move_on_after(KILL_TIMEOUT, shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


async def run_broker_to_exit(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, within: float = 20.0
) -> tuple[int, str, str]:
    """Run a broker that is expected to exit by itself: (code, stdout, stderr)."""
    with trio.fail_after(within):
        result = await trio.run_process(
            broker_argv(args),
            env=subprocess_env(env),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


# ------------------------------------------------------------------------ S3


def s3_args(server: S3Server, bucket: str) -> list[str]:
    """The flags of a broker on ``bucket`` at ``server``."""
    # --create: each test starts on a new bucket (without it a broker refuses a
    # location where the queue is missing)
    return [
        "--storage", "s3", "--bucket", bucket, "--endpoint-url", server.endpoint_url, "--create"
    ]  # fmt: skip


def s3_env(server: S3Server) -> dict[str, str]:
    """The credentials of ``server`` as the AWS environment variables."""
    return {
        "AWS_ACCESS_KEY_ID": server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": server.secret_access_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


# ---------------------------------------------------------------------- HTTP


async def wait_until(
    predicate: Any, *, within: float, interval: float = 0.05, what: str = "condition"
) -> float:
    """Poll the async ``predicate()`` until it returns true; the seconds it took.

    Bounded in time (``within``) and so in count."""
    start = trio.current_time()
    with trio.move_on_after(within):
        while True:
            if await predicate():
                return trio.current_time() - start
            await trio.sleep(interval)
    raise AssertionError(f"{what} not reached within {within} s")


async def role_of(client: httpx.AsyncClient, url: str) -> str | None:
    """The role a broker reports on /healthz, or None if it does not answer."""
    try:
        response = await client.get(f"{url}/healthz", timeout=1.0)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    role = response.json().get("role")
    return role if isinstance(role, str) else None
