"""``trioq broker ...`` / ``trioq worker ...`` / ``trioq inspect ...``: the command-line
entry point."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run ``trioq broker ...``, ``trioq worker ...`` or ``trioq inspect ...``; returns
    the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: trioq {broker,worker,inspect} [options]  (trioq broker --help, "
            "trioq worker --help, trioq inspect --help)"
        )
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "broker":
        from .broker._service import main as broker_main

        return broker_main(rest, prog="trioq broker")
    if command == "worker":
        from .worker._cli import main as worker_main

        return worker_main(rest, prog="trioq worker")
    if command == "inspect":
        from ._inspect import main as inspect_main

        return inspect_main(rest, prog="trioq inspect")
    print(f"trioq: unknown command {command!r} (broker, worker or inspect)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
