"""Fuzz the WebSocket JSON-RPC endpoint (``/v1/ws``) of a live broker (hypercorn on
127.0.0.1, a token, file storage, a preloaded queue).

Two generated streams over one socket: calls of every method of ``METHODS`` (params
valid from the schema ``/openapi.json`` gives them, broken, or any JSON; ids of
every JSON type) and malformed frames (binary frames, invalid JSON, non-object
JSON, unknown methods, frames over the broker's size limit). For each message:
the answer is one reply ``{id, ok, ...}`` whose error, if any, is never an
``InternalError``; the socket is never dropped except by the documented close
1009 (a frame over the limit); and a rejected call leaves the queue document as
it was (less its commit envelope: :meth:`_fuzz.LiveBroker.queue`).

``TRIOQ_FUZZ_EXAMPLES`` sets the number of examples per test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import orjson
import pytest
from httpx_ws import WebSocketDisconnect, WebSocketSession, connect_ws
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _fuzz import (
    AUTH,
    EXAMPLES,
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
from test_fuzz_http import JOB_IDS, preload
from trioq._wire._limits import MAX_WAIT_MS

REPLY_TIMEOUT = MAX_WAIT_MS / 1000 + 20
"""Seconds a reply may take (past the longest long poll a call may ask for): only a
hang reaches it."""

TOO_BIG = 1009
"""The close code for a frame over ``max_request_bytes`` (documented, and tested in
tests/test_websocket.py); any other close fails the fuzzer."""

fuzz_settings = settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


class Socket:
    """One authenticated socket to the broker (on a client of its own, apart from the
    one that reads ``/state``), opened again after a 1009 close."""

    def __init__(self, broker: LiveBroker) -> None:
        self.broker = broker
        self.stack = ExitStack()
        self.session: WebSocketSession | None = None

    def open(self) -> WebSocketSession:
        if self.session is None:
            client = self.stack.enter_context(httpx.Client(timeout=REPLY_TIMEOUT))
            self.session = self.stack.enter_context(
                connect_ws(
                    f"{self.broker.url}/v1/ws",
                    client,
                    headers=dict(AUTH),  # httpx-ws adds its handshake headers to this dict
                    max_message_size_bytes=1 << 20,
                )
            )
        return self.session

    def exchange(self, message: str | bytes | Repeat) -> dict[str, Any] | None:
        """Send ``message``; its reply, or ``None`` if the broker closed with 1009."""
        frame = expand(message)
        assert frame is not None
        session = self.open()
        try:
            if isinstance(frame, bytes):
                session.send_bytes(frame)
            else:
                session.send_text(frame)
            text = session.receive_text(timeout=REPLY_TIMEOUT)
        except WebSocketDisconnect as exc:
            closed = exc
        else:
            reply = orjson.loads(text)
            assert isinstance(reply, dict), reply
            return reply
        self.stack.close()
        self.stack = ExitStack()
        self.session = None
        assert closed.code == TOO_BIG, (closed.code, closed.reason, frame[:200])
        assert len(frame) > self.broker_limit, "closed 1009 on a frame under the limit"
        return None

    broker_limit = 16 * 1024

    def close(self) -> None:
        self.stack.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBroker]:
    with live_broker(tmp_path_factory.mktemp("fuzz-ws")) as live:
        preload(live)
        yield live


@pytest.fixture
def socket(broker: LiveBroker) -> Iterator[Socket]:
    sock = Socket(broker)
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def spec(broker: LiveBroker) -> Spec:
    """The broker's ``/openapi.json`` (its WebSocket methods and schemas)."""
    return Spec(broker.client.get("/openapi.json").json())


