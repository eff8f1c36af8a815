"""Shared pieces of the fuzzers (tests/test_fuzz_http.py, tests/test_fuzz_websocket.py).

- :data:`EXAMPLES`: how many examples each fuzz test runs; ``TRIOQ_FUZZ_EXAMPLES``
  in the environment raises it for an on-demand run (the default keeps CI quick).
- :func:`from_schema`: a hypothesis strategy for the JSON values a schema of
  ``/openapi.json`` describes (``$ref``, ``anyOf``, objects, arrays, strings with a
  pattern, bounded numbers); :func:`fuzzed` mixes those with arbitrary JSON, and
  with valid objects that lose a field or gain a wrong one.
- :class:`LiveBroker` / :func:`live_broker`: a real broker served by hypercorn on
  127.0.0.1, in a trio run of its own on a thread, so that sync hypothesis tests
  can drive it through a blocking :class:`httpx.Client`.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio
from hypothesis import strategies as st

from trioq._wire._limits import MAX_WAIT_MS
from trioq.broker._service import Broker
from trioq.broker._settings import BrokerSettings

EXAMPLES = int(os.environ.get("TRIOQ_FUZZ_EXAMPLES", "150"))
"""Examples per fuzz test (``TRIOQ_FUZZ_EXAMPLES`` overrides)."""

TOKEN = "fuzz-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LONGEST_WAIT_MS = 20
"""A generated ``waitMs`` is capped at this, so a long-poll claim cannot stall the run."""

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON value (integers beyond 64 bits included)."""


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def from_schema(
    schema: dict[str, Any], components: dict[str, Any], key: str = ""
) -> st.SearchStrategy[Any]:
    """Values that ``schema`` describes (a subset of JSON Schema: what pydantic emits)."""
    schema = _resolve(schema, components)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, components, key) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low = schema.get("minimum", schema.get("ge"))
        high = schema.get("maximum", schema.get("le"))
        if key == "waitMs":
            high = LONGEST_WAIT_MS
        return st.integers(min_value=low, max_value=high)
    if kind == "number":
        return st.floats(
            schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False
        )
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(
            min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 30), 30)
        )
    if kind == "array":
        return st.lists(
            from_schema(schema.get("items", {}), components),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 4), 4),
        )
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {
                name: from_schema(s, components, name)
                for name, s in properties.items()
                if name in required
            },
            optional={
                name: from_schema(s, components, name)
                for name, s in properties.items()
                if name not in required
            },
        )
    return json_values


