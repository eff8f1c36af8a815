"""``trioq schedules``: list, set and delete periodic jobs (docs/cli.md)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import orjson

from ..client import Client
from ._commands import _cell, _print, _table
from ._common import dumps, parser, run

_COLUMNS = ("name", "type", "when", "timezone", "missed", "nextAt", "lastAt")


def schedules(argv: Sequence[str], prog: str) -> int:
    p = parser(
        prog,
        "Periodic jobs: list them (the default), set one (create or replace: "
        "set NAME TYPE [JSON] --cron EXPR | --every SECONDS), or delete one (delete NAME).",
    )
    p.add_argument("action", nargs="?", choices=("list", "set", "delete"), default="list")
    p.add_argument("name", nargs="?", metavar="NAME", help="the schedule's name")
    p.add_argument("type", nargs="?", metavar="TYPE", help="set: the job type")
    p.add_argument("payload", nargs="?", metavar="JSON", help="set: the payload (default null)")
    p.add_argument("--cron", metavar="EXPR", help='set: a cron expression, e.g. "*/5 * * * *"')
    p.add_argument("--every", type=float, metavar="SECONDS", help="set: a fixed interval")
    p.add_argument("--timezone", default="UTC", help="set: the cron's IANA time zone (UTC)")
    p.add_argument(
        "--missed",
        choices=("once", "skip"),
        default="once",
        help="set: occurrences missed while no broker led: enqueue the latest once "
        "(default), or skip them past --grace",
    )
    p.add_argument("--grace", type=float, default=60.0, metavar="SECONDS", help="set: (60)")
    p.add_argument("--max-attempts", type=int, metavar="N", help="set: each job's attempts")
    p.add_argument("--priority", type=int, default=0, metavar="N", help="set: each job's")
    p.add_argument("--json", action="store_true", help="list: one JSON object a line")
    args = p.parse_args(argv)
    if args.action != "list" and args.name is None:
        p.error(f"{args.action} needs NAME")
    if args.action == "set" and args.type is None:
        p.error("set needs NAME and TYPE")
    if args.action == "set" and (args.cron is None) == (args.every is None):
        p.error("set needs exactly one of --cron and --every")
    payload: Any = None
    if args.payload is not None:
        try:
            payload = orjson.loads(args.payload)
        except orjson.JSONDecodeError as exc:
            p.error(f"the payload is not JSON ({exc})")

    async def call(client: Client) -> int:
        if args.action == "delete":
            await client.delete_schedule(args.name)
            print(f"deleted {args.name}")
            return 0
        if args.action == "set":
            stored = await client.set_schedule(
                args.name,
                args.type,
                payload,
                cron=args.cron,
                every=args.every,
                timezone=args.timezone,
                missed=args.missed,
                grace=args.grace,
                max_attempts=args.max_attempts,
                priority=args.priority,
            )
            print(f"{stored['name']}: next at {_time(stored['nextAt'])}")
            return 0
        found = await client.schedules()
        if args.json:
            for schedule in found:
                print(dumps(schedule))
            return 0
        rows = [[_cell(v) for v in _row(schedule)] for schedule in found]
        _print(_table(_COLUMNS, rows), "\n".join("\t".join(row) for row in rows))
        return 0

    return run(prog, args, call)


def _row(schedule: dict[str, Any]) -> list[Any]:
    cron, every = schedule.get("cron"), schedule.get("everyMs")
    when = cron if cron is not None else f"every {(every or 0) / 1000:g} s"
    last = schedule.get("lastAt")
    return [
        schedule["name"],
        schedule["type"],
        when,
        schedule["timezone"],
        schedule["missed"],
        _time(schedule["nextAt"]),
        "-" if last is None else _time(last),
    ]


def _time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat(timespec="seconds")
