"""Connection hygiene under hypercorn: keep-alive connections survive early answers,
and a WebSocket handshake followed by stray bytes cannot take the server down.

- :class:`BrokerApp` is the QuartTrio app class: an answer sent before the request
  body was read waits for (and drops) the rest of the body, or closes the connection.
- :func:`make_websocket_refusals_safe` patches hypercorn's ``WSStream`` against a race
  that ends ``serve_listeners`` (see its docstring).
- :class:`ConnectionGuard` (installed with :func:`guard_connections`) bounds what
  hypercorn leaves unbounded: how many connections are open at once, and how long a
  client may take to accept an answer; it also keeps hypercorn's keep-alive idle
  timer running after a request (see :class:`_GuardedTCPServer`).
"""

from __future__ import annotations

import importlib.metadata
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import hypercorn.trio.run as hypercorn_run
import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event as ServerEvent
from hypercorn.events import Updated
from hypercorn.protocol import events as stream_events
from hypercorn.protocol import ws_stream
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.trio.tcp_server import TCPServer
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

from .._errors import BrokerProtocolError, Overloaded

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


# ------------------------------------------------------------ connection bounds

MAX_CONNECTIONS = 10_000
"""Default bound on the connections open at once (``--max-connections``)."""

SEND_CHUNK = 64 * 1024
"""An answer goes out in pieces of this size, each within the send timeout: a slow
reader gets its whole answer, one that reads nothing loses its connection."""

REFUSING_AT_ONCE = 64
"""Connections over the cap answered 503 at once; more are closed without a word
(answering takes a task and a moment each: a flood must not make a queue of them)."""

REFUSAL_SECONDS = 1.0
"""How long refusing one connection may take (reading some of its request, writing
the 503): a client that reads nothing does not hold the refusal longer."""

RETRY_AFTER_SECONDS = 1
"""The ``Retry-After`` of a refused connection, and of every other 503 answer."""


class ConnectionGuard:
    """The bounds of one server's connections, and how many it holds.

    ``max_connections`` connections are served at once; one more is answered ``503
    Overloaded`` (``Retry-After``, ``Connection: close``) and closed, so the broker
    keeps serving the ones it has and holds at most ``max_connections`` +
    :data:`REFUSING_AT_ONCE` client sockets (keep that under the open-file limit).
    Every connection, keep-alive or WebSocket, idle or not, counts while it is open.

    ``send_timeout``: each :data:`SEND_CHUNK` of an answer must be taken by the client
    within it, or the connection is closed (hypercorn itself waits forever, shielded,
    for a client that reads nothing: a WebSocket whose client never reads its
    answers would hold its task, its socket and its calls for good).
    """

    def __init__(self, max_connections: int, send_timeout: float) -> None:
        self.max_connections = max_connections
        self.send_timeout = send_timeout
        self.open = 0
        """Connections being served."""
        self.refused = 0
        """Connections refused so far (over the cap)."""
        self.timed_out_sends = 0
        """Connections closed because their client took no answer within the timeout."""
        self._refusing = 0

    async def serve(self, server: TCPServer, run: Callable[[], Awaitable[None]]) -> None:
        """Run one accepted connection's ``run()``, or refuse it when at the cap."""
        if self.open >= self.max_connections:
            self.refused += 1
            await self._refuse(server.stream)
            return
        self.open += 1
        try:
            await run()
        finally:
            self.open -= 1

    async def _refuse(self, stream: Any) -> None:
        if self._refusing >= REFUSING_AT_ONCE:
            await trio.aclose_forcefully(stream)
            return
        self._refusing += 1
        try:
            with trio.move_on_after(REFUSAL_SECONDS):
                # read (some of) the request first: a socket closed with unread data
                # sends a reset, which can destroy the answer before it is read
                with trio.move_on_after(REFUSAL_SECONDS / 2):
                    await stream.receive_some(SEND_CHUNK)
                await stream.send_all(self._refusal())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client is gone: nothing to tell it
        finally:
            self._refusing -= 1
            await trio.aclose_forcefully(stream)

    def _refusal(self) -> bytes:
        error = Overloaded(
            f"the broker serves {self.max_connections} connections at once, its limit: "
            f"retry in {RETRY_AFTER_SECONDS} s"
        )
        body = orjson.dumps(error.to_body())
        head = (
            f"HTTP/1.1 {error.status} Service Unavailable\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            f"retry-after: {RETRY_AFTER_SECONDS}\r\n"
            "connection: close\r\n\r\n"
        )
        return head.encode() + body


