"""The sub-commands that talk to a broker: ``submit``, ``stats``, ``jobs``, ``get``,
``dead``, ``requeue`` and ``cancel``.

Each parses its arguments, calls the broker through a :class:`~trioq.Client`
(:func:`~trioq.cli._common.run` turns every failure into one line on stderr) and
writes its answer to stdout: a rich table on a terminal, plain text otherwise, or
JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import trio

from .._errors import TrioqError
from .._wire import MAX_LIST, NewJob, parse_new_job
from ..client import Client, JobSpec, Submitted
from ._common import USAGE, CliError, dumps, is_terminal, parser, run

CHUNK_JOBS = 1000
"""Jobs per ``POST /v1/jobs/bulk`` of ``submit --file`` (one progress step each)."""
CHUNK_BYTES = 512 * 1024
"""Payload bytes per request of ``submit --file``: far under the broker's request cap."""
CONTENT_ID_PREFIX = "sha256-"
"""A job id derived from a line's content: this and the hex digest (71 characters)."""

_JOB_KEYS = {"type", "payload", "id", "delay", "maxAttempts", "priority", "uniqueKey"}


# ------------------------------------------------------------------- submit


def submit(argv: Sequence[str], prog: str) -> int:
    p = parser(
        prog,
        "Submit one job (TYPE and a JSON payload; prints its id), or every line of a "
        "JSON-lines file with --file (prints the ids, one a line; running the same file "
        "again within the dedup window submits nothing new).",
    )
    p.add_argument("type", nargs="?", metavar="TYPE", help="the job type")
    p.add_argument("payload", nargs="?", metavar="JSON", help="the payload, as JSON")
    p.add_argument("--id", help="the job's id (default: a new one)")
    p.add_argument("--delay", type=float, metavar="SECONDS", help="claimable this much later")
    p.add_argument("--max-attempts", type=int, metavar="N", help="attempts before dead-letter")
    p.add_argument("--priority", type=int, metavar="N", help="higher is claimed first (default 0)")
    p.add_argument(
        "--unique-key",
        metavar="KEY",
        help="while a job with this key is queued or running, submit nothing new",
    )
    p.add_argument(
        "--file",
        type=Path,
        metavar="JOBS.jsonl",
        help='one job a line: {"type": ..., "payload": ..., "id"?, "delay"? (seconds), '
        '"maxAttempts"?, "priority"?, "uniqueKey"?}; a line without "id" gets one derived '
        "from its type and payload",
    )
    args = p.parse_args(argv)
    if args.file is not None:
        if (
            args.type is not None
            or args.id
            or args.delay is not None
            or args.max_attempts
            or args.priority is not None
            or args.unique_key is not None
        ):
            p.error(
                "--file takes no TYPE, JSON, --id, --delay, --max-attempts, --priority or "
                "--unique-key"
            )
        try:
            jobs = read_jobs_file(args.file)
        except CliError as exc:
            sys.stderr.write(f"{prog}: {exc.message}\n")
            return exc.status
        return run(prog, args, lambda client: _submit_file(client, jobs, prog))
    if args.type is None or args.payload is None:
        p.error("give TYPE and JSON, or --file")
    try:
        payload = orjson.loads(args.payload)
    except orjson.JSONDecodeError as exc:
        return _usage(prog, f'the payload is not JSON ({exc}): quote it, e.g. \'{{"to": "a"}}\'')
    item: dict[str, Any] = {"type": args.type, "payload": payload}
    if args.id:
        item["id"] = args.id
    if args.delay is not None:
        item["delay"] = args.delay
    if args.max_attempts is not None:
        item["maxAttempts"] = args.max_attempts
    if args.priority is not None:
        item["priority"] = args.priority
    if args.unique_key is not None:
        item["uniqueKey"] = args.unique_key
    try:
        job = _new_job(item, derive_id=False)
    except CliError as exc:
        return _usage(prog, exc.message)

    async def one(client: Client) -> int:
        [result] = await _bulk(client, [job])
        if isinstance(result, TrioqError):
            raise result
        print(result.job_id)
        if result.duplicate:
            sys.stderr.write(
                f"{prog}: job {result.job_id} existed already: nothing new submitted\n"
            )
        return 0

    return run(prog, args, one)


