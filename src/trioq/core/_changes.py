"""What a batch changed, and the log record that carries it (the log layout, format 2;
``docs/log-layout.md``).

A :class:`~trioq.core._state.QueueState` that tracks its changes
(:meth:`~trioq.core._state.QueueState.track_changes`) notes, at each place that
changes a stored record, the id it changed: a job put or dropped, a dead letter or a
finished record added or removed. :meth:`~trioq.core._state.QueueState.take_changes`
hands over those notes as a :class:`Changes` and starts afresh, so what a commit
costs to record is proportional to its batch, never to the queue.

:func:`encode_record` writes the log record of one commit from the state and its
changes: the ids' current records, each encoded exactly as format 1 encodes it (the
two layouts share one definition of a job), one op a line. :func:`apply_record`
replays a record onto a state (a checkpoint, or a standby's copy): each op names a
whole record, so applying an op again changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson

from .._errors import DocumentInvalid
from ._codec import LeaderInfo, _array, load_schedules, load_type_rules
from ._index import lease_order
from ._jobs import DeadJob, FinishedJob, Job

if TYPE_CHECKING:
    from ._state import QueueState

PUT: Final = 0
"""Changed in place: written as the record (``put``, ``dead``, ``finish``)."""
ADD: Final = 1
"""Added at the end of its list: written as the record."""
DROP: Final = 2
"""Removed: written as its id (``drop``, ``undead``, ``forget``)."""
MOVE: Final = 3
"""Removed, then added again at the end, within one batch: written as a removal then
the record, so that a replay puts it at the end too (a put of a present id replaces
it in place)."""

Log = dict[str, int]
"""Id -> :data:`PUT` | :data:`ADD` | :data:`DROP` | :data:`MOVE`, in the order the
ids were first touched, except that an id added moves to the end: the records added
in a batch come in the order they were added, which is their order in the state's
list."""


def changed(log: Log, key: str) -> None:
    """``key``'s record changed in place (one added earlier in the batch stays added)."""
    if key not in log:
        log[key] = PUT


def added(log: Log, key: str) -> None:
    """``key``'s record was added at the end of its list (it was absent)."""
    log[key] = ADD if log.pop(key, None) is None else MOVE


def removed(log: Log, key: str) -> None:
    """``key``'s record left its list."""
    log[key] = DROP


@dataclass(slots=True)
class Changes:
    """What changed in a state since its changes were last taken: the ids whose
    record changed, list by list (see :data:`Log`), and whether the header fields
    (``counters``, ``nextOrder``) changed."""

    jobs: Log = field(default_factory=dict)
    """Live jobs put (added or changed in place) or dropped."""
    dead: Log = field(default_factory=dict)
    """Dead letters added or removed."""
    finished: Log = field(default_factory=dict)
    """Finished records added to or removed from the dedup window."""
    header: bool = False
    """Whether ``counters`` or ``nextOrder`` changed (set when the changes are taken)."""
    schedules: bool = False
    """Whether the schedules changed (then the record carries them all)."""
    types: bool = False
    """Whether the type rules changed (then the record carries them all)."""

    def __bool__(self) -> bool:
        return bool(
            self.jobs or self.dead or self.finished or self.header or self.schedules or self.types
        )


# -------------------------------------------------------------- the record

_OPS: Final = (
    # (list, op that writes the record, op that removes it)
    ("jobs", b"put", b"drop"),
    ("dead", b"dead", b"undead"),
    ("finished", b"finish", b"forget"),
)


def encode_record(
    state: QueueState,
    changes: Changes,
    *,
    seq: int,
    epoch: int,
    broker_id: str,
    url: str,
    lease_at: int,
    released: bool,
) -> bytes:
    """The log record of one commit: the leader fields, then the ops of ``changes``
    (jobs, then dead letters, then finished records; within each list in the order
    of :data:`Log`), then ``counters`` and ``nextOrder`` if they changed.

    Deterministic compact JSON whose ``ops`` array holds one op a line, like format
    1's record arrays. Each entry written is the state's current one, encoded as
    format 1 encodes it (and cached there: the next format-1 encoding reuses it).

    A moved entry (:data:`MOVE`) is written as its removal then its record, and so is
    every entry its list added after it in the batch: applied again, the record then
    adds them all at the end again, in the same order (were the later ones written
    as records only, they would keep their places in front of the moved one).
    """
    lists: dict[str, Any] = {"jobs": state.jobs, "dead": state.dead, "finished": state.finished}
    ops: list[bytes] = []
    for name, put, remove in _OPS:
        records = lists[name]
        moved = False
        for key, kind in getattr(changes, name).items():
            moved = moved or kind == MOVE
            if kind == DROP or (moved and kind != PUT):
                ops.append(b'{"%s":%s}\n' % (remove, orjson.dumps(key)))
            if kind != DROP:
                entry = records.get(key)
                if entry is None:  # a tracking bug: say so rather than write a hole
                    raise RuntimeError(f"changes put {name} {key!r}, which the state lacks")
                # the entry's encoding ends in its newline: the op's line ends there
                ops.append(b'{"%s":%s}\n' % (put, entry.encode()[:-1]))
    record: dict[str, Any] = {
        "seq": seq,
        "epoch": epoch,
        "brokerId": broker_id,
        "url": url,
        "leaseAt": lease_at,
        "released": released,
        "ops": _array(ops),
    }
    if changes.header:
        record["counters"] = state.counters
        record["nextOrder"] = state.next_order
    if changes.schedules:
        record["schedules"] = [s.to_json() for s in state.schedules.values()]
    if changes.types:
        record["types"] = [r.to_json() for r in state.type_rules.values()]
    return orjson.dumps(record)


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """A log record's own fields: its number and the leader that wrote it."""

    seq: int
    leader: LeaderInfo


