"""What the broker-facing sub-commands share: the ``--broker``/``--token`` options,
a parser whose errors are one line, running a call with a :class:`~trioq.Client`,
and turning every failure into one line on stderr and an exit status."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import orjson
import trio

from .._errors import BrokerUnreachable, Forbidden, TrioqError, Unauthorized
from ..client import Client

T = TypeVar("T")

DEFAULT_BROKER = "http://127.0.0.1:8080"
RETRY_DEADLINE = 5.0
"""Seconds a command keeps retrying an unreachable broker (or a 503) before it says
so: a person is waiting, unlike a worker that should ride out a failover."""

OK, FAILED, USAGE = 0, 1, 2
"""Exit statuses: done; the broker refused or could not be reached; bad arguments
or input (nothing was sent)."""


class CliError(Exception):
    """A failure to report as one line (``prog: message``) with ``status``."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit 2), pointing at
    ``--help`` instead of printing the usage."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(USAGE)


def parser(prog: str, description: str) -> Parser:
    """A sub-command's parser, with ``--broker`` and ``--token``."""
    parser = Parser(prog=prog, description=description)
    parser.add_argument(
        "--broker",
        default=os.environ.get("TRIOQ_BROKER_URL") or DEFAULT_BROKER,
        metavar="URL",
        help=f"broker URL (env TRIOQ_BROKER_URL; default {DEFAULT_BROKER})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TRIOQ_TOKEN") or None,
        help="bearer token, if the broker requires one (env TRIOQ_TOKEN)",
    )
    return parser


def run(prog: str, args: argparse.Namespace, call: Callable[[Client], Awaitable[int]]) -> int:
    """``call(client)`` under trio with a client of ``args.broker``; its exit status,
    or the one line a failure deserves on stderr and its status."""

    async def main() -> int:
        try:
            client = Client(args.broker, token=args.token, retry_deadline=RETRY_DEADLINE)
        except ValueError as exc:  # a URL that is not http(s)://
            raise CliError(f"{exc} (--broker / TRIOQ_BROKER_URL)", USAGE) from None
        async with client:
            return await call(client)

    try:
        return trio.run(main)
    except BaseException as exc:  # each kind is answered by _answer, or re-raised
        status = _answer(prog, args, _leaf(exc))
        if status is None:
            raise
        return status


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested groups of one (a nursery's), else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _answer(prog: str, args: argparse.Namespace, exc: BaseException) -> int | None:
    """The exit status for ``exc``, once its line is written; None: not ours to answer."""
    if isinstance(exc, CliError):
        return fail(prog, exc.message, exc.status)
    if isinstance(exc, TrioqError):
        return fail(prog, broker_problem(exc, args.broker))
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, BrokenPipeError):  # stdout closed early (`| head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAILED
    return None


def fail(prog: str, message: str, status: int = FAILED) -> int:
    sys.stderr.write(f"{prog}: {message}\n")
    return status


def broker_problem(exc: TrioqError, url: str) -> str:
    """What went wrong with the broker at ``url``, and what to check."""
    if isinstance(exc, BrokerUnreachable):
        return (
            f"cannot reach the broker at {url} ({_reason(exc)}): is it running? "
            "(--broker / TRIOQ_BROKER_URL)"
        )
    if isinstance(exc, Unauthorized | Forbidden):
        return f"the broker at {url} refused the token: {exc.message} (--token / TRIOQ_TOKEN)"
    return f"{exc.message} ({exc.tag}, broker {url})"


def _reason(exc: BaseException) -> str:
    """The OS's word for the failure (``connection refused``) found in the chain of
    causes (trio's connect error holds one per address in a group), else the cause's
    type."""
    found = _os_error(exc, set())
    if found is not None:
        return found
    cause = exc.__cause__
    return type(cause).__name__ if cause is not None else "no answer"


def _os_error(exc: BaseException, seen: set[int]) -> str | None:
    if id(exc) in seen:
        return None
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    inner: list[BaseException] = []
    if isinstance(exc, BaseExceptionGroup):
        inner += exc.exceptions
    inner += [e for e in (exc.__cause__, exc.__context__) if e is not None]
    for each in inner:
        found = _os_error(each, seen)
        if found is not None:
            return found
    return None


def dumps(value: Any, *, indent: bool = False) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0).decode()


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
