"""The wire's limits, field types and the rule text of each field."""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

T = TypeVar("T")

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
"""The integers the broker reads and writes exactly (orjson's range)."""

DEFAULT_TYPE = "default"
MAX_ID_CHARS = 128
MAX_TYPE_CHARS = 128
MAX_WORKER_ID_CHARS = 256
MAX_ATTEMPTS = 1000
MAX_ATTEMPT = 1_000_000
MAX_DELAY_MS = 365 * 86_400_000
"""Cap on ``delayMs`` and ``retryInMs``: stored times stay far inside JSON's exact range."""
MAX_BATCH = 10_000
MAX_CLAIM = 10_000
MAX_WAIT_MS = 30_000
MAX_LIST = 1000
MAX_ERROR_CHARS = 8192
"""A failure's ``error`` is cut to this many characters (and an ellipsis)."""
MIN_PRIORITY = -(2**31)
MAX_PRIORITY = 2**31 - 1
"""A job's priority: a 32-bit signed integer; higher is claimed first."""
MAX_UNIQUE_KEY_CHARS = 256
MAX_TRACE_FIELDS = 8
MAX_TRACE_KEY_CHARS = 64
MAX_TRACE_VALUE_CHARS = 512
"""Bounds of a job's ``trace`` carrier (a tracing propagator's fields)."""
MAX_PAYLOAD_DEPTH = 64
"""Nesting depth cap of a payload. The JSON encoder refuses documents nested deeper
than 254 levels, and every answer that carries a payload wraps it in a few more, so a
deep payload would be accepted and then break the commit or every read returning it."""

ID_CHARS = r"[A-Za-z0-9._:\-]"
TYPE_CHARS = r"[^\x00-\x1f]"
ID_PATTERN = rf"^{ID_CHARS}{{1,{MAX_ID_CHARS}}}$"
TYPE_PATTERN = rf"^{TYPE_CHARS}{{1,{MAX_TYPE_CHARS}}}$"
CURSOR_PATTERN = r"^[0-9]{1,40}$"
TRACE_KEY_PATTERN = rf"^[A-Za-z0-9._\-]{{1,{MAX_TRACE_KEY_CHARS}}}$"
TRACE_VALUE_PATTERN = rf"^[\x20-\x7e]{{0,{MAX_TRACE_VALUE_CHARS}}}$"

RULES: dict[str, str] = {
    "payload": f"a JSON value nested at most {MAX_PAYLOAD_DEPTH} levels deep",
    "type": f"a string of 1-{MAX_TYPE_CHARS} characters, none of them a control character",
    "id": f"1-{MAX_ID_CHARS} characters of A-Z a-z 0-9 . _ : -",
    "jobId": f"1-{MAX_ID_CHARS} characters of A-Z a-z 0-9 . _ : -",
    "maxAttempts": f"an integer from 1 to {MAX_ATTEMPTS}",
    "delayMs": f"an integer from 0 to {MAX_DELAY_MS} (365 days)",
    "retryInMs": f"an integer from 0 to {MAX_DELAY_MS} (365 days)",
    "jobs": f"a list of 1 to {MAX_BATCH} jobs",
    "heartbeat": f"a list of at most {MAX_BATCH} reports",
    "complete": f"a list of at most {MAX_BATCH} reports",
    "fail": f"a list of at most {MAX_BATCH} reports",
    "release": f"a list of at most {MAX_BATCH} reports",
    "claim": "an object {types?, max?, waitMs?}",
    "workerId": f"a string of 1-{MAX_WORKER_ID_CHARS} characters",
    "types": "a non-empty list of strings (omit it to claim any type)",
    "max": f"an integer from 1 to {MAX_CLAIM}",
    "waitMs": f"an integer from 0 to {MAX_WAIT_MS}",
    "attempt": f"an integer from 1 to {MAX_ATTEMPT}",
    "error": "a string",
    "final": "a boolean",
    "priority": f"an integer from {MIN_PRIORITY} to {MAX_PRIORITY}",
    "ttlMs": f"an integer from 1 to {MAX_DELAY_MS} (365 days)",
    "name": "1-64 characters of A-Z a-z 0-9 . _ -",
    "cron": "a cron expression: 5 fields (minute hour day month weekday), or 6 with seconds last",
    "everyMs": f"an integer from 1000 to {MAX_DELAY_MS}",
    "timezone": "an IANA time zone name such as UTC or Europe/Paris",
    "missed": 'either "once" or "skip"',
    "graceMs": f"an integer from 0 to {MAX_DELAY_MS}",
    "uniqueKey": f"a string of 1-{MAX_UNIQUE_KEY_CHARS} characters, none a control character",
    "trace": (
        f"an object of at most {MAX_TRACE_FIELDS} string fields (names of 1-"
        f"{MAX_TRACE_KEY_CHARS} characters of A-Z a-z 0-9 . _ -, values of at most "
        f"{MAX_TRACE_VALUE_CHARS} printable ASCII characters)"
    ),
    "limit": f"an integer from 1 to {MAX_LIST}",
    "cursor": "a value from a previous nextCursor",
    "method": "the name of a method",
    "params": "an object",
}
"""What each field must be, by its wire name: the text of every validation error."""


