"""The wire schema (``trioq._wire``): one set of limits, agreed by the HTTP API, the
queue model and the client; validation errors that name the field; ``null`` as
absent on the wire; sealed jobs checked once; one definition of the job records."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import orjson
import pytest
import trio

import trioq
import trioq.client
from trioq import BrokerProtocolError
from trioq._wire import (
    MAX_DELAY_MS,
    MAX_PAYLOAD_DEPTH,
    ClaimedJob,
    ClaimRequest,
    FailReport,
    FailRequest,
    HeldJob,
    JobReport,
    ListQuery,
    NewJob,
    adapter,
    checked_job,
    encode_payload,
    parse,
    parse_batch,
    parse_bulk,
    parse_exchange,
    parse_new_job,
)
from trioq.core._state import Limits, QueueState
from trioq.testing import TEST_URL, open_test_broker

DAY_MS = 86_400_000
T = 1_700_000_000_000


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth - 1):
        value = [value]
    return [value] if depth else value


def rejected(model: Any, data: Any) -> str:
    with pytest.raises(BrokerProtocolError) as info:
        parse(model, data)
    return info.value.message


# ------------------------------------------------------------------- one set of limits


def test_the_queue_model_takes_its_limits_from_the_wire() -> None:
    limits = Limits()
    assert limits.max_delay_ms == MAX_DELAY_MS == 365 * DAY_MS
    assert limits.max_attempts_limit == 1000


async def test_retry_and_delay_limits_agree_over_http(autojump_clock: trio.abc.Clock) -> None:
    """``retryInMs`` and ``delayMs`` go up to 365 days everywhere (the HTTP API used to
    stop ``retryInMs`` at 7 days while the model took 365)."""
    async with (
        open_test_broker() as broker,
        httpx.AsyncClient(transport=broker.transport, base_url=TEST_URL) as http,
    ):
        for n, delay in enumerate((30 * DAY_MS, MAX_DELAY_MS)):
            submitted = await http.post(
                "/v1/jobs", json={"payload": n, "id": f"d{n}", "delayMs": delay}
            )
            assert submitted.status_code == 200, submitted.text
        too_far = await http.post("/v1/jobs", json={"payload": 1, "delayMs": MAX_DELAY_MS + 1})
        assert too_far.status_code == 400
        assert "delayMs" in too_far.json()["message"]
        await http.post("/v1/jobs", json={"payload": 1, "id": "r"})
        claimed = await http.post("/v1/jobs/claim", json={"workerId": "w", "types": ["default"]})
        assert claimed.json()["jobId"] == "r"
        for retry, status in ((MAX_DELAY_MS + 1, 400), (30 * DAY_MS, 200)):
            failed = await http.post(
                "/v1/jobs/r/fail", json={"workerId": "w", "error": "x", "retryInMs": retry}
            )
            assert failed.status_code == status, failed.text
        assert (await http.get("/v1/jobs/r")).json()["readyAt"] >= T + 30 * DAY_MS


async def test_worker_ids_are_1_to_256_characters_everywhere(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The HTTP API refused a workerId over 256 characters; the model took any text."""
    state = QueueState()
    state.enqueue([NewJob(1, id="a"), NewJob(2, id="b")], T)
    for bad in ("", "w" * 257):
        with pytest.raises(BrokerProtocolError, match="workerId"):
            state.claim(bad, T)
    assert [c.id for c in state.claim("w" * 256, T)] == ["a"]
    async with (
        open_test_broker() as broker,
        httpx.AsyncClient(transport=broker.transport, base_url=TEST_URL) as http,
    ):
        await http.post("/v1/jobs", json={"payload": 1})
        too_long = await http.post("/v1/jobs/claim", json={"workerId": "w" * 257})
        assert too_long.status_code == 400
        assert (await http.post("/v1/jobs/claim", json={"workerId": "w" * 256})).json()["jobId"]
        with pytest.raises(BrokerProtocolError, match="workerId"):
            await broker.client.claim("w" * 257)


# -------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (ClaimRequest, {}, "workerId is required"),
        (ClaimRequest, {"workerId": 5}, "workerId must be a string of 1-256 characters"),
        (ClaimRequest, {"workerId": "w", "max": True}, "max must be an integer from 1 to 10000, not a boolean"),
        (ClaimRequest, {"workerId": "w", "max": "2"}, "max must be an integer from 1 to 10000"),
        (ClaimRequest, {"workerId": "w", "waitMs": 30_001}, "waitMs must be an integer from 0 to 30000"),
        (ClaimRequest, {"workerId": "w", "types": [1]}, "types must be a non-empty list of strings"),
        (ClaimRequest, {"workerId": "w", "types": []}, "types must be a non-empty list of strings"),
        (HeldJob, {"workerId": "w", "attempt": 0}, "attempt must be an integer from 1 to 1000000"),
        (FailRequest, {"workerId": "w", "final": 1}, "final must be a boolean"),
        (FailRequest, {"workerId": "w", "retryInMs": -1}, "retryInMs must be an integer from 0 to 31536000000"),
        (ListQuery, {"limit": "0"}, "limit must be an integer from 1 to 1000"),
        (ListQuery, {"cursor": "abc"}, "cursor must be a value from a previous nextCursor"),
        (ClaimRequest, [], "the body must be an object"),
    ],
)  # fmt: skip
def test_validation_errors_name_the_field_and_its_rule(model: Any, data: Any, message: str) -> None:
    assert rejected(model, data).startswith(message)


