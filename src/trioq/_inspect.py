"""``trioq inspect``: read the queue's stored object straight from storage, without
a broker, and say what it is.

It takes the broker's storage options (``--storage``, ``--data-dir``, ``--bucket``,
``--prefix``, ``--endpoint-url``, ``--region``, ``--key`` and their environment
variables: :data:`trioq.broker._settings.STORAGE_FIELDS`) and prints where the object
is, its size and version, and then either a summary of a valid document or exactly
what is wrong with it: the words a broker's refusal line uses, and the bytes around
the fault, escaped. It only reads: nothing is written, not even a missing data
directory.

The log layout (format 2) is read as a broker loads it: the marker at the key, the
newest checkpoint and the records after it; `--document` writes the whole state as
one format-1 document, in either layout.

Exit status: 0 a valid queue document, 1 an object that is not one (a broker would
refuse to lead it), 2 no object at the key, or the store could not be read (or the
options are wrong).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import orjson
import trio

from ._errors import DocumentInvalid, StorageUnavailable
from .core._codec import describe_object, json_error_at
from .core._config import EngineConfig
from .core._engine import Engine
from .core._log_layout import LogLayout, is_marker
from .core._state import QueueState
from .storage._file import FileStorage
from .storage._protocol import Storage

__all__ = ["inspect_object", "main", "read_state"]

VALID, INVALID, UNREADABLE = 0, 1, 2
"""The exit statuses."""

_CONTEXT = 32
"""Bytes shown on each side of a fault."""


def main(argv: Sequence[str] | None = None, *, prog: str = "trioq inspect") -> int:
    """Run ``trioq inspect``; returns the exit status."""
    from .broker._service import build_storage
    from .broker._settings import BrokerSettings, SettingsError, add_storage_arguments

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Show the queue's stored object, read straight from storage (no "
        "broker needed; nothing is written). Exit 0: a valid queue document; 1: an "
        "object a broker would refuse to lead; 2: no object, or storage error.",
    )
    add_storage_arguments(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object")
    output.add_argument(
        "--raw", action="store_true", help="write the stored bytes to stdout, unchanged"
    )
    output.add_argument(
        "--document",
        action="store_true",
        help="write the whole state to stdout as one format-1 document (in the log "
        "layout: its newest checkpoint with the records after it applied)",
    )
    args = parser.parse_args(argv)
    try:
        settings = BrokerSettings.load(args=args)
    except SettingsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return UNREADABLE
    storage = build_storage(settings, bare=True)
    report = trio.run(inspect_object, storage, settings.key)
    state = report.pop("_state", None)
    if args.document:
        report.pop("_raw", None)
        if state is None:
            print(f"{prog}: {report['problem']}", file=sys.stderr)
        else:
            sys.stdout.buffer.write(state.encode())
            sys.stdout.buffer.flush()
        return int(report["exit"])
    if args.raw:
        raw = report.pop("_raw", None)
        if raw is None:
            print(f"{prog}: {report['problem']}", file=sys.stderr)
        else:
            sys.stdout.buffer.write(raw)
            sys.stdout.buffer.flush()
        return int(report["exit"])
    report.pop("_raw", None)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_report(report, sys.stdout)
    return int(report["exit"])


async def read_state(storage: Storage, key: str = "queue.json") -> QueueState:
    """The committed state stored at ``key``, in either layout, read as
    :func:`inspect_object` reads it (nothing written). Raises
    :class:`~trioq.DocumentInvalid` for an object that is not a queue, or no object."""
    report = await inspect_object(storage, key)
    if "_state" not in report:
        raise DocumentInvalid(f"{report['location']}: {report.get('problem', report['status'])}")
    state: QueueState = report["_state"]
    return state


async def inspect_object(storage: Storage, key: str) -> dict[str, Any]:
    """What is stored at ``key``, as the report ``trioq inspect`` prints (``--json``
    prints it as it is, without ``_raw``, the stored bytes, and ``_state``, the
    state read)."""
    where = describe_object(storage, key)
    report: dict[str, Any] = {"location": where, "key": key, "storage": storage.describe()}
    try:
        got = await storage.read(key)
    except DocumentInvalid as exc:
        # a file the file backend cannot frame (no header, wrong size or CRC): show
        # the file itself
        return _damaged_file(report, storage, key, exc)
    except StorageUnavailable as exc:
        return {**report, "status": "unreadable", "exit": UNREADABLE, "problem": exc.message}
    if got is None:
        return {
            **report,
            "status": "missing",
            "exit": UNREADABLE,
            "problem": f"no object at {where}",
        }
    report |= {"size": len(got.data), "version": got.version, "_raw": got.data}
    try:
        if is_marker(got.data, name=where):
            return await _inspect_log(report, storage, key)
        state = QueueState.decode(got.data, name=where)
    except DocumentInvalid as exc:
        return _invalid(report, exc.message, got.data, json_error_at(got.data))
    except StorageUnavailable as exc:
        return {**report, "status": "unreadable", "exit": UNREADABLE, "problem": exc.message}
    report["_state"] = state
    return {**report, "status": "valid", "exit": VALID, "document": _summary(state)}


async def _inspect_log(report: dict[str, Any], storage: Storage, key: str) -> dict[str, Any]:
    """The log layout: the state its newest checkpoint and the records after it hold
    (read as a broker loads it, with nothing written), and what its objects are."""
    engine = Engine(storage, key=key, config=EngineConfig(layout="log"), create=False)
    layout = engine.layout
    assert isinstance(layout, LogLayout)
    state = await layout.load()
    checkpoints = await storage.list_keys(layout.checkpoint_prefix)
    records = await storage.list_keys(layout.log_prefix)
    summary = _summary(state) | {
        "formatVersion": 2,
        "layout": "log",
        "checkpoints": [layout.seq_of(k, layout.checkpoint_prefix) for k in checkpoints],
        "records": len(records),
        "firstRecord": layout.seq_of(records[0]) if records else None,
    }
    report["_state"] = state
    return {**report, "status": "valid", "exit": VALID, "document": summary}


def _invalid(report: dict[str, Any], problem: str, data: bytes, at: int | None) -> dict[str, Any]:
    report |= {"status": "invalid", "exit": INVALID, "problem": problem, "at": at}
    report["excerpt"] = _excerpt(data, at if at is not None else 0)
    return report


def _damaged_file(
    report: dict[str, Any], storage: Storage, key: str, exc: DocumentInvalid
) -> dict[str, Any]:
    inner: object = storage
    while hasattr(inner, "inner"):
        inner = inner.inner
    data = b""
    if isinstance(inner, FileStorage):
        try:
            data = inner.path(key).read_bytes()
        except OSError as error:
            report["readError"] = str(error)
    report |= {"size": len(data), "version": None, "_raw": data}
    return _invalid(report, exc.message, data, None)


def _summary(state: QueueState) -> dict[str, Any]:
    leader = state.leader
    now = int(time.time() * 1000)
    by_status = {"unclaimed": state.unclaimed_count, "in_progress": state.in_progress_count}
    return {
        "format": "trioq.queue",
        "formatVersion": 1,
        "seq": state.seq,
        "leader": None
        if leader is None
        else {
            **leader.to_json(),
            # from the leader's wall clock to this host's: informative only
            "leaseAgeMs": now - leader.lease_at,
        },
        "nextOrder": state.next_order,
        "jobs": len(state.jobs),
        "byStatus": by_status,
        "dead": len(state.dead),
        "finished": len(state.finished),
        "counters": dict(state.counters),
    }


def _excerpt(data: bytes, at: int) -> dict[str, Any]:
    """The bytes around ``at``, escaped (printable ASCII as is, the rest as ``\\xNN``),
    and the column of ``at`` in that text, for a caret under it."""
    start = max(0, at - _CONTEXT)
    before = _escaped(data[start:at])
    after = _escaped(data[at : at + _CONTEXT])
    return {
        "start": start,
        "text": ("..." if start else "") + before + after,
        "caret": len(before) + (3 if start else 0),
        "more": at + _CONTEXT < len(data),
    }


def _escaped(chunk: bytes) -> str:
    return "".join(
        chr(byte) if 0x20 <= byte < 0x7F and byte != 0x5C else f"\\x{byte:02x}" for byte in chunk
    )


def print_report(report: dict[str, Any], out: TextIO) -> None:
    """The report as text for a person."""
    write = out.write
    write(f"object:   {report['location']}\n")
    write(f"storage:  {report['storage']}\n")
    if "size" in report:
        write(f"size:     {report['size']} bytes\n")
    if report.get("version"):
        write(f"version:  {report['version']}\n")
    status = report["status"]
    if status == "valid":
        doc = report["document"]
        write(
            f"status:   valid trioq queue document (format {doc['format']} {doc['formatVersion']})\n"
        )
        if doc.get("layout") == "log":
            checkpoints = ", ".join(str(seq) for seq in doc["checkpoints"]) or "none"
            first = doc["firstRecord"]
            span = f"{first} to {doc['seq']}" if first is not None else "none"
            write(f"layout:   log: checkpoints {checkpoints}; {doc['records']} records ({span})\n")
        write(f"seq:      {doc['seq']}\n")
        leader = doc["leader"]
        if leader is None:
            write("leader:   none\n")
        else:
            released = ", released" if leader["released"] else ""
            write(
                f"leader:   {leader['url'] or '(no url)'} (broker {leader['brokerId']}, "
                f"epoch {leader['epoch']}{released}); last commit "
                f"{leader['leaseAgeMs'] / 1000:.1f} s ago by the leader's clock\n"
            )
        by_status = doc["byStatus"]
        write(
            f"jobs:     {doc['jobs']} ({by_status['unclaimed']} unclaimed, "
            f"{by_status['in_progress']} in progress)\n"
        )
        write(f"dead:     {doc['dead']} dead letters\n")
        write(f"dedup:    {doc['finished']} finished ids remembered\n")
        counters = ", ".join(f"{name} {value}" for name, value in doc["counters"].items())
        write(f"counters: {counters}\n")
        return
    write(f"status:   {status}\n")
    write(f"problem:  {report['problem']}\n")
    excerpt = report.get("excerpt")
    if excerpt is not None and (excerpt["text"] or report.get("at") is not None):
        at = report.get("at")
        label = f"at byte {at}" if at is not None else "from byte 0"
        write(f"bytes {label} (escaped):\n")
        write(f"  {excerpt['text']}{'...' if excerpt['more'] else ''}\n")
        if at is not None:
            write(f"  {' ' * excerpt['caret']}^\n")
    if status == "invalid":
        write(
            "A broker refuses to lead this object and never overwrites it; see "
            "docs/storage.md (When the stored object is wrong).\n"
        )