def content_id(job_type: str, payload: Any) -> str:
    """The id of a job given without one in a file: the SHA-256 of the canonical JSON
    (keys sorted, no spaces) of its type and payload. The same line gets the same id
    on every run, which is what makes a second run of a file submit nothing new."""
    canonical = orjson.dumps({"payload": payload, "type": job_type}, option=orjson.OPT_SORT_KEYS)
    return CONTENT_ID_PREFIX + hashlib.sha256(canonical).hexdigest()


def read_jobs_file(path: Path) -> list[tuple[int, NewJob]]:
    """Every job of a JSON-lines file with its line number (blank lines skipped),
    all checked before anything is sent: :class:`CliError` (usage) naming the first
    bad line."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", USAGE) from None
    jobs: list[tuple[int, NewJob]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise CliError(f"{path} line {number}: not JSON ({exc})", USAGE) from None
        try:
            jobs.append((number, _new_job(item, derive_id=True)))
        except CliError as exc:
            raise CliError(f"{path} line {number}: {exc.message}", USAGE) from None
    return jobs


def _new_job(item: object, *, derive_id: bool) -> NewJob:
    """A file line's (or the arguments') job, checked as the broker checks it."""
    if not isinstance(item, dict):
        raise CliError(f"a job is a JSON object, not {type(item).__name__}")
    unknown = sorted(set(item) - _JOB_KEYS)
    if unknown:
        raise CliError(f"unknown field {unknown[0]!r} (a job has {', '.join(sorted(_JOB_KEYS))})")
    if "type" not in item or "payload" not in item:
        raise CliError('a job needs "type" and "payload"')
    wire: dict[str, Any] = {"type": item["type"], "payload": item["payload"]}
    if item.get("id") is not None:
        wire["id"] = item["id"]
    elif derive_id and isinstance(item["type"], str):
        wire["id"] = content_id(item["type"], item["payload"])
    if item.get("maxAttempts") is not None:
        wire["maxAttempts"] = item["maxAttempts"]
    for optional in ("priority", "uniqueKey"):
        if item.get(optional) is not None:
            wire[optional] = item[optional]
    delay = item.get("delay")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise CliError(f'"delay" is seconds (a number >= 0), not {dumps(delay)}')
        wire["delayMs"] = round(delay * 1000)
    try:
        return parse_new_job(wire)
    except TrioqError as exc:
        raise CliError(exc.message) from None


async def _bulk(client: Client, jobs: list[NewJob]) -> list[Submitted | TrioqError]:
    """Each job's (id, duplicate) or its error, through ``Client.submit_bulk`` (its
    retries, leader following and request splitting)."""
    return await client.submit_bulk(
        JobSpec(
            job.type,
            job.payload,
            id=job.id,
            max_attempts=job.max_attempts,
            delay=job.delay_ms / 1000 if job.delay_ms else None,
            priority=job.priority,
            unique_key=job.unique_key,
        )
        for job in jobs
    )


def _chunks(jobs: list[tuple[int, NewJob]]) -> list[list[tuple[int, NewJob]]]:
    chunks: list[list[tuple[int, NewJob]]] = [[]]
    size = 0
    for numbered in jobs:
        job_size = len(numbered[1].payload_json or b"") + 256
        if chunks[-1] and (len(chunks[-1]) == CHUNK_JOBS or size + job_size > CHUNK_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(numbered)
        size += job_size
    return [c for c in chunks if c]


async def _submit_file(client: Client, jobs: list[tuple[int, NewJob]], prog: str) -> int:
    new = duplicates = failed = 0
    progress = _progress(len(jobs))
    with progress:
        task = progress.add_task("submitting", total=len(jobs))
        for chunk in _chunks(jobs):
            results = await _bulk(client, [job for _, job in chunk])
            for (number, _), result in zip(chunk, results, strict=True):
                if isinstance(result, TrioqError):
                    failed += 1
                    sys.stderr.write(f"{prog}: line {number}: {result.message} ({result.tag})\n")
                    continue
                duplicates += result.duplicate
                new += not result.duplicate
                print(result.job_id)
            sys.stdout.flush()
            progress.advance(task, len(chunk))
    refused = f", {failed} refused" if failed else ""
    sys.stderr.write(f"{prog}: {new} new, {duplicates} duplicates{refused}\n")
    return 1 if failed else 0


def _progress(total: int) -> Any:
    """A progress bar on stderr when it is a terminal; otherwise one that shows
    nothing (the same calls, so the submit loop has one shape)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal or total == 0,
        transient=True,
    )


# -------------------------------------------------------------------- reads


