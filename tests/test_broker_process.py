"""``python -m trioq.broker`` as a subprocess: the ready line, settings from flags
and the environment, startup failures in one line, graceful stop on signals, and
``kill -9`` losing no acknowledged mutation."""

from __future__ import annotations

import contextlib
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from _broker_proc import BROKER_ENV_VARS, broker_process, run_broker_to_exit, s3_args, s3_env
from _servers import S3Server, free_port, free_ports
from _waits import wait_for
from trioq._inspect import read_state
from trioq._tokens import secret_value
from trioq.broker._service import main
from trioq.broker._settings import parse_settings
from trioq.storage._file import FileStorage


def file_args(directory: Path, *extra: str) -> list[str]:
    return ["--port", "0", "--data-dir", str(directory / "data"), *extra]


async def stored_document(directory: Path) -> dict[str, Any]:
    """The committed state as one format-1 document, whatever the layout."""
    state = await read_state(FileStorage(directory / "data"))
    document: dict[str, Any] = orjson.loads(state.encode())
    return document


async def test_ready_line_and_a_round_trip(tmp_path: Path) -> None:
    async with broker_process(file_args(tmp_path), log_path=tmp_path / "log") as broker:
        assert broker.role == "leader"
        assert broker.url.startswith("http://127.0.0.1:")
        assert str(tmp_path / "data") in broker.storage
        async with httpx.AsyncClient(base_url=broker.url, verify=False) as http:
            health = (await http.get("/healthz")).json()
            assert isinstance(health.pop("leaseAgeMs"), int)  # the leader's lease age
            assert health.pop("leaseMs") == 10_000  # when standbys call it stale
            assert health == {
                "status": "ok",
                "brokerId": broker.broker_id,
                "role": "leader",
                "epoch": 1,
                "leader": broker.url,
            }
            job_id = (await http.post("/v1/jobs", json={"payload": {"a": 1}})).json()["jobId"]
            claimed = (await http.post("/v1/jobs/claim", json={"workerId": "w"})).json()
            assert claimed["jobId"] == job_id
            done = await http.post(f"/v1/jobs/{job_id}/complete", json={"workerId": "w"})
            assert done.status_code == 204
            assert (await http.get("/v1/stats")).json()["completedTotal"] == 1


async def test_serves_on_seaweedfs(
    seaweedfs: S3Server, seaweedfs_bucket: str, tmp_path: Path
) -> None:
    args = ["--port", "0", *s3_args(seaweedfs, seaweedfs_bucket)]
    async with broker_process(args, env=s3_env(seaweedfs), log_path=tmp_path / "log") as broker:
        assert broker.role == "leader"
        assert seaweedfs_bucket in broker.storage
        async with httpx.AsyncClient(base_url=broker.url, verify=False) as http:
            batch = {"jobs": [{"payload": n, "id": f"s3-{n}"} for n in range(5)]}
            assert (await http.post("/v1/jobs/batch", json=batch)).status_code == 200
            claimed = (await http.post("/v1/jobs/claim", json={"workerId": "w", "max": 2})).json()
            assert [j["jobId"] for j in claimed["jobs"]] == ["s3-0", "s3-1"]
            state = (await http.get("/state")).json()
            assert [j["id"] for j in state["jobs"]] == [f"s3-{n}" for n in range(5)]
            assert state["leader"]["url"] == broker.url


# ------------------------------------------------------------------- settings

ANY_ADDRESS = ".".join("0" * 4)  # spelled out so no test looks like it binds it

