"""Chaos harness: real broker and worker processes on SeaweedFS, under faults.

    python benchmarks/chaos.py [--minutes M | --seconds S] [--seed N] [--json PATH]
    nox -s chaos -- --minutes=1

Starts SeaweedFS (``tests/_servers.py``, 127.0.0.1, free ports), a bucket, three brokers
(``--brokers``) on it (the first with ``--create``; fixed free ports, so a restarted
broker comes back at the same URL), three ``python -m trioq.worker
benchmarks._chaos_jobs:worker`` processes and two producer processes per mode
(``--producers``; ``_chaos_producer.py``, each with its own ``trioq.Client`` on every
broker URL):

- ``ids``: submits with client-chosen ids and retries a failed submit with the same id;
- ``noid``: submits without an id and, like an osqueue client, retries a failed
  (possibly ambiguous) submit as a new submit: the same payload key may then be stored
  under two ids. That count is reported, not failed.

For the bounded duration it keeps submitting while, on a seeded schedule (``--seed``):
every ~``--leader-every`` s the leader (found with ``GET /healthz``: ``role``) is
``kill -9``-ed and restarted (as a standby) a second later, and every third time it is
SIGSTOPped past the broker lease instead, then SIGCONTed (it must then step down:
fenced); every ~``--worker-every`` s a random worker is ``kill -9``-ed and restarted;
every ~``--worker-stop-every`` s a worker is SIGSTOPped past its job lease and resumed;
every ~``--cut-every`` s the brokers' path to SeaweedFS (through ``_chaos_proxy.py``) is
cut for ``--cut-seconds``. A process that exits during startup is started again (1 s
later, up to 5 times), as a supervisor would, and counted.
Leases are short for the run (job lease ``--job-lease-ms``, broker heartbeat timeout
``--broker-timeout-ms``), and the dedup window is raised (``--dedup-cap 1000000``) so
every finished record stays readable for the check.

Then the producers stop by themselves, the queue drains (``GET /v1/stats``: ``total == 0``, bounded),
every job id is read back (``GET /v1/jobs/{id}``), the workers are stopped, and the
history (every acknowledged submit; every handler start, end and acknowledged
completion with job id, attempt, worker pid, time; every fault) is checked:

- lost: acknowledged ids whose final record is not ``completed`` (must be 0);
- duplicates: payload keys stored under more than one id, for the ``ids`` producer
  (must be 0) and, separately, the ``noid`` producer (counted);
- unknown: job ids executed that no producer submitted (must be 0);
- completed without a handler end in the history (must be 0);
- ``completedTotal`` of the document equals the number of distinct completed ids;
- overlapping executions of one job: counted; each must be explained by a lease
  expiry (the earlier execution's worker was SIGSTOPped past its lease, or it started
  within 1 s of a leader frozen past the job lease being resumed: a claim answered
  late), else failed;
- the longest time without a handler end, leader changes (new epochs seen on
  ``/healthz``), and for each SIGSTOPped leader: a new leader took over and the old one
  stepped down after SIGCONT (fenced); when a storage cut overlapped the freeze, the
  takeover may come after SIGCONT, and the old leader must still step down within 15 s.

Prints a table, writes the whole history as JSON (path printed), and exits 1 when a
check fails. Every wait has a deadline; every process is stopped in ``finally``
(SIGTERM, then SIGKILL). See docs/reliability.md for the figures and what is not there
yet.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import itertools
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
from _chaos_proxy import Proxy
from _procs import ROOT, clean_env, log_tail, stop

import trioq
from _servers import S3Server, free_ports, run_seaweedfs

READY_TIMEOUT = 30.0
START_TRIES = 5
HOST = "127.0.0.1"


@dataclass
class Slot:
    """One broker or worker position; its process is replaced on a restart."""

    name: str
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    pids: list[int] = field(default_factory=list)
    starting: bool = False


FAULT_FLAGS = ("fault-error-rate", "fault-ambiguous-write-rate", "fault-lost-write-rate")
"""Storage faults the brokers inject (their ``--fault-*`` settings, off by default),
each broker with a seed of its own."""


class Harness:
    def __init__(self, args: argparse.Namespace, rundir: Path, server: S3Server) -> None:
        self.args = args
        self.rundir = rundir
        self.server = server
        self.bucket = server.create_bucket()
        self.rng = random.Random(args.seed)
        self.ports = free_ports(args.brokers)
        self.urls = [f"http://{HOST}:{p}" for p in self.ports]
        self.brokers = [Slot(f"b{i}") for i in range(args.brokers)]
        self.workers = [Slot(f"w{i}") for i in range(args.workers)]
        self.t0 = time.time()
        self.events: list[dict[str, Any]] = []
        self.attempted: dict[str, dict[str, Any]] = {}  # ids producer: id -> key
        self.acks: dict[str, dict[str, Any]] = {}  # acknowledged id -> key, producer, t
        self.noid_keys: set[str] = set()
        self.submit_errors: collections.Counter[str] = collections.Counter()
        self.kill_times: dict[int, float] = {}  # worker pid -> kill -9 time
        self.stops: list[tuple[int, float, float]] = []  # worker pid, SIGSTOP, SIGCONT
        self.stopped: set[int] = set()  # worker slots stopped right now
        self.leader_stops: list[tuple[int, float, float]] = []  # broker pid, STOP, CONT
        self.cuts: list[tuple[float, float]] = []  # storage cut windows (start, end)
        self.health: dict[int, dict[str, Any]] = {}  # broker slot -> last /healthz
        self.epochs: list[dict[str, Any]] = []  # new leader epochs as observed
        self.fencing: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.start_failures: list[dict[str, Any]] = []  # exits during startup (restarted)
        self.killed: set[int] = set()  # pids this harness killed
        self.exits: list[dict[str, Any]] = []  # processes that exited on their own
        self.endpoint = server.endpoint_url
        target = urllib.parse.urlsplit(server.endpoint_url)
        self.proxy = Proxy(target.hostname or HOST, target.port or 80)

    # ------------------------------------------------------------ processes

    def event(self, kind: str, **fields: Any) -> None:
        record = {"t": time.time(), "kind": kind, **fields}
        self.events.append(record)
        print(f"  {record['t'] - self.t0:7.1f} s  {kind} {fields}", flush=True)

    def _popen(self, slot: Slot, argv: list[str], env: dict[str, str]) -> None:
        out = self.rundir / f"{slot.name}-{slot.starts}.out"
        with out.open("wb") as stdout, out.with_suffix(".log").open("wb") as stderr:
            slot.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env, cwd=ROOT
            )
        slot.starts += 1
        slot.pids.append(slot.process.pid)

    async def _ready(self, slot: Slot, ready: str) -> str | None:
        """Wait (bounded) for ``ready`` in the current process's output; None when it
        came, else what went wrong (the process is stopped then)."""
        process = slot.process
        assert process is not None
        out = self.rundir / f"{slot.name}-{slot.starts - 1}.out"
        with trio.move_on_after(READY_TIMEOUT):
            while process.poll() is None:
                if ready in out.read_text(errors="replace"):
                    return None
                await trio.sleep(0.05)
        self.killed.add(process.pid)
        await trio.to_thread.run_sync(stop, process)
        lines = log_tail(out.with_suffix(".log"), 2000).strip().splitlines()
        return f"exit {process.returncode}: {lines[-1] if lines else ''}"[:400]

    async def _start(self, slot: Slot, argv: list[str], env: dict[str, str], ready: str) -> bool:
        """Start ``argv`` in ``slot``; as a supervisor would, start it again (1 s
        later, up to :data:`START_TRIES` times) when it exits during startup."""
        slot.starting = True
        try:
            return await self._start_tries(slot, argv, env, ready)
        finally:
            slot.starting = False

    async def _start_tries(
        self, slot: Slot, argv: list[str], env: dict[str, str], ready: str
    ) -> bool:
        for attempt in range(1, START_TRIES + 1):
            self._popen(slot, argv, env)
            problem = await self._ready(slot, ready)
            if problem is None:
                return True
            self.start_failures.append(
                {"t": time.time(), "slot": slot.name, "attempt": attempt, "problem": problem}
            )
            print(f"  {time.time() - self.t0:7.1f} s  start_failed {slot.name}: {problem}")
            await trio.sleep(1.0)
        self.errors.append(f"{slot.name} did not start in {START_TRIES} tries")
        return False

    async def start_broker(self, i: int, create: bool = False) -> bool:
        a = self.args
        argv = [
            sys.executable, "-m", "trioq.broker", "--host", HOST, "--port", str(self.ports[i]),
            "--storage", "s3", "--bucket", self.bucket, "--endpoint-url",
            self.endpoint, "--group-commit-interval-ms", "50",
            "--job-heartbeat-timeout-ms", str(a.job_lease_ms),
            "--broker-heartbeat-interval-ms", str(a.broker_timeout_ms // 4),
            "--broker-heartbeat-timeout-ms", str(a.broker_timeout_ms),
            "--dedup-cap", "1000000", "--dedup-window-s", "86400",
            "--max-queued", "1000000", "--shutdown-grace-s", "3",
            "--layout", a.layout,
        ]  # fmt: skip
        if create:
            argv.append("--create")
        faults = [(n, getattr(a, n.replace("-", "_"))) for n in FAULT_FLAGS]
        for name, rate in faults:
            if rate:
                argv += [f"--{name}", str(rate)]
        if any(rate for _, rate in faults):
            argv += ["--fault-seed", str(a.seed * 100 + i)]
        env = clean_env(
            {
                "AWS_ACCESS_KEY_ID": self.server.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.server.secret_access_key,
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
        return await self._start(self.brokers[i], argv, env, "listening on")

    async def start_worker(self, i: int) -> bool:
        argv = [
            sys.executable, "-m", "trioq.worker", "benchmarks._chaos_jobs:worker",
            "--broker-url", ",".join(self.urls), "--concurrency", str(self.args.concurrency),
            "--shutdown-grace-s", "3", "--group-commit-interval-ms", "50",
            "--log-level", "WARNING",
        ]  # fmt: skip
        env = clean_env({"PYTHONPATH": str(ROOT), "TRIOQ_CHAOS_DIR": str(self.rundir)})
        return await self._start(self.workers[i], argv, env, "trioq worker ")

    def all_slots(self) -> list[Slot]:
        return self.workers + self.brokers

    def resume_all(self) -> None:
        for slot in self.all_slots():
            if slot.process is not None and slot.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGCONT)

    def stop_all(self) -> None:
        self.resume_all()
        for slot in self.all_slots():  # workers first: they report to the brokers
            if slot.process is not None:
                stop(slot.process)

    async def supervise(self) -> None:
        """As a supervisor would: a broker or worker that exited on its own (not
        killed by this harness, not while starting) is recorded and started again.
        Any such exit fails the run: trioq's processes do not exit by themselves."""
        groups = ((self.brokers, self.start_broker), (self.workers, self.start_worker))
        while True:
            await trio.sleep(0.5)
            for slots, starter in groups:
                for i, slot in enumerate(slots):
                    process = slot.process
                    if (
                        process is None
                        or slot.starting
                        or process.poll() is None
                        or process.pid in self.killed
                    ):
                        continue
                    self.killed.add(process.pid)  # noted once
                    lines = log_tail(self.rundir / f"{slot.name}-{slot.starts - 1}.log", 2000)
                    last = lines.strip().splitlines()[-1:] or [""]
                    self.exits.append(
                        {"t": time.time(), "slot": slot.name, "pid": process.pid,
                         "code": process.returncode, "last_line": last[0][:300]}
                    )  # fmt: skip
                    self.event("exited_by_itself", slot=slot.name, code=process.returncode)
                    await starter(i)

    # --------------------------------------------------------------- health

    async def healthz(self, http: httpx.AsyncClient, i: int) -> dict[str, Any] | None:
        try:
            answer = (await http.get(f"{self.urls[i]}/healthz", timeout=0.5)).json()
        except (httpx.HTTPError, ValueError):
            return None
        return dict(answer) if isinstance(answer, dict) else None

    async def watch_health(self) -> None:
        """Poll every broker's /healthz; note each new leader epoch seen."""
        best = -1
        async with httpx.AsyncClient() as http:
            while True:
                for i in range(len(self.urls)):
                    answer = await self.healthz(http, i)
                    if answer is None:
                        self.health.pop(i, None)
                        continue
                    self.health[i] = answer
                    epoch = int(answer.get("epoch") or 0)
                    if answer.get("role") == "leader" and epoch > best:
                        best = epoch
                        self.epochs.append(
                            {
                                "t": time.time(),
                                "epoch": epoch,
                                "broker": i,
                                "brokerId": answer.get("brokerId"),
                            }
                        )
                await trio.sleep(0.2)

    async def find_leader(self) -> tuple[int, dict[str, Any]] | None:
        async with httpx.AsyncClient() as http:
            for i in range(len(self.urls)):
                answer = await self.healthz(http, i)
                if answer is not None and answer.get("role") == "leader":
                    return i, answer
        return None

    # ----------------------------------------------------------------- load

    def start_producers(self) -> list[subprocess.Popen[bytes]]:
        """The producer processes (``_chaos_producer.py``), ``--producers`` per mode;
        each stops by itself after the run's duration."""
        processes = []
        for mode in ("ids", "noid"):
            for n in range(self.args.producers):
                name = f"p-{mode}{n}"
                argv = [
                    sys.executable, str(ROOT / "benchmarks" / "_chaos_producer.py"),
                    "--urls", ",".join(self.urls), "--mode", mode, "--n", str(n),
                    "--rate", str(self.args.rate), "--seconds", str(self.args.duration),
                    "--seed", str(self.args.seed), "--out", str(self.rundir / f"{name}.txt"),
                ]  # fmt: skip
                out = self.rundir / f"{name}.out"
                with out.open("wb") as stdout, out.with_suffix(".log").open("wb") as stderr:
                    processes.append(
                        subprocess.Popen(
                            argv,
                            stdin=subprocess.DEVNULL,
                            stdout=stdout,
                            stderr=stderr,
                            env=clean_env({}),
                            cwd=ROOT,
                        )
                    )
        return processes

    async def await_producers(self, processes: list[subprocess.Popen[bytes]]) -> None:
        """Wait (bounded) for the producers to stop by themselves, then read what they
        recorded."""
        deadline = time.monotonic() + 60.0
        for process in processes:
            left = max(0.1, deadline - time.monotonic())
            try:
                await trio.to_thread.run_sync(functools.partial(process.wait, timeout=left))
            except subprocess.TimeoutExpired:
                self.errors.append(f"producer {process.pid} did not stop by itself")
            await trio.to_thread.run_sync(stop, process)
            if process.returncode not in (0, None, -signal.SIGTERM):
                self.errors.append(f"producer {process.pid} exited {process.returncode}")
        self.read_producers()

    def read_producers(self) -> None:
        for path in sorted(self.rundir.glob("p-*.txt")):
            producer = "ids" if path.name.startswith("p-ids") else "noid"
            for text in path.read_text(errors="replace").splitlines():
                parts = text.split()
                if parts[:1] == ["T"] and len(parts) == 3:
                    if producer == "ids":
                        self.attempted[parts[1]] = {"key": parts[2]}
                    else:
                        self.noid_keys.add(parts[2])
                elif parts[:1] == ["A"] and len(parts) == 4:
                    self.acks[parts[1]] = {
                        "key": parts[2],
                        "producer": producer,
                        "t": float(parts[3]),
                    }
                elif parts[:1] == ["F"] and len(parts) == 3:
                    self.submit_errors[f"{producer}: {parts[1]}"] += 1

    # --------------------------------------------------------------- faults

    async def leader_faults(self) -> None:
        a = self.args
        for n in range(1, 10**9):
            await trio.sleep(self.rng.uniform(0.8, 1.2) * a.leader_every)
            found = await self.find_leader()
            if found is None:
                self.event("leader_fault_skipped", reason="no leader")
                continue
            i, answer = found
            process = self.brokers[i].process
            assert process is not None
            if n % 3 == 0:
                await self.stop_leader(i, process, answer)
                continue
            self.killed.add(process.pid)
            process.send_signal(signal.SIGKILL)
            process.wait()
            self.event("kill_leader", broker=i, pid=process.pid, epoch=answer.get("epoch"))
            await trio.sleep(1.0)
            if await self.start_broker(i):
                self.event("restart_broker", broker=i, pid=self.brokers[i].process.pid)  # type: ignore[union-attr]

    async def stop_leader(self, i: int, process: subprocess.Popen[bytes], answer: dict) -> None:
        epoch = int(answer.get("epoch") or 0)
        pause = self.args.broker_timeout_ms / 1000 + 3.0
        standby = any(
            b.process is not None and b.process.poll() is None
            for n, b in enumerate(self.brokers)
            if n != i
        )
        os.kill(process.pid, signal.SIGSTOP)
        frozen = time.time()
        self.event("sigstop_leader", broker=i, pid=process.pid, epoch=epoch, seconds=pause)
        try:
            await trio.sleep(pause)
        finally:
            os.kill(process.pid, signal.SIGCONT)
            self.leader_stops.append((process.pid, frozen, time.time()))
        resumed = time.time()
        taken = any(e["epoch"] > epoch for e in self.epochs)
        self.event("sigcont_leader", broker=i, pid=process.pid, taken_over=taken)
        record: dict[str, Any] = {
            "broker": i, "epoch": epoch, "standby_running": standby, "taken_over": taken,
        }  # fmt: skip
        async with httpx.AsyncClient() as http:
            with trio.move_on_after(15.0):
                while True:
                    now = await self.healthz(http, i)
                    if now is not None and now.get("role") != "leader":
                        record["stepped_down_after_s"] = round(time.time() - resumed, 2)
                        record["role"] = now.get("role")
                        break
                    await trio.sleep(0.1)
        # with a standby running, a freeze past the broker lease must end in a takeover
        # and the old leader must step down once resumed; unless a storage cut kept
        # the standby from writing its takeover (then the old leader must still
        # step down once someone took over, within the wait above)
        overlap = any(start < resumed and end > frozen for start, end in self.cuts)
        record["storage_cut_overlap"] = overlap
        if taken or not standby:
            record["fenced"] = "stepped_down_after_s" in record if taken else True
        else:
            record["fenced"] = overlap and "stepped_down_after_s" in record
        self.fencing.append(record)
        self.event("fencing", **record)

    async def worker_kills(self) -> None:
        while True:
            await trio.sleep(self.rng.uniform(0.8, 1.2) * self.args.worker_every)
            choices = [i for i in range(len(self.workers)) if i not in self.stopped]
            if not choices:
                continue
            i = self.rng.choice(choices)
            process = self.workers[i].process
            assert process is not None
            self.killed.add(process.pid)
            process.send_signal(signal.SIGKILL)
            process.wait()
            self.kill_times[process.pid] = time.time()
            self.event("kill_worker", worker=i, pid=process.pid)
            if await self.start_worker(i):
                self.event("restart_worker", worker=i, pid=self.workers[i].process.pid)  # type: ignore[union-attr]

    async def worker_stops(self) -> None:
        pause = self.args.job_lease_ms / 1000 + 2.0
        while True:
            await trio.sleep(self.rng.uniform(0.8, 1.2) * self.args.worker_stop_every)
            i = self.rng.randrange(len(self.workers))
            process = self.workers[i].process
            assert process is not None
            self.stopped.add(i)
            began = time.time()
            os.kill(process.pid, signal.SIGSTOP)
            self.event("sigstop_worker", worker=i, pid=process.pid, seconds=pause)
            try:
                await trio.sleep(pause)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)
                self.stops.append((process.pid, began, time.time()))
                self.stopped.discard(i)
            self.event("sigcont_worker", worker=i, pid=process.pid)

    # ----------------------------------------------------------------- run

    async def run(self) -> dict[str, Any]:
        a = self.args
        async with trio.open_nursery() as outer:
            if a.cut_every > 0:  # the brokers reach SeaweedFS through the proxy
                self.endpoint = f"http://{HOST}:{await outer.start(self.proxy.serve)}"
            for i in range(len(self.brokers)):
                if not await self.start_broker(i, create=i == 0):
                    raise RuntimeError("\n".join(self.errors))
            for i in range(len(self.workers)):
                if not await self.start_worker(i):
                    raise RuntimeError("\n".join(self.errors))
            self.t0 = time.time()
            self.event("start", duration_s=a.duration)
            outer.start_soon(self.watch_health)
            producers = self.start_producers()
            with trio.move_on_after(a.duration):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.supervise)
                    nursery.start_soon(self.leader_faults)
                    nursery.start_soon(self.worker_kills)
                    nursery.start_soon(self.worker_stops)
                    if a.cut_every > 0:
                        nursery.start_soon(self.storage_cuts)
            self.event("faults_end")
            self.resume_all()
            await self.await_producers(producers)
            self.stopped.clear()
            for group, starter in ((self.brokers, self.start_broker), (self.workers, self.start_worker)):  # fmt: skip
                for i, slot in enumerate(group):
                    if slot.process is None or slot.process.poll() is not None:
                        await starter(i)
            result = await self.drain_and_read()
            # stopped while the proxy still runs: a broker's last commit goes through it
            for slot in self.all_slots():
                if slot.process is not None:
                    await trio.to_thread.run_sync(stop, slot.process)
            outer.cancel_scope.cancel()
        return result

    async def storage_cuts(self) -> None:
        while True:
            await trio.sleep(self.rng.uniform(0.8, 1.2) * self.args.cut_every)
            self.event("cut_storage", seconds=self.args.cut_seconds)
            started = time.time()
            await self.proxy.cut(self.args.cut_seconds)
            self.cuts.append((started, time.time()))
            self.event("restore_storage", dropped=self.proxy.dropped)

    async def drain_and_read(self) -> dict[str, Any]:
        """Wait (bounded) until nothing is queued or running; read every job's record."""
        drained_at = None
        stats: dict[str, Any] = {}
        async with trioq.Client(self.urls, retry_deadline=10.0) as client:
            with trio.move_on_after(self.args.drain_timeout):
                while True:
                    try:
                        stats = await client.stats()
                    except trioq.TrioqError as exc:
                        self.errors.append(f"stats: {exc}")
                        stats = {}
                    if stats.get("total") == 0:
                        drained_at = time.time()
                        break
                    await trio.sleep(0.5)
            self.event("drained" if drained_at else "drain_timeout", stats=stats)
            # every id: the ids producer's attempts, every acknowledged id, every id run
            ids = set(self.attempted) | set(self.acks) | set(self.history_ids())
            records: dict[str, str] = {}
            limiter = trio.CapacityLimiter(16)

            async def read(job_id: str) -> None:
                async with limiter:
                    try:
                        records[job_id] = str((await client.get(job_id)).get("status"))
                    except trioq.JobNotFound:
                        records[job_id] = "not_found"
                    except trioq.TrioqError as exc:
                        records[job_id] = f"error: {type(exc).__name__}"

            with trio.move_on_after(120.0):
                async with trio.open_nursery() as nursery:
                    for job_id in sorted(ids):
                        nursery.start_soon(read, job_id)
        return {"drained_at": drained_at, "stats": stats, "records": records}

    def stop_workers(self) -> None:
        for slot in self.workers:
            if slot.process is not None:
                stop(slot.process)

    def events_time(self, kind: str) -> float:
        return next((e["t"] for e in self.events if e["kind"] == kind), self.t0)

    def history_ids(self) -> set[str]:
        return {line[1] for line in self.history()}

    def history(self) -> list[list[str]]:
        lines = []
        for path in sorted(self.rundir.glob("history-*.txt")):
            for text in path.read_text(errors="replace").splitlines():
                parts = text.split()
                if len(parts) == 6 and parts[0] in ("S", "E", "X", "C"):
                    lines.append(parts)
        return lines


