"""The Connect transport (``/osqueue.v1.QueueService/<Method>``) of a real broker
(in-process hypercorn, real HTTP), driven by a real Connect client
(``connect-python``, both codecs; its default gzip request compression included)
and by raw HTTP for the JSON codec: every RPC, the errors and their codes, auth,
a standby, and one job across the three transports.

The committed descriptor set is checked against the ``.proto`` files with protoc.
"""

from __future__ import annotations

import base64
import gzip
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from connectrpc.client import ConnectClientSync
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo
from google.protobuf.descriptor_pb2 import FileDescriptorSet
from google.rpc import error_details_pb2
from httpx_ws import aconnect_ws

import trioq._connect as connect
from _broker_proc import InProcessBroker, start_in_process
from trioq import DocumentInvalid, LeaseLost, QueueFull, TrioqError
from trioq.broker._connect import METHODS
from trioq.broker._settings import BrokerSettings
from trioq.storage import FaultyStorage, FileStorage

CODECS = ["proto", "json"]
PROTO_DIR = Path(connect.__file__).parent / "proto"


def settings(directory: Path, **overrides: Any) -> BrokerSettings:
    return BrokerSettings.load(
        {"port": 0, "data_dir": str(directory / "data"), "group_commit_interval": 0, **overrides},
        environ={},
    )


@pytest.fixture
async def broker(nursery: trio.Nursery, tmp_path: Path) -> InProcessBroker:
    return await start_in_process(
        nursery, settings(tmp_path, max_request_bytes=64 * 1024, max_payload_bytes=16 * 1024)
    )


class Rpc:
    """A Connect client of one broker, in one codec (run in a thread: it is sync)."""

    def __init__(self, url: str, codec: str, token: str | None = None) -> None:
        self.client = ConnectClientSync(url, proto_json=codec == "json")
        self.headers = {"Authorization": f"Bearer {token}"} if token else None

    async def __call__(self, name: str, **fields: Any) -> Any:
        rpc = connect.RPCS[name]
        method = MethodInfo(
            name=name,
            service_name=connect.SERVICE,
            input=rpc.input,
            output=rpc.output,
            idempotency_level=IdempotencyLevel.UNKNOWN,
        )
        request = rpc.input(**fields)

        def send() -> Any:
            return self.client.execute_unary(request=request, method=method, headers=self.headers)

        return await trio.to_thread.run_sync(send)

    async def outcome(self, name: str, **fields: Any) -> ConnectError | None:
        """The call's error, or None when it succeeds."""
        try:
            await self(name, **fields)
        except ConnectError as error:
            return error
        return None

    async def error(self, name: str, **fields: Any) -> ConnectError:
        with pytest.raises(ConnectError) as raised:
            await self(name, **fields)
        return raised.value


def trioq_info(error: ConnectError) -> Any:
    """The error's ``google.rpc.ErrorInfo``, read with googleapis' own definition."""
    [detail] = error.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert info.domain == "trioq"
    return info


@pytest.fixture(params=CODECS)
def rpc(request: pytest.FixtureRequest, broker: InProcessBroker) -> Iterator[Rpc]:
    client = Rpc(broker.url, request.param)
    yield client
    client.client.close()


# ------------------------------------------------------------------ the schema


def test_the_descriptor_set_is_the_proto_files_compiled(tmp_path: Path) -> None:
    """``descriptors.binpb`` is what protoc makes of ``proto/`` today (else: run
    ``nox -s proto``)."""
    out = tmp_path / "descriptors.binpb"
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
            f"--descriptor_set_out={out}", "--include_imports", *connect.PROTO_FILES,
        ],
        check=True,
    )  # fmt: skip
    committed = (Path(connect.__file__).parent / connect.DESCRIPTOR_SET).read_bytes()
    assert FileDescriptorSet.FromString(out.read_bytes()) == FileDescriptorSet.FromString(
        committed
    ), "descriptors.binpb is stale: run `nox -s proto`"


