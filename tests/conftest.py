"""Shared pytest fixtures. Server fixtures live in tests/_servers.py.

S3 fixtures (started only by the tests that ask for them, once per session):

- ``seaweedfs`` -> :class:`~_servers.S3Server`: SeaweedFS with one S3 identity
  (``access_key_id`` / ``secret_access_key``); wrong credentials are rejected.
- ``moto_server`` -> :class:`~_servers.S3Server`: moto's S3 server (accepts any
  credentials; its conditional PUT is not atomic under concurrency).
- ``seaweedfs_bucket`` / ``moto_bucket`` -> ``str``: a fresh, empty bucket with a
  unique name on that server, for one test.

Every test runs with dummy AWS credentials and region ``us-east-1`` in the
environment, and with AWS config files, profiles and the instance metadata service
out of reach, so nothing consults a real AWS account.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from _gcs_server import GCSServer, run_fake_gcs
from _servers import S3Server, run_moto, run_seaweedfs

_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
_AWS_UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
)


@pytest.fixture(scope="session", autouse=True)
def aws_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dummy AWS credentials and region for the whole session; no real AWS config."""
    nowhere = tmp_path_factory.mktemp("aws") / "absent"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _AWS_ENVIRONMENT.items():
            patch.setenv(name, value)
        for name in _AWS_UNSET:
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", str(nowhere / "config"))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere / "credentials"))
        yield


_TRIOQ_SETTINGS = ("BROKER_", "TRIOQ_", "S3_", "STORAGE_BACKEND", "GROUP_COMMIT_INTERVAL_MS",
                   "JOB_HEARTBEAT_TIMEOUT_MS")  # fmt: skip
"""Environment names (prefixes) trioq's settings read: ``BrokerSettings(...)`` and
``trioq.Worker(...)`` read the environment, so a developer's shell must not leak in."""


@pytest.fixture(scope="session", autouse=True)
def no_trioq_environment() -> Iterator[None]:
    """No trioq setting in the environment for the whole session (a test that wants
    one sets it itself)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(_TRIOQ_SETTINGS):
                patch.delenv(name)
        yield


@pytest.fixture(scope="session")
def seaweedfs(
    aws_environment: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Server]:
    """SeaweedFS (master, volume, filer, S3 gateway) on 127.0.0.1, with credentials."""
    directory: Path = tmp_path_factory.mktemp("seaweedfs")
    with run_seaweedfs(directory) as server:
        yield server


@pytest.fixture(scope="session")
def moto_server(
    aws_environment: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1, as a separate process."""
    directory: Path = tmp_path_factory.mktemp("moto")
    with run_moto(directory) as server:
        yield server


@pytest.fixture
def seaweedfs_bucket(seaweedfs: S3Server) -> str:
    """A fresh bucket on the SeaweedFS server."""
    return seaweedfs.create_bucket()


@pytest.fixture
def moto_bucket(moto_server: S3Server) -> str:
    """A fresh bucket on the moto server."""
    return moto_server.create_bucket()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSServer]:
    """fake-gcs-server (a GCS emulator) on 127.0.0.1."""
    with run_fake_gcs(tmp_path_factory.mktemp("fake-gcs")) as server:
        yield server


@pytest.fixture
def gcs_bucket(fake_gcs: GCSServer) -> str:
    """A fresh bucket on the GCS emulator."""
    return fake_gcs.create_bucket()