def read_record_header(data: bytes, *, name: str = "log record") -> RecordHeader:
    """A log record's number and leader, checked (:class:`~trioq.DocumentInvalid`
    naming ``name`` otherwise); its ops are not looked at."""
    return _checked_header(_parse(data, name), name)


def apply_record(
    state: QueueState, data: bytes, *, name: str = "log record", seq: int | None = None
) -> RecordHeader:
    """Replay the log record ``data`` onto ``state``; returns its header.

    The whole record is checked before anything is applied: a malformed one raises
    :class:`~trioq.DocumentInvalid` naming ``name`` and what is wrong, and leaves
    ``state`` as it was. Then its ops are applied in order (a put replaces a present
    job in place or adds it at the end; removing an absent id does nothing), its
    counters and ``nextOrder`` (when it has them) replace the state's, and ``seq``
    and the leader become the record's. Whether the record is the one that follows
    the state (its ``seq``) is the caller's business.

    The state's indexes are kept as a decode builds them: unclaimed jobs enter the
    ready heaps and the delayed heap (:meth:`~trioq.core._state.QueueState.pop_due`
    drops the entries already due), leases added by the record join the lease order
    sorted by (heartbeat, enqueue order). A state that tracks its changes notes them.
    With ``seq``, a record of another number is refused (``DocumentInvalid``) before
    anything is applied.
    """
    raw = _parse(data, name)
    header = _checked_header(raw, name)
    if seq is not None and header.seq != seq:
        raise DocumentInvalid(f"{name} is damaged: its seq is {header.seq}, not {seq}")
    actions = [_checked_op(op, i, name) for i, op in enumerate(raw["ops"])]
    counters = _checked_counters(raw, state.counters, name)
    schedules = None if "schedules" not in raw else load_schedules(raw["schedules"], name)
    rules = None if "types" not in raw else load_type_rules(raw["types"], name)
    leased: list[Job] = []
    for action, value in actions:
        action(state, value, leased)
    # leases in heartbeat order (see trioq.core._index): the record lists jobs in
    # the order they were first touched, not the order of their heartbeats
    leased.sort(key=lease_order)
    for job in leased:
        if state.jobs.get(job.id) is job:
            state.index.lease(job)
    if counters is not None:
        state.counters.update(counters[0])
        state.next_order = counters[1]
    if schedules is not None:
        state.schedules = schedules
        state.note_schedules()
    if rules is not None:
        state.type_rules = rules
        state.note_rules()
    state.seq = header.seq
    state.leader = header.leader
    return header


# ------------------------------------------------------------ applying ops

_Action = Callable[["QueueState", Any, list[Job]], None]


def _put(state: QueueState, job: Job, leased: list[Job]) -> None:
    old = state.jobs.get(job.id)
    log = None if state._changes is None else state._changes.jobs
    kept_lease = False
    if old is not None:
        state.job_bytes -= old.size
        if old.status == "in_progress":
            # a held job changed without a renewal (a cancel request, progress) keeps
            # its lease's place: re-entered, it would sit behind leases that end after
            # it, and expire late
            kept_lease = (
                job.status == "in_progress"
                and job.heartbeat_at == old.heartbeat_at
                and old.id in state.index.leases  # not a lease this record is entering
            )
            if not kept_lease:
                state.index.discard_lease(old.id)
        if log is not None:
            changed(log, job.id)
    elif log is not None:
        added(log, job.id)
    state.jobs[job.id] = job  # a present id keeps its place
    job.size = len(job.encode())
    state.job_bytes += job.size
    if job.status == "unclaimed":
        # as a decode does: every entry may be delayed; pop_due drops the due ones
        state.index.push(job, -1)
    elif not kept_lease:
        leased.append(job)


def _drop(state: QueueState, job_id: str, leased: list[Job]) -> None:
    old = state.jobs.pop(job_id, None)
    if old is None:
        return
    state.job_bytes -= old.size
    if old.status == "in_progress":
        state.index.discard_lease(job_id)
    if state._changes is not None:
        removed(state._changes.jobs, job_id)