def test_the_service_is_osqueues_and_each_method_has_its_rest_scopes() -> None:
    assert list(connect.RPCS) == [
        "SubmitJob", "ClaimJob", "Heartbeat", "CompleteJob", "GetStats", "ListJobs",
    ]  # fmt: skip
    scopes = {name: sorted(str(s) for s in m.scopes) for name, m in METHODS.items()}
    assert scopes == {
        "SubmitJob": ["admin", "producer"],
        "ClaimJob": ["admin", "worker"],
        "Heartbeat": ["admin", "worker"],
        "CompleteJob": ["admin", "worker"],
        "GetStats": ["admin", "worker"],
        "ListJobs": ["admin"],
    }
    # osqueue's field numbers: a client generated from osqueue's own .proto reads ours
    fields = {
        m.name: {f.name: f.number for f in m.fields}
        for m in connect.POOL.FindFileByName(
            "osqueue/v1/queue.proto"
        ).message_types_by_name.values()
    }
    assert fields["SubmitJobRequest"] == {"payload": 1, "max_attempts": 2, "type": 3}
    assert fields["ClaimJobResponse"] == {"job_id": 1, "payload": 2, "type": 3}
    assert fields["JobInfo"] == {
        "id": 1, "status": 2, "payload": 3, "type": 4, "worker_id": 5, "created_at": 6,
        "attempts": 7, "max_attempts": 8, "heartbeat": 9,
    }  # fmt: skip
    assert fields["ListJobsResponse"] == {
        "jobs": 1, "total": 2, "unclaimed": 3, "in_progress": 4, "completed_total": 5,
        "broker_address": 6,
    }  # fmt: skip


def test_every_error_has_a_connect_code_in_step_with_its_rest_status() -> None:
    """Each error class of trioq answers with a Connect code whose HTTP status tells
    the same story as REST's (503s stay retryable ``unavailable``, 4xx stay 4xx)."""
    from trioq._errors import ERRORS_BY_TAG

    for tag, cls in ERRORS_BY_TAG.items():
        if cls.__module__ != "trioq._errors":
            continue  # worker-side errors (PayloadInvalid, JobTimeout): never answered
        error = cls.__new__(cls)
        TrioqError.__init__(error, "m")
        code = connect.code_of(error)
        status = connect.STATUS_BY_CODE[code]
        if cls.status == 503:  # retry later: QueueFull is the one that says why
            assert code == ("resource_exhausted" if cls is QueueFull else "unavailable"), tag
        elif 400 <= cls.status < 500:
            assert 400 <= status < 500 or code == "unimplemented", tag
        elif cls.status >= 500:
            assert status >= 500, tag
    assert connect.code_of(LeaseLost("x")) == "failed_precondition"
    assert connect.code_of(QueueFull("x")) == "resource_exhausted"
    assert connect.code_of(DocumentInvalid("x")) == "unavailable"


# ---------------------------------------------------------------- every RPC


async def test_every_rpc(broker: InProcessBroker, rpc: Rpc) -> None:
    submitted = await rpc("SubmitJob", payload=b'{"to": "a@b.c"}', type="email", max_attempts=2)
    other = await rpc("SubmitJob", payload=b"[1, 2]")
    assert submitted.job_id
    assert other.job_id
    assert submitted.job_id != other.job_id

    stats = await rpc("GetStats")
    assert (stats.total, stats.unclaimed, stats.in_progress) == (2, 2, 0)
    assert stats.broker_address == broker.url

    claimed = await rpc("ClaimJob", worker_id="w1", types=["email"])
    assert claimed.job_id == submitted.job_id
    assert claimed.type == "email"
    assert claimed.payload == b'{"to":"a@b.c"}'  # the stored JSON, re-encoded compactly

    listed = await rpc("ListJobs")
    assert (listed.total, listed.unclaimed, listed.in_progress, listed.completed_total) == (
        2, 1, 1, 0,
    )  # fmt: skip
    assert listed.broker_address == broker.url
    first, second = listed.jobs
    assert (first.id, first.status, first.type, first.worker_id) == (
        submitted.job_id, "in_progress", "email", "w1",
    )  # fmt: skip
    assert (first.attempts, first.max_attempts) == (1, 2)
    assert first.created_at > 0
    assert first.heartbeat >= first.created_at
    assert (second.id, second.status, second.type, second.payload) == (
        other.job_id, "unclaimed", "default", b"[1,2]",
    )  # fmt: skip
    assert (second.worker_id, second.heartbeat, second.max_attempts) == ("", 0, 3)

    await rpc("Heartbeat", job_id=submitted.job_id, worker_id="w1")
    await rpc("CompleteJob", job_id=submitted.job_id, worker_id="w1")
    listed = await rpc("ListJobs")
    assert [j.id for j in listed.jobs] == [other.job_id]
    assert listed.completed_total == 1

    # any type; then nothing is ready: an empty answer, job_id absent
    assert (await rpc("ClaimJob", worker_id="w2")).job_id == other.job_id
    empty = await rpc("ClaimJob", worker_id="w2")
    assert not empty.HasField("job_id")
    assert not empty.HasField("payload")


