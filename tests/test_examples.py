"""Every example in ``examples/`` runs as written, as a subprocess, with short bounds.

- quickstart: a broker, ``python -m trioq.worker examples.quickstart:worker`` and
  ``examples/submit.py 5`` (``--broker`` and ``$BROKER_URL``), and its exit status
  when the broker is unreachable;
- typed_jobs: in-process, and against the broker with its own worker process;
- embedded_worker: its health endpoint, then Ctrl-C (SIGINT) drains it; and
  ``--seconds`` ends it by itself;
- production_layout: SeaweedFS, two brokers, three workers, a killed leader;
- interval_tuning: its table, with a short ``--seconds``.

``sync_submit.py`` and ``fastapi_app.py`` run in tests/test_client_backends.py.

The examples' processes bind 127.0.0.1 on free ports (``--port 0``, or ports they
pick). Each wait is for a line in an output file or an answer, bounded; every process
a test starts is stopped on the way out (SIGTERM, then SIGKILL), whatever happened.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent

LIMIT = 30.0
"""Upper bound, in seconds, on a wait for a state (the waits take far less)."""

STOP_TIMEOUT = 10.0
"""Seconds a process gets after SIGTERM before SIGKILL."""

BROKER_READY = re.compile(r"^trioq broker \S+ listening on (http://\S+) as leader", re.M)


def example_env(**extra: str) -> dict[str, str]:
    """This process's environment (no trioq setting: conftest removes them) for an
    example, with unbuffered output and ``extra``."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def wait_until(check: Callable[[], bool], *, what: str, within: float = LIMIT) -> None:
    """Poll ``check()`` until it is true (AssertionError after ``within`` seconds)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within:g} s: {what}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT` seconds; the exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


@contextmanager
def running(argv: list[str], log: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` from the repository's root, stdout and stderr to ``log``; stopped
    on the way out if it is still running."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=example_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        stop(process)


def run_example(argv: list[str], *, within: float, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python <argv>`` to its end (at most ``within`` seconds)."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env=example_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=within,
        check=False,
    )


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``python -m trioq.broker`` on a new directory, 127.0.0.1, a free port,
    shared by this module's tests (each uses job types of its own)."""
    directory = tmp_path_factory.mktemp("examples-broker")
    log = directory / "broker.log"
    argv = [sys.executable, "-m", "trioq.broker", "--data-dir", str(directory / "queue")]
    argv += ["--host", "127.0.0.1", "--port", "0", "--group-commit-interval-ms", "20"]
    with running(argv, log) as process:
        found: list[str] = []

        def ready() -> bool:
            assert process.poll() is None, log.read_text()
            match = BROKER_READY.search(log.read_text(errors="replace"))
            if match:
                found.append(match[1])
            return match is not None

        wait_until(ready, what="the broker's ready line")
        yield found[0]


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A bound port nobody listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# ---------------------------------------------------------------- quickstart


