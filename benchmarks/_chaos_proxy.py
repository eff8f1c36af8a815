"""A TCP proxy for the chaos harness that can cut the path it carries.

The harness puts one between the brokers and SeaweedFS (the brokers'
``--endpoint-url`` is the proxy's). :meth:`Proxy.cut` closes every connection open
through it at once and, for the given seconds, accepts new connections only to close
them again: a broker's storage requests fail (connection closed mid-request, or before
a byte of the answer) until the cut ends. It runs as a task of the harness's trio
loop and listens on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import time

import trio


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cut_until = 0.0
        self.connections = 0
        self.dropped = 0  # connections closed by a cut (open ones and refused ones)
        self._scopes: set[trio.CancelScope] = set()

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def cut(self, seconds: float) -> None:
        """Drop every connection now and refuse new ones for ``seconds``."""
        self.cut_until = time.monotonic() + seconds
        for scope in list(self._scopes):
            scope.cancel()
        self.dropped += len(self._scopes)
        await trio.sleep(seconds)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        if time.monotonic() < self.cut_until:
            self.dropped += 1
            await client.aclose()
            return
        try:
            upstream = await trio.open_tcp_stream(*self.target)
        except OSError:
            await client.aclose()
            return
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                async with client, upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
            finally:
                self._scopes.discard(scope)

    @staticmethod
    async def _pump(
        source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            async for data in source:
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()  # one side closed: close both
