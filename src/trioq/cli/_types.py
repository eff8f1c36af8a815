"""``trioq types``: list, pause, resume and limit job types (docs/cli.md)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from types import EllipsisType
from typing import Any

from ..client import Client
from ._commands import _cell, _print, _table
from ._common import dumps, parser, run

_COLUMNS = ("type", "paused", "maxInProgress", "maxPerSecond", "unclaimed", "inProgress")


def types(argv: Sequence[str], prog: str) -> int:
    p = parser(
        prog,
        "Job types' rules, enforced by the broker at claim time: list them (the "
        "default), pause TYPE / resume TYPE (claims skip a paused type; its jobs stay "
        "queued), or limit TYPE --max-in-progress N --per-second R ('none' clears one).",
    )
    p.add_argument(
        "action", nargs="?", choices=("list", "pause", "resume", "limit"), default="list"
    )
    p.add_argument("type", nargs="?", metavar="TYPE")
    p.add_argument("--max-in-progress", type=_limit(int), metavar="N|none")
    p.add_argument("--per-second", type=_limit(float), metavar="R|none")
    p.add_argument("--json", action="store_true", help="list: one JSON object a line")
    args = p.parse_args(argv)
    if args.action != "list" and args.type is None:
        p.error(f"{args.action} needs TYPE")
    if args.action == "limit" and args.max_in_progress is None and args.per_second is None:
        p.error("limit needs --max-in-progress and/or --per-second")

    async def call(client: Client) -> int:
        if args.action == "pause":
            await client.pause(args.type)
            print(f"paused {args.type}")
            return 0
        if args.action == "resume":
            await client.resume(args.type)
            print(f"resumed {args.type}")
            return 0
        if args.action == "limit":
            rule = await client.set_type_rule(
                args.type,
                max_in_progress=_given_int(args.max_in_progress),
                max_per_second=_given(args.per_second),
            )
            print(dumps(rule))
            return 0
        found = await client.type_rules()
        if args.json:
            for rule in found:
                print(dumps(rule))
            return 0
        rows = [[_cell(rule.get(column)) for column in _COLUMNS] for rule in found]
        _print(_table(_COLUMNS, rows), "\n".join("\t".join(row) for row in rows))
        return 0

    return run(prog, args, call)


class _Clear:
    """``none`` on the command line: clear the limit."""


def _limit(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float | _Clear:
        if text.lower() == "none":
            return _Clear()
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'none'") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
        return value

    return parse


def _given(value: int | float | _Clear | None) -> int | float | EllipsisType | None:
    """The client's argument: left out (``...``), cleared (None) or a number."""
    if value is None:
        return ...
    return None if isinstance(value, _Clear) else value


def _given_int(value: int | _Clear | None) -> int | EllipsisType | None:
    given = _given(value)
    return given if given is None or given is ... else int(given)
