"""The queue.json codec: the document a :class:`~trioq.core._state.QueueState` is
stored as (format 1, see ``docs/queue-format.md``), and its stepped decoder.

:func:`encode` writes compact JSON whose record arrays hold one record a line.
:func:`decode_steps` is the decoder written as steps: a generator that yields where
its driver may checkpoint, so :func:`decode` runs it to the end in one go and
:func:`decode_async` lets the event loop run between steps (a leader that loads
100,000 jobs keeps answering its probes). :func:`decode_header` reads the header
alone, a few hundred bytes whatever the queue's depth.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable, Generator, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import trio

from .._errors import DocumentInvalid
from ._jobs import DeadJob, FinishedJob, Job
from ._schedules import Schedule
from ._type_rules import TypeRule

if TYPE_CHECKING:
    from ._state import Limits, QueueState

FORMAT = "trioq.queue"
FORMAT_VERSION = 1
LOG_FORMAT_VERSION = 2
"""The marker of the log layout (``docs/log-layout.md``): its objects are read by
:mod:`trioq.core._log_layout`, never by this module's decoder."""


@dataclass(slots=True)
class LeaderInfo:
    """Who leads, as written in the document."""

    broker_id: str
    url: str
    epoch: int
    lease_at: int
    released: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "brokerId": self.broker_id,
            "url": self.url,
            "epoch": self.epoch,
            "leaseAt": self.lease_at,
            "released": self.released,
        }


# ------------------------------------------------------------------ encoding


def encode(state: QueueState) -> bytes:
    """The whole document, deterministically: the same state gives the same bytes.

    Also brings each job's ``size`` (and the state's ``job_bytes``) up to date with
    the bytes written, as the decoder measures them: a decoded document enforces the
    size cap exactly as the state that wrote it.
    """
    jobs: list[bytes] = []
    total = 0
    for job in state.jobs.values():
        data = job.encode()
        job.size = len(data)
        total += job.size
        jobs.append(data)
    state.job_bytes = total
    return orjson.dumps(
        {
            **_header(state),
            "jobs": _array(jobs),
            "dead": _array(d.encode() for d in state.dead.values()),
            "finished": _array(f.encode() for f in state.finished.values()),
        }
    )


def _header(state: QueueState) -> dict[str, Any]:
    """The document's fields before its records (a copy: the state may change).
    ``schedules`` only when there are some: a queue without them is stored as
    before."""
    header = {
        "format": FORMAT,
        "formatVersion": FORMAT_VERSION,
        "seq": state.seq,
        "leader": None if state.leader is None else state.leader.to_json(),
        "nextOrder": state.next_order,
        "counters": dict(state.counters),
    }
    if state.schedules:
        header["schedules"] = [s.to_json() for s in state.schedules.values()]
    if state.type_rules:
        header["types"] = [r.to_json() for r in state.type_rules.values()]
    return header


def load_type_rules(raw: object, name: str) -> dict[str, TypeRule]:
    """The stored ``types`` list, checked (DocumentInvalid naming ``name``)."""
    if not isinstance(raw, list):
        raise DocumentInvalid(f"{name} is damaged: 'types' is not an array")
    rules: dict[str, TypeRule] = {}
    for item in raw:
        try:
            if not isinstance(item, dict):
                raise ValueError(f"a type rule is not an object: {item!r}")
            rule = TypeRule.from_json(item)
        except (KeyError, TypeError, ValueError) as exc:
            raise DocumentInvalid(f"{name} is damaged: a type rule: {exc!r}") from exc
        rules[rule.type] = rule
    return rules


def load_schedules(raw: object, name: str) -> dict[str, Schedule]:
    """The stored ``schedules`` list, checked (DocumentInvalid naming ``name``)."""
    if not isinstance(raw, list):
        raise DocumentInvalid(f"{name} is damaged: 'schedules' is not an array")
    schedules: dict[str, Schedule] = {}
    for item in raw:
        try:
            if not isinstance(item, dict):
                raise ValueError(f"a schedule is not an object: {item!r}")
            schedule = Schedule.from_json(item)
        except (KeyError, TypeError, ValueError) as exc:
            raise DocumentInvalid(f"{name} is damaged: a schedule: {exc!r}") from exc
        schedules[schedule.name] = schedule
    return schedules


