"""The worker runtime: handlers registered on a :class:`Worker`, each job in its own
nursery with its heartbeat. ``python -m trioq.worker module:attr`` runs one (see
``--help``)."""

from __future__ import annotations

from ._cli import main as main
from ._runtime import JobContext as JobContext
from ._runtime import Worker as Worker
