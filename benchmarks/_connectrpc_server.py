"""The reference point of ``bench_connect.py``: osqueue's ``GetStats`` served by the
``connect-python`` package's own ASGI server (by default under hypercorn's asyncio worker),
answering a fixed message, so that a call costs only the server stack and the
library's protocol layer.

    python benchmarks/_connectrpc_server.py PORT [--asyncio | --trio]

``--trio`` serves it under hypercorn's trio worker, the broker's: the library's
unary path happens to use no asyncio primitive (its streaming paths do).
"""

from __future__ import annotations

import sys
from typing import Any

from connectrpc.method import IdempotencyLevel, MethodInfo
from connectrpc.server import ConnectASGIApplication, Endpoint
from hypercorn.config import Config

from trioq import _connect

RPC = _connect.RPCS["GetStats"]
ANSWER: Any = RPC.output(total=0, unclaimed=0, in_progress=0, broker_address="bench")
METHOD = MethodInfo(
    name="GetStats",
    service_name=_connect.SERVICE,
    input=RPC.input,
    output=RPC.output,
    idempotency_level=IdempotencyLevel.UNKNOWN,
)


async def get_stats(request: Any, ctx: Any) -> Any:
    return ANSWER


class QueueServiceApp(ConnectASGIApplication[object]):
    @property
    def path(self) -> str:
        return f"/{_connect.SERVICE}"


def main() -> None:
    port = int(sys.argv[1])
    app = QueueServiceApp(
        service=object(),
        endpoints=lambda _: {f"{_connect.PATH_PREFIX}GetStats": Endpoint.unary(METHOD, get_stats)},
    )
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    if "--trio" in sys.argv:
        import trio
        from hypercorn.trio import serve as serve_trio

        trio.run(serve_trio, app, config)  # type: ignore[arg-type]
    else:
        import asyncio

        from hypercorn.asyncio import serve as serve_asyncio

        asyncio.run(serve_asyncio(app, config))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