# ----------------------------------------------------------------- the checks


def check(h: Harness, result: dict[str, Any]) -> dict[str, Any]:
    lines = h.history()
    records: dict[str, str] = result["records"]
    starts = [(p[1], int(p[2]), int(p[3]), float(p[4]), p[5]) for p in lines if p[0] == "S"]
    ends = {(p[1], int(p[2]), int(p[3])): float(p[4]) for p in lines if p[0] == "E"}
    ended_ids = {key[0] for key in ends}
    cancels = {(p[1], int(p[2]), int(p[3])): float(p[4]) for p in lines if p[0] == "X"}
    completed_acks = {p[1] for p in lines if p[0] == "C"}

    lost = sorted(i for i in h.acks if records.get(i) != "completed")
    no_end = sorted(i for i, s in records.items() if s == "completed" and i not in ended_ids)

    key_ids, dup_ids, dup_noid, unknown = find_duplicates(h, starts)

    completed_ids = {i for i, s in records.items() if s == "completed"}
    completed_total = result["stats"].get("completedTotal")
    statuses = collections.Counter(records.values())

    end_of_run = time.time()
    overlaps = find_overlaps(h, starts, ends, cancels, end_of_run)
    unexplained = [o for o in overlaps if not o["explained"]]

    gap, gap_at = longest_stall(h, result, ends, end_of_run)

    leader_changes = max(0, len(h.epochs) - 1)
    fencing_failed = [f for f in h.fencing if not f["fenced"]]
    kinds = collections.Counter(e["kind"] for e in h.events)

    found = Found(
        starts=starts,
        ends=ends,
        cancels=cancels,
        completed_acks=completed_acks,
        statuses=statuses,
        completed_total=completed_total,
        lost=lost,
        dup_ids=dup_ids,
        dup_noid=dup_noid,
        unknown=unknown,
        no_end=no_end,
        overlaps=overlaps,
        unexplained=unexplained,
        gap=gap,
        gap_at=gap_at,
        leader_changes=leader_changes,
        kinds=kinds,
    )
    checks = {
        "drained": result["drained_at"] is not None,
        "lost == 0": not lost,
        "duplicates (client ids) == 0": not dup_ids,
        "unknown jobs == 0": not unknown,
        "completed without handler end == 0": not no_end,
        "completedTotal == distinct completed ids": completed_total == len(completed_ids),
        "overlaps all explained by a lease expiry": not unexplained,
        "SIGSTOPped leaders fenced": not fencing_failed,
        "no process exited by itself": not h.exits,
        "no harness errors": not h.errors,
    }
    return {
        "figures": figures(h, result, found),
        "checks": checks,
        "lost": lost[:100],
        "duplicate_keys_ids": {k: sorted(key_ids[k]) for k in dup_ids[:100]},
        "duplicate_keys_noid": {k: sorted(key_ids[k]) for k in dup_noid[:100]},
        "unknown": unknown[:100],
        "completed_without_end": no_end[:100],
        "overlaps": overlaps,
        "submit_errors": dict(h.submit_errors),
        "harness_errors": h.errors,
        "start_failures": h.start_failures,
        "exits": h.exits,
        "leader_stops": h.leader_stops,
    }


