"""Structured logs: the JSON formatter, ``configure_logging``, the job event lines a
worker writes (job id, type and attempt; the payload only with ``log_payloads``),
and the log flags of both command lines."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import trio

import trioq
from _broker_proc import start_in_process
from _waits import wait_for
from trioq._logging import JsonFormatter, configure_logging
from trioq.broker._settings import BrokerSettings, SettingsError, parse_settings
from trioq.worker._cli import UsageError, configure

SECRET = "hunter2-payload"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger's handlers and level back after a test that replaced them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_job_fields_and_the_traceback(root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    log = logging.getLogger("trioq.test")
    log.info(
        "job %s done", "j1", extra={"event": "completed", "jobId": "j1", "type": "t", "attempt": 2}
    )
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("it failed")
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "job j1 done"
    assert (first["event"], first["jobId"], first["type"], first["attempt"]) == (
        "completed",
        "j1",
        "t",
        2,
    )
    assert first["level"] == "INFO"
    assert first["logger"] == "trioq.test"
    assert first["ts"].endswith("+00:00")
    assert "ValueError: bad" in second["exc"]
    assert "jobId" not in second


def test_text_format_and_errors(root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("WARNING", "text", stream=stream)
    logging.getLogger("trioq.test").info("hidden")
    logging.getLogger("trioq.test").warning("shown")
    assert stream.getvalue().endswith("WARNING trioq.test: shown\n")
    assert logging.getLogger("httpx").level == logging.WARNING
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("INFO", "xml")
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("chatty", "text")


def make_worker(url: str, *, log_payloads: bool) -> trioq.Worker:
    worker = trioq.Worker(broker_url=url, poll_interval=0.05)
    worker.settings.log_payloads = log_payloads

    @worker.job("ok")
    async def ok(payload: dict[str, str], ctx: trioq.JobContext) -> None:
        await trio.lowlevel.checkpoint()

    @worker.job("boom")
    async def boom(payload: dict[str, str], ctx: trioq.JobContext) -> None:
        raise RuntimeError("boom")

    return worker


async def job_events(*, log_payloads: bool) -> list[dict[str, Any]]:
    """The JSON lines the worker's logger writes while one ``ok`` job completes and
    one ``boom`` job fails once and then dies."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("trioq.worker")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        async with trio.open_nursery() as nursery:
            broker = await start_in_process(nursery, BrokerSettings(storage="memory", port=0))
            worker = make_worker(broker.url, log_payloads=log_payloads)
            await nursery.start(worker.run)
            async with trioq.Client(broker.url) as client:
                ok = await client.submit("ok", {"secret": SECRET})
                boom = await client.submit("boom", {"secret": SECRET}, max_attempts=2)
                await wait_for(
                    lambda: worker.counts["completed"] == 1 and worker.counts["failed"] == 2,
                    what="one job completed, the other failed twice",
                )
                assert (await client.get(ok))["status"] == "completed"
                assert (await client.get(boom))["status"] == "dead"
            worker.drain()
            nursery.cancel_scope.cancel()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def events_of(lines: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return [(line["event"], line["type"], line["attempt"]) for line in lines if "event" in line]


async def test_job_event_lines_without_payloads() -> None:
    lines = await job_events(log_payloads=False)
    events = events_of(lines)
    for event in [
        ("started", "ok", 1),
        ("completed", "ok", 1),
        ("started", "boom", 1),
        ("failed", "boom", 1),
        ("retried", "boom", 1),
        ("started", "boom", 2),
        ("failed", "boom", 2),
        ("dead", "boom", 2),
    ]:
        assert event in events
    assert all(isinstance(line["jobId"], str) for line in lines if "event" in line)
    assert [line["error"] for line in lines if line.get("event") == "dead"] == [
        "RuntimeError: boom"
    ]
    assert not any(SECRET in orjson.dumps(line).decode() for line in lines)


async def test_job_payloads_are_logged_only_when_asked() -> None:
    lines = await job_events(log_payloads=True)
    started = [line for line in lines if line.get("event") == "started"]
    assert started
    assert all(line["payload"] == {"secret": SECRET} for line in started)
    # only the started line carries it
    assert all("payload" not in line for line in lines if line.get("event") != "started")


def test_log_flags_of_both_command_lines() -> None:
    settings = parse_settings(["--log-format", "json", "--log-level", "debug"], {})
    assert (settings.log_format, settings.log_level) == ("json", "DEBUG")
    assert parse_settings([], {"TRIOQ_LOG_FORMAT": "json"}).log_format == "json"
    assert parse_settings([], {}).log_format == "text"
    with pytest.raises(SettingsError, match="--log-level"):
        parse_settings(["--log-level", "chatty"], {})

    worker, level = configure(
        [
            "_jobs_for_tests:worker",
            "--log-format",
            "json",
            "--log-payloads",
            "--log-level",
            "debug",
        ],
        {},
    )
    assert (worker.settings.log_format, worker.settings.log_payloads, level) == (
        "json",
        True,
        "DEBUG",
    )
    worker, _ = configure(["_jobs_for_tests:worker"], {"TRIOQ_LOG_FORMAT": "json"})
    assert (worker.settings.log_format, worker.settings.log_payloads) == ("json", False)
    with pytest.raises(UsageError, match="unknown log level"):
        configure(["_jobs_for_tests:worker", "--log-level", "chatty"], {})