def snapshot(state: QueueState) -> Callable[[], bytes]:
    """What :func:`encode` would write now, as a function that builds it later (in a
    worker thread, say). Capturing costs one pass over the records' cached
    encodings (about 5 ms at 100,000 jobs); joining them, the rest of the work, is
    left to the function. The state may change meanwhile: the encodings captured are
    immutable bytes, the header a copy."""
    jobs = [job.encode() for job in state.jobs.values()]
    dead = [record.encode() for record in state.dead.values()]
    finished = [record.encode() for record in state.finished.values()]
    header = _header(state)

    def build() -> bytes:
        return orjson.dumps(
            {**header, "jobs": _array(jobs), "dead": _array(dead), "finished": _array(finished)}
        )

    return build


def _array(parts: Iterable[bytes]) -> list[orjson.Fragment]:
    """A JSON array of encoded items, for ``orjson.dumps``: one fragment holding the
    items joined by commas, in a list (an empty fragment makes ``[]``). Each item is
    copied once by the join; bracketing the joined bytes would copy them all again."""
    return [orjson.Fragment(b",".join(parts))]


# ---------------------------------------------------------- decoding drivers

_S = TypeVar("_S", bound="QueueState")


def decode(cls: type[_S], data: bytes, limits: Limits, rng: random.Random, name: str) -> _S:
    """Run the decoder to the end in one go."""
    steps = decode_steps(cls, data, limits, rng, name)
    reply: object = None
    try:
        while True:
            request = steps.send(reply)
            reply = None if request is None else _parse(request)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def decode_async(
    cls: type[_S], data: bytes, limits: Limits, rng: random.Random, name: str
) -> _S:
    """Run the decoder with a checkpoint between steps; a document in another layout
    than :func:`encode` writes is parsed whole in a thread (``orjson.loads`` of a
    large document holds the GIL for its whole duration)."""
    steps = decode_steps(cls, data, limits, rng, name)
    reply: object = None
    try:
        while True:
            request = steps.send(reply)
            if request is None:
                await trio.lowlevel.checkpoint()
                reply = None
            else:
                reply = await trio.to_thread.run_sync(_parse, request)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def load(
    cls: type[_S], data: bytes, *, limits: Limits, rng: random.Random, name: str, freeze: bool
) -> _S:
    """:func:`decode_async`; with ``freeze``, the collector is paused meanwhile and
    what was loaded is moved out of its reach (``gc.freeze``): at 100,000 jobs each
    full collection the loading would trigger stalls the loop for tens of
    milliseconds, and every later full collection would scan the records again."""
    freeze = freeze and gc.isenabled()
    if freeze:
        gc.disable()
    try:
        return await decode_async(cls, data, limits, rng, name)
    finally:
        if freeze:
            gc.freeze()
            gc.enable()