def stats(argv: Sequence[str], prog: str) -> int:
    p = parser(prog, "Show the queue's counters and its queued jobs by type.")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=float,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    args = p.parse_args(argv)
    if args.watch is not None and args.watch <= 0:
        p.error("--watch takes a number of seconds > 0")

    async def once(client: Client) -> int:
        body = await client.stats()
        if args.json:
            print(dumps(body, indent=True))
        else:
            _print(_stats_table(body), _stats_text(body))
        return 0

    async def refresh(client: Client) -> None:
        if args.json or not is_terminal(sys.stdout):
            while True:
                body = await client.stats()
                # a block per refresh; a blank line between plain blocks
                print(dumps(body) if args.json else _stats_text(body) + "\n", flush=True)
                await trio.sleep(args.watch)
        from rich.live import Live

        with Live(_stats_table(await client.stats()), auto_refresh=False) as live:
            while True:
                await trio.sleep(args.watch)
                live.update(_stats_table(await client.stats()), refresh=True)

    async def watch(client: Client) -> int:
        # Ctrl-C or SIGTERM is how a watch ends: exit 0 (a receiver, rather than
        # KeyboardInterrupt, also works where the shell started us with SIGINT ignored)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(refresh, client)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
        return 0

    if args.watch is None:
        return run(prog, args, once)
    return run(prog, args, watch)


def _stats_text(body: dict[str, Any]) -> str:
    lines = [
        f"total: {body['total']}",
        f"unclaimed: {body['unclaimed']}",
        f"inProgress: {body['inProgress']}",
        f"completedTotal: {body['completedTotal']}",
        f"broker: {body.get('brokerAddress')}",
    ]
    for job_type, counts in (body.get("byType") or {}).items():
        lines.append(
            f"type {job_type}: unclaimed {counts['unclaimed']}, inProgress {counts['inProgress']}"
        )
    return "\n".join(lines)


def _stats_table(body: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"trioq queue at {body.get('brokerAddress')}")
    table.add_column("type")
    table.add_column("unclaimed", justify="right")
    table.add_column("in progress", justify="right")
    for job_type, counts in (body.get("byType") or {}).items():
        table.add_row(job_type, str(counts["unclaimed"]), str(counts["inProgress"]))
    table.add_section()
    table.add_row("all", str(body["unclaimed"]), str(body["inProgress"]), style="bold")
    table.caption = f"{body['total']} queued, {body['completedTotal']} completed in all"
    return table


def jobs(argv: Sequence[str], prog: str) -> int:
    p = parser(prog, "List queued jobs (a page, or every page with --all).")
    p.add_argument("--status", choices=["unclaimed", "in_progress"], help="only this status")
    p.add_argument("--type", help="only this job type")
    _paging_arguments(p)
    args = p.parse_args(argv)

    async def call(client: Client) -> int:
        async def page(cursor: str | None) -> dict[str, Any]:
            return await client.jobs(
                limit=args.limit, cursor=cursor, status=args.status, type=args.type
            )

        return await _list(page, args, prog, _JOB_COLUMNS)

    return run(prog, args, call)


def dead(argv: Sequence[str], prog: str) -> int:
    p = parser(prog, "List dead-lettered jobs (a page, or every page with --all).")
    _paging_arguments(p)
    args = p.parse_args(argv)

    async def call(client: Client) -> int:
        async def page(cursor: str | None) -> dict[str, Any]:
            return await client.dead(limit=args.limit, cursor=cursor)

        return await _list(page, args, prog, _DEAD_COLUMNS)

    return run(prog, args, call)


_JOB_COLUMNS = ("jobId", "type", "status", "attempts", "workerId")
_DEAD_COLUMNS = ("jobId", "type", "reason", "attempts", "lastError")


def _paging_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit", type=int, default=100, help=f"jobs a page, 1-{MAX_LIST} (default 100)"
    )
    p.add_argument("--cursor", help="start after this page (a previous page's next cursor)")
    p.add_argument("--all", action="store_true", help="every page, from --cursor on")
    p.add_argument("--json", action="store_true", help="one JSON object a job, one a line")


async def _list(
    page: Callable[[str | None], Any], args: argparse.Namespace, prog: str, columns: Sequence[str]
) -> int:
    if not 1 <= args.limit <= MAX_LIST:
        raise CliError(f"--limit is 1-{MAX_LIST}, not {args.limit}", USAGE)
    found: list[dict[str, Any]] = []
    cursor: str | None = args.cursor
    while True:
        body = await page(cursor)
        found += body["jobs"]
        if args.json:  # as they come: --all over a long list starts printing at once
            for job in body["jobs"]:
                print(dumps(job))
        cursor = body["nextCursor"]
        if cursor is None or not args.all:
            break
    if not args.json:
        rows = [[_cell(job.get(column)) for column in columns] for job in found]
        _print(_table(columns, rows), "\n".join("\t".join(row) for row in rows))
    if cursor is not None:
        sys.stderr.write(f"{prog}: more jobs: --cursor {cursor}\n")
    return 0


