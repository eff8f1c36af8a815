"""Validation: wire data to models, a ValidationError to a 400 that names the field."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic

from pydantic import BeforeValidator, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

from .._errors import BrokerProtocolError
from ._limits import ID_PATTERN, MAX_PAYLOAD_DEPTH, RULES, JobId, T, WorkerId
from ._payload import encode_payload, too_deep
from ._records import FailReport, JobReport, NewJob
from ._requests import (
    ExchangeClaim,
    ExchangeRequest,
    ExchangeShape,
    SubmitBatch,
    SubmitBulk,
    SubmitBulkShape,
    drop_nulls,
)

WIRE_NEW_JOB: TypeAdapter[NewJob] = TypeAdapter(Annotated[NewJob, BeforeValidator(drop_nulls)])
"""A :class:`NewJob` from the wire (``null`` fields count as absent)."""
_NEW_JOB: TypeAdapter[NewJob] = TypeAdapter(NewJob)
JOB_ID: TypeAdapter[str] = TypeAdapter(JobId)
WORKER_ID: TypeAdapter[str] = TypeAdapter(WorkerId)
_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def adapter(model: type[T]) -> TypeAdapter[T]:
    """The (cached) validator of ``model``."""
    found = _ADAPTERS.get(model)
    if found is None:
        found = _ADAPTERS[model] = TypeAdapter(model)
    return found


def parse(model: type[T] | TypeAdapter[T], data: object, *, prefix: str = "", field: str = "") -> T:
    """``data`` validated as ``model``; :class:`~trioq.BrokerProtocolError` if it is not
    one, naming the field (after ``prefix``) and its rule. ``field`` names ``data``
    itself, when it is one field's value (``parse(WORKER_ID, value, field="workerId")``)."""
    validator = model if isinstance(model, TypeAdapter) else adapter(model)
    try:
        return validator.validate_python(data)
    except ValidationError as exc:
        raise BrokerProtocolError(prefix + describe(exc, field)) from None