@dataclass(frozen=True)
class Found:
    """What :func:`check` found, for :func:`figures`."""

    starts: list[tuple[str, int, int, float, str]]
    ends: dict[tuple[str, int, int], float]
    cancels: dict[tuple[str, int, int], float]
    completed_acks: set[str]
    statuses: collections.Counter[str]
    completed_total: Any
    lost: list[str]
    dup_ids: list[str]
    dup_noid: list[str]
    unknown: list[str]
    no_end: list[str]
    overlaps: list[dict[str, Any]]
    unexplained: list[dict[str, Any]]
    gap: float
    gap_at: float
    leader_changes: int
    kinds: collections.Counter[str]


def figures(h: Harness, result: dict[str, Any], f: Found) -> dict[str, Any]:
    """The run's figures, by name, for the table and the JSON."""
    return {
        "duration_s": h.args.duration,
        "seed": h.args.seed,
        "acknowledged submits": len(h.acks),
        "acknowledged (ids producer)": sum(1 for a in h.acks.values() if a["producer"] == "ids"),
        "acknowledged (noid producer)": sum(1 for a in h.acks.values() if a["producer"] == "noid"),
        "submit errors retried": sum(h.submit_errors.values()),
        "handler starts": len(f.starts),
        "handler ends": len(f.ends),
        "handlers cancelled by their worker": len(f.cancels),
        "completions acknowledged to workers": len(f.completed_acks),
        "final statuses": dict(f.statuses),
        "submitted, not acknowledged (cut off by the end)": len(set(h.attempted) - set(h.acks)),
        "completedTotal (document)": f.completed_total,
        "lost": len(f.lost),
        "duplicates, client ids (payload keys under >1 id)": len(f.dup_ids),
        "duplicates, no ids + retry (payload keys under >1 id)": len(f.dup_noid),
        "unknown jobs": len(f.unknown),
        "completed without handler end": len(f.no_end),
        "overlapping executions": len(f.overlaps),
        "overlaps unexplained": len(f.unexplained),
        "longest without a handler end (s)": round(f.gap, 2),
        "  ... starting at (s into run)": round(f.gap_at - h.t0, 1),
        "leader changes (new epochs seen)": f.leader_changes,
        "leader kill -9": f.kinds["kill_leader"],
        "leader SIGSTOP": f.kinds["sigstop_leader"],
        "fenced after SIGCONT (s)": [
            f.get("stepped_down_after_s", "no takeover") for f in h.fencing
        ],
        "processes that exited at startup (started again)": len(h.start_failures),
        "processes that exited by themselves later (started again)": len(h.exits),
        "worker kill -9": f.kinds["kill_worker"],
        "worker SIGSTOP": f.kinds["sigstop_worker"],
        "storage cuts (connections dropped)": f"{f.kinds['cut_storage']} ({h.proxy.dropped})",
        "drain after faults end (s)": round(result["drained_at"] - h.events_time("faults_end"), 1)
        if result["drained_at"]
        else None,
    }


