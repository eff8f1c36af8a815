"""``python -m trioq.worker module:attr``: options, precedence, startup and its errors."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

import trioq
from _jobs_for_tests import configured_worker
from _waits import wait_for
from _worker_proc import base_env, broker_process, worker_process
from trioq._settings import Public
from trioq._signals import ABORTED, run_until_signalled
from trioq._tokens import secret_value
from trioq.worker import _cli as _worker_cli
from trioq.worker._cli import PROBE_DEADLINE, UsageError, configure, load_worker
from trioq.worker._settings import WorkerSettings

TARGET = "_jobs_for_tests:configured_worker"


WORKER_ENV_VARS = [
    item.env
    for field in WorkerSettings.model_fields.values()
    for item in field.metadata
    if isinstance(item, Public)
]


@pytest.fixture(autouse=True)
def restore_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """configure() changes the module-level worker's settings: put them back. And
    no worker variable of this process's environment leaks into a test."""
    for name in WORKER_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    saved = configured_worker.settings.model_copy()
    yield
    configured_worker.settings = saved


# --------------------------------------------------------------- precedence


def test_defaults_and_constructor_arguments() -> None:
    worker, level = configure([TARGET], environ={})
    s = worker.settings
    assert worker is configured_worker
    assert level == "INFO"
    # Worker(concurrency=3, poll_interval=0.25) over the defaults
    assert (s.concurrency, s.poll_interval) == (3, 0.25)
    assert (s.heartbeat_interval, s.shutdown_grace, secret_value(s.token)) == (5.0, 30.0, None)
    assert s.broker_url == "http://127.0.0.1:8080"
    assert s.group_commit_interval == 2.0


def test_environment_wins_over_constructor_arguments() -> None:
    env = {
        "BROKER_URL": "http://env.test:1,http://env.test:2",
        "TRIOQ_CONCURRENCY": "4",
        "TRIOQ_PREFETCH": "16",
        "TRIOQ_POLL_INTERVAL_MS": "500",
        "TRIOQ_HEARTBEAT_INTERVAL_MS": "750",
        "TRIOQ_SHUTDOWN_GRACE_S": "12.5",
        "TRIOQ_TOKEN": "from-env",
        "TRIOQ_WORKER_ID": "env-worker",
        "GROUP_COMMIT_INTERVAL_MS": "400",
    }
    s = configure([TARGET], environ=env)[0].settings
    assert s.broker_url == "http://env.test:1,http://env.test:2"
    assert (s.concurrency, s.poll_interval, s.heartbeat_interval) == (4, 0.5, 0.75)
    assert s.prefetch == 16
    assert (s.shutdown_grace, secret_value(s.token), s.worker_id) == (
        12.5,
        "from-env",
        "env-worker",
    )
    assert s.group_commit_interval == 0.4


def test_flags_win_over_the_environment() -> None:
    env = {
        "BROKER_URL": "http://env.test:1",
        "TRIOQ_CONCURRENCY": "4",
        "TRIOQ_PREFETCH": "16",
        "TRIOQ_TOKEN": "env",
        "GROUP_COMMIT_INTERVAL_MS": "400",
    }
    argv = [
        TARGET,
        "--broker-url",
        "http://flag.test:9",
        "--concurrency",
        "6",
        "--prefetch",
        "0",
        "--poll-interval-ms",
        "100",
        "--heartbeat-interval-ms",
        "200",
        "--shutdown-grace-s",
        "1.5",
        "--token",
        "flag",
        "--worker-id",
        "flag-worker",
        "--group-commit-interval-ms",
        "50",
        "--log-level",
        "debug",
    ]
    worker, level = configure(argv, environ=env)
    s = worker.settings
    assert s.broker_url == "http://flag.test:9"
    assert (s.concurrency, s.poll_interval, s.heartbeat_interval) == (6, 0.1, 0.2)
    assert s.prefetch == 0
    assert (s.shutdown_grace, secret_value(s.token), s.worker_id) == (1.5, "flag", "flag-worker")
    assert s.group_commit_interval == 0.05
    assert level == "DEBUG"