echoed_ids = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text(max_size=10)
ids = st.one_of(
    echoed_ids,
    echoed_ids,
    echoed_ids,
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
"""Request ids of every JSON type (only strings, numbers and null are echoed)."""


def _echo(request_id: Any) -> Any:
    if isinstance(request_id, bool) or not isinstance(request_id, str | int | float):
        return None
    return request_id


def check_reply(reply: dict[str, Any], request_id: Any) -> None:
    """One well-formed reply to a request with ``request_id``, never a server error."""
    assert reply["id"] == _echo(request_id), reply
    if reply["ok"] is True:
        assert set(reply) == {"id", "ok", "result"}, reply
    else:
        assert reply["ok"] is False, reply
        assert set(reply) == {"id", "ok", "error"}, reply
        assert reply["error"]["_tag"] != "InternalError", reply
        assert isinstance(reply["error"]["message"], str), reply


@st.composite
def calls(draw: st.DrawFn, spec: Spec) -> dict[str, Any]:
    """A JSON-RPC message for a WebSocket method of ``spec`` (or an unknown one)."""
    table, components = spec.ws_methods, spec.schemas
    known = st.sampled_from(sorted(table))
    name = draw(st.one_of(known, known, known, st.text(max_size=12)))
    message: dict[str, Any] = {"method": name}
    if draw(st.integers(0, 9)):
        message["id"] = draw(ids)
    schema = table[name]["params"] if name in table else None
    if draw(st.integers(0, 5)):
        params = draw(fuzzed(schema, components))
        if isinstance(params, dict) and "jobId" in params and draw(st.booleans()):
            params["jobId"] = draw(st.sampled_from(JOB_IDS))
        if isinstance(params, dict) and "workerId" in params and draw(st.booleans()):
            params["workerId"] = "w1"
        message["params"] = params
    return message


def _encoded(value: Any) -> bytes:
    """``value`` as JSON (``[]`` for what orjson cannot write: integers beyond 64 bits)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return b"[]"


malformed = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    st.sampled_from(["", "{", "[]", "null", "1", '"x"', "{}", '{"id":1}', '{"method":1}',
                     '{"id":1,"method":"getStats","params":[]}', '{"id":1,"method":"getStats","params":1}',
                     '{"id":1e999,"method":"getStats"}', Repeat(b" ", 20_000, b'{"id":1,"method":"getStats"}')]),
    json_values.map(_encoded),
    st.integers(16 * 1024 - 64, 24 * 1024).map(
        lambda n: Repeat(b"x", n, b'{"id":1,"method":"submitJob","params":{"payload":"', b'"}}')),
)  # fmt: skip
"""Frames that are not a well-formed call: any bytes or text, JSON that is no
message, and frames around and over the 16 KiB limit."""


@pytest.mark.timeout(0)
def test_generated_calls(broker: LiveBroker, socket: Socket, spec: Spec) -> None:
    outcomes = {"ok": 0, "rejected": 0}
    cancels_finished = [0]

    @fuzz_settings
    @given(message=calls(spec))
    def check(message: dict[str, Any]) -> None:
        frame, decodable = _frame(message)
        before, _ = broker.queue()
        reply = socket.exchange(frame)
        assert reply is not None or len(frame) > socket.broker_limit
        if reply is None:
            return
        check_reply(reply, message.get("id") if decodable else None)
        outcomes["ok" if reply["ok"] else "rejected"] += 1
        if reply["ok"]:
            return
        if finishes_a_cancel(reply["error"]):
            assert broker.status(message["params"]["jobId"]) == "cancelled", (message, reply)
            cancels_finished[0] += 1
        else:
            after = broker.queue()[0]
            if after != before and timers_fired(before, after):
                return  # a TTL ran out meanwhile: this rejection cannot be judged
            assert after == before, (message, reply, queue_diff(before, after))

    check()
    print(f"WebSocket calls: {outcomes}, {cancels_finished[0]} LeaseLost replies finished a cancel")
    assert outcomes["ok"]
    assert outcomes["rejected"]


def _frame(message: dict[str, Any]) -> tuple[str, bool]:
    """``message`` as a text frame, and whether the broker can decode it: an integer
    beyond 64 bits (written by Python's json) makes the whole message undecodable, so
    its id cannot be read and the reply's id is null."""
    try:
        return orjson.dumps(message).decode(), True
    except TypeError:
        import json

        return json.dumps(message), False


@pytest.mark.timeout(0)
def test_malformed_frames(broker: LiveBroker, socket: Socket) -> None:
    closes = [0]

    @fuzz_settings
    @given(frame=malformed)
    def check(frame: str | bytes | Repeat) -> None:
        before, _ = broker.queue()
        reply = socket.exchange(frame)
        if reply is None:
            closes[0] += 1
        elif reply["ok"] is True:
            return  # the frame happened to be a valid call (a submit under the limit)
        else:
            assert set(reply) == {"id", "ok", "error"}, reply
            assert reply["error"]["_tag"] != "InternalError", reply
        # refused (an error reply, or a close for a frame over the limit): no change
        after = broker.queue()[0]
        if after != before and timers_fired(before, after):
            return  # a TTL ran out meanwhile: this rejection cannot be judged
        assert after == before, (repr(frame)[:300], queue_diff(before, after))

    check()
    print(f"WebSocket malformed frames: {closes[0]} closed 1009")
    # the socket still answers afterwards
    reply = socket.exchange('{"id":7,"method":"getStats"}')
    assert reply is not None
    assert reply["ok"] is True


@pytest.mark.parametrize("frame", [b"", ""])
def test_an_empty_frame_is_a_protocol_error(
    broker: LiveBroker, socket: Socket, frame: str | bytes
) -> None:
    """Found by the fuzzer: quart hands an empty binary frame over as None, which the
    broker answered with an InternalError."""
    reply = socket.exchange(frame)
    assert reply is not None
    assert reply["id"] is None
    assert reply["ok"] is False
    assert reply["error"]["_tag"] == "BrokerProtocolError", reply