def find_duplicates(
    h: Harness, starts: list[tuple[str, int, int, float, str]]
) -> tuple[dict[str, set[str]], list[str], list[str], list[str]]:
    """Payload keys stored under more than one id (from the producer with client ids,
    and from the one without), and ids no producer submitted; with every key's ids."""
    # payload key -> ids it was stored under (acknowledged, or seen running)
    key_ids: dict[str, set[str]] = collections.defaultdict(set)
    for job_id, ack in h.acks.items():
        key_ids[ack["key"]].add(job_id)
    for job_id, _, _, _, key in starts:
        key_ids[key].add(job_id)
    dup_ids = sorted(k for k, v in key_ids.items() if k.startswith("ids-") and len(v) > 1)
    dup_noid = sorted(k for k, v in key_ids.items() if k.startswith("noid-") and len(v) > 1)
    known_keys = {v["key"] for v in h.attempted.values()} | h.noid_keys
    unknown = sorted({i for i, _, _, _, key in starts if key not in known_keys})
    unknown += sorted(
        i for i in {s[0] for s in starts} if i.startswith("ids-") and i not in h.attempted
    )
    return key_ids, dup_ids, dup_noid, unknown


def longest_stall(
    h: Harness,
    result: dict[str, Any],
    ends: dict[tuple[str, int, int], float],
    end_of_run: float,
) -> tuple[float, float]:
    """The longest time without a handler end, from the first acknowledged submit to
    the drain, and when it began."""
    first = min((a["t"] for a in h.acks.values()), default=h.t0)
    last = result["drained_at"] or end_of_run
    marks = sorted([first, *(t for t in ends.values() if first <= t <= last), last])
    gaps = [(b - a, a) for a, b in itertools.pairwise(marks)]
    gap, gap_at = max(gaps, default=(0.0, first))
    return gap, gap_at