def _cell(value: object) -> str:
    # one line, no tabs: a plain row stays one tab-separated line (an error text may
    # have several)
    return "" if value is None else " ".join(str(value).split())


def _table(columns: Sequence[str], rows: list[list[str]]) -> Any:
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*row)
    table.caption = f"{len(rows)} jobs"
    return table


def get(argv: Sequence[str], prog: str) -> int:
    p = parser(prog, "Show a job's record (queued, dead, or finished within the dedup window).")
    p.add_argument("id", metavar="ID")
    args = p.parse_args(argv)

    async def call(client: Client) -> int:
        print(dumps(await client.get(args.id), indent=True))
        return 0

    return run(prog, args, call)


# ---------------------------------------------------------------- mutations


def cancel(argv: Sequence[str], prog: str) -> int:
    p = parser(
        prog,
        "Cancel a job: a queued or dead job at once, an in-progress one at its worker's "
        "next heartbeat (prints its status: cancelled or cancelling). Or, with --type "
        "and/or --status (or --all-queued), every queued job that matches (prints the "
        "counts).",
    )
    p.add_argument("id", nargs="?", metavar="ID")
    p.add_argument("--type", help="every queued job of this type")
    p.add_argument("--status", choices=("unclaimed", "in_progress"), help="... with this status")
    p.add_argument("--all-queued", action="store_true", help="every queued job")
    args = p.parse_args(argv)
    matching = args.type is not None or args.status is not None or args.all_queued
    if (args.id is None) == (not matching):
        p.error("give an ID, or --type / --status / --all-queued")

    async def call(client: Client) -> int:
        if args.id is not None:
            print(await client.cancel(args.id))
        else:
            counts = await client.cancel_matching(type=args.type, status=args.status)
            print(f"{counts['cancelled']} cancelled, {counts['cancelling']} cancelling")
        return 0

    return run(prog, args, call)


def purge(argv: Sequence[str], prog: str) -> int:
    p = parser(
        prog,
        "Remove dead jobs for good (those of --type, or every one with --all); their "
        "ids are forgotten, so a submit with one makes a new job. Prints the count.",
    )
    p.add_argument("--type", help="the dead jobs of this type")
    p.add_argument("--all", action="store_true", help="every dead job")
    args = p.parse_args(argv)
    if (args.type is None) == (not args.all):
        p.error("give --type TYPE or --all")

    async def call(client: Client) -> int:
        print(f"{await client.purge_dead(type=args.type)} purged")
        return 0

    return run(prog, args, call)


def requeue(argv: Sequence[str], prog: str) -> int:
    p = parser(
        prog,
        "Move a dead job (or every dead job, --all) back to the queue, attempts reset; "
        "prints the ids requeued.",
    )
    p.add_argument("id", nargs="?", metavar="ID")
    p.add_argument("--all", action="store_true", help="every dead job")
    args = p.parse_args(argv)
    if (args.id is None) == (not args.all):
        p.error("give an ID or --all (not both)")

    async def one(client: Client) -> int:
        await client.requeue(args.id)
        print(args.id)
        return 0

    async def every(client: Client) -> int:
        count = 0
        while True:
            # the dead list's cursor is an offset, and each requeue shortens the list:
            # take the first page again until it is empty
            page = await client.dead(limit=MAX_LIST)
            if not page["jobs"]:
                break
            for job in page["jobs"]:
                await client.requeue(job["jobId"])
                print(job["jobId"], flush=True)
                count += 1
        sys.stderr.write(f"{prog}: {count} requeued\n")
        return 0

    return run(prog, args, every if args.all else one)


# ------------------------------------------------------------------ output


def _print(table: Any, plain: str) -> None:
    """``table`` (rich) on a terminal, ``plain`` otherwise."""
    if is_terminal(sys.stdout):
        from rich.console import Console

        Console().print(table)
    elif plain:
        print(plain)


def _usage(prog: str, message: str) -> int:
    sys.stderr.write(f"{prog}: {message}\n")
    return USAGE
