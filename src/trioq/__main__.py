"""``trioq COMMAND ...``: the command-line entry point (``trioq --help`` lists the
commands; docs/cli.md describes them)."""

from __future__ import annotations

import sys

_USAGE = """\
usage: trioq COMMAND [options]   (trioq COMMAND --help for each)

  broker    run a broker
  worker    run a worker's handlers (MODULE:ATTR)
  dev       a broker on ./.trioq and workers for MODULE:ATTR, in one command
  inspect   show the queue's stored object, read straight from storage
  submit    submit a job, or every line of a JSON-lines file
  stats     the queue's counters, by type (--watch to refresh)
  jobs      list queued jobs (--status, --type, --all)
  get       show one job
  dead      list dead-lettered jobs
  requeue   move a dead job (or --all) back to the queue
  cancel    cancel a job (or every queued job of --type / --status)
  purge     remove dead jobs for good (--type TYPE or --all)
  schedules list, set or delete periodic jobs
  types     list, pause, resume or limit job types"""


def main(argv: list[str] | None = None) -> int:
    """Run ``trioq COMMAND ...``; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
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
    from .cli import COMMANDS
    from .cli import main as cli_main

    if command in COMMANDS:
        return cli_main(command, rest)
    print(f"trioq: unknown command {command!r} (see trioq --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