def _dead(state: QueueState, record: DeadJob, leased: list[Job]) -> None:
    state.archive.restore_dead(record)


def _undead(state: QueueState, job_id: str, leased: list[Job]) -> None:
    state.archive.discard_dead(job_id)


def _finish(state: QueueState, record: FinishedJob, leased: list[Job]) -> None:
    state.archive.restore_finished(record)


def _forget(state: QueueState, job_id: str, leased: list[Job]) -> None:
    state.archive.forget(job_id)


# ------------------------------------------------------------------ checks

_DAMAGE = (KeyError, TypeError, ValueError, AttributeError)


def _parse(data: bytes, name: str) -> dict[str, Any]:
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DocumentInvalid(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise DocumentInvalid(f"{name} is not a log record: not a JSON object")
    return raw


def _checked_header(raw: dict[str, Any], name: str) -> RecordHeader:
    for key, kind in _HEADER_FIELDS:
        if key not in raw:
            raise DocumentInvalid(f"{name} is damaged: no {key!r} field")
        if not _is(raw[key], kind):
            raise DocumentInvalid(
                f"{name} is damaged: {key!r} is {_short(raw[key])}, not {_KIND_NAMES[kind]}"
            )
    leader = LeaderInfo(raw["brokerId"], raw["url"], raw["epoch"], raw["leaseAt"], raw["released"])
    return RecordHeader(raw["seq"], leader)


_HEADER_FIELDS: Final = (
    ("seq", "count"),
    ("epoch", "count"),
    ("brokerId", "str"),
    ("url", "str"),
    ("leaseAt", "count"),
    ("released", "bool"),
    ("ops", "list"),
)
_KIND_NAMES: Final = {
    "count": "a non-negative integer",
    "str": "a string",
    "bool": "true or false",
    "list": "an array",
}


def _is(value: object, kind: str) -> bool:
    if kind == "count":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    return isinstance(value, list)


def _checked_counters(
    raw: dict[str, Any], names: dict[str, int], name: str
) -> tuple[dict[str, int], int] | None:
    """The record's counters (every one the state has) and ``nextOrder``, or None
    when it has neither."""
    if "counters" not in raw and "nextOrder" not in raw:
        return None
    if "counters" not in raw or "nextOrder" not in raw:
        raise DocumentInvalid(f"{name} is damaged: 'counters' and 'nextOrder' come together")
    counters = raw["counters"]
    if not isinstance(counters, dict):
        raise DocumentInvalid(f"{name} is damaged: 'counters' is {_short(counters)}, not an object")
    for counter in names:
        if not _is(counters.get(counter), "count"):
            raise DocumentInvalid(
                f"{name} is damaged: counters.{counter} is {_short(counters.get(counter))}, "
                "not a non-negative integer"
            )
    if not _is(raw["nextOrder"], "count"):
        raise DocumentInvalid(
            f"{name} is damaged: 'nextOrder' is {_short(raw['nextOrder'])}, "
            "not a non-negative integer"
        )
    return {counter: counters[counter] for counter in names}, raw["nextOrder"]


def _checked_op(op: object, index: int, name: str) -> tuple[_Action, Any]:
    """The action of ``op`` and its checked argument (a record or an id)."""
    where = f"{name} is damaged: ops[{index}]"
    if not isinstance(op, dict) or len(op) != 1:
        raise DocumentInvalid(f"{where} is {_short(op)}, not an object of one op")
    ((kind, value),) = op.items()
    if kind in _REMOVALS:
        if not isinstance(value, str):
            raise DocumentInvalid(f"{where} ({kind}) names {_short(value)}, not an id")
        return _REMOVALS[kind], value
    if kind not in _PUTS:
        raise DocumentInvalid(f"{where} is an unknown op {kind!r}")
    action, record_type = _PUTS[kind]
    if not isinstance(value, dict):
        raise DocumentInvalid(f"{where} ({kind}) holds {_short(value)}, not a record")
    try:
        record = record_type.from_json(value)
    except KeyError as exc:
        raise DocumentInvalid(f"{where} ({kind}) has no {exc.args[0]!r} field") from None
    except _DAMAGE as exc:
        raise DocumentInvalid(f"{where} ({kind}): {exc}") from None
    if (
        isinstance(record, Job)
        and record.status == "in_progress"
        and (record.heartbeat_at is None or record.worker_id is None)
    ):
        raise DocumentInvalid(
            f"{where} (put): in-progress job {record.id!r} has no worker/heartbeat"
        )
    return action, record


_REMOVALS: Final[dict[str, _Action]] = {"drop": _drop, "undead": _undead, "forget": _forget}
_PUTS: Final[dict[str, tuple[_Action, type[Job | DeadJob | FinishedJob]]]] = {
    "put": (_put, Job),
    "dead": (_dead, DeadJob),
    "finish": (_finish, FinishedJob),
}


def _short(value: object) -> str:
    """``value`` as JSON, cut to 40 characters (it is foreign data in a message)."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."
