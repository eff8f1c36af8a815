"""The Connect transport: osqueue's ``QueueService`` served by the broker beside
REST and the WebSocket, under ``POST /osqueue.v1.QueueService/<Method>``.

Connect's unary protocol is a plain HTTP POST (the request message is the body,
``application/proto`` or ``application/json``; the answer is the response message
with status 200, or an error as JSON with the status of its Connect code), so it
is served here directly, in the app's trio loop, by the same operations
(:class:`~trioq.broker._api.BrokerApi`) and the same wire validation as REST: the
``connect-python`` package's server runs on asyncio only (it starts asyncio tasks
and waits on asyncio events), which quart-trio cannot host. ``docs/connect.md``
has the contract and the measurements.

Every refusal takes Connect's shape (:func:`trioq._connect.error_body`), so this
view authenticates itself: the app's REST guard skips it. The order of checks is
REST's: a valid token first, then the method (``unimplemented``), its scope
(``permission_denied``), the leader (``unavailable`` with the leader's URL), and
only then the content type and the body.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import trio
from google.protobuf.message import Message
from quart import Response, request
from werkzeug import exceptions as http_exceptions

from .. import _connect, _wire
from .._errors import (
    BrokerProtocolError,
    DeadlineExceeded,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    TrioqError,
)
from .._tokens import Scope
from .._wire import MAX_LIST, ClaimRequest, HeldJob, parse, parse_new_job
from .._wire._payload import kept
from ..core._state import QueueState
from ._api import BrokerApi
from ._json import loads
from ._routes import ADMIN, PRODUCER, WORKER
from ._websocket import forbidden_message

log = logging.getLogger("trioq.http")

ENDPOINT: Final = "connect"
"""The app's endpoint name for every Connect method."""

_THREADED_INFLATE = 64 * 1024
"""Compressed bodies larger than this are inflated in a worker thread."""

Operation = Callable[[BrokerApi, Any], Awaitable[Message]]


@dataclass(frozen=True, slots=True)
class ConnectMethod:
    """One RPC as served: who may call it and what it does."""

    rpc: _connect.Rpc
    scopes: frozenset[Scope]
    run: Operation


async def _submit_job(api: BrokerApi, req: Any) -> Message:
    if not req.payload:
        raise BrokerProtocolError("payload is required: the job's payload as JSON text")
    try:
        payload = loads(req.payload)
    except orjson.JSONDecodeError as exc:
        raise BrokerProtocolError(f"payload is not JSON text: {exc}") from None
    job: dict[str, Any] = {"payload": payload}
    if req.type:
        job["type"] = req.type
    if req.HasField("max_attempts"):
        job["maxAttempts"] = req.max_attempts
    answer = await api.submit(parse_new_job(job))
    return _output("SubmitJob")(job_id=answer["jobId"])


async def _claim_job(api: BrokerApi, req: Any) -> Message:
    claim = parse(ClaimRequest, {"workerId": req.worker_id, "types": list(req.types) or None})
    job = await api.claim(claim, many=False)
    if not job:
        return _output("ClaimJob")()
    return _output("ClaimJob")(
        job_id=job["jobId"], payload=orjson.dumps(job["payload"]), type=job["type"]
    )


def _held(req: Any) -> tuple[str, HeldJob]:
    return _wire.job_id(req.job_id), parse(HeldJob, {"workerId": req.worker_id})


async def _heartbeat(api: BrokerApi, req: Any) -> Message:
    await api.heartbeat(*_held(req))
    return _output("Heartbeat")()


async def _complete_job(api: BrokerApi, req: Any) -> Message:
    await api.complete(*_held(req))
    return _output("CompleteJob")()


async def _get_stats(api: BrokerApi, req: Any) -> Message:
    stats = api.stats()
    return _output("GetStats")(
        total=stats["total"],
        unclaimed=stats["unclaimed"],
        in_progress=stats["inProgress"],
        broker_address=stats["brokerAddress"],
    )


async def _list_jobs(api: BrokerApi, req: Any) -> Message:
    """The first :data:`~trioq._wire.MAX_LIST` queued jobs in queue order, with the
    totals: osqueue's definition has no cursor (REST's ``GET /v1/jobs`` pages)."""
    url = api.engine.url
    return await api.engine.read(lambda state: _jobs_page(state, url))


def _jobs_page(state: QueueState, broker_address: str) -> Message:
    info = _connect.message_class("osqueue.v1.JobInfo")
    jobs: list[Message] = []
    for job in state.iter_jobs():
        if len(jobs) == MAX_LIST:
            break
        if job.payload_json is None:
            job.payload_json = kept(orjson.dumps(job.payload))
        jobs.append(
            info(
                id=job.id,
                status=job.status,
                payload=job.payload_json,
                type=job.type,
                worker_id=job.worker_id or "",
                created_at=job.created_at,
                attempts=job.attempts,
                max_attempts=job.max_attempts,
                heartbeat=job.heartbeat_at or 0,
            )
        )
    stats = state.stats()
    return _output("ListJobs")(
        jobs=jobs,
        total=stats["total"],
        unclaimed=stats["unclaimed"],
        in_progress=stats["inProgress"],
        completed_total=stats["completedTotal"],
        broker_address=broker_address,
    )


def _output(name: str) -> type[Message]:
    return _connect.RPCS[name].output


