"""Broker and worker subprocesses for the real-process worker tests.

- :func:`broker_process` runs ``python -m trioq.broker`` on 127.0.0.1, port 0, and
  waits for its ready line (``trioq broker <id> listening on <url> as <role> ...``).
- :func:`worker_process` runs ``python -m trioq.worker <target>`` with ``tests/`` on
  PYTHONPATH; :meth:`Proc.ready` waits for the worker's ready line (printed once it
  claims).
- :func:`read_events` parses the per-process event files the handlers in
  ``_jobs_for_tests`` write.

Every process is killed (SIGKILL) when its context exits, if it is still running;
its stderr goes to a log file whose tail is put into any startup error.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest
import trio

from _servers import S3Server
from trioq._settings import Public
from trioq.worker._settings import WorkerSettings

TESTS_DIR = Path(__file__).resolve().parent
READY_TIMEOUT = 30.0
"""Seconds a process gets to print its ready line."""

_READY = re.compile(r"listening on (\S+) as (\w+)")
_STRIPPED_ENV = ("BROKER_URL", "BROKER_HOST", "BROKER_PORT", "STORAGE_BACKEND", "S3_BUCKET")


@dataclass
class Proc:
    """A running subprocess, its stderr log and (once ready) its ready line."""

    name: str
    process: trio.Process
    log_path: Path
    ready_line: str = ""
    _buffer: bytes = field(default=b"", repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def ready(self) -> str:
        """Wait for the first stdout line (at most :data:`READY_TIMEOUT` seconds);
        raise with the stderr tail if none comes."""
        if self.ready_line:
            return self.ready_line
        stdout = self.process.stdout
        assert stdout is not None
        with trio.move_on_after(READY_TIMEOUT) as scope:
            while b"\n" not in self._buffer:
                chunk = await stdout.receive_some(4096)
                if not chunk:
                    break
                self._buffer += chunk
        if b"\n" not in self._buffer:
            why = "timed out" if scope.cancelled_caught else "exited"
            raise RuntimeError(
                f"{self.name} {why} before its ready line "
                f"(returncode {self.process.returncode}):\n{self.log_tail()}"
            )
        line, _, self._buffer = self._buffer.partition(b"\n")
        self.ready_line = line.decode()
        return self.ready_line

    def signal(self, signum: int) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signum)

    async def exited(self) -> int:
        """Wait for the process to exit (bound it with ``trio.fail_after``); its code."""
        return await self.process.wait()


@dataclass
class BrokerProc(Proc):
    @property
    def url(self) -> str:
        match = _READY.search(self.ready_line)
        assert match is not None, self.ready_line
        return match.group(1)

    @property
    def role(self) -> str:
        match = _READY.search(self.ready_line)
        assert match is not None, self.ready_line
        return match.group(2)


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOQ_")}
    for name in _STRIPPED_ENV:
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _open_log(path: Path) -> BinaryIO:
    return open(path, "ab")  # closed by the caller once the child has it


@asynccontextmanager
async def _spawn(
    cls: type[Proc], name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path
) -> AsyncIterator[Proc]:
    log = _open_log(log_path)
    try:
        process = await trio.lowlevel.open_process(
            list(argv), stdin=None, stdout=subprocess.PIPE, stderr=log, env=dict(env)
        )
    finally:
        log.close()  # the child has its own copy of the descriptor
    proc = cls(name, process, log_path)
    try:
        yield proc
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)  # in case a test stopped it
                process.kill()
            with trio.move_on_after(10):
                await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


@asynccontextmanager
async def broker_process(
    workdir: Path,
    *,
    s3: S3Server | None = None,
    bucket: str | None = None,
    data_dir: Path | None = None,
    args: Sequence[str] = (),
    name: str = "broker",
) -> AsyncIterator[BrokerProc]:
    """A broker on S3 (``s3`` + ``bucket``) or on a directory (``data_dir``); ready."""
    argv = [sys.executable, "-m", "trioq.broker", "--host", "127.0.0.1", "--port", "0"]
    extra: dict[str, str] = {}
    if s3 is not None:
        assert bucket is not None
        argv += ["--storage", "s3", "--bucket", bucket, "--endpoint-url", s3.endpoint_url]
        argv += ["--create"]
        extra = {
            "AWS_ACCESS_KEY_ID": s3.access_key_id,
            "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    else:
        assert data_dir is not None
        argv += ["--storage", "file", "--data-dir", str(data_dir)]
    argv += list(args)
    log_path = workdir / f"{name}.stderr.log"
    async with _spawn(BrokerProc, name, argv, base_env(extra), log_path) as proc:
        await proc.ready()
        assert isinstance(proc, BrokerProc)
        yield proc


@asynccontextmanager
async def worker_process(
    workdir: Path,
    broker_url: str,
    *args: str,
    target: str = "_jobs_for_tests:worker",
    events_dir: Path | None = None,
    name: str = "worker",
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Proc]:
    """A worker process (not yet waited for: call :meth:`Proc.ready`); its handlers
    log their events to ``events_dir`` (default ``workdir / "events"``)."""
    argv = [sys.executable, "-m", "trioq.worker", target, "--broker-url", broker_url, *args]
    events = events_dir or workdir / "events"
    events.mkdir(exist_ok=True)
    extra = {"TRIOQ_TEST_LOG_DIR": str(events), **(env or {})}
    log_path = workdir / f"{name}.stderr.log"
    async with _spawn(Proc, name, argv, base_env(extra), log_path) as proc:
        yield proc


@dataclass(frozen=True)
class Event:
    pid: int
    event: str
    job_id: str
    attempt: int
    at: float


def read_events(directory: Path) -> list[Event]:
    """Every handler event logged in ``directory``, in time order."""
    events: list[Event] = []
    for path in directory.glob("*.log"):
        if not path.stem.isdigit():
            continue
        for line in path.read_text().splitlines():
            event, job_id, attempt, at = line.split()
            events.append(Event(int(path.stem), event, job_id, int(attempt), float(at)))
    return sorted(events, key=lambda e: e.at)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.fixture
def no_worker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No worker setting from this process's environment reaches the test's workers
    (use: ``pytestmark = pytest.mark.usefixtures("no_worker_environment")`` after
    importing it)."""
    for setting in WorkerSettings.model_fields.values():
        for item in setting.metadata:
            if isinstance(item, Public):
                monkeypatch.delenv(item.env, raising=False)
