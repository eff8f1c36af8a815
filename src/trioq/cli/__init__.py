"""The ``trioq`` command's sub-commands beyond ``broker``, ``worker`` and
``inspect``: the ones that talk to a running broker (``submit``, ``stats``,
``jobs``, ``get``, ``dead``, ``requeue``, ``cancel``, ``purge``, ``schedules``, ``types``) and ``dev`` (a broker and
workers in one command). docs/cli.md describes each.

Every failure is one line on stderr (``trioq CMD: what went wrong, what to check``)
and a non-zero exit: 1 when the broker refused or could not be reached, 2 for bad
arguments or input (then nothing was sent), 130 after a second Ctrl-C.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["COMMANDS", "main"]


def _runners() -> dict[str, Callable[[Sequence[str], str], int]]:
    from . import _commands as c
    from ._dev import dev
    from ._schedules import schedules
    from ._types import types

    return {
        "submit": c.submit,
        "stats": c.stats,
        "jobs": c.jobs,
        "get": c.get,
        "dead": c.dead,
        "requeue": c.requeue,
        "cancel": c.cancel,
        "purge": c.purge,
        "schedules": schedules,
        "types": types,
        "dev": dev,
    }


COMMANDS = (
    "submit",
    "stats",
    "jobs",
    "get",
    "dead",
    "requeue",
    "cancel",
    "purge",
    "schedules",
    "types",
    "dev",
)
"""The sub-commands this package runs."""


def main(command: str, argv: Sequence[str]) -> int:
    """Run ``trioq COMMAND *argv`` (one of :data:`COMMANDS`); returns the exit status."""
    return _runners()[command](argv, f"trioq {command}")