def test_quickstart_worker_and_submit(broker_url: str, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    worker = [sys.executable, "-m", "trioq.worker", "examples.quickstart:worker"]
    worker += ["--broker-url", broker_url, "--concurrency", "5"]
    with running(worker, log) as process:
        by_flag = run_example(
            ["examples/submit.py", "5", "--broker", broker_url, "--timeout", str(LIMIT)],
            within=LIMIT + 15,
        )
        assert by_flag.returncode == 0, output(by_flag) + log.read_text()
        assert f"submitted 6 jobs to {broker_url}" in by_flag.stdout
        assert "all 6 jobs completed" in by_flag.stdout
        # README's spelling: the worker's variable
        by_env = run_example(
            ["examples/submit.py", "2", "--timeout", str(LIMIT)],
            within=LIMIT + 15,
            BROKER_URL=broker_url,
        )
        assert by_env.returncode == 0, output(by_env) + log.read_text()
        assert "all 3 jobs completed" in by_env.stdout
        process.send_signal(signal.SIGINT)  # Ctrl-C: the worker drains and exits 0
        assert process.wait(LIMIT) == 0, log.read_text()
    text = log.read_text()
    assert len(re.findall(r"^resized photo-\d+\.png", text, re.M)) == 7, text
    assert "flaky 5 succeeded on attempt 2" in text
    assert "flaky 2 succeeded on attempt 2" in text


def test_submit_fails_with_status_1_when_the_broker_is_unreachable(refused_url: str) -> None:
    started = time.monotonic()
    done = run_example(
        ["examples/submit.py", "1", "--broker", refused_url, "--timeout", "1"], within=LIMIT
    )
    assert done.returncode == 1, output(done)
    assert f"could not submit to {refused_url}" in done.stderr
    assert time.monotonic() - started < LIMIT  # bounded by --timeout, not 30 s of retries
    usage = run_example(["examples/submit.py", "--timeout", "0"], within=LIMIT)
    assert usage.returncode == 2, output(usage)
    helped = run_example(["examples/submit.py", "--help"], within=LIMIT)
    assert "TRIOQ_BROKER_URL" in helped.stdout
    assert "BROKER_URL" in helped.stdout.replace("TRIOQ_BROKER_URL", "")


# ---------------------------------------------------------------- typed jobs


TYPED_OUTCOMES = [
    "ada: completed (expected completed)",
    "report: completed (expected completed)",
    "bad: dead (expected dead)",
    "typed jobs: all outcomes as expected",
]


def test_typed_jobs_in_process() -> None:
    done = run_example(["examples/typed_jobs.py", "--in-process", "--timeout", "20"], within=60)
    assert done.returncode == 0, output(done)
    assert "generated weekly report for 2026-01-05 (Monday)" in done.stdout
    assert "sent email to ada@example.com: 'Welcome, Ada'" in done.stdout
    assert "job bad dead-lettered: invalid payload for 'email:send'" in done.stdout
    for line in TYPED_OUTCOMES:
        assert line in done.stdout, output(done)


def test_typed_jobs_against_a_broker(broker_url: str, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    worker = [sys.executable, "-m", "trioq.worker", "examples.typed_jobs:worker"]
    with running(worker, log, BROKER_URL=broker_url) as process:
        done = run_example(
            ["examples/typed_jobs.py", "--broker", broker_url, "--timeout", str(LIMIT)],
            within=LIMIT + 15,
        )
        assert done.returncode == 0, output(done) + log.read_text()
        for line in TYPED_OUTCOMES:
            assert line in done.stdout, output(done)
        assert stop(process) == 0, log.read_text()
    text = log.read_text()
    assert "generated weekly report for 2026-01-05 (Monday)" in text
    assert "String should match pattern" in text  # pydantic's message, in the worker's log


# ----------------------------------------------------------- embedded worker


def test_embedded_worker_serves_health_and_drains_on_ctrl_c(
    broker_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "embedded.log"
    argv = [sys.executable, "examples/embedded_worker.py", "--broker", broker_url]
    argv += ["--seconds", "120", "--every", "0.1"]
    with running(argv, log) as process:
        health: list[str] = []

        def ran_jobs() -> bool:
            assert process.poll() is None, log.read_text()
            text = log.read_text()
            match = re.search(r"^health endpoint on (http://127\.0\.0\.1:\d+/healthz)$", text, re.M)
            if match and not health:
                health.append(match[1])
            return bool(health) and "ran ping 2 " in text

        wait_until(ran_jobs, what="the embedded worker ran three jobs")
        answer = httpx.get(health[0], timeout=LIMIT)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "ok"
        assert body["counts"]["completed"] >= 3
        assert httpx.get(health[0].replace("/healthz", "/nope"), timeout=LIMIT).status_code == 404

        process.send_signal(signal.SIGINT)
        assert process.wait(LIMIT) == 0, log.read_text()
    text = log.read_text()
    assert "SIGINT: draining" in text
    drained = re.search(r"^drained: submitted (\d+), completed (\d+) jobs$", text, re.M)
    assert drained, text
    assert int(drained[2]) >= 3


def test_embedded_worker_stops_after_seconds(broker_url: str) -> None:
    done = run_example(
        ["examples/embedded_worker.py", "--broker", broker_url, "--seconds", "1.5"],
        within=LIMIT,
    )
    assert done.returncode == 0, output(done)
    assert re.search(r"^drained: submitted \d+, completed \d+ jobs$", done.stdout, re.M)


# --------------------------------------------------------- production layout


def test_production_layout_survives_the_leader_kill() -> None:
    done = run_example(
        ["examples/production_layout.py", "--jobs", "30", "--timeout", "80"], within=110
    )
    assert done.returncode == 0, output(done)
    out = done.stdout
    assert re.search(r"^broker broker-a: http://127\.0\.0\.1:\d+ \(leader\)$", out, re.M), out
    assert re.search(r"^broker broker-b: http://127\.0\.0\.1:\d+ \(standby\)$", out, re.M), out
    assert "sent SIGKILL to the leader broker-a" in out
    assert re.search(r"^broker-b leads, [\d.]+ s after the kill$", out, re.M), out
    assert "jobs completed: 30/30" in out
    runs = re.search(r"runs per worker: worker-1=(\d+), worker-2=(\d+), worker-3=(\d+)", out)
    assert runs, out
    assert sum(map(int, runs.groups())) >= 30  # at least once each
    assert out.rstrip().endswith("production layout: OK")


# ----------------------------------------------------------- interval tuning


def test_interval_tuning_prints_the_table() -> None:
    seconds = 1.5
    done = run_example(["examples/interval_tuning.py", "--seconds", str(seconds)], within=90)
    assert done.returncode == 0, output(done)
    # interval -> writes/s
    rows = {
        int(match[1]): float(match[2])
        for match in re.finditer(
            r"^\| (\d+) ms \| [\d.]+ \| ([\d.]+) \| \d+ \| [\d.]+ \| \d+ \| \d+ \| \d+ \|$",
            done.stdout,
            re.M,
        )
    }
    assert sorted(rows) == [50, 500, 2000], done.stdout
    for interval, writes_per_s in rows.items():
        # the interval is the minimum spacing between two writes: a hard cap (plus
        # the writes the window's two edges can catch)
        assert writes_per_s <= 1000 / interval + 2 / seconds, (interval, done.stdout)
    assert rows[50] > rows[500], done.stdout
    header = (
        "| interval | submits/s | writes/s | writes/min | jobs/write | objects | p50 ms | p99 ms |"
    )
    assert header in done.stdout


def test_examples_readme_lists_every_example() -> None:
    readme = (ROOT / "examples" / "README.md").read_text()
    for path in sorted((ROOT / "examples").glob("*.py")):
        if path.name != "__init__.py":
            assert path.name in readme, path.name
