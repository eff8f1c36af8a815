"""Jobs typed with pydantic models: the handlers take the models, and producers
build payloads from the same models.

    python -m trioq.worker examples.typed_jobs:worker          # the worker (repo root)
    python examples/typed_jobs.py --broker http://127.0.0.1:8080 --timeout 60
    python examples/typed_jobs.py --in-process                  # no broker needed

The worker validates each payload against its handler's first parameter's annotation
(here a pydantic model) before the handler runs: the handler gets an ``Email`` or a
``ReportRequest``, never a dict. A payload that does not validate is dead-lettered at
once with pydantic's message (``lastError``), never retried.

Run as a script, this submits two emails and a report with :func:`submit` (which
takes the models), plus one malformed ``email:send`` payload sent as a raw dict, then
waits for those four jobs by id and prints each outcome. ``--in-process`` runs the
broker and the worker inside this process (``trioq.testing``; nothing listens on a
port). The broker otherwise comes from ``--broker``, else ``$TRIOQ_BROKER_URL``, else
``$BROKER_URL``, else ``http://127.0.0.1:8080``.

Exit status: 0 when the three valid jobs completed and the malformed one was
dead-lettered; 1 otherwise (or on timeout, or an unreachable broker); 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from typing import Any, Literal

import trio
from pydantic import BaseModel, Field

import trioq

worker = trioq.Worker(concurrency=4)


class Email(BaseModel):
    """The payload of an ``email:send`` job."""

    to: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    subject: str = Field(min_length=1, max_length=200)
    body: str = ""


class ReportRequest(BaseModel):
    """The payload of a ``report:generate`` job."""

    kind: Literal["daily", "weekly"]
    day: dt.date
    recipients: list[str] = Field(default_factory=list)


JOB_TYPES: dict[type[BaseModel], str] = {Email: "email:send", ReportRequest: "report:generate"}
"""Each payload model and the job type it is the payload of."""


@worker.job("email:send", timeout=30)
async def send_email(email: Email, ctx: trioq.JobContext) -> None:
    """Pretend to send an email (``email`` is already validated)."""
    await trio.sleep(0.05)
    print(f"sent email to {email.to}: {email.subject!r} (job {ctx.id})", flush=True)


@worker.job("report:generate", timeout=120)
async def generate_report(report: ReportRequest, ctx: trioq.JobContext) -> None:
    """Pretend to build a report; ``report.day`` arrives as a ``datetime.date``."""
    await trio.sleep(0.1)
    print(
        f"generated {report.kind} report for {report.day.isoformat()} "
        f"({report.day:%A}) for {len(report.recipients)} recipients (job {ctx.id})",
        flush=True,
    )


async def submit(client: trioq.Client, job: BaseModel, **options: Any) -> str:
    """Submit ``job`` (an ``Email`` or a ``ReportRequest``) as a job of its model's
    type; ``options`` go to :meth:`trioq.Client.submit` (``id=``, ``delay=``, ...).

    The payload is the model's JSON form (``model_dump(mode="json")``: a date
    becomes ``"2026-01-05"``), which the handler's annotation turns back into the
    model.
    """
    return await client.submit(JOB_TYPES[type(job)], job.model_dump(mode="json"), **options)


EXPECTED = {"ada": "completed", "grace": "completed", "report": "completed", "bad": "dead"}
"""What happens to each job this script submits."""


async def submit_demo_jobs(client: trioq.Client) -> dict[str, str]:
    """The demo's jobs: three built from the models, one malformed; name -> job id."""
    return {
        "ada": await submit(client, Email(to="ada@example.com", subject="Welcome, Ada")),
        "grace": await submit(client, Email(to="grace@example.com", subject="Your report")),
        "report": await submit(
            client,
            ReportRequest(kind="weekly", day=dt.date(2026, 1, 5), recipients=["grace@example.com"]),
        ),
        # a producer that skips the models: no "subject", and "to" is not an address
        "bad": await client.submit("email:send", {"to": "nobody"}),
    }


async def outcomes(client: trioq.Client, ids: dict[str, str], limit: float) -> dict[str, str]:
    """Poll the jobs by id until each has finished or ``limit`` seconds passed;
    each job's last status."""
    statuses: dict[str, str] = {}
    with trio.move_on_after(limit):
        while True:
            for name, job_id in ids.items():
                if statuses.get(name) not in ("completed", "dead", "cancelled"):
                    record = await client.get(job_id)
                    statuses[name] = record["status"]
                    if record["status"] == "dead":
                        first_line = str(record.get("lastError", "")).splitlines()[0]
                        print(f"job {name} dead-lettered: {first_line}", flush=True)
            if all(s in ("completed", "dead", "cancelled") for s in statuses.values()):
                break
            await trio.sleep(0.1)
    return statuses


def report(statuses: dict[str, str]) -> int:
    """Print each job's outcome; the exit status."""
    for name, expected in EXPECTED.items():
        print(f"{name}: {statuses.get(name, 'unknown')} (expected {expected})")
    if statuses == EXPECTED:
        print("typed jobs: all outcomes as expected")
        return 0
    print("typed jobs: unexpected outcomes")
    return 1


async def run_against(broker: str, limit: float) -> int:
    """Submit to a running broker (a worker runs ``examples.typed_jobs:worker``)."""
    async with trioq.Client(broker, token=os.environ.get("TRIOQ_TOKEN")) as client:
        try:
            ids = await submit_demo_jobs(client)
            print(f"submitted {len(ids)} jobs to {client.url}", flush=True)
            return report(await outcomes(client, ids, limit))
        except trioq.TrioqError as exc:
            print(f"broker {broker}: {exc}", file=sys.stderr)
            return 1


async def run_in_process(limit: float) -> int:
    """The same, with the broker and this worker inside this process."""
    from trioq.testing import open_test_broker

    async with open_test_broker() as broker:
        ids = await submit_demo_jobs(broker.client)
        print(f"submitted {len(ids)} jobs to an in-process broker", flush=True)
        await broker.run_worker_until_idle(worker, timeout=limit)
        return report(await outcomes(broker.client, ids, limit))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Submit pydantic-typed jobs (two emails, a report, a malformed email) "
        "and wait for their outcomes."
    )
    parser.add_argument(
        "--broker",
        default=os.environ.get("TRIOQ_BROKER_URL")
        or os.environ.get("BROKER_URL")
        or "http://127.0.0.1:8080",
        help="broker URL(s) (default: $TRIOQ_BROKER_URL, $BROKER_URL, http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run a broker and the worker in this process instead (trioq.testing)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    if args.in_process:
        return trio.run(run_in_process, args.timeout)
    return trio.run(run_against, args.broker, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