async def test_the_json_codec_over_raw_http(broker: InProcessBroker) -> None:
    """protobuf's JSON mapping: camelCase names (snake_case accepted too), bytes in
    base64, 64-bit integers as strings; zero values stated; the answer's content
    type is the request's codec."""
    payload = base64.b64encode(b'{"n": 1}').decode()
    async with httpx.AsyncClient(base_url=f"{broker.url}/osqueue.v1.QueueService") as http:
        answer = await http.post(
            "/SubmitJob",
            content=f'{{"payload": "{payload}", "max_attempts": 4, "type": "t", "later": 1}}',
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        job_id = answer.json()["jobId"]

        stats = await http.post("/GetStats", json={})
        assert stats.json() == {
            "total": 1, "unclaimed": 1, "inProgress": 0, "brokerAddress": broker.url,
        }  # fmt: skip
        claimed = await http.post("/ClaimJob", json={"workerId": "w", "types": ["t"]})
        assert claimed.json() == {
            "jobId": job_id, "payload": base64.b64encode(b'{"n":1}').decode(), "type": "t",
        }  # fmt: skip
        listed = (await http.post("/ListJobs", json={})).json()
        [job] = listed["jobs"]
        assert job["maxAttempts"] == 4
        assert job["attempts"] == 1
        assert job["workerId"] == "w"
        assert isinstance(job["createdAt"], str)
        assert int(job["createdAt"]) > 0
        assert {k: listed[k] for k in ("total", "unclaimed", "inProgress", "completedTotal")} == {
            "total": 1, "unclaimed": 0, "inProgress": 1, "completedTotal": 0,
        }  # fmt: skip
        done = await http.post("/CompleteJob", json={"jobId": job_id, "workerId": "w"})
        assert (done.status_code, done.json()) == (200, {})
        empty = await http.post("/ClaimJob", json={"workerId": "w"})
        assert empty.json() == {"type": ""}


async def test_a_gzip_body_is_inflated_and_a_bomb_is_refused(broker: InProcessBroker) -> None:
    async with httpx.AsyncClient(base_url=f"{broker.url}/osqueue.v1.QueueService") as http:
        body = connect.RPCS["SubmitJob"].input(payload=b'"zipped"').SerializeToString()
        answer = await http.post(
            "/SubmitJob",
            content=gzip.compress(body),
            headers={"Content-Type": "application/proto", "Content-Encoding": "gzip"},
        )
        assert answer.status_code == 200, answer.text
        # 64 KiB is the request limit: 1 MiB of zeros inflates past it
        bomb = connect.RPCS["SubmitJob"].input(payload=b'"' + b"0" * (1 << 20) + b'"')
        refused = await http.post(
            "/SubmitJob",
            content=gzip.compress(bomb.SerializeToString()),
            headers={"Content-Type": "application/proto", "Content-Encoding": "gzip"},
        )
        assert_connect_error(refused, 429, "resource_exhausted", "PayloadTooLarge")
        broken = await http.post(
            "/SubmitJob",
            content=gzip.compress(body)[:-6],
            headers={"Content-Type": "application/proto", "Content-Encoding": "gzip"},
        )
        assert_connect_error(broken, 400, "invalid_argument", "BrokerProtocolError")
        other = await http.post(
            "/SubmitJob",
            content=body,
            headers={"Content-Type": "application/proto", "Content-Encoding": "br"},
        )
        assert_connect_error(other, 501, "unimplemented", "BrokerProtocolError")
        assert other.headers["accept-encoding"] == "gzip"
        stats = await http.post("/GetStats", json={})
        assert stats.json()["total"] == 1  # only the good one


# ------------------------------------------------------------------- errors


def assert_connect_error(
    response: httpx.Response, status: int, code: str, tag: str
) -> dict[str, Any]:
    """A Connect error body: JSON whatever the codec, its code, REST's ``_tag`` and
    an ErrorInfo detail saying the same."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["_tag"] == tag
    assert isinstance(body["message"], str)
    assert body["message"]
    assert connect.tag_of(body["details"]) is not None
    assert connect.tag_of(body["details"])["reason"] == tag  # type: ignore[index]
    return body


async def test_bad_input_gets_invalid_argument_and_changes_nothing(rpc: Rpc) -> None:
    bad: list[tuple[str, dict[str, Any], str]] = [
        ("SubmitJob", {}, "payload is required"),
        ("SubmitJob", {"payload": b"{not json"}, "not JSON"),
        ("SubmitJob", {"payload": b"1", "max_attempts": 0}, "maxAttempts"),
        ("SubmitJob", {"payload": b"1", "type": "x" * 500}, "type"),
        ("SubmitJob", {"payload": b"1" + b"0" * 30}, "out of range"),
        ("ClaimJob", {}, "workerId"),
        ("Heartbeat", {"worker_id": "w"}, "job id"),
        ("CompleteJob", {"job_id": "j"}, "workerId"),
    ]
    for name, fields, words in bad:
        error = await rpc.error(name, **fields)
        assert error.code == Code.INVALID_ARGUMENT, (name, fields, error.message)
        assert words in error.message, (name, fields, error.message)
        assert trioq_info(error).reason == "BrokerProtocolError"
    assert (await rpc("GetStats")).total == 0


async def test_held_job_errors(rpc: Rpc) -> None:
    missing = await rpc.error("Heartbeat", job_id="nope", worker_id="w")
    assert missing.code == Code.NOT_FOUND
    assert trioq_info(missing).reason == "JobNotFound"
    job = await rpc("SubmitJob", payload=b"1")
    await rpc("ClaimJob", worker_id="holder")
    for name in ("Heartbeat", "CompleteJob"):
        lost = await rpc.error(name, job_id=job.job_id, worker_id="somebody-else")
        assert lost.code == Code.FAILED_PRECONDITION
        assert trioq_info(lost).reason == "LeaseLost"
    assert (await rpc("GetStats")).in_progress == 1


async def test_protocol_refusals(broker: InProcessBroker) -> None:
    body = {"workerId": "w"}
    async with httpx.AsyncClient(base_url=f"{broker.url}/osqueue.v1.QueueService") as http:
        unknown = await http.post("/DeleteEverything", json={})
        assert_connect_error(unknown, 501, "unimplemented", "NotFound")
        got = await http.get("/GetStats")
        assert_connect_error(got, 405, "unimplemented", "MethodNotAllowed")
        assert got.headers["allow"] == "POST"
        text = await http.post("/ClaimJob", content=b"{}", headers={"Content-Type": "text/plain"})
        assert_connect_error(text, 415, "invalid_argument", "BrokerProtocolError")
        assert text.headers["accept-post"] == "application/proto, application/json"
        garbage = await http.post(
            "/ClaimJob", content=b"\xff\xff\xff", headers={"Content-Type": "application/proto"}
        )
        assert_connect_error(garbage, 400, "invalid_argument", "BrokerProtocolError")
        not_json = await http.post(
            "/ClaimJob", content=b"[1]", headers={"Content-Type": "application/json"}
        )
        assert_connect_error(not_json, 400, "invalid_argument", "BrokerProtocolError")
        version = await http.post("/ClaimJob", json=body, headers={"Connect-Protocol-Version": "2"})
        assert_connect_error(version, 400, "invalid_argument", "BrokerProtocolError")
        for timeout in ("-1", "abc", "12345678901", "1.5"):
            bad = await http.post("/ClaimJob", json=body, headers={"Connect-Timeout-Ms": timeout})
            assert_connect_error(bad, 400, "invalid_argument", "BrokerProtocolError")
        big = await http.post("/SubmitJob", json={"payload": "QQ" * 40_000})
        assert_connect_error(big, 429, "resource_exhausted", "PayloadTooLarge")
        # within the request limit (64 KiB), over the payload limit (16 KiB)
        payload = base64.b64encode(b'"' + b"x" * 20_000 + b'"').decode()
        heavy = await http.post("/SubmitJob", json={"payload": payload})
        assert_connect_error(heavy, 429, "resource_exhausted", "PayloadTooLarge")
        assert (await http.post("/GetStats", json={})).json()["total"] == 0


async def test_a_deadline_that_passes_is_deadline_exceeded(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``Connect-Timeout-Ms`` bounds the call: a commit stuck in a slow store is
    answered ``deadline_exceeded`` when the caller's deadline passes."""
    storage = FaultyStorage(FileStorage(tmp_path / "data"))
    broker = await start_in_process(nursery, settings(tmp_path), storage=storage)
    rpc = Rpc(broker.url, "proto")
    storage.latency = 3600.0  # every storage call from now on: far past any deadline
    rpc.headers = {"Connect-Timeout-Ms": "200"}
    error = await rpc.error("SubmitJob", payload=b"1")
    assert error.code == Code.DEADLINE_EXCEEDED
    assert trioq_info(error).reason == "DeadlineExceeded"


# --------------------------------------------------------------------- auth


TOKENS = {"producer": "p-token", "worker": "w-token", "admin": "a-token"}


@pytest.fixture
async def secured(nursery: trio.Nursery, tmp_path: Path) -> InProcessBroker:
    path = tmp_path / "tokens"
    path.write_text("".join(f"{scope} {token}\n" for scope, token in TOKENS.items()))
    return await start_in_process(nursery, settings(tmp_path, tokens_file=str(path)))


@pytest.mark.parametrize("codec", CODECS)
async def test_auth_by_scope(secured: InProcessBroker, codec: str) -> None:
    calls: dict[str, dict[str, Any]] = {
        "SubmitJob": {"payload": b"1"},
        "ClaimJob": {"worker_id": "w"},
        "Heartbeat": {"job_id": "nope", "worker_id": "w"},
        "CompleteJob": {"job_id": "nope", "worker_id": "w"},
        "GetStats": {},
        "ListJobs": {},
    }
    for token in (None, "wrong"):
        client = Rpc(secured.url, codec, token)
        for name, fields in calls.items():
            error = await client.error(name, **fields)
            assert error.code == Code.UNAUTHENTICATED, (name, token)
            assert trioq_info(error).reason == "Unauthorized"
    for scope, token in TOKENS.items():
        client = Rpc(secured.url, codec, token)
        for name, fields in calls.items():
            error = await client.outcome(name, **fields)
            if scope in {str(s) for s in METHODS[name].scopes}:
                # past auth: only the lookups of the job "nope" may fail
                assert error is None or error.code == Code.NOT_FOUND, (scope, name, error)
            else:
                assert error is not None, (scope, name)
                assert error.code == Code.PERMISSION_DENIED, (scope, name)
                assert trioq_info(error).reason == "Forbidden"
                assert name in error.message


async def test_a_standby_answers_unavailable_with_the_leader(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    leader = await start_in_process(nursery, settings(tmp_path))
    standby = await start_in_process(nursery, settings(tmp_path))
    assert standby.broker.engine.role.value == "standby"
    for codec in CODECS:
        client = Rpc(standby.url, codec)
        for name in connect.RPCS:
            fields = {"payload": b"1"} if name == "SubmitJob" else {}
            error = await client.error(name, **fields)
            assert error.code == Code.UNAVAILABLE, name
            info = trioq_info(error)
            assert info.reason == "NotLeader"
            assert info.metadata["leader"] == leader.url
    assert (await Rpc(leader.url, "json")("GetStats")).total == 0


# ------------------------------------------------------ across the transports


async def test_submitted_over_connect_claimed_over_rest_completed_over_websocket(
    broker: InProcessBroker,
) -> None:
    submitted = await Rpc(broker.url, "proto")("SubmitJob", payload=b'{"k": [1]}', type="x")
    async with httpx.AsyncClient(base_url=broker.url) as http:
        claimed = (await http.post("/v1/jobs/claim", json={"workerId": "w", "types": ["x"]})).json()
        assert claimed["jobId"] == submitted.job_id
        assert claimed["payload"] == {"k": [1]}
        async with aconnect_ws(f"{broker.url}/v1/ws", http) as ws:
            params = {"jobId": submitted.job_id, "workerId": "w", "attempt": claimed["attempt"]}
            await ws.send_json({"id": 1, "method": "completeJob", "params": params})
            with trio.fail_after(20):
                reply = await ws.receive_json()
            assert reply == {"id": 1, "ok": True, "result": None}, reply
        record = (await http.get(f"/v1/jobs/{submitted.job_id}")).json()
        assert record["status"] == "completed"
    listed = await Rpc(broker.url, "json")("ListJobs")
    assert (listed.total, listed.completed_total) == (0, 1)