def describe(exc: ValidationError, field: str = "") -> str:
    """The message of a validation error: its first problem, by the field's wire name
    (``field`` is the name of a value validated on its own)."""
    errors = exc.errors(include_url=False, include_context=False)
    first = errors[0]
    loc = (field, *first["loc"]) if field else first["loc"]
    message = _problem(loc, first["type"], first.get("input"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message


def _problem(loc: tuple[int | str, ...], kind: str, value: object) -> str:
    names = [part for part in loc if isinstance(part, str)]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if kind == "missing":
        return f"{path} is required"
    if kind in ("dataclass_type", "model_type", "dict_type", "model_attributes_type"):
        return f"{path or 'the body'} must be an object"
    if not names:
        return f"{path or 'the body'} is invalid"
    field = names[-1]
    while not isinstance(loc[-1], str):  # an element of a list field: name the field
        loc = loc[:-1]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    rule = RULES.get(field, "valid")
    if isinstance(value, bool) and "integer" in rule:
        return f"{path} must be {rule}, not a boolean"
    return f"{path} must be {rule}"


def job_id(value: object) -> str:
    """A job id from a path or a message, checked."""
    if isinstance(value, str) and value:
        try:
            return JOB_ID.validate_python(value)
        except ValidationError:
            pass
    raise BrokerProtocolError(f"job id must be {RULES['id']}")


def seal(job: NewJob, prefix: str = "", payload_json: bytes | None = None) -> NewJob:
    """Encode a schema-checked job's payload once (or take ``payload_json``, its
    encoding by :func:`encode_payload`), refusing a payload that is not JSON or nests
    too deep, and keep the bytes on the job: a sealed job is one that passed the
    schema, and nobody checks or encodes it again."""
    data = payload_json
    if data is None:
        try:
            data = encode_payload(job.payload)
        except (TypeError, ValueError) as exc:
            raise BrokerProtocolError(f"{prefix}{exc}") from None
    if too_deep(data, job.payload):
        raise BrokerProtocolError(
            f"{prefix}payload is nested more than {MAX_PAYLOAD_DEPTH} levels deep"
        )
    object.__setattr__(job, "_payload_json", data)
    return job


def parse_new_job(data: object) -> NewJob:
    """A single job from the wire (``POST /v1/jobs``, ``submitJob``), sealed."""
    return seal(parse(WIRE_NEW_JOB, data))


def parse_batch(data: object) -> list[NewJob]:
    """The jobs of a batch from the wire (``POST /v1/jobs/batch``, ``submitJobs``), sealed."""
    jobs = parse(SubmitBatch, data).jobs
    return [seal(job, f"jobs[{i}].") for i, job in enumerate(jobs)]


def checked_job(item: NewJob, prefix: str = "", payload_json: bytes | None = None) -> NewJob:
    """``item`` (handed to the queue model or the client by any caller), checked
    against the schema and sealed, unless it is sealed already (it came through the
    wire). Errors start with ``prefix`` (the queue model's is ``job: `` or
    ``jobs[3]: ``); ``payload_json`` is the payload's encoding, if already made."""
    if isinstance(item, NewJob) and item.payload_json is not None:
        return item
    data = {wire: getattr(item, name, None) for name, wire in _NEW_JOB_FIELDS}
    return seal(parse(_NEW_JOB, data, prefix=prefix), prefix, payload_json)


_NEW_JOB_FIELDS = [(f.name, to_camel(f.name)) for f in dataclasses.fields(NewJob)]
"""Each field of :class:`NewJob` and its wire name (converted once: to_camel is slow)."""


# ------------------------------------------------------------ per-item requests

# A per-item request is validated whole first (one pydantic call, the common case);
# only when that fails is it read again: its outer shape as a whole (a 400), then
# each item on its own, a bad one becoming that item's error.

_ID = re.compile(ID_PATTERN)
_JOB_REPORT: TypeAdapter[JobReport] = TypeAdapter(JobReport)
_FAIL_REPORT: TypeAdapter[FailReport] = TypeAdapter(FailReport)


@dataclass(frozen=True, slots=True)
class Items(Generic[T]):
    """The items of a per-item request, in order: each parsed, or the
    :class:`~trioq.BrokerProtocolError` it met (its message starts with its place:
    ``jobs[3]: ``)."""

    values: list[T | BrokerProtocolError]
    rejected_ids: dict[int, str | None] = field(default_factory=dict)
    """The id each rejected item gave, by its index (None: it gave no usable one)."""


@dataclass(frozen=True, slots=True)
class ParsedExchange:
    """``POST /v1/jobs/exchange`` read: the worker, its reports item by item, the claim."""

    worker_id: str
    heartbeat: Items[JobReport]
    complete: Items[JobReport]
    fail: Items[FailReport]
    release: Items[JobReport]
    claim: ExchangeClaim | None


def parse_bulk(data: object) -> Items[NewJob]:
    """The jobs of ``POST /v1/jobs/bulk`` (``submitBulk``), each sealed or its error.
    A body whose shape is wrong (``jobs`` not a list of 1-10,000 objects) is a
    BrokerProtocolError for the whole request."""
    try:
        items = _all(adapter(SubmitBulk).validate_python(data).jobs)
    except ValidationError:
        shape = parse(SubmitBulkShape, data)
        items = _each(shape.jobs, WIRE_NEW_JOB, "jobs", "id")
    values = items.values
    for index, job in enumerate(values):
        if isinstance(job, NewJob):
            try:
                seal(job, f"jobs[{index}]: ")
            except BrokerProtocolError as exc:
                values[index] = exc
                items.rejected_ids[index] = job.id
    return items


def parse_exchange(data: object) -> ParsedExchange:
    """``POST /v1/jobs/exchange`` (``exchange``): a report that breaks its schema is
    its own error; anything else wrong is a BrokerProtocolError for the whole request."""
    try:
        whole = adapter(ExchangeRequest).validate_python(data)
    except ValidationError:
        shape = parse(ExchangeShape, data)
        return ParsedExchange(
            shape.worker_id,
            _each(shape.heartbeat or [], _JOB_REPORT, "heartbeat", "jobId"),
            _each(shape.complete or [], _JOB_REPORT, "complete", "jobId"),
            _each(shape.fail or [], _FAIL_REPORT, "fail", "jobId"),
            _each(shape.release or [], _JOB_REPORT, "release", "jobId"),
            shape.claim,
        )
    return ParsedExchange(
        whole.worker_id,
        _all(whole.heartbeat),
        _all(whole.complete),
        _all(whole.fail),
        _all(whole.release),
        whole.claim,
    )


def _all(parsed: Sequence[T] | None) -> Items[T]:
    """Items that all passed their schema."""
    return Items(list(parsed or ()))


def _each(raws: list[dict[str, Any]], model: TypeAdapter[T], name: str, id_key: str) -> Items[T]:
    """Each of ``raws`` validated on its own as ``model``; a failure is that item's
    error, named ``name[index]: ``."""
    values: list[T | BrokerProtocolError] = []
    rejected: dict[int, str | None] = {}
    for index, raw in enumerate(raws):
        try:
            values.append(model.validate_python(raw))
        except ValidationError as exc:
            values.append(BrokerProtocolError(f"{name}[{index}]: {describe(exc)}"))
            given = raw.get(id_key)
            rejected[index] = given if isinstance(given, str) and _ID.fullmatch(given) else None
    return Items(values, rejected)