Run = tuple[float, float, int, int]
"""One execution of a job: its start, its end, the worker's pid and the attempt."""


def find_overlaps(
    h: Harness,
    starts: list[tuple[str, int, int, float, str]],
    ends: dict[tuple[str, int, int], float],
    cancels: dict[tuple[str, int, int], float],
    end_of_run: float,
) -> list[dict[str, Any]]:
    """Executions of one job that overlapped in time, each with its explanation."""
    executions: dict[str, list[Run]] = collections.defaultdict(list)
    for job_id, attempt, pid, began, _ in starts:
        run = (job_id, attempt, pid)  # ended: returned, cancelled, killed, or still at the end
        end = ends.get(run, cancels.get(run, h.kill_times.get(pid, end_of_run)))
        executions[job_id].append((began, end, pid, attempt))
    overlaps = []
    for job_id, runs in executions.items():
        runs.sort()
        for x, first in enumerate(runs):
            for second in runs[x + 1 :]:
                if second[0] < first[1]:
                    why = explain_overlap(h, first, second)
                    overlaps.append(
                        {
                            "job": job_id,
                            "first": {
                                "pid": first[2],
                                "attempt": first[3],
                                "start": first[0],
                                "end": first[1],
                            },
                            "second": {"pid": second[2], "attempt": second[3], "start": second[0]},
                            "explained": why != "unexplained",
                            "why": why,
                        }
                    )
    return overlaps


