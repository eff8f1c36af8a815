"""The ``trioq`` command's client sub-commands and ``trioq dev``, run as real
subprocesses against a real broker process (one for the module, on the file
backend: each test uses job types and ids of its own, so they do not see each
other's jobs in the counts they check)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import trio

from _broker_proc import READY_LINE, READY_TIMEOUT, broker_argv, subprocess_env
from _waits import wait_for
from trioq import Client

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    status: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker process shared by the module's tests (plain subprocess: the trio run
    of each test is its own, the broker outlives them)."""
    data = tmp_path_factory.mktemp("cli-broker")
    args = ["--port", "0", "--storage", "file", "--data-dir", str(data / "data")]
    with (data / "log").open("wb") as log:
        process = subprocess.Popen(
            broker_argv([*args, "--group-commit-interval-ms", "0"]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=subprocess_env(),
        )
    try:
        assert process.stdout is not None
        # readline blocks until the ready line; a broker that fails exits and
        # closes stdout, so this cannot hang past the broker's own startup
        line = process.stdout.readline().decode().strip()
        match = READY_LINE.match(line)
        assert match is not None, f"no ready line: {line!r}; {(data / 'log').read_text()}"
        yield match["url"]
    finally:
        process.kill()
        process.wait(READY_TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()


async def trioq(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> Result:
    done = await trio.run_process(
        [sys.executable, "-m", "trioq", *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=subprocess_env(env),
        cwd=REPO,
    )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def assert_one_line_failure(result: Result, command: str, *words: str) -> None:
    assert result.status != 0, result
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith(f"trioq {command}: "), result.err
    assert "Traceback" not in result.err
    for word in words:
        assert word in result.err, result.err


async def stats_by_type(url: str, job_type: str) -> dict[str, int] | None:
    result = await trioq("stats", "--json", "--broker", url)
    assert result.status == 0, result
    counts: dict[str, int] | None = orjson.loads(result.out)["byType"].get(job_type)
    return counts


# --------------------------------------------------------------------- submit


async def test_submit_one_job_prints_its_id(broker_url: str) -> None:
    job_type = unique("one")
    result = await trioq("submit", job_type, '{"to": "a"}', "--broker", broker_url)
    assert result.status == 0, result
    job_id = result.out.strip()
    got = await trioq("get", job_id, "--broker", broker_url)
    assert got.status == 0, got
    assert orjson.loads(got.out) | {"type": job_type, "payload": {"to": "a"}} == orjson.loads(
        got.out
    )


async def test_submit_file_of_1000_lines_then_again_submits_nothing_new(
    broker_url: str, tmp_path: Path
) -> None:
    job_type = unique("bulk")
    path = tmp_path / "jobs.jsonl"
    lines = [orjson.dumps({"type": job_type, "payload": {"n": n}}) for n in range(1000)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    first = await trioq("submit", "--file", str(path), "--broker", broker_url)
    assert first.status == 0, first.err
    ids = first.out.split()
    assert len(set(ids)) == 1000
    assert first.err_lines == ["trioq submit: 1000 new, 0 duplicates"]
    assert await stats_by_type(broker_url, job_type) == {"unclaimed": 1000, "inProgress": 0}
    again = await trioq("submit", "--file", str(path), "--broker", broker_url)
    assert again.status == 0, again.err
    assert again.out.split() == ids  # the same ids, derived from the same lines
    assert again.err_lines == ["trioq submit: 0 new, 1000 duplicates"]
    assert await stats_by_type(broker_url, job_type) == {"unclaimed": 1000, "inProgress": 0}


async def test_a_bad_file_line_is_one_line_and_submits_nothing(
    broker_url: str, tmp_path: Path
) -> None:
    job_type = unique("badfile")
    path = tmp_path / "jobs.jsonl"
    good = orjson.dumps({"type": job_type, "payload": 1}).decode()
    path.write_text(f"{good}\n\n{{not json\n{good}\n")
    result = await trioq("submit", "--file", str(path), "--broker", broker_url)
    assert_one_line_failure(result, "submit", "line 3", "not JSON")
    assert result.status == 2
    path.write_text(f'{good}\n{{"type": "{job_type}"}}\n')
    result = await trioq("submit", "--file", str(path), "--broker", broker_url)
    assert_one_line_failure(result, "submit", "line 2", '"payload"')
    assert await stats_by_type(broker_url, job_type) is None


async def test_a_bad_json_argument_is_one_line(broker_url: str) -> None:
    job_type = unique("badjson")
    result = await trioq("submit", job_type, "{nope", "--broker", broker_url)
    assert_one_line_failure(result, "submit", "not JSON")
    assert result.status == 2
    assert await stats_by_type(broker_url, job_type) is None


# ---------------------------------------------------------------------- reads


async def test_stats_shows_counts_by_type(broker_url: str) -> None:
    job_type = unique("stats")
    for payload in ("1", "2"):
        assert (await trioq("submit", job_type, payload, "--broker", broker_url)).status == 0
    assert await stats_by_type(broker_url, job_type) == {"unclaimed": 2, "inProgress": 0}
    # not a terminal: plain lines, one for each type
    plain = await trioq("stats", "--broker", broker_url)
    assert plain.status == 0, plain
    assert f"type {job_type}: unclaimed 2, inProgress 0" in plain.out.splitlines()


async def test_stats_watch_refreshes_until_sigint_then_exits_0(broker_url: str) -> None:
    watch = ["stats", "--watch", "0.1", "--json", "--broker", broker_url]
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trioq", *watch],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=subprocess_env(),
    )
    try:
        assert process.stdout is not None
        out = b""
        with trio.fail_after(READY_TIMEOUT):
            while out.count(b"\n") < 2:  # two refreshes: it goes on by itself
                chunk = await process.stdout.receive_some(4096)
                assert chunk, out
                out += chunk
        for line in out.splitlines()[:2]:
            assert "byType" in orjson.loads(line)
        process.send_signal(signal.SIGINT)
        with trio.fail_after(READY_TIMEOUT):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()


async def test_the_broker_comes_from_the_environment(broker_url: str) -> None:
    result = await trioq("stats", "--json", env={"TRIOQ_BROKER_URL": broker_url})
    assert result.status == 0, result
    assert orjson.loads(result.out)["brokerAddress"] == broker_url


async def test_jobs_filters_by_status_and_type_and_pages(broker_url: str) -> None:
    job_type = unique("jobs")
    ids = [
        (await trioq("submit", job_type, str(n), "--broker", broker_url)).out.strip()
        for n in range(3)
    ]
    async with Client(broker_url) as client:
        [claimed] = await client.claim("w1", types=[job_type])
    assert claimed.id == ids[0]
    running = await trioq(
        "jobs", "--type", job_type, "--status", "in_progress", "--json", "--broker", broker_url
    )
    assert running.status == 0, running
    assert [orjson.loads(line)["jobId"] for line in running.out.splitlines()] == [ids[0]]
    waiting = await trioq(
        "jobs", "--type", job_type, "--status", "unclaimed", "--broker", broker_url
    )
    assert [line.split("\t")[0] for line in waiting.out.splitlines()] == ids[1:]
    one_page = await trioq("jobs", "--type", job_type, "--limit", "1", "--broker", broker_url)
    assert len(one_page.out.splitlines()) == 1
    assert "--cursor" in one_page.err  # where the next page starts
    every = await trioq(
        "jobs", "--type", job_type, "--limit", "1", "--all", "--json", "--broker", broker_url
    )
    assert [orjson.loads(line)["jobId"] for line in every.out.splitlines()] == ids
    bad = await trioq("jobs", "--status", "dead", "--broker", broker_url)
    assert_one_line_failure(bad, "jobs", "--status")


async def test_an_unknown_job_is_one_line(broker_url: str) -> None:
    for command in ("get", "cancel", "requeue"):
        result = await trioq(command, unique("missing"), "--broker", broker_url)
        assert_one_line_failure(result, command, "no job")
        assert result.status == 1


async def test_an_unreachable_broker_is_one_line() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    # each try takes the command's retry deadline (5 s): a reading and a writing one
    for args in (["stats"], ["submit", "t", "1"]):
        result = await trioq(*args, "--broker", url)
        assert_one_line_failure(result, args[0], url, "connection refused", "TRIOQ_BROKER_URL")


# ------------------------------------------------------------------ mutations


async def test_cancel(broker_url: str) -> None:
    job_id = (await trioq("submit", unique("cancel"), "1", "--broker", broker_url)).out.strip()
    result = await trioq("cancel", job_id, "--broker", broker_url)
    assert (result.status, result.out.strip()) == (0, "cancelled")
    got = await trioq("get", job_id, "--broker", broker_url)
    assert orjson.loads(got.out)["status"] == "cancelled"


async def test_dead_and_requeue(broker_url: str) -> None:
    job_type = unique("dead")
    ids = [
        (await trioq("submit", job_type, str(n), "--broker", broker_url)).out.strip()
        for n in range(2)
    ]
    async with Client(broker_url) as client:
        for claimed in await client.claim("w1", types=[job_type], max=2):
            assert await client.fail(claimed.id, "w1", "broken", final=True) == "dead"
    listed = await trioq("dead", "--all", "--json", "--broker", broker_url)
    assert listed.status == 0, listed
    dead = {orjson.loads(line)["jobId"]: orjson.loads(line) for line in listed.out.splitlines()}
    assert set(ids) <= set(dead)
    assert dead[ids[0]]["reason"] == "final"
    one = await trioq("requeue", ids[0], "--broker", broker_url)
    assert (one.status, one.out.strip()) == (0, ids[0])
    assert await stats_by_type(broker_url, job_type) == {"unclaimed": 1, "inProgress": 0}
    again = await trioq("requeue", ids[0], "--broker", broker_url)
    assert_one_line_failure(again, "requeue", "JobNotDead")
    every = await trioq("requeue", "--all", "--broker", broker_url)
    assert every.status == 0, every
    assert ids[1] in every.out.split()
    assert await stats_by_type(broker_url, job_type) == {"unclaimed": 2, "inProgress": 0}
    empty = await trioq("dead", "--json", "--broker", broker_url)
    assert empty.out == ""


# ------------------------------------------------------------------------ dev


async def test_dev_runs_a_broker_and_a_worker_and_stops_on_sigint(tmp_path: Path) -> None:
    target, data_dir = "examples.quickstart:worker", str(tmp_path / "q")
    with (tmp_path / "dev.err").open("wb") as err:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trioq", "dev", target, "--port", "0", "--data-dir", data_dir],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=subprocess_env(),
            cwd=REPO,
        )
    try:
        assert process.stdout is not None
        out = b""
        with trio.fail_after(READY_TIMEOUT):
            while b"\n" not in out:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, (tmp_path / "dev.err").read_text()
                out += chunk
        first = out.split(b"\n", 1)[0].decode()
        assert first.startswith("trioq dev: broker listening on http://127.0.0.1:"), first
        url = first.split("listening on ", 1)[1].split(";", 1)[0]
        async with Client(url) as client:
            job_id = await client.submit("image:resize", {"image": "a.png", "width": 10})

            async def completed() -> bool:
                status: object = (await client.get(job_id))["status"]
                return status == "completed"

            await wait_for(completed)
        process.send_signal(signal.SIGINT)
        with trio.fail_after(60):  # the worker drains (nothing running), the broker releases
            status = await process.wait()
        assert status == 0, (tmp_path / "dev.err").read_text()
        log = (tmp_path / "dev.err").read_text()
        assert "released its lease" in log
    finally:
        if process.returncode is None:
            process.kill()


async def test_dev_with_a_bad_target_is_one_line(tmp_path: Path) -> None:
    result = await trioq("dev", "examples.nothing_here:worker", "--data-dir", str(tmp_path / "q"))
    assert_one_line_failure(result, "dev", "examples.nothing_here")
    assert result.status == 2
    assert not (tmp_path / "q").exists()  # nothing started


async def test_schedules_set_list_delete(broker_url: str) -> None:
    name = unique("nightly")
    result = await trioq(
        "schedules", "set", name, "report", '{"k": 1}', "--cron", "0 3 * * *",
        "--timezone", "Europe/Paris", "--broker", broker_url,
    )  # fmt: skip
    assert result.status == 0, result
    assert result.out.startswith(f"{name}: next at ")
    listed = await trioq("schedules", "--json", "--broker", broker_url)
    mine = [s for s in map(orjson.loads, listed.out.splitlines()) if s["name"] == name]
    assert [(s["cron"], s["timezone"], s["payload"]) for s in mine] == [
        ("0 3 * * *", "Europe/Paris", {"k": 1})
    ]
    assert (await trioq("schedules", "delete", name, "--broker", broker_url)).status == 0
    gone = await trioq("schedules", "delete", name, "--broker", broker_url)
    assert_one_line_failure(gone, "schedules", "NotFound")
    bad = await trioq("schedules", "set", name, "t", "--cron", "nope", "--broker", broker_url)
    assert_one_line_failure(bad, "schedules", "cron")
    both = await trioq("schedules", "set", name, "t", "--broker", broker_url)
    assert both.status == 2
    assert "exactly one of --cron and --every" in both.err


async def test_types_pause_resume_and_limit(broker_url: str) -> None:
    job_type = unique("held")
    submitted = await trioq("submit", job_type, "1", "--broker", broker_url)
    assert (await trioq("types", "pause", job_type, "--broker", broker_url)).status == 0
    listed = await trioq("types", "--json", "--broker", broker_url)
    mine = [r for r in map(orjson.loads, listed.out.splitlines()) if r["type"] == job_type]
    assert mine == [{"type": job_type, "paused": True, "unclaimed": 1, "inProgress": 0}]
    async with Client(broker_url) as client:
        assert await client.claim("w", types=[job_type]) == []
    limited = await trioq(
        "types", "limit", job_type, "--per-second", "5", "--max-in-progress", "none",
        "--broker", broker_url,
    )  # fmt: skip
    assert orjson.loads(limited.out) == {"type": job_type, "paused": True, "maxPerSecond": 5.0}
    assert (await trioq("types", "resume", job_type, "--broker", broker_url)).status == 0
    async with Client(broker_url) as client:
        [claimed] = await client.claim("w", types=[job_type])
    assert claimed.id == submitted.out.strip()
    bad = await trioq("types", "limit", job_type, "--per-second", "-1", "--broker", broker_url)
    assert bad.status == 2


async def test_cancel_by_type_and_purge(broker_url: str) -> None:
    job_type = unique("bulk")
    for n in range(3):
        assert (await trioq("submit", job_type, str(n), "--broker", broker_url)).status == 0
    result = await trioq("cancel", "--type", job_type, "--broker", broker_url)
    assert (result.status, result.out.strip()) == (0, "3 cancelled, 0 cancelling")
    dead_type = unique("deadbulk")
    async with Client(broker_url) as client:
        await client.submit(dead_type, 1, max_attempts=1)
        [held] = await client.claim("w", types=[dead_type])
        await client.fail(held.id, "w", "no")
    purged = await trioq("purge", "--type", dead_type, "--broker", broker_url)
    assert (purged.status, purged.out.strip()) == (0, "1 purged")
    neither = await trioq("cancel", "--broker", broker_url)
    assert neither.status == 2


async def test_every_command_has_help() -> None:
    for command in (
        "submit", "stats", "jobs", "get", "dead", "requeue", "cancel", "purge", "schedules",
        "types", "dev",
    ):  # fmt: skip
        result = await trioq(command, "--help")
        assert result.status == 0, result
        assert f"usage: trioq {command}" in result.out