class _GuardedStream:
    """An accepted stream whose ``send_all`` gives up on a client that takes nothing
    for ``send_timeout`` (see :class:`ConnectionGuard`); everything else is the
    stream's own (hypercorn tells TLS from plain TCP by the attributes it finds)."""

    def __init__(self, inner: Any, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        timeout = self._guard.send_timeout
        for start in range(0, max(len(view), 1), SEND_CHUNK):
            # hypercorn sends shielded from cancellation: this deadline is the only
            # one that reaches a send to a client that does not read
            with trio.move_on_after(timeout) as scope:
                await self._inner.send_all(view[start : start + SEND_CHUNK])
            if scope.cancelled_caught:
                self._guard.timed_out_sends += 1
                # closing the socket also wakes hypercorn's reader: the connection ends
                await trio.aclose_forcefully(self._inner)
                raise trio.BrokenResourceError(f"the client took no data for {timeout:g} s")


class _GuardedTCPServer(TCPServer):
    """hypercorn's connection server under the :class:`ConnectionGuard` its config
    carries (``trioq_guard``; a config without one is served as hypercorn would).

    It also keeps hypercorn's keep-alive idle timer running whenever a connection
    has no request under way, which bounds how long a request head may take to
    arrive (a byte a second never completes one). hypercorn loses the timer twice:

    - it restarts it from inside the app's last send (protocol/h11.py:286), which
      quart-trio has cancelled by then (see the note above :class:`BrokerApp`), so
      after its first request a connection could stay idle, or receive the next
      request's head a byte at a time, forever: the restart is shielded here;
    - a cleartext HTTP/2 connection (prior knowledge) stops it at its preface, which
      h11 reads as a request (protocol/h11.py:171), and only restarts it when a
      stream closes: one that opens no stream was never timed. It is restarted
      here as soon as the connection is HTTP/2 and idle.
    """

    def __init__(self, app: Any, config: HypercornConfig, context: Any, state: Any, stream: Any):
        self.guard: ConnectionGuard | None = getattr(config, "trioq_guard", None)
        if self.guard is not None:
            stream = _GuardedStream(stream, self.guard)
        super().__init__(app, config, context, state, stream)

    async def run(self) -> None:
        if self.guard is None:
            await super().run()
        else:
            await self.guard.serve(self, super().run)

    async def protocol_send(self, event: ServerEvent) -> None:
        if self.guard is None:
            await super().protocol_send(event)
            return
        if isinstance(event, Updated):
            with trio.CancelScope(shield=True):  # a restart is quick: one task start
                await super().protocol_send(event)
        else:
            await super().protocol_send(event)
        protocol = getattr(getattr(self, "protocol", None), "protocol", None)
        # hypercorn's TrioSingleTask keeps no handle while the timer is stopped
        if isinstance(protocol, H2Protocol) and protocol.idle and self.idle_task._handle is None:
            with trio.CancelScope(shield=True):
                await self.idle_task.restart(self._task_group, self._idle_timeout)


def guard_connections(config: HypercornConfig, guard: ConnectionGuard) -> None:
    """Serve the connections of ``config`` under ``guard`` (with
    :func:`hypercorn.trio.serve`).

    hypercorn builds its listeners itself and hands every accepted stream to its
    ``TCPServer`` (hypercorn/trio/run.py): that class is replaced, once per process,
    by :class:`_GuardedTCPServer`, which applies the guard a config carries.
    """
    # the module imports the class without exporting it: mypy refuses a plain access
    if getattr(hypercorn_run, "TCPServer") is not _GuardedTCPServer:  # noqa: B009
        setattr(hypercorn_run, "TCPServer", _GuardedTCPServer)  # noqa: B010
    config.trioq_guard = guard  # type: ignore[attr-defined]