INVALID: list[tuple[list[str], dict[str, str], str]] = [
    (
        ["--broker-heartbeat-interval-ms", "5000", "--broker-heartbeat-timeout-ms", "5000"],
        {},
        "must be shorter than the broker heartbeat timeout",
    ),
    ([], {"BROKER_HEARTBEAT_INTERVAL_MS": "20000"}, "must be shorter"),
    (["--broker-heartbeat-timeout-ms", "1000"], {}, "must be shorter"),
    (["--storage", "nope"], {}, "unknown storage backend 'nope'"),
    ([], {"STORAGE_BACKEND": "azure"}, "unknown storage backend 'azure'"),
    (["--storage", "s3"], {}, "needs a bucket"),
    ([], {"STORAGE_BACKEND": "s3"}, "needs a bucket"),
    (["--port", "70000"], {}, "port 70000 is out of range"),
    ([], {"BROKER_PORT": "abc"}, "BROKER_PORT: 'abc' is not a valid int"),
    (["--port", "1.5"], {}, "--port: '1.5' is not a valid int"),
    (["--group-commit-interval-ms", "-1"], {}, "group-commit-interval-ms"),
    (["--max-payload-bytes", "10", "--max-request-bytes", "5"], {}, "max-payload-bytes"),
    (["--max-queued", "0"], {}, "max-queued must be positive"),
    # the unspecified address as an advertised URL is rejected (nothing binds it here)
    (["--advertise-url", f"http://{ANY_ADDRESS}:8080"], {}, f"not {ANY_ADDRESS}"),
    (["--advertise-url", "ftp://x"], {}, "http://"),
    ([], {"TRIOQ_METRICS_PUBLIC": "maybe"}, "TRIOQ_METRICS_PUBLIC: 'maybe' is not a valid switch"),
    ([], {"TRIOQ_FAILOVER_PROBE": "2"}, "TRIOQ_FAILOVER_PROBE"),
    # an endpoint without a scheme used to end in a 90-line exception group
    (
        ["--storage", "s3", "--bucket", "b", "--endpoint-url", "127.0.0.1:18333"],
        {},
        "is not an http:// or https:// URL",
    ),
    # S3 settings on another backend used to be ignored silently
    (["--bucket", "b"], {}, "--bucket (S3_BUCKET) applies to the s3 backend only"),
    ([], {"S3_PREFIX": "p/"}, "--prefix (S3_PREFIX) applies to the s3 backend only"),
    (["--storage", "memory", "--endpoint-url", "http://x"], {}, "--endpoint-url"),
    ([], {"TRIOQ_CREATE": "perhaps"}, "TRIOQ_CREATE"),
]


