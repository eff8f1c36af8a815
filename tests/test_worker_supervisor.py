"""``python -m trioq.worker module:attr --processes N``: a supervisor of N worker
processes (tests/_cpu_jobs.py's ``run="process"`` handlers, so each worker runs a
process pool of its own), restarting one that dies.

Real processes and real time: a broker subprocess on a data directory, the
supervisor as ``python -m trioq.worker``, its worker processes and their pools. The
tests wait for the supervisor's log lines, files the handlers write, records read
from the broker and process exits, each with :func:`_waits.wait_for` or
``trio.fail_after`` (bounds that only stop a broken build from hanging). The restart
logic itself runs here against tiny ``python -c`` children, with short backoffs.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

import trioq
from _waits import LIMIT, wait_for
from _worker_proc import (
    Proc,
    alive,
    broker_process,
    no_worker_environment,  # noqa: F401 (the fixture pytestmark uses)
    worker_process,
)
from trioq.worker._cli import UsageError, child_commands, configure
from trioq.worker._settings import WorkerSettings
from trioq.worker._supervisor import Supervisor, describe_exit

TARGET = "_cpu_jobs:worker"
STARTED = re.compile(r"worker process (\d+) started \(pid (\d+)\)")


pytestmark = pytest.mark.usefixtures("no_worker_environment")


def starts(proc: Proc) -> list[tuple[int, int]]:
    """(child number, pid) of every start the supervisor logged, in order."""
    text = proc.log_path.read_text(errors="replace")
    return [(int(k), int(pid)) for k, pid in STARTED.findall(text)]


async def ready_line_of(proc: Proc, pid: int, seen: list[str]) -> str:
    """Read the supervisor's stdout (which its worker processes share) up to the
    ready line of the worker process ``pid`` (its worker id is ``host-pid-random``);
    ``seen`` keeps every line read, across calls."""

    def find() -> str | None:
        for line in seen:
            if line.startswith("trioq worker ") and f"-{pid}-" in line.split(":")[0]:
                return line
        return None

    stdout = proc.process.stdout
    assert stdout is not None
    with trio.fail_after(LIMIT):
        while (line := find()) is None:
            while b"\n" not in proc._buffer:
                chunk = await stdout.receive_some(4096)
                assert chunk, f"stdout closed:\n{proc.log_tail()}"
                proc._buffer += chunk
            raw, _, proc._buffer = proc._buffer.partition(b"\n")
            seen.append(raw.decode())
    return line


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def completed(client: trioq.Client, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        stats = await client.stats()
        return bool(stats["completedTotal"] == n and stats["total"] == 0)

    check.__qualname__ = f"{n} jobs completed"
    return check


def logged(proc: Proc, pattern: str) -> Callable[[], bool]:
    def check() -> bool:
        return re.search(pattern, proc.log_path.read_text(errors="replace")) is not None

    check.__qualname__ = f"{proc.name} logs {pattern!r}"
    return check


# ------------------------------------------------------------- the commands


def test_each_child_gets_the_arguments_and_its_own_id_and_port() -> None:
    argv = [TARGET, "--processes", "3", "--worker-id", "box", "--metrics-port", "9100"]
    worker, _ = configure(argv, environ={})
    try:
        commands = child_commands(argv, worker.settings)
    finally:
        worker._configure(environ={})  # the module's worker, back to its arguments
    prefix = [sys.executable, "-m", "trioq.worker", *argv, "--processes", "1"]
    assert commands == [
        [*prefix, "--worker-id", f"box-{k}", "--metrics-port", str(9099 + k)] for k in (1, 2, 3)
    ]


def test_without_an_id_or_a_port_each_child_picks_its_own() -> None:
    settings = WorkerSettings(processes=2, metrics_port=0)
    commands = child_commands([TARGET], settings)
    assert commands == [[sys.executable, "-m", "trioq.worker", TARGET, "--processes", "1"]] * 2


def test_a_metrics_port_range_past_65535_is_a_usage_error() -> None:
    settings = WorkerSettings(processes=3, metrics_port=65534)
    with pytest.raises(UsageError, match="would be 65536, above 65535"):
        child_commands([TARGET], settings)


def test_exits_are_described() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-9) == "was killed by SIGKILL"


# --------------------------------------------------------- restart logic


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_a_dying_child_is_restarted_with_a_growing_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "trioq.worker.supervisor")
    supervisor = Supervisor(
        [python("raise SystemExit(3)"), python("import time; time.sleep(600)")],
        stop_deadline=LIMIT,
        restart_base=0.05,
        restart_max=0.2,
    )
    async with trio.open_nursery() as nursery:
        codes: list[int] = []

        async def run() -> None:
            codes.append(await supervisor.run())

        nursery.start_soon(run)
        await wait_for(lambda: supervisor.starts >= 6, what="five restarts")
        supervisor.stop()
    assert codes == [0]
    delays = [
        float(m)
        for m in re.findall(
            r"worker process 1 \(pid \d+\) exited with code 3 after [\d.]+ s; "
            r"restarting it in ([\d.]+) s",
            caplog.text,
        )
    ]
    assert delays[:4] == [0.05, 0.1, 0.2, 0.2]  # doubling, capped
    assert "worker process 2 (pid" in caplog.text
    assert re.search(
        r"worker process 2 \(pid \d+\) stopped: exited with code 0|"
        r"worker process 2 \(pid \d+\) stopped: was killed by SIGTERM",
        caplog.text,
    )
    assert supervisor.pids == {}


async def test_a_child_that_exits_cleanly_is_not_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "trioq.worker.supervisor")
    supervisor = Supervisor([python("pass")] * 2, stop_deadline=LIMIT, restart_base=0.01)
    with trio.fail_after(LIMIT):
        assert await supervisor.run() == 0
    assert supervisor.starts == 2
    assert caplog.text.count("exited by itself (code 0)") == 2


async def test_a_child_that_ignores_sigterm_is_killed_at_the_deadline(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "pathlib.Path(sys.argv[1]).touch(); time.sleep(600)"
    )
    supervisor = Supervisor([[*python(code), str(ready)]], stop_deadline=0.5)
    result: list[int] = []

    async def run() -> None:
        result.append(await supervisor.run())

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            # (SIGTERM is ignored once the child says so)
            await wait_for(ready.exists, what="the child ignores SIGTERM")
            [pid] = supervisor.pids.values()
            supervisor.stop()
    assert result == [1]
    assert supervisor.killed == 1
    assert not alive(pid)


# ------------------------------------------------------ the real command


async def test_two_worker_processes_one_killed_and_restarted_then_a_clean_stop(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()

    async with (
        broker_process(tmp_path, data_dir=tmp_path / "data") as broker,
        trioq.Client(broker.url, retry_deadline=LIMIT) as client,
        worker_process(
            tmp_path,
            broker.url,
            *("--processes", "2", "--shutdown-grace-s", "5"),
            target=TARGET,
            name="supervisor",
        ) as supervisor,
    ):
        line = await supervisor.ready()
        assert line.startswith(f"trioq worker supervisor (pid {supervisor.pid}): 2 worker "), line
        await wait_for(lambda: len(starts(supervisor)) == 2, what="two children started")
        first = dict(starts(supervisor))
        lines: list[str] = []
        assert sorted(first) == [1, 2]
        assert supervisor.pid not in first.values()
        for pid in first.values():
            assert "types cpu:raise, cpu:spin, cpu:spin-timeout, cpu:sum" in (
                await ready_line_of(supervisor, pid, lines)
            )

        await client.submit_many(
            [trioq.JobSpec("cpu:sum", {"dir": str(out), "n": 100}, id=f"a{i}") for i in range(4)]
        )
        await wait_for(completed(client, 4))

        victim = first[1]
        os.kill(victim, signal.SIGKILL)
        await wait_for(
            logged(
                supervisor,
                rf"worker process 1 \(pid {victim}\) was killed by SIGKILL after [\d.]+ s; "
                r"restarting it in 0.5 s",
            )
        )
        await wait_for(lambda: len(starts(supervisor)) == 3, what="child 1 restarted")
        k, replacement = starts(supervisor)[-1]
        assert k == 1
        assert replacement not in (victim, first[2])
        assert not alive(victim)

        await ready_line_of(supervisor, replacement, lines)

        # jobs keep completing, on the restarted child too (0.3 s each: while one
        # child runs one, the other's waiting claim takes the next)
        work = {"dir": str(out), "n": 100, "seconds": 0.3}
        await client.submit_many([trioq.JobSpec("cpu:sum", work, id=f"b{i}") for i in range(6)])
        await wait_for(completed(client, 10))
        # each job ran in a pool process (still idle in its worker's pool)
        ran_in = {int((out / f"b{i}.done").read_text().split()[0]) for i in range(6)}
        assert {parent_of(pid) for pid in ran_in} == {replacement, first[2]}

        supervisor.signal(signal.SIGTERM)
        with trio.fail_after(LIMIT):
            code = await supervisor.exited()
        assert code == 0, supervisor.log_tail()
        for pid in (replacement, first[2]):
            assert not alive(pid), pid
        log = supervisor.log_path.read_text()
        assert re.search(
            rf"worker process 1 \(pid {replacement}\) stopped: exited with code 0", log
        )
        assert re.search(rf"worker process 2 \(pid {first[2]}\) stopped: exited with code 0", log)
        assert "every worker process has ended" in log
        # the pools closed with their workers
        assert not [pid for pid in ran_in if alive(pid)]
