"""What hypercorn leaves unbounded, bounded: :class:`ConnectionGuard` (installed with
:func:`guard_connections`) caps the connections open at once, closes a connection
whose client takes no answer within the send timeout, and keeps hypercorn's
keep-alive idle timer running after a request (see :class:`_GuardedTCPServer`).
The limits and their tests: docs/limits.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import hypercorn.trio.run as hypercorn_run
import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event as ServerEvent
from hypercorn.events import Updated
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.trio.tcp_server import TCPServer

from .._errors import Overloaded
from ._connections import RETRY_AFTER_SECONDS

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
        # read on every message: bound here rather than found through __getattr__
        self.receive_some = inner.receive_some

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) <= SEND_CHUNK:  # nearly every answer: one piece
            await self._send_piece(data)
            return
        view = memoryview(data)
        for start in range(0, len(view), SEND_CHUNK):
            await self._send_piece(view[start : start + SEND_CHUNK])

    async def _send_piece(self, piece: bytes | bytearray | memoryview) -> None:
        timeout = self._guard.send_timeout
        # hypercorn sends shielded from cancellation: this deadline is the only one
        # that reaches a send to a client that does not read
        with trio.move_on_after(timeout) as scope:
            await self._inner.send_all(piece)
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