def explain_overlap(h: Harness, first: Run, second: Run) -> str:
    """Why ``second`` started while ``first`` ran: a lease that expired, or
    ``"unexplained"``."""
    lease = h.args.job_lease_ms / 1000
    # the first execution's worker was frozen across it, past its lease
    stopped = [
        (b, e) for pid, b, e in h.stops
        if pid == first[2] and b < second[0] and e > first[0]
    ]  # fmt: skip
    if stopped:
        return (
            "first worker SIGSTOPped past its lease; the lease expired "
            "and the job went to another worker"
        )
    # or it was frozen past the lease just before: a long-poll claim answered before
    # the freeze and read after it (a worker cannot tell how long a long-poll's
    # answer waited unread; a claim riding on an exchange it does not start then)
    frozen_before = [
        (b, e) for pid, b, e in h.stops
        if pid == first[2] and e - b > lease and 0 <= first[0] - e < 1.0
    ]  # fmt: skip
    if frozen_before:
        return (
            "first worker SIGSTOPped past the lease just before it started the job: "
            "its long-poll claim was read after the lease had expired"
        )
    # or it started within 1 s of a leader frozen past the job lease being resumed:
    # the claim's answer (of a write that landed before the freeze) reached the worker
    # after the job's lease had expired
    late_claim = [
        (b, e) for _, b, e in h.leader_stops
        if e - b > lease and 0 <= first[0] - e < 1.0
    ]  # fmt: skip
    if late_claim:
        return (
            "first execution started just after a leader frozen past the "
            "job lease was resumed: its claim was answered after the "
            "lease had expired, and the job went to another worker"
        )
    return "unexplained"


