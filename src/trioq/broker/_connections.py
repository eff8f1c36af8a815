"""Connection hygiene under hypercorn: keep-alive connections survive early answers,
and a WebSocket handshake followed by stray bytes cannot take the server down.

- :class:`BrokerApp` is the QuartTrio app class: an answer sent before the request
  body was read waits for (and drops) the rest of the body, or closes the connection.
- :func:`make_websocket_refusals_safe` patches hypercorn's ``WSStream`` against a race
  that ends ``serve_listeners`` (see its docstring).
- the bounds hypercorn leaves open (connections at once, clients that do not read,
  the keep-alive timer) are in :mod:`~trioq.broker._guard`.
"""

from __future__ import annotations

import importlib.metadata
import weakref
from collections.abc import Iterable

import orjson
import trio
from hypercorn.protocol import events as stream_events
from hypercorn.protocol import ws_stream
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPScope,
    Scope,
    WebsocketScope,
)
from quart_trio import QuartTrio

from .._errors import BrokerProtocolError

RETRY_AFTER_SECONDS = 1
"""The ``Retry-After`` of every 503 answer (and of a connection refused over the cap,
:mod:`~trioq.broker._guard`)."""

DRAIN_SECONDS = 10.0
"""How long the rest of a body answered early is waited for before the answer goes
out with ``Connection: close`` instead (see :class:`BrokerApp`)."""

# Why BrokerApp guards connections (hypercorn 0.17-0.18, trio worker, HTTP/1.1).
# hypercorn ends a response cycle inside the app's own send of the last body chunk:
# it first hands the app http.disconnect (hypercorn/protocol/http_stream.py:132),
# then recycles the connection or, when the request body was not read to its end,
# closes it (protocol/h11.py:271-289 -> trio/tcp_server.py:91-92). quart-trio cancels
# the request's nursery the moment it receives that disconnect
# (quart_trio/asgi.py:36-40), so the close dies with trio.Cancelled at its first
# checkpoint (tcp_server.py:119, send_eof). The connection stays open, h11 holds the
# client's next request as PAUSED (h11.py:174-176) and nothing ever answers it. The
# recycle path needs no checkpoint before the next request can be read, so a request
# whose body was read to its end is safe (only hypercorn's keep-alive idle timer,
# h11.py:286, is lost to the same cancellation).