def decode_header(data: bytes, *, name: str) -> tuple[int, LeaderInfo | None]:
    """``seq`` and the leader, from the document's header only (checked like a full
    decode). The header fields are written before ``jobs``, and inside a JSON string
    a quote is escaped, so the first ``,"jobs":`` is the key."""
    cut = data.find(b',"jobs":')
    parsed = _parse(data[:cut] + b"}" if cut > 0 else data)
    if isinstance(parsed, orjson.JSONDecodeError) and cut > 0:
        parsed = _parse(data)  # say where the whole object breaks, not the cut header
    raw = _checked_header(parsed, name, data)
    try:
        return _nonneg(raw["seq"]), _leader_from(raw.get("leader"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DocumentInvalid(f"{name} is damaged: {exc!r}") from exc


# ------------------------------------------------------------- the decoder

_DECODE_STEP = 256
"""Records decoded between two checkpoints (about a millisecond of work)."""

_JOB_KEYS = tuple(Job("", "", None, "unclaimed", 0, 0, 0, 0, 0).to_json().keys())
_SCAN_WINDOW = 1 << 20
_JOBS_KEY = b',"jobs":['
_TAIL_KEYS = (b',"dead":[', b',"finished":[')
_DAMAGE = (KeyError, TypeError, ValueError, AttributeError)


def decode_steps(
    cls: type[_S], data: bytes, limits: Limits, rng: random.Random, name: str
) -> Generator[bytes | None, object, _S]:
    """The decoder, as steps: it yields ``None`` where its driver may checkpoint,
    or bytes it wants parsed whole (the driver sends back ``orjson.loads`` of them,
    or the ``JSONDecodeError``); :class:`DocumentInvalid` if ``data`` is not a
    document this trioq reads."""
    raw, records = yield from _header_and_records(data, name)
    state = cls(limits=limits, rng=rng)
    unclaimed: list[Job] = []
    in_progress: list[Job] = []
    try:
        state.seq = _nonneg(raw["seq"])
        state.leader = _leader_from(raw.get("leader"))
        state.next_order = _nonneg(raw["nextOrder"])
        if "schedules" in raw:
            state.schedules = load_schedules(raw["schedules"], name)
        if "types" in raw:
            state.type_rules = load_type_rules(raw["types"], name)
        counters = raw["counters"]
        for counter in state.counters:
            state.counters[counter] = _nonneg(counters.get(counter, 0))
        for count, item in enumerate(records[0], 1):
            job = _load_job(state, item)
            (unclaimed if job.status == "unclaimed" else in_progress).append(job)
            if count % _DECODE_STEP == 0:
                yield None
        yield from _load_archived(state, DeadJob, records[1], state.dead)
        yield from _load_archived(state, FinishedJob, records[2], state.finished)
    except _DAMAGE as exc:
        raise DocumentInvalid(f"{name} is damaged: {exc!r}") from exc
    yield from state.index.load(unclaimed, in_progress)
    return state


_A = TypeVar("_A", DeadJob, FinishedJob)


def _load_archived(
    state: QueueState, kind: type[_A], items: Iterable[object], into: MutableMapping[str, _A]
) -> Generator[None, object, None]:
    """Dead-letter or finished records into ``into``, counted in the archive's bytes."""
    for count, item in enumerate(items, 1):
        record, encoded = _record(kind, item, None)
        record.encoded = encoded
        into[record.id] = record
        state.archive.bytes += len(record.encode())
        if count % _DECODE_STEP == 0:
            yield None


def _header_and_records(
    data: bytes, name: str
) -> Generator[bytes | None, object, tuple[dict[str, Any], list[Iterable[object]]]]:
    """The checked header, and the three record arrays (jobs, dead, finished) as
    stored bytes a record each (our own layout) or as parsed values (any other)."""
    layout = yield from _split_records(data)
    if layout is not None:
        header, spans = layout
        parsed = _parse(header)
        if isinstance(parsed, orjson.JSONDecodeError):
            parsed = yield data  # say where the whole object breaks, not the header
        return _checked_header(parsed, name, data), [_records(data, s) for s in spans]
    parsed = yield data
    raw = _checked_header(parsed, name, data)
    try:
        return raw, [list(raw["jobs"]), list(raw["dead"]), list(raw["finished"])]
    except (KeyError, TypeError) as exc:
        raise DocumentInvalid(f"{name} is damaged: {exc!r}") from exc


def _load_job(state: QueueState, item: object) -> Job:
    job, state_bytes = _record(Job, item, _JOB_KEYS)
    if job.id in state.jobs:
        raise ValueError(f"job {job.id!r} appears twice")
    if job.status == "in_progress" and (job.heartbeat_at is None or job.worker_id is None):
        raise ValueError(f"in-progress job {job.id!r} has no worker/heartbeat")
    state.jobs[job.id] = job
    job.encoded = state_bytes
    job.size = len(job.encode())
    state.job_bytes += job.size
    return job


def _split_records(
    data: bytes,
) -> Generator[None, object, tuple[bytes, list[tuple[int, int]]] | None]:
    """The header and the spans of the three record arrays, when ``data`` has the
    layout :func:`encode` writes: compact JSON whose arrays hold one record a line
    (each record ends in a newline, which JSON never has unescaped inside a value,
    so a newline followed by ``,`` or ``]`` ends a record). ``None`` for any other
    layout. Scans a megabyte between two checkpoints."""
    cut = data.find(_JOBS_KEY)
    if cut <= 0:
        return None
    spans: list[tuple[int, int]] = []
    pos = cut + len(_JOBS_KEY)
    for following in (*_TAIL_KEYS, None):
        if data.startswith(b"]", pos):
            spans.append((pos, pos))
            pos += 1
        else:
            end = -1
            for window in range(pos, len(data), _SCAN_WINDOW):
                end = data.find(b"\n]", window, window + _SCAN_WINDOW + 1)
                if end >= 0:
                    break
                yield None
            if end < 0:
                return None
            spans.append((pos, end))
            pos = end + 2
        if following is not None:
            if not data.startswith(following, pos):
                return None
            pos += len(following)
    if data[pos:].strip() != b"}":
        return None
    return data[:cut] + b"}", spans


def _records(data: bytes, span: tuple[int, int]) -> Iterator[bytes]:
    """Each record's bytes (without its newline) in ``data[span[0]:span[1]]``."""
    pos, end = span
    while pos < end:
        stop = data.find(b"\n,", pos, end)
        if stop < 0:
            stop = end
        yield data[pos:stop]
        pos = stop + 2


_R = TypeVar("_R", Job, DeadJob, FinishedJob)


def _record(
    kind: type[_R], item: object, canonical_keys: tuple[str, ...] | None
) -> tuple[_R, bytes | None]:
    """A record from its stored form (bytes from the line layout, or an already
    parsed value), and its encoding when the stored bytes are exactly what
    ``encode()`` would write again (our own writer's), so the first commit after a
    load re-encodes nothing."""
    if isinstance(item, bytes):
        raw = orjson.loads(item)
        if not isinstance(raw, dict):
            raise ValueError(f"expected a record, got {item[:80]!r}")
        record = kind.from_json(raw)
        # a record with optional fields (a job's ``trace``) has keys of its own
        keys = (
            canonical_keys
            if canonical_keys is not None and len(raw) == len(canonical_keys)
            else tuple(record.to_json().keys())
        )
        if tuple(raw.keys()) == keys:
            return record, item + b"\n"
        return record, None
    if not isinstance(item, dict):
        raise ValueError(f"expected a record, got {item!r}")
    return kind.from_json(item), None


def _parse(data: bytes) -> object:
    """``orjson.loads``, with the error returned rather than raised (for the driver)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return exc


def _checked_header(raw: object, name: str, data: bytes) -> dict[str, Any]:
    """``raw`` (``data`` parsed) if it is a format-1 header; else DocumentInvalid
    naming the object and saying what is wrong (:func:`header_problem`)."""
    problem = header_problem(raw, data)
    if problem is not None:
        raise DocumentInvalid(f"{name} {problem.text}")
    assert isinstance(raw, dict)
    return raw


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with a stored object, as the words that follow its name."""

    text: str
    at: int | None = None
    """The byte offset of the fault, when it is at one place (bad JSON)."""


def header_problem(raw: object, data: bytes) -> Problem | None:
    """Why ``data``, parsed as ``raw`` (or the ``JSONDecodeError`` of parsing it),
    is not a document this trioq may read and write, or ``None`` if its marker and
    version are this trioq's. The records are not looked at (a full decode does)."""
    if isinstance(raw, orjson.JSONDecodeError):
        return _json_problem(raw, data)
    if not isinstance(raw, dict):
        return Problem(f"is not a trioq queue document: it is {_kind(raw)}, not an object")
    if "format" not in raw:
        keys = ", ".join(repr(key) for key in list(raw)[:5]) or "none"
        more = ", ..." if len(raw) > 5 else ""
        return Problem(
            f"is not a trioq queue document: no 'format' field (a JSON object with keys "
            f"{keys}{more})"
        )
    if raw["format"] != FORMAT:
        return Problem(
            f"is not a trioq queue document: its 'format' is {_short(raw['format'])}, "
            f"not {FORMAT!r}"
        )
    version = raw.get("formatVersion")
    if version == FORMAT_VERSION and not isinstance(version, bool | float):
        return None
    if "formatVersion" not in raw:
        return Problem("is a trioq queue document without a 'formatVersion' field (damaged)")
    if version == LOG_FORMAT_VERSION and raw.get("layout") == "log":
        return Problem(
            f"marks a queue in the log layout (format version {LOG_FORMAT_VERSION}), which "
            "this broker does not read with --layout document: start it with --layout log "
            "(the object is never overwritten)"
        )
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        return Problem(
            f"has format version {version}, newer than this broker supports "
            f"({FORMAT_VERSION}): upgrade trioq to use it (it is never overwritten)"
        )
    return Problem(
        f"has format version {_short(version)}, which no trioq writes (this broker reads "
        f"format version {FORMAT_VERSION})"
    )


def _json_problem(exc: orjson.JSONDecodeError, data: bytes) -> Problem:
    """Bad JSON, said the way an operator can act on: empty, binary, cut short, or
    broken at a byte."""
    if not data.strip():
        what = "is empty (0 bytes)" if not data else f"holds only whitespace ({len(data)} bytes)"
        return Problem(f"{what}: not valid JSON, not a trioq queue document", 0)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return Problem(
            f"is not valid JSON: binary data, not UTF-8 text (first invalid byte at byte "
            f"{bad.start} of {len(data)})",
            bad.start,
        )
    message = exc.msg.split(": line ")[0]
    if exc.pos >= len(data.rstrip()) or "end of data" in message:
        return Problem(
            f"is not valid JSON: truncated JSON at byte {len(data)} (the object ends in "
            f"the middle of a value: cut short?)",
            len(data),
        )
    return Problem(
        f"is not valid JSON: {message} at byte {exc.pos} (line {exc.lineno}, column {exc.colno})",
        exc.pos,
    )


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, bool) or value is None:
        return f"the JSON literal {orjson.dumps(value).decode()}"
    return "a JSON number"


def _short(value: object) -> str:
    """``value`` as JSON, cut to 40 characters (it is foreign data in a message)."""
    text = orjson.dumps(value).decode() if _jsonable(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _jsonable(value: object) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


def json_error_at(data: bytes) -> int | None:
    """Where ``data`` stops being valid JSON (a byte offset), or ``None`` if it is."""
    parsed = _parse(data)
    if isinstance(parsed, orjson.JSONDecodeError):
        return _json_problem(parsed, data).at
    return None


def describe_object(storage: object, key: str) -> str:
    """``key`` and where it is stored, for messages: the backend's ``locate(key)``
    (a file path; ``s3://bucket/key`` and the endpoint) when it has one, under any
    throttling or fault-injecting wrappers; else ``key in <storage.describe()>``."""
    inner = storage
    while hasattr(inner, "inner"):
        inner = inner.inner
    locate = getattr(inner, "locate", None)
    if callable(locate):
        return str(locate(key))
    describe = getattr(storage, "describe", None)
    where = describe() if callable(describe) else repr(storage)
    return f"{key} in {where}"


def _leader_from(leader: Any) -> LeaderInfo | None:
    if leader is None:
        return None
    return LeaderInfo(
        broker_id=str(leader["brokerId"]),
        url=str(leader["url"]),
        epoch=_nonneg(leader["epoch"]),
        lease_at=_nonneg(leader["leaseAt"]),
        released=bool(leader.get("released", False)),
    )


def _nonneg(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value