def print_table(report: dict[str, Any]) -> None:
    print("\n| figure | value |\n|---|---|")
    for name, value in report["figures"].items():
        print(f"| {name} | {value} |")
    print("\n| check | result |\n|---|---|")
    for name, ok in report["checks"].items():
        print(f"| {name} | {'ok' if ok else 'FAILED'} |")
    for o in report["overlaps"]:
        print(f"overlap: job {o['job']}: {o['why']}")
    for name in ("lost", "unknown", "completed_without_end", "harness_errors", "exits"):
        if report[name]:
            print(f"{name}: {report[name][:10]}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=None, help="duration (default 1)")
    parser.add_argument("--seconds", type=float, default=None, help="duration in seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--brokers", type=int, default=3)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--producers", type=int, default=2, help="producer processes per mode")
    parser.add_argument("--rate", type=float, default=10.0, help="jobs/s per producer")
    parser.add_argument("--leader-every", type=float, default=10.0)
    parser.add_argument("--worker-every", type=float, default=5.0)
    parser.add_argument("--worker-stop-every", type=float, default=15.0)
    parser.add_argument("--job-lease-ms", type=int, default=3000)
    parser.add_argument("--broker-timeout-ms", type=int, default=4000)
    parser.add_argument("--cut-every", type=float, default=20.0, help="0: no proxy, no cuts")
    parser.add_argument("--cut-seconds", type=float, default=3.0)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument(
        "--layout", choices=("document", "log"), default="log", help="the brokers' --layout"
    )
    for name in FAULT_FLAGS:
        parser.add_argument(f"--{name}", type=float, default=0.0, help="passed to the brokers")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--dir", type=Path, default=None, help="run directory (logs, history)")
    args = parser.parse_args(argv)
    if args.seconds is not None:
        args.duration = args.seconds
    else:
        args.duration = 60 * (args.minutes if args.minutes is not None else 1.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = args.dir or Path(tempfile.mkdtemp(prefix="trioq-chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    rundir = base / "run"
    rundir.mkdir()
    command = shlex.join([sys.executable, *sys.argv])
    print(f"chaos run: {command}\nfiles: {base}", flush=True)
    with run_seaweedfs(base / "seaweedfs") as server:
        harness = Harness(args, rundir, server)
        try:
            result = trio.run(harness.run)
        finally:
            harness.stop_all()
    report = check(harness, result)
    print_table(report)
    path = args.json or base / "chaos.json"
    history = {
        "command": command,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "t0": harness.t0,
        "report": report,
        "events": harness.events,
        "leader_epochs": harness.epochs,
        "fencing": harness.fencing,
        "acks": harness.acks,
        "worker_stops": harness.stops,
        "worker_kills": harness.kill_times,
        "records": result["records"],
        "handler_history": [" ".join(line) for line in harness.history()],
    }
    path.write_text(json.dumps(history, indent=1))
    print(f"\nhistory: {path}")
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