def fuzzed(schema: dict[str, Any] | None, components: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Valid values of ``schema`` (half the time) and invalid ones: arbitrary JSON,
    and valid objects with a field dropped or replaced by any JSON value."""
    if schema is None:
        return json_values
    valid = from_schema(schema, components)

    @st.composite
    def broken(draw: st.DrawFn) -> Any:
        value = draw(valid)
        if isinstance(value, dict) and value:
            name = draw(st.sampled_from(sorted(value)))
            if draw(st.booleans()):
                del value[name]
            else:
                value[name] = draw(json_values)
        elif isinstance(value, dict):
            value[draw(st.text(max_size=8))] = draw(json_values)
        return value

    return st.one_of(valid, valid, broken(), json_values)


class Spec:
    """``/openapi.json`` with a short repr (hypothesis reprs a strategy's arguments
    when it reports a failure, and warns, an error here, past 30 kB)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.schemas: dict[str, Any] = document["components"]["schemas"]
        self.ws_methods: dict[str, Any] = document["paths"]["/v1/ws"]["get"]["x-websocket-methods"]

    def __repr__(self) -> str:
        return "Spec(/openapi.json)"


@dataclass(frozen=True)
class Repeat:
    """A big frame or body, ``chunk`` repeated ``times`` (after ``head``, before
    ``tail``), with a short repr: hypothesis reprs every failing example, and warns
    (an error here) about a repr over 30 kB."""

    chunk: bytes
    times: int
    head: bytes = b""
    tail: bytes = b""

    def data(self) -> bytes:
        return self.head + self.chunk * self.times + self.tail

    def __repr__(self) -> str:
        return f"Repeat({self.head[:40]!r} + {self.chunk!r} * {self.times} + {self.tail!r})"


def expand(value: bytes | str | Repeat | None) -> bytes | str | None:
    """A frame or body as it goes out (a :class:`Repeat` expanded)."""
    return value.data() if isinstance(value, Repeat) else value


@dataclass
class LiveBroker:
    """A broker on 127.0.0.1 (``url``) with token :data:`TOKEN`, and a client for it."""

    url: str
    client: httpx.Client

    def state(self) -> bytes:
        """The raw queue document as ``GET /state`` answers it."""
        answer = self.client.get("/state", headers=AUTH)
        assert answer.status_code == 200, answer.text
        return answer.content

    def status(self, job_id: str) -> object:
        """A job's status as ``GET /v1/jobs/<id>`` says it."""
        answer = self.client.get(f"/v1/jobs/{job_id}", headers=AUTH)
        assert answer.status_code == 200, answer.text
        return answer.json()["status"]

    def queue(self) -> tuple[bytes, int]:
        """The queue document without its commit envelope, and the envelope's ``seq``.

        A commit's envelope (``seq``, ``leader.leaseAt``) changes at every write,
        even one whose operations were all rejected (the engine writes such a batch
        anyway); everything else is the queue, which a rejection must leave as it was.
        """
        document = orjson.loads(self.state())
        seq: int = document.pop("seq")
        document["leader"].pop("leaseAt")
        return orjson.dumps(document), seq


def queue_diff(before: bytes, after: bytes) -> str:
    """What differs between two documents of :meth:`LiveBroker.queue`: each top-level
    field that changed, and for the job lists the entries that came, went or changed
    (an assertion's message: the whole documents are too long to read)."""
    old, new = orjson.loads(before), orjson.loads(after)
    lines = []
    for key in sorted(set(old) | set(new)):
        was, now = old.get(key), new.get(key)
        if was == now:
            continue
        if isinstance(was, list) and isinstance(now, list) and key in ("jobs", "dead", "finished"):
            by_id = {e.get("id"): e for e in was}
            for entry in now:
                if by_id.pop(entry.get("id"), None) != entry:
                    lines.append(f"{key} + {orjson.dumps(entry).decode()}")
            lines += [f"{key} - {orjson.dumps(e).decode()}" for e in by_id.values()]
        else:
            lines.append(f"{key}: {was!r} -> {now!r}")
    return "\n".join(lines)


def timers_fired(before: bytes, after: bytes) -> bool:
    """Whether the leader's own timers changed the queue between two documents (of
    :meth:`LiveBroker.queue`): a periodic job fired (a schedule's ``nextAt`` moved) or
    a job's TTL ran out (a new dead job of reason ``deadline``). Fuzzed requests set
    up schedules and TTLs, and these fire on the clock, whatever request is in flight:
    a request's answer cannot say whether it changed the queue then."""
    old, new = orjson.loads(before), orjson.loads(after)

    def next_at(document: dict[str, Any]) -> dict[str, object]:
        return {s["name"]: s.get("nextAt") for s in document.get("schedules", ())}

    if next_at(old) != next_at(new):
        return True
    was_dead = {job["id"] for job in old["dead"]}
    return any(job["id"] not in was_dead and job.get("reason") == "deadline" for job in new["dead"])


def finishes_a_cancel(error: object) -> bool:
    """Whether ``error`` (an error body) is the one rejection that changes the queue,
    by design: a call by the holder of a job whose cancel was requested finishes the
    job as cancelled, and answers LeaseLost "was cancelled"."""
    return (
        isinstance(error, dict)
        and error.get("_tag") == "LeaseLost"
        and str(error.get("message", "")).endswith("was cancelled")
    )


@contextmanager
def live_broker(directory: Path) -> Iterator[LiveBroker]:
    """Serve a broker (file storage in ``directory``) from a thread of its own.

    Leases and the leader's heartbeat last an hour, so that nothing but a request
    changes the queue document while a fuzzer runs.
    """
    settings = BrokerSettings(
        host="127.0.0.1",
        port=0,
        data_dir=str(directory),
        token=TOKEN,
        group_commit_interval_ms=0,
        job_heartbeat_timeout_ms=3_600_000,
        broker_heartbeat_interval_ms=3_600_000,
        broker_heartbeat_timeout_ms=7_200_000,
        max_payload_bytes=1024,
        max_request_bytes=16 * 1024,
    )
    started: queue.Queue[tuple[str, trio.lowlevel.TrioToken, trio.CancelScope] | BaseException] = (
        queue.Queue()
    )

    async def serve() -> None:
        try:
            async with trio.open_nursery() as nursery:
                url = await nursery.start(Broker(settings).run)
                started.put((url, trio.lowlevel.current_trio_token(), nursery.cancel_scope))
        except BaseException as exc:
            started.put(exc)
            raise

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    got = started.get(timeout=30)
    if isinstance(got, BaseException):
        raise got
    url, token, scope = got
    try:
        # past the longest long poll a fuzzed request may ask for (waitMs): a client
        # that gave up first would leave the broker serving a claim that later takes
        # a job in the middle of another request's before/after comparison
        with httpx.Client(base_url=url, timeout=MAX_WAIT_MS / 1000 + 20) as client:
            yield LiveBroker(url, client)
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(30)