def test_batch_errors_name_the_item() -> None:
    cases: list[tuple[Any, str]] = [
        ({"jobs": [{"payload": 1}, {"payload": 2, "maxAttempts": 0}]}, "jobs[1].maxAttempts must be"),
        ({"jobs": [{"payload": 1}, {"payload": 2, "id": "a b"}]}, "jobs[1].id must be 1-128 characters"),
        ({"jobs": [{"payload": 1}, 7]}, "jobs[1] must be an object"),
        ({"jobs": [{"type": "t"}]}, "jobs[0].payload is required"),
        ({"jobs": []}, "jobs must be a list of 1 to 10000 jobs"),
        ({"jobs": [{"payload": nested(MAX_PAYLOAD_DEPTH + 1)}]}, "jobs[0].payload is nested more"),
    ]  # fmt: skip
    for data, message in cases:
        with pytest.raises(BrokerProtocolError) as info:
            parse_batch(data)
        assert info.value.message.startswith(message), info.value.message


# ------------------------------------------------------------- per-item requests


def test_a_bulk_is_parsed_item_by_item_only_when_an_item_is_bad() -> None:
    good = [{"payload": {"n": 1}, "id": "a", "type": None}, {"payload": [2], "maxAttempts": 2}]
    whole = parse_bulk({"jobs": good})
    assert whole.values == [NewJob({"n": 1}, id="a"), NewJob([2], max_attempts=2)]
    assert whole.rejected_ids == {}
    bad = [
        {"payload": 1, "id": "b", "delayMs": -1},
        {"payload": 1, "id": "not ok"},
        {"payload": nested(MAX_PAYLOAD_DEPTH + 1), "id": "deep"},
    ]
    items = parse_bulk({"jobs": [*good, *bad]})
    # the good items come out the same, sealed, either way
    assert items.values[:2] == whole.values
    for job in (*whole.values, *items.values[:2]):
        assert isinstance(job, NewJob)
        assert job.payload_json is not None
    messages = [str(v) for v in items.values[2:]]
    assert messages == [
        "jobs[2]: delayMs must be an integer from 0 to 31536000000 (365 days)",
        "jobs[3]: id must be 1-128 characters of A-Z a-z 0-9 . _ : -",
        "jobs[4]: payload is nested more than 64 levels deep",
    ]
    assert all(isinstance(v, BrokerProtocolError) for v in items.values[2:])
    assert items.rejected_ids == {2: "b", 3: None, 4: "deep"}


def test_an_exchange_is_parsed_report_by_report_only_when_a_report_is_bad() -> None:
    body: dict[str, Any] = {
        "workerId": "w",
        "heartbeat": [{"jobId": "a", "attempt": 1}],
        "fail": [{"jobId": "b", "error": "e" * 9000, "retryInMs": 5, "final": None}],
        "claim": {"types": ["t"], "max": 3, "waitMs": None},
    }
    whole = parse_exchange(body)
    assert whole.worker_id == "w"
    assert whole.heartbeat.values == [JobReport("a", 1)]
    [fail] = whole.fail.values
    assert isinstance(fail, FailReport)
    assert (fail.job_id, fail.retry_in_ms, fail.final, len(fail.error or "")) == (
        "b",
        5,
        None,
        8193,
    )
    assert (whole.complete.values, whole.release.values) == ([], [])
    assert whole.claim is not None
    assert (whole.claim.types, whole.claim.max, whole.claim.wait_ms) == (["t"], 3, None)
    items = parse_exchange(
        {**body, "release": [{"jobId": "c"}, {"jobId": "c", "attempt": True}, {"jobId": 7}]}
    )
    assert (items.heartbeat.values, items.fail.values) == (whole.heartbeat.values, [fail])
    assert items.claim == whole.claim
    assert items.release.values[0] == JobReport("c")
    assert [str(v) for v in items.release.values[1:]] == [
        "release[1]: attempt must be an integer from 1 to 1000000, not a boolean",
        "release[2]: jobId must be 1-128 characters of A-Z a-z 0-9 . _ : -",
    ]
    assert items.release.rejected_ids == {1: "c", 2: None}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"jobs": [{"payload": 1}, "x"]}, "jobs[1] must be an object"),
        ({"jobs": []}, "jobs must be a list of 1 to 10000 jobs"),
        ({"workerId": "w", "heartbeat": "x"}, "heartbeat must be a list of at most 10000 reports"),
        ({"workerId": "w", "complete": [{"jobId": "a"}, 1]}, "complete[1] must be an object"),
        ({"workerId": "w", "claim": {"max": 10001}}, "claim.max must be an integer from 1 to 10000"),
        ({"complete": [{"jobId": "a"}]}, "workerId is required"),
    ],
)  # fmt: skip
def test_a_per_item_request_of_the_wrong_shape_is_refused_whole(data: Any, message: str) -> None:
    parser = parse_bulk if "jobs" in data else parse_exchange
    with pytest.raises(BrokerProtocolError) as info:
        parser(data)
    assert info.value.message == message