class BrokerApp(QuartTrio):
    """The broker's app: a QuartTrio whose early answers leave connections usable.

    An HTTP answer that goes out before the request body was read (an error, a read
    route given a body) first waits for the rest of the body, which quart reads and
    drops, up to ``drain_budget`` bytes and :data:`DRAIN_SECONDS`: the connection is
    then recycled. Past either bound the answer says ``Connection: close`` and its
    last chunk is sent shielded from quart-trio's cancellation, so hypercorn does
    close the connection.
    """

    drain_budget = 0
    """Bytes of body a request may carry and still keep its connection."""

    async def asgi_app(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await super().asgi_app(scope, receive, send)

    async def _http(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        budget = self.drain_budget
        body = _BodySeen(budget)
        declared = _content_length(scope["headers"])
        # hypercorn closes these after the answer: let it (see the shield below)
        closing = scope["http_version"] == "1.0" or _asks_close(scope["headers"])

        async def receive_seen() -> ASGIReceiveEvent:
            message = await receive()
            body.saw(message)
            return message

        async def send_guarded(message: ASGISendEvent) -> None:
            nonlocal closing
            # every 503 is worth asking again (Overloaded, NotLeader, storage): say
            # when, as RFC 9110 15.6.4 suggests, unless the answer did
            if (
                message["type"] == "http.response.start"
                and message["status"] == 503
                and not any(name.lower() == b"retry-after" for name, _ in message["headers"])
            ):
                retry = str(RETRY_AFTER_SECONDS).encode()
                message["headers"] = [*message["headers"], (b"retry-after", retry)]
            if message["type"] == "http.response.start" and not body.complete:
                if (declared is None or declared <= budget) and message["status"] != 408:
                    # quart keeps receiving (and dropping) the body meanwhile
                    with trio.move_on_after(DRAIN_SECONDS):
                        await body.settled.wait()
                if not body.complete:
                    closing = True
                    message["headers"] = [*message["headers"], (b"connection", b"close")]
            if (
                closing
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
            ):
                # hypercorn closes the connection inside this call, after telling
                # quart-trio the request is over, which cancels us: shield it (for a
                # bounded time: a client that never reads must not hold the task)
                with trio.move_on_after(DRAIN_SECONDS, shield=True):
                    await send(message)
                return
            await send(message)

        await super().asgi_app(scope, receive_seen, send_guarded)

    async def _websocket(
        self, scope: WebsocketScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if _declares_body(scope["headers"]):
            await _refuse_handshake_with_body(receive, send)
            return

        async def send_refusal_closes(message: ASGISendEvent) -> None:
            if message["type"] == "websocket.http.response.start":
                # hypercorn never reuses the connection of a refused handshake: say
                # so, or a pooled client sends its next request into a closing socket
                message["headers"] = [*message["headers"], (b"connection", b"close")]
            await send(message)

        await super().asgi_app(scope, receive, send_refusal_closes)


class _BodySeen:
    """How much of a request body the app has received (watched through ``receive``)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.received = 0
        self.complete = False
        self.settled = trio.Event()
        """Set once the body is complete, the client has gone, or it is over budget."""

    def saw(self, message: ASGIReceiveEvent) -> None:
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        if self.complete or message["type"] == "http.disconnect" or self.received > self.budget:
            self.settled.set()


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # h11 refuses such a request before the app sees it
    return None


def _asks_close(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(
        name.lower() == b"connection"
        and any(token.strip() == b"close" for token in value.lower().split(b","))
        for name, value in headers
    )


def _declares_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(
        (name.lower() == b"content-length" and value.strip() != b"0")
        or name.lower() == b"transfer-encoding"
        for name, value in headers
    )


async def _refuse_handshake_with_body(receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """Refuse a WebSocket handshake that carries a body.

    hypercorn itself answers 400 when the first body byte arrives (see
    :func:`make_websocket_refusals_safe`), so the app stays silent meanwhile and
    only answers if no body came within :data:`DRAIN_SECONDS`.
    """
    with trio.move_on_after(DRAIN_SECONDS):
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    refusal = BrokerProtocolError("a WebSocket handshake must not carry a body")
    body = orjson.dumps(refusal.to_body())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send(
        {"type": "websocket.http.response.start", "status": refusal.status, "headers": headers}
    )
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


_HYPERCORN_WS_RACE_UNTIL = (0, 18)
"""The last hypercorn release known to have the race :func:`make_websocket_refusals_safe`
closes (0.18.0 is the latest at the time of writing)."""


def make_websocket_refusals_safe() -> None:
    """Close a race in hypercorn that lets one request take the whole server down.

    Bytes that reach a WebSocket stream before the app accepts it (a handshake with a
    body, or a frame sent right behind the handshake) make hypercorn answer 400 from
    its reader task (hypercorn/protocol/ws_stream.py:238-239) while the app may be
    answering the same handshake (an accept, a refusal). Whichever answer comes
    second makes h11 raise LocalProtocolError (protocol/h11.py:248-253) in the reader
    task, which only catches OSError (trio/tcp_server.py:77), so the error ends
    ``trio.serve_listeners`` and the broker. No ASGI app can avoid it: the app cannot
    see those bytes. So ``WSStream`` is wrapped: such bytes mark the stream closed
    before anything is sent (hypercorn then drops what the app sends), answer 400
    only if the app has not started an answer, tell the app the client has gone, and
    close the connection.
    """
    version = importlib.metadata.version("hypercorn").split(".")
    if tuple(int(part) for part in version[:2] if part.isdigit()) > _HYPERCORN_WS_RACE_UNTIL:
        return  # a newer hypercorn: test_websocket.py tells whether it still needs this
    stream_class = ws_stream.WSStream
    handle, app_send = stream_class.handle, stream_class.app_send
    if getattr(handle, "trioq_safe", False):
        return
    answered: weakref.WeakSet[ws_stream.WSStream] = weakref.WeakSet()

    async def safe_app_send(self: ws_stream.WSStream, message: ASGISendEvent | None) -> None:
        # an answer's state changes only after its first write (_send_rejection):
        # note it before, for safe_handle
        if not self.handshake.accepted and (
            message is None or message["type"] != "websocket.http.response.start"
        ):
            answered.add(self)
        await app_send(self, message)

    async def safe_handle(self: ws_stream.WSStream, event: stream_events.Event) -> None:
        if (
            isinstance(event, stream_events.Body | stream_events.Data)
            and not self.closed
            and not self.handshake.accepted
        ):
            self.closed = True
            if self not in answered:
                await self._send_error_response(400)
            if self.app_put is not None:
                await self.app_put({"type": "websocket.disconnect", "code": 1006})
            await self.send(stream_events.StreamClosed(stream_id=self.stream_id))
            return
        await handle(self, event)

    safe_handle.trioq_safe = True  # type: ignore[attr-defined]
    # mypy refuses assigning to a method
    setattr(stream_class, "handle", safe_handle)  # noqa: B010
    setattr(stream_class, "app_send", safe_app_send)  # noqa: B010