@pytest.mark.parametrize(
    ("args", "env", "expected"), INVALID, ids=[" ".join([*a, *e]) for a, e, _ in INVALID]
)
def test_invalid_settings_exit_with_one_line(
    args: list[str],
    env: dict[str, str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``main()`` in this process (fast): settings are checked before anything
    starts, and the operator gets one line."""
    for name in BROKER_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["--data-dir", str(tmp_path / "never"), *args])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("trioq broker: ")
    assert expected in line
    assert not (tmp_path / "never").exists()


def test_every_setting_is_a_flag_and_an_environment_variable() -> None:
    env = {
        "BROKER_HOST": "127.0.0.2",
        "BROKER_PORT": "1234",
        "BROKER_ADVERTISE_URL": "http://broker.example:1234",
        "STORAGE_BACKEND": "s3",
        "TRIOQ_DATA_DIR": "/d",
        "S3_BUCKET": "bkt",
        "S3_PREFIX": "p/",
        "S3_REGION": "eu-west-1",
        "S3_ENDPOINT_URL": "http://s3.example",
        "TRIOQ_KEY": "k.json",
        "TRIOQ_BROKER_ID": "env-id",
        "GROUP_COMMIT_INTERVAL_MS": "2000",
        "JOB_HEARTBEAT_TIMEOUT_MS": "60000",
        "BROKER_HEARTBEAT_INTERVAL_MS": "1000",
        "BROKER_HEARTBEAT_TIMEOUT_MS": "5000",
        "TRIOQ_TOKEN": "tok",
        "S3_MAX_WRITES_PER_MINUTE": "30",
        "S3_MAX_READS_PER_MINUTE": "60",
        "TRIOQ_MAX_PAYLOAD_BYTES": "100",
        "TRIOQ_MAX_REQUEST_BYTES": "1000",
        "TRIOQ_MAX_QUEUED": "5",
        "TRIOQ_MAX_DOCUMENT_BYTES": "70000",
        "TRIOQ_DEDUP_WINDOW_S": "60",
        "TRIOQ_SHUTDOWN_GRACE_S": "2.5",
        "TRIOQ_METRICS_PUBLIC": "yes",
        "TRIOQ_FAILOVER_PROBE": "off",
    }
    from_env = parse_settings([], env)
    assert (from_env.host, from_env.port, from_env.storage) == ("127.0.0.2", 1234, "s3")
    assert (from_env.bucket, from_env.prefix, from_env.region) == ("bkt", "p/", "eu-west-1")
    assert (from_env.key, from_env.broker_id, secret_value(from_env.token)) == (
        "k.json",
        "env-id",
        "tok",
    )
    assert from_env.group_commit_interval_ms == 2000
    assert from_env.broker_heartbeat_timeout_ms == 5000
    assert from_env.max_writes_per_minute == 30
    assert from_env.shutdown_grace_s == 2.5
    assert (from_env.metrics_public, from_env.failover_probe) == (True, False)
    assert from_env.limits().max_document_bytes == 70000
    flags = [
        "--host=127.0.0.3",
        "--port=99",
        "--storage=file",
        "--data-dir=/f",
        "--broker-id=flag-id",
        "--group-commit-interval-ms=10",
        "--broker-heartbeat-interval-ms=200",
        "--broker-heartbeat-timeout-ms=900",
        "--token=flag-tok",
        "--max-queued=9",
        "--max-document-bytes=80000",
        "--shutdown-grace-s=1",
        "--no-metrics-public",
        "--failover-probe",
    ]
    # S3 settings with another backend are refused: the flags' file backend runs
    # with an environment that names no bucket
    from_flags = parse_settings(flags, {k: v for k, v in env.items() if not k.startswith("S3_")})
    assert (from_flags.host, from_flags.port, from_flags.storage) == ("127.0.0.3", 99, "file")
    assert (from_flags.data_dir, from_flags.broker_id, secret_value(from_flags.token)) == (
        "/f",
        "flag-id",
        "flag-tok",
    )
    assert from_flags.group_commit_interval_ms == 10
    assert from_flags.broker_heartbeat_timeout_ms == 900
    assert (from_flags.max_queued, from_flags.shutdown_grace_s) == (9, 1.0)
    assert from_flags.limits().max_document_bytes == 80000
    assert (from_flags.metrics_public, from_flags.failover_probe) == (False, True)
    # untouched by flags: still from the environment
    assert from_flags.max_payload_bytes == 100
    # the backend's name is not case-sensitive; --create is a switch like the others
    upper = parse_settings(["--storage", "S3", "--bucket", "b", "--create"], {})
    assert (upper.storage, upper.create) == ("s3", True)
    assert parse_settings([], {"STORAGE_BACKEND": " Memory "}).storage == "memory"
    assert parse_settings([], {"TRIOQ_CREATE": "yes"}).create is True
    defaults = parse_settings([], {})
    assert (defaults.metrics_public, defaults.failover_probe, defaults.port) == (False, True, 8080)


async def test_invalid_settings_exit_before_binding_as_a_process(tmp_path: Path) -> None:
    """The same through ``python -m trioq.broker``: non-zero, one line, no server."""
    results: list[tuple[int, str, str]] = []

    async def run(args: list[str], env: dict[str, str]) -> None:
        results.append(await run_broker_to_exit(["--data-dir", str(tmp_path), *args], env=env))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, ["--broker-heartbeat-interval-ms", "10000"], {})
        nursery.start_soon(run, [], {"STORAGE_BACKEND": "s3"})
    for code, out, err in results:
        assert code == 2
        assert out == ""
        [line] = err.strip().splitlines()
        assert line.startswith("trioq broker: ")
        assert "Running on" not in err


async def test_flags_win_over_the_environment(tmp_path: Path) -> None:
    env_port, flag_port = free_ports(2)
    env = {
        "BROKER_PORT": str(env_port),
        "TRIOQ_BROKER_ID": "from-env",
        "TRIOQ_TOKEN": "env-token",
        "BROKER_HEARTBEAT_INTERVAL_MS": "999999",  # invalid, but overridden
        "STORAGE_BACKEND": "s3",  # invalid without a bucket, but overridden
        "TRIOQ_DATA_DIR": str(tmp_path / "env-data"),
    }
    args = [
        "--port",
        str(flag_port),
        "--broker-id",
        "from-flag",
        "--broker-heartbeat-interval-ms",
        "1000",
        "--storage",
        "file",
    ]
    async with broker_process(args, env=env, log_path=tmp_path / "log1") as broker:
        assert broker.url == f"http://127.0.0.1:{flag_port}"
        assert broker.broker_id == "from-flag"
        assert str(tmp_path / "env-data") in broker.storage
        async with httpx.AsyncClient(base_url=broker.url, verify=False) as http:
            # the token came from the environment
            assert (await http.get("/v1/stats")).status_code == 401
            ok = await http.get("/v1/stats", headers={"Authorization": "Bearer env-token"})
            assert ok.status_code == 200
    # and without the flags, the environment is used
    env.pop("BROKER_HEARTBEAT_INTERVAL_MS")
    env["STORAGE_BACKEND"] = "file"
    async with broker_process([], env=env, log_path=tmp_path / "log2") as broker:
        assert broker.url == f"http://127.0.0.1:{env_port}"
        assert broker.broker_id == "from-env"


async def test_port_in_use_exits_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run_broker_to_exit(
            ["--port", str(port), "--data-dir", str(tmp_path)]
        )
    assert code == 1
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"trioq broker: cannot serve on 127.0.0.1:{port}:")
    assert "Traceback" not in err


async def test_unusable_storage_exits_with_one_line(seaweedfs: S3Server, tmp_path: Path) -> None:
    dead_endpoint = f"http://127.0.0.1:{free_port()}"
    cases = [
        # nothing listens there
        # (waited out for --storage-wait-s first, see the test below)
        (
            [
                *("--storage", "s3", "--bucket", "b", "--endpoint-url", dead_endpoint),
                *("--storage-wait-s", "1"),
            ],
            s3_env(seaweedfs),
            "did not answer",
        ),
        # wrong credentials
        (
            s3_args(seaweedfs, "some-bucket"),
            {**s3_env(seaweedfs), "AWS_SECRET_ACCESS_KEY": "wrong-secret-0123456789abcdef"},
            "trioq broker: S3",
        ),
        # no such bucket
        (s3_args(seaweedfs, "no-such-bucket-here"), s3_env(seaweedfs), "trioq broker: S3"),
    ]
    results: list[tuple[int, str, str, str]] = []

    async def run(args: list[str], env: dict[str, str], expected: str) -> None:
        code, out, err = await run_broker_to_exit(["--port", "0", *args], env=env)
        results.append((code, out, err, expected))

    async with trio.open_nursery() as nursery:
        for args, env, expected in cases:
            nursery.start_soon(run, args, env, expected)
    for code, out, err, expected in results:
        assert code == 1, err
        assert out == ""
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("trioq broker: "), err
        assert expected in last, err


async def _forward(listener_port: int, target: str) -> None:
    """Serve 127.0.0.1:``listener_port`` as a plain TCP path to ``target``'s port."""
    target_port = int(target.rsplit(":", 1)[1])

    async def pipe(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await sink.send_eof()  # type: ignore[attr-defined]

    async def handle(client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", target_port)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(pipe, client, server)
            nursery.start_soon(pipe, server, client)

    await trio.serve_tcp(handle, listener_port, host="127.0.0.1")


async def test_a_broker_started_while_storage_is_unreachable_leads_once_it_answers(
    seaweedfs: S3Server, tmp_path: Path
) -> None:
    # storage is "cut": nothing listens at the endpoint until the broker said it waits
    port = free_port()
    log_path = tmp_path / "broker.log"
    args = s3_args(seaweedfs, seaweedfs.create_bucket())
    args[args.index("--endpoint-url") + 1] = f"http://127.0.0.1:{port}"

    async def restore_storage() -> None:
        await wait_for(
            lambda: "cannot reach storage at startup" in log_path.read_text(errors="replace"),
            what="the broker's warning that it waits for storage",
        )
        await _forward(port, seaweedfs.endpoint_url)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(restore_storage)
        async with broker_process(args, log_path=log_path, env=s3_env(seaweedfs)) as broker:
            assert broker.role == "leader"
            async with httpx.AsyncClient(base_url=broker.url, timeout=10) as http:
                answer = await http.post("/v1/jobs", json={"payload": 1, "id": "after"})
                assert answer.status_code == 200, answer.text
        nursery.cancel_scope.cancel()
    text = log_path.read_text()
    assert text.count("cannot reach storage at startup") == 1  # logged once
    assert "reached storage after" in text


# ------------------------------------------------------------------ lifecycle


async def test_sigterm_commits_pending_answers_in_flight_and_exits_0(tmp_path: Path) -> None:
    # a long commit interval, so a mutation is still pending when the signal comes
    args = file_args(tmp_path, "--group-commit-interval-ms", "5000")
    async with broker_process(args, log_path=tmp_path / "log") as broker:
        answers: dict[str, httpx.Response] = {}
        async with httpx.AsyncClient(base_url=broker.url, timeout=20, verify=False) as http:
            first = await http.post("/v1/jobs", json={"payload": 1, "id": "first"})
            assert first.status_code == 200

            async def send(name: str, path: str, body: dict[str, Any]) -> None:
                answers[name] = await http.post(path, json=body)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, "pending", "/v1/jobs", {"payload": 2, "id": "pending"})
                nursery.start_soon(
                    send,
                    "long-poll",
                    "/v1/jobs/claim",
                    {"workerId": "w", "types": ["nothing"], "waitMs": 20_000},
                )
                # both reached the engine: the submit waits for its commit (5 s after
                # the first), the claim for a job
                await wait_for(lambda: _engine_holds(http, 2), what="both held by the engine")
                assert not answers
                signalled = trio.current_time()
                broker.terminate()
            answered = trio.current_time() - signalled
            # (the client keeps its idle keep-alive connection open meanwhile: that
            # must not hold the stop for the grace period)
            code = await broker.wait(15)
            stopped = trio.current_time() - signalled
        assert code == 0, broker.log()
        # the pending submit was committed and acknowledged; the claim was answered
        assert answers["pending"].status_code == 200, answers["pending"].text
        assert answers["pending"].json() == {"jobId": "pending"}
        assert answers["long-poll"].status_code in (200, 503), answers["long-poll"].text
        # the last commit keeps the 5 s spacing; both within the 10 s grace period
        assert answered < 10
        assert stopped < 10
    document = await stored_document(tmp_path)
    assert [j["id"] for j in document["jobs"]] == ["first", "pending"]
    assert document["leader"]["released"] is True
    assert document["leader"]["brokerId"] == broker.broker_id


async def _engine_holds(http: httpx.AsyncClient, count: int) -> bool:
    """Whether ``count`` requests wait in the engine (for a commit, or parked claims)."""
    held = 0.0
    for line in (await http.get("/metrics")).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("trioq_pending_mutations", "trioq_waiting_claims"):
            held += float(value)
    return held == count


async def test_sigint_is_graceful_too(tmp_path: Path) -> None:
    async with broker_process(file_args(tmp_path), log_path=tmp_path / "log") as broker:
        broker.send_signal(signal.SIGINT)
        assert await broker.wait(10) == 0
    assert (await stored_document(tmp_path))["leader"]["released"] is True


async def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    """A stalled request holds the graceful stop (for up to the grace period); a
    second signal ends the process at once."""
    args = file_args(tmp_path, "--shutdown-grace-s", "60")
    async with broker_process(args, log_path=tmp_path / "log") as broker:
        host, port = broker.url.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(
                b"POST /v1/jobs HTTP/1.1\r\nHost: broker\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"payl'
            )
            await trio.sleep(0.3)
            broker.terminate()
            with trio.move_on_after(1.5):
                await broker.process.wait()
            assert broker.returncode is None, "the in-flight request should hold the stop"
            broker.terminate()
            code = await broker.wait(5)
        assert code not in (0, None)
        assert "second signal" in broker.log()
    # the first signal had already released the lease
    assert (await stored_document(tmp_path))["leader"]["released"] is True


async def test_kill_9_loses_no_acknowledged_mutation(tmp_path: Path) -> None:
    args = file_args(tmp_path, "--broker-id", "restartable")
    acked: set[str] = set()
    completed: set[str] = set()
    enough = trio.Event()  # something to lose: acknowledged and completed jobs

    def progress() -> None:
        if len(acked) > 20 and completed:
            enough.set()

    async with broker_process(args, log_path=tmp_path / "log1") as broker:

        async def submitter(n: int, http: httpx.AsyncClient) -> None:
            for i in range(10_000):
                job_id = f"k{n}-{i}"
                try:
                    response = await http.post("/v1/jobs", json={"payload": i, "id": job_id})
                except httpx.HTTPError:
                    return
                if response.status_code == 200:
                    acked.add(job_id)
                    progress()

        async def worker(http: httpx.AsyncClient) -> None:
            for _ in range(10_000):
                try:
                    got = await http.post("/v1/jobs/claim", json={"workerId": "w", "max": 5})
                    for item in got.json()["jobs"]:
                        done = await http.post(
                            f"/v1/jobs/{item['jobId']}/complete", json={"workerId": "w"}
                        )
                        if done.status_code == 204:
                            completed.add(item["jobId"])
                            progress()
                except (httpx.HTTPError, ValueError, KeyError):
                    return

        async with (
            httpx.AsyncClient(base_url=broker.url, timeout=5, verify=False) as http,
            trio.open_nursery() as nursery,
        ):
            for n in range(4):
                nursery.start_soon(submitter, n, http)
            nursery.start_soon(worker, http)
            # kill mid-traffic, once there is something to lose (bounded wait: a
            # loaded machine is slower to get there than a fixed sleep allows)
            with trio.fail_after(30):
                await enough.wait()
            broker.kill()
        assert await broker.wait(5) == -signal.SIGKILL
    assert len(acked) > 20
    assert completed
    # the same broker id takes its old lease over at once
    async with broker_process(args, log_path=tmp_path / "log2") as restarted:
        assert restarted.role == "leader"
        async with httpx.AsyncClient(base_url=restarted.url, verify=False) as http:
            for job_id in sorted(acked):
                record = await http.get(f"/v1/jobs/{job_id}")
                assert record.status_code == 200, job_id
                if job_id in completed:
                    assert record.json()["status"] == "completed", job_id
            stats = (await http.get("/v1/stats")).json()
    document = await stored_document(tmp_path)
    assert document["leader"]["epoch"] == 2
    assert stats["completedTotal"] >= len(completed)


# -- a queue that existed is never replaced by an empty one ------------------------------


async def test_a_missing_queue_on_s3_is_created_only_with_create(
    seaweedfs: S3Server, seaweedfs_bucket: str, tmp_path: Path
) -> None:
    """A bucket never proves itself new: without --create a broker refuses to start
    (one line naming the object); with it, it creates the queue; once the object is
    deleted, a broker without --create refuses again rather than start empty."""
    args = ["--port", "0", "--storage", "s3", "--bucket", seaweedfs_bucket]
    args += ["--endpoint-url", seaweedfs.endpoint_url]
    code, out, err = await run_broker_to_exit(args, env=s3_env(seaweedfs))
    assert (code, out) == (1, "")
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        f"trioq broker: no queue at queue.json in S3 storage s3://{seaweedfs_bucket}"
    )
    assert "--create" in last
    assert "Traceback" not in err
    async with broker_process(
        [*args, "--create"], env=s3_env(seaweedfs), log_path=tmp_path / "l"
    ) as broker:
        assert broker.role == "leader"
        broker.terminate()
        assert await broker.wait(20) == 0
    # an existing queue needs no --create
    async with broker_process(args, env=s3_env(seaweedfs), log_path=tmp_path / "l2") as broker:
        assert broker.role == "leader"
        broker.terminate()
        assert await broker.wait(20) == 0
    seaweedfs.client().delete_object(Bucket=seaweedfs_bucket, Key="queue.json")
    code, _, err = await run_broker_to_exit(args, env=s3_env(seaweedfs))
    assert code == 1
    assert "no queue at queue.json" in err.strip().splitlines()[-1]


async def test_the_file_backend_creates_a_queue_in_a_new_directory_only(tmp_path: Path) -> None:
    async with broker_process(file_args(tmp_path), log_path=tmp_path / "l") as broker:
        assert broker.role == "leader"  # a directory that did not exist: new
        broker.terminate()
        assert await broker.wait(20) == 0
    (tmp_path / "data" / "queue.json").unlink()  # the lock file stays behind
    code, out, err = await run_broker_to_exit(file_args(tmp_path))
    assert (code, out) == (1, "")
    last = err.strip().splitlines()[-1]
    assert last.startswith("trioq broker: no queue at queue.json in file storage ")
    async with broker_process(file_args(tmp_path, "--create"), log_path=tmp_path / "l2") as b:
        assert b.role == "leader"
        b.terminate()
        assert await b.wait(20) == 0


def test_help_names_the_command_it_was_called_as(capsys: pytest.CaptureFixture[str]) -> None:
    from trioq.__main__ import main as trioq_main

    with pytest.raises(SystemExit) as exited:
        trioq_main(["broker", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: trioq broker ")
    assert "--create" in out
