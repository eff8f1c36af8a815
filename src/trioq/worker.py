"""``python -m trioq.worker module:attr``: run a trioq worker. See ``--help``."""

from __future__ import annotations

from ._worker import JobContext as JobContext
from ._worker import Worker as Worker
from ._worker_cli import main as main

if __name__ == "__main__":
    raise SystemExit(main())
