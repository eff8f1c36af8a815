"""osqueue's Connect service (``osqueue.v1.QueueService``): its messages, the two
codecs and the mapping of trioq's errors onto Connect's error codes.

The messages are built at import from ``descriptors.binpb``, the descriptor set
``protoc`` makes of the ``.proto`` files under ``proto/`` (rebuilt by
``nox -s proto``; a test checks the two agree). They live in a descriptor pool of
their own: no generated code, so no pin to the ``protobuf`` release that generated
it, and no clash with a program that imports osqueue's or googleapis' definitions
itself.

The broker's side of the protocol (routes, auth, deadlines) is
:mod:`trioq.broker._connect`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Final

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor_pb2 import FileDescriptorSet
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from .._errors import (
    BrokerProtocolError,
    CASConflict,
    DeadlineExceeded,
    Forbidden,
    JobFailed,
    JobNotDead,
    JobNotFound,
    LeaseLost,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    TrioqError,
    Unauthorized,
)

SERVICE: Final = "osqueue.v1.QueueService"
PATH_PREFIX: Final = f"/{SERVICE}/"

PROTO: Final = "proto"
JSON: Final = "json"
CODECS: Final = {"application/proto": PROTO, "application/json": JSON}
"""Each unary content type (parameters such as ``charset`` stripped) and its codec."""

DESCRIPTOR_SET: Final = "descriptors.binpb"
PROTO_FILES: Final = ("osqueue/v1/queue.proto", "google/rpc/error_info.proto")
"""The ``.proto`` files under ``proto/`` that :data:`DESCRIPTOR_SET` is made of."""


def _load_pool() -> DescriptorPool:
    raw = files(__name__).joinpath(DESCRIPTOR_SET).read_bytes()
    pool = DescriptorPool()
    for file in FileDescriptorSet.FromString(raw).file:
        pool.Add(file)
    return pool


POOL: Final = _load_pool()


def message_class(full_name: str) -> type[Message]:
    """The class of a message of the pool, e.g. ``osqueue.v1.JobInfo``."""
    return GetMessageClass(POOL.FindMessageTypeByName(full_name))


@dataclass(frozen=True, slots=True)
class Rpc:
    """One method of the service, with its message classes."""

    name: str
    input: type[Message]
    output: type[Message]

    @property
    def path(self) -> str:
        return PATH_PREFIX + self.name


RPCS: Final = {
    method.name: Rpc(
        method.name,
        GetMessageClass(method.input_type),
        GetMessageClass(method.output_type),
    )
    for method in POOL.FindServiceByName(SERVICE).methods
}
"""Every method of ``osqueue.v1.QueueService`` by name."""

ERROR_INFO: Final = message_class("google.rpc.ErrorInfo")
ERROR_INFO_TYPE: Final = "google.rpc.ErrorInfo"
ERROR_DOMAIN: Final = "trioq"


# ------------------------------------------------------------------- codecs


def decode(codec: str, cls: type[Message], data: bytes) -> Any:
    """A request message from its body; :class:`BrokerProtocolError` if it does not
    decode. JSON follows protobuf's JSON mapping (either field name spelling,
    ``bytes`` in base64, 64-bit integers as strings or numbers) and skips fields it
    does not know, as the binary codec does (REST ignores unknown fields too)."""
    message = cls()
    try:
        if codec == PROTO:
            message.ParseFromString(data)
        else:
            json_format.Parse(data, message, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError, RecursionError) as exc:
        raise BrokerProtocolError(
            f"the request is not a valid {cls.DESCRIPTOR.name}: {exc}"
        ) from None
    return message


def encode(codec: str, message: Message) -> bytes:
    """An answer's body. JSON states every field, zero values too (only ``optional``
    fields that are unset are left out), so that a reader without the schema sees
    ``"unclaimed": 0`` rather than nothing."""
    if codec == PROTO:
        return message.SerializeToString()
    as_dict = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    return orjson.dumps(as_dict)


# ------------------------------------------------------------------- errors

STATUS_BY_CODE: Final = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}
"""Connect's error codes and the HTTP status each is answered with."""

_CODE_BY_ERROR: Final[tuple[tuple[type[TrioqError], str], ...]] = (
    (BrokerProtocolError, "invalid_argument"),
    (Unauthorized, "unauthenticated"),
    (Forbidden, "permission_denied"),
    (JobNotFound, "not_found"),
    (NotFound, "unimplemented"),
    (MethodNotAllowed, "unimplemented"),
    (LeaseLost, "failed_precondition"),
    (JobNotDead, "failed_precondition"),
    (JobFailed, "failed_precondition"),
    (PayloadTooLarge, "resource_exhausted"),
    (QueueFull, "resource_exhausted"),
    (CASConflict, "aborted"),
    (DeadlineExceeded, "deadline_exceeded"),
)
"""The Connect code of each error class (the first class that matches wins); any
other error with a 503 status (``NotLeader``, ``Overloaded``, ``QueueNotFound``,
``DocumentInvalid``, the storage errors) is ``unavailable``, as REST's 503 says
"retry, maybe elsewhere"; anything else ``internal``."""


def code_of(exc: TrioqError) -> str:
    """The Connect code ``exc`` is answered with."""
    for cls, code in _CODE_BY_ERROR:
        if isinstance(exc, cls):
            return code
    return "unavailable" if exc.status == 503 else "internal"


def error_body(exc: TrioqError, *, code: str | None = None) -> tuple[int, bytes]:
    """The HTTP status and JSON body of a Connect error answering ``exc`` (with
    ``code`` rather than :func:`code_of` its own, when given).

    The body is Connect's (``code``, ``message``, ``details``) plus REST's own
    fields (``_tag``; ``leader`` and ``role`` for ``NotLeader``), which Connect
    clients skip and raw-HTTP readers can use as they do REST's. The tag also
    travels in a ``google.rpc.ErrorInfo`` detail (``reason``; ``domain``
    ``trioq``; ``metadata`` ``leader``/``role``), the form Connect clients unpack.
    """
    code = code or code_of(exc)
    rest = exc.to_body()
    metadata = {
        key: str(value)
        for key, value in rest.items()
        if key not in ("_tag", "message") and value is not None
    }
    info = ERROR_INFO(reason=exc.tag, domain=ERROR_DOMAIN, metadata=metadata)
    detail = {
        "type": ERROR_INFO_TYPE,
        # standard base64 without padding, as connect-go writes it
        "value": base64.b64encode(info.SerializeToString()).decode().rstrip("="),
    }
    body = {"code": code, "message": exc.message, "details": [detail], **rest}
    return STATUS_BY_CODE[code], orjson.dumps(body)


def tag_of(details: list[dict[str, Any]]) -> dict[str, str] | None:
    """The ``ErrorInfo`` of a Connect error's JSON details, as ``{"reason", ...}``
    (None when none is trioq's): the reading side of :func:`error_body`."""
    for detail in details:
        if detail.get("type") != ERROR_INFO_TYPE:
            continue
        raw = str(detail.get("value", ""))
        try:
            info: Any = ERROR_INFO.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
        except (DecodeError, ValueError):
            continue
        if info.domain == ERROR_DOMAIN:
            return {"reason": info.reason, **dict(info.metadata)}
    return None