# ----------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["no_such_module_xyz:worker"], {}, "cannot import 'no_such_module_xyz'"),
        (["_jobs_for_tests:nope"], {}, "has no attribute 'nope'"),
        (["_jobs_for_tests:not_a_worker"], {}, "is a int, not a trioq.Worker"),
        (["_jobs_for_tests"], {}, "is not module:attr"),
        (["_jobs_for_tests:empty_worker"], {}, "no handlers registered"),
        ([TARGET, "--concurrency", "0"], {}, "concurrency must be >= 1"),
        ([TARGET, "--prefetch", "-1"], {}, "--prefetch must be >= 0"),
        ([TARGET], {"TRIOQ_PREFETCH": "some"}, "TRIOQ_PREFETCH: 'some' is not a valid int"),
        ([TARGET, "--broker-url", "localhost:8080"], {}, "must start with http"),
        ([TARGET], {"TRIOQ_CONCURRENCY": "lots"}, "TRIOQ_CONCURRENCY: 'lots' is not a valid int"),
        ([TARGET], {"BROKER_URL": "ftp://x"}, "must start with http"),
        ([TARGET, "--log-level", "chatty"], {}, "unknown log level"),
        (
            ["_jobs_for_tests.py:worker"],
            {},
            "a module path, not a file: did you mean _jobs_for_tests:worker",
        ),
        (["./pkg/jobs.py:worker"], {}, "did you mean pkg.jobs:worker"),
        (
            [TARGET, "--group-commit-interval-ms", "-1"],
            {},
            "--group-commit-interval-ms must be >= 0",
        ),
        ([TARGET, "--concurrency", "five"], {}, "--concurrency: 'five' is not a valid int"),
        ([TARGET, "--poll-interval-ms", "0.5"], {}, "--poll-interval-ms: '0.5' is not a valid int"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        configure(argv, environ=env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _worker_cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("trioq worker: ")
    assert message in err


def test_load_worker_returns_the_named_worker() -> None:
    assert load_worker(TARGET) is configured_worker


def test_unknown_flags_are_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _worker_cli.main([TARGET, "--concurency", "5"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --concurency" in capsys.readouterr().err


def test_help_names_the_command_it_was_called_as(capsys: pytest.CaptureFixture[str]) -> None:
    from trioq.__main__ import main as trioq_main

    with pytest.raises(SystemExit) as exited:
        trioq_main(["worker", "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: trioq worker ")


# ------------------------------------------------------------- subprocesses


def run_worker_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", "trioq.worker", *args],
        capture_output=True,
        text=True,
        env=base_env(),
        timeout=timeout,
        check=False,
    )


def test_help_runs_without_warnings() -> None:
    # -W error: running the module must not import it twice (runpy's RuntimeWarning)
    result = run_worker_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "--broker-url" in result.stdout
    assert "--concurrency" in result.stdout
    assert result.stderr == ""


def test_help_states_the_defaults_the_worker_uses() -> None:
    # argparse rewraps lines: compare with the whitespace folded
    text = " ".join(_worker_cli._parser().format_help().split())
    defaults = WorkerSettings()
    assert "None" not in text
    assert f"(env BROKER_URL; default {defaults.broker_url})" in text
    assert defaults.broker_url == "http://127.0.0.1:8080"  # what docs/workers.md says
    for env, value in [
        ("TRIOQ_CONCURRENCY", defaults.concurrency),
        ("TRIOQ_PREFETCH", defaults.prefetch),
        ("TRIOQ_POLL_INTERVAL_MS", round(defaults.poll_interval * 1000)),
        ("TRIOQ_HEARTBEAT_INTERVAL_MS", round(defaults.heartbeat_interval * 1000)),
        ("TRIOQ_SHUTDOWN_GRACE_S", round(defaults.shutdown_grace)),
        ("GROUP_COMMIT_INTERVAL_MS", round(defaults.group_commit_interval * 1000)),
    ]:
        assert f"env {env}; default {value})" in text, env


def test_a_wrong_target_exits_2_with_one_line() -> None:
    result = run_worker_cli("_jobs_for_tests:nope")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "trioq worker: module '_jobs_for_tests' has no attribute 'nope'"
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_broker_exits_1_with_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_worker_cli("_jobs_for_tests:worker", "--broker-url", url)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stdout == ""  # no ready line
    [line] = result.stderr.splitlines()
    assert line.startswith(
        f"trioq worker: broker {url} is not usable: BrokerUnreachable: cannot reach broker"
    )
    assert PROBE_DEADLINE <= elapsed < PROBE_DEADLINE + 15


async def test_a_worker_started_while_no_broker_leads_runs_once_one_does(
    tmp_path: Path,
) -> None:
    # the leader is killed; the standby started next waits out its lease (8 s), longer
    # than the worker's startup probe (PROBE_DEADLINE)
    data = tmp_path / "data"
    lease = ["--broker-heartbeat-timeout-ms", "8000", "--no-failover-probe"]
    async with broker_process(tmp_path, data_dir=data, args=lease, name="first") as first:
        first.signal(signal.SIGKILL)
        with trio.fail_after(10):
            await first.exited()
    async with broker_process(tmp_path, data_dir=data, args=lease, name="second") as second:
        assert "standby" in second.ready_line
        async with worker_process(tmp_path, second.url) as worker:
            await worker.ready()  # before: exit 1, "is not usable: NotLeader"
            assert "no broker leads yet" in worker.log_tail()
            async with trioq.Client(second.url, retry_deadline=30) as client:
                job_id = await client.submit("record", {})
                await wait_for(
                    lambda: _status(client, job_id, "completed"), what="the job completed"
                )


async def _status(client: trioq.Client, job_id: str, status: str) -> bool:
    return (await client.get(job_id))["status"] == status


async def test_startup_prints_types_and_broker_then_drains_on_sigint(tmp_path: Path) -> None:
    async with broker_process(tmp_path, data_dir=tmp_path / "data", args=["--token", "t0k"]) as b:
        async with worker_process(
            tmp_path,
            b.url,
            "--concurrency",
            "6",
            target="_jobs_for_tests:worker",
            env={"TRIOQ_CONCURRENCY": "4", "TRIOQ_TOKEN": "t0k", "TRIOQ_WORKER_ID": "cli-1"},
        ) as worker:
            line = await worker.ready()
            assert line == (
                f"trioq worker cli-1: types fail, record, typed; broker {b.url}; concurrency 6"
            )
            worker.signal(signal.SIGINT)
            with trio.fail_after(15):
                assert await worker.exited() == 0

        async with worker_process(
            tmp_path, b.url, target="_jobs_for_tests:worker", name="no-token"
        ) as anonymous:
            with trio.fail_after(15):
                assert await anonymous.exited() == 1
        [line] = anonymous.log_tail().splitlines()
        assert line.startswith(f"trioq worker: broker {b.url} is not usable: Unauthorized: ")


# ------------------------------------------------------------------ signals

SIGNALS_LOG = logging.getLogger("test.signals")


async def test_the_first_signal_drains_and_the_second_aborts() -> None:
    calls: list[str] = []
    aborted = trio.Event()

    async def service() -> int:
        signal.raise_signal(signal.SIGTERM)
        await trio.testing.wait_all_tasks_blocked()
        assert calls == ["drain"]
        os.kill(os.getpid(), signal.SIGINT)
        await aborted.wait()  # a service that was told to abort returns by itself
        return 0

    def abort() -> None:
        calls.append("abort")
        aborted.set()

    code = await run_until_signalled(
        service, drain=lambda: calls.append("drain"), abort=abort, log=SIGNALS_LOG
    )
    assert (code, calls) == (0, ["drain", "abort"])


async def test_without_an_abort_the_second_signal_cancels_with_130() -> None:
    drained: list[bool] = []

    async def service() -> int:
        signal.raise_signal(signal.SIGINT)
        await trio.testing.wait_all_tasks_blocked()
        signal.raise_signal(signal.SIGINT)
        await trio.sleep_forever()
        raise AssertionError("not cancelled")

    code = await run_until_signalled(service, drain=lambda: drained.append(True), log=SIGNALS_LOG)
    assert (code, drained) == (ABORTED, [True])


async def test_the_service_s_code_and_errors_come_out_as_they_are() -> None:
    async def done() -> int:
        return 1

    async def fails() -> int:
        raise UsageError("broken")

    assert await run_until_signalled(done, drain=lambda: None, log=SIGNALS_LOG) == 1
    with pytest.raises(UsageError, match="broken"):  # not in an exception group
        await run_until_signalled(fails, drain=lambda: None, log=SIGNALS_LOG)
