"""``trioq broker ...`` / ``trioq worker ...``: the command-line entry point."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run ``trioq broker ...`` or ``trioq worker ...``; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: trioq {broker,worker} [options]  (trioq broker --help, trioq worker --help)")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "broker":
        from .broker._service import main as broker_main

        return broker_main(rest, prog="trioq broker")
    if command == "worker":
        from .worker._cli import main as worker_main

        return worker_main(rest, prog="trioq worker")
    print(f"trioq: unknown command {command!r} (broker or worker)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
