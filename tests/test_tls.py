"""TLS served by the broker itself (``--certfile``/``--keyfile``), with real
certificates from a throwaway CA (trustme): a client that trusts the CA works end to
end, one that does not fails at once with a clear error, a worker process connects
over TLS with ``--ca-file``, and a standby's failover probe verifies the leader."""

from __future__ import annotations

import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
import trustme

import trioq
from _broker_proc import InProcessBroker, start_in_process
from _waits import wait_for
from _worker_proc import worker_process
from trioq._settings import SettingsError
from trioq._tokens import secret_value
from trioq.broker._settings import BrokerSettings
from trioq.worker._settings import WorkerSettings

TOKEN = "tls-admin-token"


@dataclass(frozen=True)
class Certificates:
    ca: Path
    """The CA's certificate (PEM): what clients trust."""
    certfile: Path
    keyfile: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    paths = Certificates(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(paths.ca))
    paths.certfile.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(paths.keyfile))
    return paths


def tls_settings(directory: Path, certs: Certificates, **overrides: object) -> BrokerSettings:
    return BrokerSettings.load(
        {
            "port": 0,
            "data_dir": str(directory),
            "group_commit_interval": 0,
            "certfile": str(certs.certfile),
            "keyfile": str(certs.keyfile),
            "token": TOKEN,
            **overrides,
        },
        environ={},
    )


@pytest.fixture
async def broker(
    nursery: trio.Nursery, tmp_path: Path, certificates: Certificates
) -> InProcessBroker:
    return await start_in_process(nursery, tls_settings(tmp_path / "data", certificates))


async def test_the_broker_serves_https(broker: InProcessBroker, certificates: Certificates) -> None:
    assert broker.url.startswith("https://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(certificates.ca))
    async with httpx.AsyncClient(verify=trusting) as client:
        health = await client.get(f"{broker.url}/healthz")
    assert health.status_code == 200
    assert health.json()["role"] == "leader"
    # and the URL clients are sent to is the https one
    assert broker.broker.engine.url == broker.url


@pytest.mark.parametrize("verify", ["path", "pathlib", "context"])
async def test_a_client_that_trusts_the_ca_works_end_to_end(
    broker: InProcessBroker, certificates: Certificates, verify: str
) -> None:
    given: str | Path | ssl.SSLContext = str(certificates.ca)
    if verify == "pathlib":
        given = certificates.ca
    elif verify == "context":
        given = ssl.create_default_context(cafile=str(certificates.ca))
    async with trioq.Client(broker.url, token=TOKEN, verify=given) as client:
        job_id = await client.submit("tls", {"n": 1})
        [claimed] = await client.claim("w1", types=["tls"])
        assert claimed.id == job_id
        await client.complete(job_id, "w1", attempt=claimed.attempt)
        assert (await client.get(job_id))["status"] == "completed"


async def test_a_client_without_the_ca_fails_at_once(broker: InProcessBroker) -> None:
    async with trioq.Client(broker.url, token=TOKEN, retry_deadline=30) as client:
        with trio.fail_after(5):  # no retries until the 30 s deadline
            with pytest.raises(trioq.BrokerUnreachable) as caught:
                await client.submit("tls", {"n": 1})
    message = str(caught.value)
    assert f"cannot verify the TLS certificate of broker {broker.url}" in message
    assert "unable to get local issuer certificate" in message  # what ssl said
    assert "--ca-file" in message


async def test_a_client_with_an_unreadable_ca_bundle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot load the CA bundle"):
        trioq.Client("https://127.0.0.1:1", verify=str(tmp_path / "absent.pem"))


async def test_a_worker_process_connects_over_tls(
    broker: InProcessBroker, certificates: Certificates, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    async with trioq.Client(broker.url, token=TOKEN, verify=str(certificates.ca)) as client:
        job_id = await client.submit("record", {"sleep": 0})
        async with worker_process(
            tmp_path,
            broker.url,
            "--ca-file",
            str(certificates.ca),
            "--token-file",
            str(token_file),
        ) as proc:
            ready = await proc.ready()
            assert broker.url in ready

            async def completed() -> bool:
                status: str = (await client.get(job_id))["status"]
                return status == "completed"

            await wait_for(completed, within=20, what="the job completed by the worker")


async def test_a_worker_without_the_ca_says_why(broker: InProcessBroker, tmp_path: Path) -> None:
    async with worker_process(tmp_path, broker.url, "--token", TOKEN) as proc:
        with trio.fail_after(20):
            code = await proc.exited()
    assert code == 1
    log = proc.log_tail()
    assert "cannot verify the TLS certificate" in log, log
    assert TOKEN not in log


async def test_the_failover_probe_verifies_the_leader(
    broker: InProcessBroker, certificates: Certificates, tmp_path: Path
) -> None:
    """A standby's probe answered by the TLS leader counts only when the leader's
    certificate checks out (--ca-file); a probe that cannot verify it is a failure."""
    trusting = tls_settings(tmp_path / "other", certificates, ca_file=str(certificates.ca))
    standby = trioq.broker.Broker(trusting)
    async with httpx.AsyncClient(verify=trusting.probe_verify()) as client:
        assert await standby._leader_answers(client, broker.url)
    distrusting = tls_settings(tmp_path / "third", certificates)
    async with httpx.AsyncClient(verify=distrusting.probe_verify()) as client:
        assert not await standby._leader_answers(client, broker.url)


def test_certfile_and_keyfile_go_together(tmp_path: Path, certificates: Certificates) -> None:
    with pytest.raises(SettingsError, match="--certfile and --keyfile go together"):
        BrokerSettings.load({"certfile": str(certificates.certfile)}, environ={})
    with pytest.raises(SettingsError, match="cannot load --certfile"):
        BrokerSettings.load(
            {"certfile": str(certificates.ca), "keyfile": str(certificates.ca)}, environ={}
        )
    with pytest.raises(SettingsError, match="cannot load the CA bundle"):
        BrokerSettings.load({"ca_file": str(tmp_path / "absent")}, environ={})
    loaded = BrokerSettings.load(
        {},
        environ={
            "TRIOQ_CERTFILE": str(certificates.certfile),
            "TRIOQ_KEYFILE": str(certificates.keyfile),
            "TRIOQ_CA_FILE": str(certificates.ca),
        },
    )
    assert loaded.tls
    assert loaded.ca_file == str(certificates.ca)


def test_worker_token_file_and_ca_file(tmp_path: Path, certificates: Certificates) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  from-a-file\n")
    loaded = WorkerSettings.load(
        {}, environ={"TRIOQ_TOKEN_FILE": str(token_file), "TRIOQ_CA_FILE": str(certificates.ca)}
    )
    assert secret_value(loaded.token) == "from-a-file"
    assert "from-a-file" not in repr(loaded)
    assert loaded.verify is not True
    with pytest.raises(SettingsError, match="both set, to different tokens"):
        WorkerSettings.load({"token": "other", "token_file": str(token_file)}, environ={})
    token_file.write_text("\n")
    with pytest.raises(SettingsError, match="an empty token is refused"):
        WorkerSettings.load({"token_file": str(token_file)}, environ={})
    with pytest.raises(SettingsError, match="cannot read"):
        WorkerSettings.load({"token_file": str(tmp_path / "absent")}, environ={})


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_the_worker_help_lists_the_new_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from trioq.worker._cli import _parser

    _parser().print_help()
    out = capsys.readouterr().out
    assert "--ca-file" in out
    assert "--token-file" in out
