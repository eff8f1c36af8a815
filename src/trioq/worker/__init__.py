"""The worker runtime: handlers registered on a :class:`Worker`, each job in its own
nursery with its heartbeat. ``python -m trioq.worker module:attr`` runs one (see
``--help``).

Modules: ``_worker`` (Worker, and the task tree in its docstring), ``_courier`` (every
report and claim of a running worker, batched into one exchange per round), ``_host``
(the job host: every held job, the slots their handlers take, their grace), ``_job``
(one job's nursery: heartbeat + handler, and its report), ``_handlers``
(registration, JobContext, hooks), ``_settings`` (WorkerSettings), ``_outage``
(logging a failing broker), ``_cli`` (the command line).
"""

from __future__ import annotations

from ._cli import main as main
from ._handlers import JobContext as JobContext
from ._worker import Worker as Worker
