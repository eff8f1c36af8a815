"""Fuzz the REST API from the broker's own ``/openapi.json`` against a live broker
(hypercorn on 127.0.0.1, a token, file storage).

Every operation of the document gets generated requests: path ids (real jobs of a
preloaded queue, ids that fit the pattern, junk), query strings, bodies (valid from
the schema, broken, any JSON, raw bytes, none) and tokens (right, wrong, none). For
each request: the status is below 500, and when it is 400 or more the queue
document (``GET /state``, less its commit envelope ``seq``/``leader.leaseAt``: see
:meth:`_fuzz.LiveBroker.queue`) is byte-identical to the one before (but after LeaseLost "was cancelled", the one
rejection that changes the queue by design: the job must then be cancelled). The run prints
how many rejected requests still cost a commit (an envelope-only write).

``TRIOQ_FUZZ_EXAMPLES`` sets the number of requests (default: a quick CI run).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _fuzz import (
    AUTH,
    EXAMPLES,
    TOKEN,
    LiveBroker,
    Repeat,
    Spec,
    expand,
    finishes_a_cancel,
    fuzzed,
    json_values,
    live_broker,
    queue_diff,
    timers_fired,
)

JOB_IDS = [f"job-{n}" for n in range(8)]
"""The preloaded jobs: job-0..1 claimed by w1, job-2..3 dead, job-4 completed, the rest queued."""


def preload(broker: LiveBroker) -> None:
    post = broker.client.post
    for job_id in JOB_IDS:
        assert (
            post(
                "/v1/jobs", json={"id": job_id, "payload": {"n": job_id}}, headers=AUTH
            ).status_code
            == 200
        )
    claimed = post("/v1/jobs/claim", json={"workerId": "w1", "max": 5}, headers=AUTH).json()
    assert [job["jobId"] for job in claimed["jobs"]] == JOB_IDS[:5]
    for job_id in JOB_IDS[2:4]:
        body = {"workerId": "w1", "error": "x", "final": True}
        assert post(f"/v1/jobs/{job_id}/fail", json=body, headers=AUTH).json()["status"] == "dead"
    assert (
        post(f"/v1/jobs/{JOB_IDS[4]}/complete", json={"workerId": "w1"}, headers=AUTH).status_code
        == 204
    )


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBroker]:
    with live_broker(tmp_path_factory.mktemp("fuzz-http")) as live:
        preload(live)
        yield live


@pytest.fixture(scope="module")
def document(broker: LiveBroker) -> dict[str, Any]:
    answer = broker.client.get("/openapi.json")
    assert answer.status_code == 200
    doc: dict[str, Any] = answer.json()
    return doc


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every (method, path template, operation) of the document but the WebSocket."""
    return [
        (method.upper(), path, op)
        for path, ops in document["paths"].items()
        for method, op in ops.items()
        if op.get("operationId") != "websocket"
    ]


path_ids = st.one_of(
    st.sampled_from(JOB_IDS),
    st.from_regex(r"[A-Za-z0-9._:\-]{1,128}", fullmatch=True),
    st.text(min_size=1, max_size=140),
).map(lambda text: quote(text, safe=""))

headers = st.one_of(
    st.just(AUTH),
    st.just(AUTH),
    st.just(AUTH),
    st.just({}),
    st.sampled_from(
        [
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": "Bearer"},
            {"Authorization": TOKEN},
        ]
    ),
)


@st.composite
def requests(
    draw: st.DrawFn, spec: Spec
) -> tuple[str, str, dict[str, str], bytes | None, dict[str, str]]:
    """One request: (method, url, query, body bytes or None, headers)."""
    components = spec.schemas
    method, template, op = draw(st.sampled_from(operations(spec.document)))

    url = template.replace("{id}", draw(path_ids)) if "{id}" in template else template
    query: dict[str, str] = {}
    for parameter in op.get("parameters", ()):
        if parameter["in"] == "query" and draw(st.booleans()):
            value = draw(fuzzed(parameter["schema"], components) | st.text(max_size=20))
            query[parameter["name"]] = value if isinstance(value, str) else _dumps(value).decode()
    body: bytes | None = None
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    shape = draw(st.sampled_from(["schema", "schema", "json", "bytes", "none"]))
    if shape == "schema" and content is not None:
        body = _dumps(draw(fuzzed(content["schema"], components)))
    elif shape == "json" or (shape == "schema" and content is None):
        body = _dumps(draw(json_values))
    elif shape == "bytes":
        body = draw(
            st.binary(max_size=64)
            | st.just(Repeat(b"{", 2000))
            | st.just(Repeat(b" ", 20_000))
            | st.just(Repeat(b"x", 20_000, b'{"payload":"', b'"}'))
        )
    head = dict(draw(headers))
    if body is not None:
        head["Content-Type"] = draw(
            st.sampled_from(["application/json", "application/json", "text/plain"])
        )
    return method, url, query, body, head


def _error(answer: httpx.Response) -> object:
    try:
        return answer.json()
    except ValueError:
        return None


def _dumps(value: Any) -> bytes:
    """``value`` as JSON, integers beyond 64 bits written as Python writes them."""
    try:
        return orjson.dumps(value)
    except TypeError:
        import json

        return json.dumps(value).encode()


@pytest.mark.timeout(0)
def test_no_request_is_a_server_error_and_rejections_change_nothing(
    broker: LiveBroker, document: dict[str, Any]
) -> None:
    statuses: dict[int, int] = {}
    empty_commits = [0]
    timer_examples = [0]

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(request=requests(Spec(document)))
    def check(request: tuple[str, str, dict[str, str], bytes | None, dict[str, str]]) -> None:
        method, url, query, body, head = request
        before, seq = broker.queue()
        answer = broker.client.request(
            method, url, params=query, content=expand(body), headers=head
        )
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        assert answer.status_code < 500, (
            method,
            url,
            query,
            body,
            head,
            answer.status_code,
            answer.text,
        )
        if answer.status_code >= 400:
            after, seq_after = broker.queue()
            if finishes_a_cancel(_error(answer)):
                job_id = unquote(url.split("/")[3])
                assert broker.status(job_id) == "cancelled", (method, url, answer.text)
                return
            if after != before and timers_fired(before, after):
                timer_examples[0] += 1  # the clock changed the queue: inconclusive
                return
            assert after == before, (
                method, url, query, body, answer.status_code, answer.text,
                queue_diff(before, after),
            )  # fmt: skip
            empty_commits[0] += seq_after != seq

    check()
    print(
        f"HTTP fuzz: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}, "
        f"{empty_commits[0]} rejected requests committed an unchanged queue, "
        f"{timer_examples[0]} rejections left unjudged (a schedule or TTL fired meanwhile)"
    )
    assert any(200 <= status < 300 for status in statuses)
    assert any(400 <= status < 500 for status in statuses)
