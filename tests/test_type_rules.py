"""Per-type rules enforced by the broker at claim time: pause and resume, at most N
in progress across workers, at most R claims a second. The queue model in ms, the
API in virtual time, and three worker processes against one real broker."""

from __future__ import annotations

import random
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from pydantic import ValidationError

import trioq
from _waits import wait_for
from _worker_proc import broker_process, worker_process
from trioq._errors import BrokerProtocolError
from trioq._wire import NewJob, TypeRuleRequest
from trioq.core._changes import apply_record, encode_record
from trioq.core._state import QueueState
from trioq.testing import open_test_broker

T = 1_700_000_000_000


def rule(**fields: object) -> TypeRuleRequest:
    return TypeRuleRequest.model_validate(fields)


def filled(*types: str, each: int = 5) -> QueueState:
    state = QueueState(rng=random.Random(3))
    state.enqueue([NewJob(i, type=t) for t in types for i in range(each)], T)
    return state


def claimed_types(state: QueueState, now: int, max_jobs: int = 100) -> list[str]:
    return [c.type for c in state.claim("w", now, max_jobs=max_jobs)]


def test_a_paused_type_is_skipped_until_resumed() -> None:
    state = filled("a", "b")
    state.put_type_rule(rule(type="a", paused=True))
    assert claimed_types(state, T) == ["b"] * 5
    assert claimed_types(state, T, 1) == []
    assert state.claim("w", T, types=["a"]) == []
    state.put_type_rule(rule(type="a", paused=False))
    assert "a" not in state.type_rules  # an empty rule is not kept
    assert claimed_types(state, T) == ["a"] * 5


def test_max_in_progress_holds_until_a_job_ends() -> None:
    state = filled("a", "b")
    state.put_type_rule(rule(type="a", maxInProgress=2))
    got = state.claim("w", T, max_jobs=100)
    assert sorted(c.type for c in got) == ["a", "a", "b", "b", "b", "b", "b"]
    assert claimed_types(state, T) == []
    first_a = next(c for c in got if c.type == "a")
    state.complete(first_a.id, "w", T)
    assert claimed_types(state, T) == ["a"]
    # a field left out keeps its value; null clears it
    state.put_type_rule(rule(type="a", paused=False))
    assert state.type_rules["a"].max_in_progress == 2
    state.put_type_rule(rule(type="a", maxInProgress=None))
    assert claimed_types(state, T) == ["a", "a"]


def test_max_per_second_is_a_token_bucket() -> None:
    state = filled("a", each=20)
    state.put_type_rule(rule(type="a", maxPerSecond=4))
    assert len(claimed_types(state, T)) == 4  # a second's worth at once
    assert claimed_types(state, T + 200) == []
    at = state.next_unblock_at(T + 200)
    assert at is not None
    assert T + 249 <= at <= T + 251  # a quarter second after the burst
    assert claimed_types(state, at) == ["a"]
    assert len(claimed_types(state, T + 2_000)) == 4  # refilled, capped at 4


def test_rules_are_stored_and_replayed() -> None:
    state = filled("a")
    state.track_changes()
    state.put_type_rule(rule(type="a", paused=True, maxPerSecond=2.5))
    record = encode_record(
        state, state.take_changes(), seq=1, epoch=1, broker_id="b", url="u", lease_at=T,
        released=False,
    )  # fmt: skip
    replayed = filled("a")
    apply_record(replayed, record)
    decoded = QueueState.decode(state.encode(), limits=state.limits, rng=random.Random(1))
    for copy in (replayed, decoded):
        stored = copy.type_rules["a"]
        assert (stored.paused, stored.max_in_progress, stored.max_per_second) == (True, None, 2.5)
        assert copy.claim("w", T) == []
    assert b'"types"' not in filled("a").encode()


def test_bad_rules_are_refused() -> None:
    for fields, where in (
        ({"type": "a", "maxInProgress": 0}, "maxInProgress"),
        ({"type": "a", "maxPerSecond": -1}, "maxPerSecond"),
        ({}, "type"),
    ):
        # the wire's schema (a 400 through the API)
        with pytest.raises(ValidationError, match=where):
            TypeRuleRequest.model_validate(fields)


async def test_the_api_pauses_resumes_and_limits(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_broker() as broker:
        client = broker.client
        await client.submit_many([trioq.JobSpec("mail", i) for i in range(3)])
        await client.pause("mail")
        assert await client.claim("w", max=5) == []
        [listed] = await client.type_rules()
        assert listed == {"type": "mail", "paused": True, "unclaimed": 3, "inProgress": 0}
        await client.resume("mail")
        await client.set_type_rule("mail", max_in_progress=1)
        assert len(await client.claim("w", max=5)) == 1
        with pytest.raises(BrokerProtocolError):
            await client.set_type_rule("mail", max_per_second=0)
        producer = await client._http.put(
            f"{trioq.testing.TEST_URL}/v1/types", json={"type": "mail", "paused": "yes"}
        )
        assert producer.status_code == 400


async def test_a_limit_holds_across_three_worker_processes(tmp_path: Path) -> None:
    """Three worker processes of four slots each, ``slow`` limited to 2 in progress:
    the handlers' own start and end times never overlap more than two at a time."""
    async with (
        broker_process(tmp_path, data_dir=tmp_path / "data") as broker,
        trioq.Client(broker.url) as client,
        AsyncExitStack() as stack,
    ):
        await client.set_type_rule("slow", max_in_progress=2)
        ids = await client.submit_many([trioq.JobSpec("slow", i) for i in range(12)])
        for n in range(3):
            proc = await stack.enter_async_context(
                worker_process(tmp_path, broker.url, target="_limited_jobs:worker", name=f"w{n}")
            )
            await proc.ready()

        async def all_done() -> bool:
            return bool((await client.stats())["completedTotal"] == 12)

        await wait_for(all_done, within=60, what="12 limited jobs completed")
        spans = [await client.result(job_id) for job_id in ids]
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2, spans
    assert peak == 2  # the limit, not a single slot, was the bound