# ------------------------------------------------------------------- field types


def _cut_error(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"


def _digits_to_int(value: object) -> object:
    """A query parameter's decimal digits as an integer (anything else as it is)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    return value


def _int_to_digits(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def blank_is_none(value: object) -> object:
    return None if value == "" else value


JobId = Annotated[StrictStr, Field(pattern=ID_PATTERN, examples=["order-17"])]
JobType = Annotated[StrictStr, Field(pattern=TYPE_PATTERN, examples=["email:send"])]
WorkerId = Annotated[
    StrictStr, Field(min_length=1, max_length=MAX_WORKER_ID_CHARS, examples=["worker-1"])
]
Attempt = Annotated[StrictInt, Field(ge=1, le=MAX_ATTEMPT)]
MaxAttempts = Annotated[StrictInt, Field(ge=1, le=MAX_ATTEMPTS)]
DelayMs = Annotated[StrictInt, Field(ge=0, le=MAX_DELAY_MS)]
TtlMs = Annotated[StrictInt, Field(ge=1, le=MAX_DELAY_MS)]
Priority = Annotated[StrictInt, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)]
UniqueKey = Annotated[
    StrictStr,
    Field(pattern=rf"^{TYPE_CHARS}{{1,{MAX_UNIQUE_KEY_CHARS}}}$", examples=["report:2026-12-01"]),
]
ErrorText = Annotated[StrictStr, AfterValidator(_cut_error)]
TraceCarrier = Annotated[
    dict[
        Annotated[StrictStr, Field(pattern=TRACE_KEY_PATTERN)],
        Annotated[StrictStr, Field(pattern=TRACE_VALUE_PATTERN)],
    ],
    Field(
        max_length=MAX_TRACE_FIELDS,
        examples=[{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}],
    ),
]
"""A job's trace context: what a tracing propagator writes (W3C ``traceparent``,
``tracestate``), carried from the submit to the worker (:mod:`trioq._tracing`)."""
# the JSON schema is given: with the before-validator first (query strings are text),
# pydantic would document the bounds as "ge"/"le" and drop the pattern
Limit = Annotated[
    StrictInt,
    BeforeValidator(_digits_to_int),
    Field(ge=1, le=MAX_LIST),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_LIST}),
]
WaitQuery = Annotated[
    StrictInt,
    BeforeValidator(_digits_to_int),
    Field(ge=0, le=MAX_WAIT_MS),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_WAIT_MS}),
]
"""``waitMs`` as a query parameter (decimal digits)."""
Cursor = Annotated[
    StrictStr,
    BeforeValidator(_int_to_digits),
    Field(pattern=CURSOR_PATTERN),
    WithJsonSchema({"type": "string", "pattern": CURSOR_PATTERN}),
]

CAMEL = ConfigDict(
    alias_generator=to_camel,
    validate_by_alias=True,
    validate_by_name=False,
    serialize_by_alias=True,
    extra="ignore",
)


class WireModel(BaseModel):
    """Base of the wire's bodies: camelCase, immutable, unknown fields ignored."""

    model_config = ConfigDict(**CAMEL, frozen=True)
