"""The worker runtime: handlers registered on a :class:`Worker`, each job in its own
nursery with its heartbeat. ``python -m trioq.worker module:attr`` runs one (see
``--help``).

Modules: ``_worker`` (Worker, its claim loop, and the task tree in its docstring),
``_host`` (the job host: every running job, their slots and their grace), ``_job``
(one job's nursery: handler + heartbeat, and its report), ``_handlers``
(registration, JobContext, hooks), ``_settings`` (WorkerSettings), ``_outage``
(logging a failing broker), ``_cli`` (the command line).
"""

from __future__ import annotations

from ._cli import main as main
from ._handlers import JobContext as JobContext
from ._worker import Worker as Worker