def test_several_problems_are_counted() -> None:
    message = rejected(ClaimRequest, {"workerId": "", "max": 0, "waitMs": -1})
    assert message == "workerId must be a string of 1-256 characters (and 2 more problems)"


# --------------------------------------------------------------- null and unknown


def test_null_is_absent_on_the_wire_but_not_in_python() -> None:
    job = parse_new_job(
        {"payload": None, "type": None, "id": None, "maxAttempts": None, "delayMs": None}
    )
    assert (job.payload, job.type, job.id, job.max_attempts, job.delay_ms) == (
        None,
        "default",
        None,
        None,
        0,
    )
    assert parse(FailRequest, {"workerId": "w", "error": None, "final": None}).error is None
    # a library caller's None is a wrong value, not an absent one
    with pytest.raises(BrokerProtocolError, match=r"^job: type must be"):
        QueueState().enqueue([NewJob(1, type=None)], T)  # type: ignore[arg-type]


def test_unknown_fields_are_ignored_and_snake_case_is_not_a_wire_name() -> None:
    job = parse_new_job({"payload": 1, "max_attempts": 0, "extra": {"x": 1}})
    assert job.max_attempts is None


def test_errors_are_cut_not_refused() -> None:
    long = parse(FailRequest, {"workerId": "w", "error": "e" * 10_000}).error
    assert long is not None
    assert len(long) == 8193
    assert long.endswith("…")


# ------------------------------------------------------------------- sealed jobs


def test_a_sealed_job_is_taken_as_it_is() -> None:
    job = parse_new_job({"payload": {"k": [1, 2]}, "id": "a"})
    assert job.payload_json == b'{"k":[1,2]}'
    assert checked_job(job) is job
    # dataclasses.replace builds a new, unsealed job: it is checked again
    copy = dataclasses.replace(job, max_attempts=0)
    assert copy.payload_json is None
    with pytest.raises(BrokerProtocolError, match="maxAttempts"):
        checked_job(copy)


def test_a_library_job_is_checked_and_sealed_by_the_queue_model() -> None:
    state = QueueState()
    [result] = state.enqueue([NewJob({"n": 1}, type="t", id="lib")], T)
    assert state.jobs["lib"].payload_json == b'{"n":1}'
    assert not result.duplicate
    with pytest.raises(BrokerProtocolError, match=r"^job: payload is not JSON"):
        state.enqueue([NewJob(float("nan"))], T)


def test_payload_depth_is_counted_in_containers_not_brackets() -> None:
    assert parse_new_job({"payload": nested(MAX_PAYLOAD_DEPTH)}).payload_json is not None
    brackets = "[" * 500 + "{" * 500
    assert parse_new_job({"payload": {"s": brackets, "l": [brackets] * 3}}).payload_json
    with pytest.raises(BrokerProtocolError, match="nested more than 64"):
        parse_new_job({"payload": {"deep": nested(MAX_PAYLOAD_DEPTH)}})


# ------------------------------------------------------------------ one definition


def test_the_client_names_are_the_wire_records() -> None:
    assert trioq.Claimed is ClaimedJob
    assert trioq.client.encode_payload is encode_payload
    claimed = ClaimedJob("j", "t", {"p": 1}, 2, 30_000)
    wire = orjson.dumps(claimed.to_json())
    assert orjson.loads(wire) == {
        "jobId": "j",
        "type": "t",
        "payload": {"p": 1},
        "attempt": 2,
        "leaseMs": 30_000,
    }
    assert adapter(ClaimedJob).validate_json(wire) == claimed


def test_a_new_job_round_trips_through_its_wire_form() -> None:
    job = parse_new_job(
        {"payload": [1, "x"], "type": "t", "id": "a", "maxAttempts": 4, "delayMs": 9}
    )
    again = parse_new_job(orjson.loads(orjson.dumps(job.to_json())))
    assert again == job


async def test_the_client_refuses_what_the_broker_would_without_a_round_trip() -> None:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    transport = httpx.MockTransport(record)
    async with trioq.Client(TEST_URL, transport=transport, retry_deadline=0) as client:
        with pytest.raises(BrokerProtocolError, match=r"^jobs\[1\]: id must be"):
            await client.submit_many([trioq.JobSpec("t", 1), trioq.JobSpec("t", 2, id="a b")])
        with pytest.raises(BrokerProtocolError, match=r"^job: delayMs must be"):
            await client.submit("t", 1, delay=366 * 86_400)
        with pytest.raises(BrokerProtocolError, match="retryInMs"):
            await client.fail("j", "w", "x", retry_in=-1)
        with pytest.raises(ValueError, match="NaN"):
            await client.submit("t", float("nan"))
    assert sent == []