_OPERATIONS: Final[dict[str, tuple[frozenset[Scope], Operation]]] = {
    "SubmitJob": (PRODUCER, _submit_job),
    "ClaimJob": (WORKER, _claim_job),
    "Heartbeat": (WORKER, _heartbeat),
    "CompleteJob": (WORKER, _complete_job),
    "GetStats": (WORKER, _get_stats),
    "ListJobs": (ADMIN, _list_jobs),
}
"""Each RPC's scopes (those of its REST twin) and operation."""

METHODS: Final = {
    name: ConnectMethod(rpc, *_OPERATIONS[name]) for name, rpc in _connect.RPCS.items()
}
"""Every method of the service as served (a method of the ``.proto`` that is not
in :data:`_OPERATIONS` fails here, at import)."""


class ConnectEndpoint:
    """The view behind ``/osqueue.v1.QueueService/<method>``."""

    def __init__(
        self,
        api: BrokerApi,
        *,
        authorize: Callable[[str | None], Scope],
        max_request_bytes: int,
    ) -> None:
        self.api = api
        self.authorize = authorize
        self.max_request_bytes = max_request_bytes

    async def serve(self, method: str) -> Response:
        try:
            return await self._serve(method)
        except TrioqError as exc:
            return _error(exc)
        except _Refusal as refusal:
            response = _error(refusal.error, code=refusal.code, status=refusal.status)
            response.headers.update(refusal.headers)
            return response
        except http_exceptions.HTTPException as exc:
            return _error(self._http_error(exc))
        except Exception as exc:
            log.exception("unexpected error serving Connect %s", method)
            return _error(InternalError(f"internal error: {exc!r}"))

    async def _serve(self, name: str) -> Response:
        scope = self.authorize(request.headers.get("Authorization"))
        found = METHODS.get(name)
        if found is None:
            raise NotFound(f"{_connect.SERVICE} has no method {name!r}")
        if request.method != "POST":
            refusal = MethodNotAllowed(f"{request.method}: Connect unary calls are POSTs")
            raise _Refusal(refusal, "unimplemented", 405, {"Allow": "POST"})
        if scope not in found.scopes:
            raise Forbidden(forbidden_message(scope, f"{_connect.SERVICE}/{name}"))
        self.api.assert_leader()
        codec = self._codec()
        version = request.headers.get("Connect-Protocol-Version")
        if version is not None and version != "1":
            raise BrokerProtocolError(f"Connect-Protocol-Version must be 1, not {version!r}")
        timeout = _timeout(request.headers.get("Connect-Timeout-Ms"))
        body = await self._body()
        message = _connect.decode(codec, found.rpc.input, body)
        with trio.move_on_after(timeout) as deadline:
            answer = await found.run(self.api, message)
        if deadline.cancelled_caught:
            raise DeadlineExceeded(f"no answer within Connect-Timeout-Ms ({timeout * 1000:g})")
        content_type = "application/proto" if codec == _connect.PROTO else "application/json"
        return Response(_connect.encode(codec, answer), content_type=content_type)

    def _codec(self) -> str:
        media = (request.headers.get("Content-Type") or "").partition(";")[0].strip().lower()
        codec = _connect.CODECS.get(media)
        if codec is None:
            refusal = BrokerProtocolError(
                f"unsupported Content-Type {media!r}: Connect unary calls send "
                "application/proto or application/json"
            )
            raise _Refusal(
                refusal, "invalid_argument", 415, {"Accept-Post": ", ".join(_connect.CODECS)}
            )
        return codec

    async def _body(self) -> bytes:
        data = await request.get_data(cache=False)
        assert isinstance(data, bytes)
        encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "identity":
            return data
        if encoding != "gzip":
            refusal = BrokerProtocolError(
                f"unsupported Content-Encoding {encoding!r}: gzip or identity"
            )
            raise _Refusal(refusal, "unimplemented", 501, {"Accept-Encoding": "gzip"})
        if len(data) > _THREADED_INFLATE:
            return await trio.to_thread.run_sync(_gunzip, data, self.max_request_bytes)
        return _gunzip(data, self.max_request_bytes)

    def _http_error(self, exc: http_exceptions.HTTPException) -> TrioqError:
        if exc.code == 413:
            return PayloadTooLarge(
                f"the request is over the limit of {self.max_request_bytes} bytes"
            )
        if exc.code == 408:
            return DeadlineExceeded(exc.description or "the request body did not arrive in time")
        return BrokerProtocolError(exc.description or exc.name)


class _Refusal(Exception):
    """A refusal the protocol answers its own way: a code other than the error's
    (``unimplemented`` for an unknown encoding), a status other than the code's (405
    for another HTTP method, 415 for an unknown content type), and headers that say
    what is accepted."""

    def __init__(self, error: TrioqError, code: str, status: int, headers: dict[str, str]) -> None:
        super().__init__(error.message)
        self.error = error
        self.code = code
        self.status = status
        self.headers = headers


def _timeout(header: str | None) -> float:
    """``Connect-Timeout-Ms`` in seconds (infinite when absent): at most 10 digits."""
    if header is None:
        return float("inf")
    if not (header.isascii() and header.isdigit() and len(header) <= 10):
        raise BrokerProtocolError(
            f"Connect-Timeout-Ms must be a positive integer of at most 10 digits, not {header!r}"
        )
    return int(header) / 1000


def _gunzip(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BrokerProtocolError(f"the body is not valid gzip: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"the request is over the limit of {limit} bytes once inflated")
    if not inflater.eof:
        raise BrokerProtocolError("the body is not valid gzip: it ends early")
    return out


def _error(exc: TrioqError, *, code: str | None = None, status: int | None = None) -> Response:
    code_status, body = _connect.error_body(exc, code=code)
    return Response(body, status=status or code_status, content_type="application/json")
