"""One settings system (trioq._settings) for the broker and the worker: precedence,
units, old names, one-line errors, and the docs' tables agreeing with the code."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

import trioq
from trioq._settings import Public, Settings, SettingsError
from trioq._tokens import secret_value
from trioq.broker._settings import BrokerSettings, parse_settings
from trioq.worker._settings import WorkerSettings

DOCS = Path(__file__).parent.parent / "docs"
CLASSES: list[type[Settings]] = [BrokerSettings, WorkerSettings]


def public(cls: type[Settings]) -> dict[str, Public]:
    return {
        name: item
        for name, field in cls.model_fields.items()
        for item in field.metadata
        if isinstance(item, Public)
    }


@pytest.fixture(autouse=True)
def no_settings_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The constructors read the environment: start each test without any of it."""
    for cls in CLASSES:
        for item in public(cls).values():
            monkeypatch.delenv(item.env, raising=False)


def flags(cls: type[Settings], argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    return parser.parse_args(argv)


# ---------------------------------------------------------------- precedence


def test_flags_over_environment_over_arguments_over_defaults() -> None:
    env = {"BROKER_PORT": "2", "BROKER_HOST": "10.0.0.2"}
    args = flags(BrokerSettings, ["--port", "3"])
    assert BrokerSettings.load(environ={}).port == 8080
    assert BrokerSettings.load({"port": 1}, environ={}).port == 1
    both = BrokerSettings.load({"port": 1, "key": "k.json"}, environ=env)
    assert (both.port, both.host, both.key) == (2, "10.0.0.2", "k.json")
    assert BrokerSettings.load({"port": 1}, environ=env, args=args).port == 3

    env = {"TRIOQ_CONCURRENCY": "4", "BROKER_URL": "http://env:1"}
    args = flags(WorkerSettings, ["--concurrency", "6"])
    worker = WorkerSettings.load({"concurrency": 2, "token": "t"}, environ=env, args=args)
    assert (worker.concurrency, worker.broker_url, secret_value(worker.token)) == (
        6,
        "http://env:1",
        "t",
    )


def test_the_constructors_read_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_PORT", "2")
    monkeypatch.setenv("TRIOQ_CONCURRENCY", "4")
    assert BrokerSettings(port=1, storage="memory").port == 2
    assert WorkerSettings(concurrency=2).concurrency == 4
    assert trioq.Worker(concurrency=2).settings.concurrency == 4
    # an empty variable counts as unset
    monkeypatch.setenv("BROKER_PORT", "")
    assert BrokerSettings(port=1).port == 1


def test_only_the_public_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-settings would read PORT, HOST, TOKEN, ... by field name: not here."""
    for name in ("PORT", "HOST", "TOKEN", "CONCURRENCY", "JOB_LEASE", "STORAGE"):
        monkeypatch.setenv(name, "junk")
    assert BrokerSettings() == BrokerSettings.load(environ={})
    assert WorkerSettings() == WorkerSettings.load(environ={})


# --------------------------------------------------------------------- units


def test_milliseconds_at_the_edges_seconds_inside() -> None:
    env = {
        "GROUP_COMMIT_INTERVAL_MS": "2000",
        "JOB_HEARTBEAT_TIMEOUT_MS": "45000",
        "BROKER_HEARTBEAT_INTERVAL_MS": "1500",
        "TRIOQ_DEDUP_WINDOW_S": "60",
    }
    broker = BrokerSettings.load(environ=env)
    assert (broker.group_commit_interval, broker.job_lease) == (2.0, 45.0)
    assert (broker.broker_heartbeat_interval, broker.dedup_window) == (1.5, 60.0)
    config = broker.engine_config()
    assert (config.group_commit_interval, config.broker_heartbeat_interval) == (2.0, 1.5)
    assert (config.shutdown_timeout, config.broker_heartbeat_timeout) == (10.0, 10.0)
    # the queue model counts in the document's milliseconds
    limits = broker.limits()
    assert (limits.job_lease_ms, limits.dedup_window_ms) == (45_000, 60_000)

    worker = WorkerSettings.load(
        environ={"TRIOQ_POLL_INTERVAL_MS": "250", "TRIOQ_SHUTDOWN_GRACE_S": "2.5"},
        args=flags(WorkerSettings, ["--heartbeat-interval-ms", "750"]),
    )
    assert (worker.poll_interval, worker.heartbeat_interval, worker.shutdown_grace) == (
        0.25,
        0.75,
        2.5,
    )


def test_the_job_lease_has_one_name_in_code_and_a_flag_alias() -> None:
    for argv in (["--job-heartbeat-timeout-ms", "2500"], ["--job-lease-ms", "2500"]):
        settings = parse_settings(argv, {})
        assert settings.job_lease == 2.5
        assert settings.limits().job_lease_ms == 2500


def test_storage_faults_are_off_by_default_and_chosen_by_flags_or_environment() -> None:
    assert BrokerSettings.load(environ={}).storage_faults() == {}
    env = {
        "TRIOQ_FAULT_ERROR_RATE": "0.2",
        "TRIOQ_FAULT_AMBIGUOUS_WRITE_RATE": "0.1",
        "TRIOQ_FAULT_SPIKE_RATE": "0.01",
        "TRIOQ_FAULT_SEED": "7",
    }
    argv = ["--fault-lost-write-rate", "0.05", "--fault-latency-s", "0.002"]
    settings = parse_settings([*argv, "--fault-spike-s", "0.5", "--fault-seed", "8"], env)
    assert settings.storage_faults() == {
        "error_rate": 0.2,
        "ambiguous_write_rate": 0.1,
        "ambiguous_lost_rate": 0.05,
        "latency": 0.002,
        "spike_rate": 0.01,
        "spike": 0.5,
    }
    assert settings.fault_seed == 8  # the flag over the environment
    # a spike rate alone spikes by the default second; a seed alone turns nothing on
    spikes = parse_settings(["--fault-spike-rate", "0.1"], {})
    assert spikes.storage_faults() == {"spike_rate": 0.1, "spike": 1.0}
    assert parse_settings(["--fault-seed", "3"], {}).storage_faults() == {}


# ----------------------------------------------------------------- old names


def test_old_field_names_are_still_understood() -> None:
    old = BrokerSettings.load(
        {
            "group_commit_interval_ms": 0,
            "job_heartbeat_timeout_ms": 20_000,
            "broker_heartbeat_interval_ms": 1000,
            "broker_heartbeat_timeout_ms": 4000,
            "dedup_window_s": 30,
            "shutdown_grace_s": 2.5,
        },
        environ={},
    )
    assert (old.group_commit_interval, old.job_lease) == (0.0, 20.0)
    assert (old.broker_heartbeat_interval, old.broker_heartbeat_timeout) == (1.0, 4.0)
    assert (old.dedup_window, old.shutdown_grace) == (30.0, 2.5)
    # and read back in their old units
    assert (old.job_heartbeat_timeout_ms, old.group_commit_interval_ms) == (20_000, 0)
    assert (old.dedup_window_s, old.shutdown_grace_s) == (30.0, 2.5)
    # the new name wins over the old; the environment over both
    both = {"job_lease": 5.0, "job_heartbeat_timeout_ms": 9000}
    assert BrokerSettings.load(both, environ={}).job_lease == 5.0
    env = {"JOB_HEARTBEAT_TIMEOUT_MS": "7000"}
    assert BrokerSettings.load(both, environ=env).job_lease == 7.0


# -------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("cls", "values", "env", "argv", "message"),
    [
        (BrokerSettings, {}, {"BROKER_PORT": "abc"}, [], "BROKER_PORT: 'abc' is not a valid int"),
        (BrokerSettings, {"port": "abc"}, {}, [], "port: 'abc' is not a valid int"),
        (BrokerSettings, {}, {}, ["--port", "1.5"], "--port: '1.5' is not a valid int"),
        (
            BrokerSettings,
            {},
            {"GROUP_COMMIT_INTERVAL_MS": "1e3"},
            [],
            "GROUP_COMMIT_INTERVAL_MS: '1e3' is not a valid int",
        ),
        # a bound is stated in the unit it was given in
        (
            BrokerSettings,
            {},
            {},
            ["--group-commit-interval-ms", "-5"],
            "--group-commit-interval-ms must be >= 0, not -5",
        ),
        (
            BrokerSettings,
            {"group_commit_interval": -0.005},
            {},
            [],
            "group_commit_interval must be >= 0, not -0.005",
        ),
        (BrokerSettings, {"job_lease": 0}, {}, [], "job_lease must be positive, not 0"),
        (
            BrokerSettings,
            {"job_heartbeat_timeout_ms": 0},
            {},
            [],
            "job_heartbeat_timeout_ms must be positive, not 0",
        ),
        (BrokerSettings, {"bogus": 1}, {}, [], "unknown setting 'bogus'"),
        (
            BrokerSettings,
            {"storage": "azure"},
            {},
            [],
            "storage: unknown storage backend 'azure' (file, s3, gcs or memory)",
        ),
        (
            BrokerSettings,
            {"storage": "gcs"},
            {},
            [],
            "the gcs backend needs a bucket: --gcs-bucket or GCS_BUCKET",
        ),
        (
            BrokerSettings,
            {"storage": "gcs", "gcs_bucket": "b", "layout": "document"},
            {},
            [],
            "--layout document on gcs rewrites one object every commit, and GCS allows about "
            "one write a second to an object: set --group-commit-interval-ms to 1000 or more, "
            "or use --layout log (docs/gcs.md)",
        ),
        (
            BrokerSettings,
            {},
            {"TRIOQ_CREATE": "perhaps"},
            [],
            "TRIOQ_CREATE: 'perhaps' is not a valid switch (1/0, true/false, yes/no, on/off)",
        ),
        (
            BrokerSettings,
            {"broker_heartbeat_interval": 10},
            {},
            [],
            "broker heartbeat interval (10000 ms) must be shorter than the broker heartbeat "
            "timeout (10000 ms)",
        ),
        (
            BrokerSettings,
            {},
            {},
            ["--fault-error-rate", "1.5"],
            "--fault-error-rate must be <= 1, not 1.5",
        ),
        (
            BrokerSettings,
            {},
            {"TRIOQ_FAULT_AMBIGUOUS_WRITE_RATE": "-0.1"},
            [],
            "TRIOQ_FAULT_AMBIGUOUS_WRITE_RATE must be >= 0, not -0.1",
        ),
        (
            BrokerSettings,
            {},
            {"TRIOQ_FAULT_LOST_WRITE_RATE": "0.5"},
            ["--fault-error-rate", "0.3", "--fault-ambiguous-write-rate", "0.4"],
            "--fault-error-rate, --fault-ambiguous-write-rate and --fault-lost-write-rate "
            "add up to 1.2, more than 1",
        ),
        (
            BrokerSettings,
            {},
            {},
            ["--fault-latency-s", "inf"],
            "--fault-latency-s: Input should be a finite number",
        ),
        (
            BrokerSettings,
            {},
            {"TRIOQ_FAULT_SEED": "abc"},
            [],
            "TRIOQ_FAULT_SEED: 'abc' is not a valid int",
        ),
        (
            WorkerSettings,
            {"concurrency": 0},
            {},
            [],
            "concurrency must be >= 1, not 0",
        ),
        (
            WorkerSettings,
            {},
            {"TRIOQ_HEARTBEAT_INTERVAL_MS": "0"},
            [],
            "TRIOQ_HEARTBEAT_INTERVAL_MS must be positive, not 0",
        ),
        (
            WorkerSettings,
            {"broker_url": "localhost:8080"},
            {},
            [],
            "broker_url: broker URL 'localhost:8080' must start with http:// or https://",
        ),
    ],
)
def test_errors_are_one_line_naming_what_was_given(
    cls: type[Settings], values: dict[str, Any], env: dict[str, str], argv: list[str], message: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        cls.load(values, environ=env, args=flags(cls, argv))
    assert str(raised.value) == message


def test_a_value_a_flag_overrides_is_not_checked() -> None:
    args = flags(BrokerSettings, ["--port", "9", "--storage", "memory"])
    env = {"BROKER_PORT": "abc", "STORAGE_BACKEND": "s3"}  # s3 without a bucket
    settings = BrokerSettings.load(environ=env, args=args)
    assert (settings.port, settings.storage) == (9, "memory")


def test_assignments_are_checked_and_a_refused_one_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BROKER_PORT", "7")
    settings = BrokerSettings()
    settings.port = 5  # an assignment is not overridden by the environment
    settings.host = "127.0.0.2"
    assert (settings.port, settings.host) == (5, "127.0.0.2")
    with pytest.raises(SettingsError, match="port: 'x' is not a valid int"):
        settings.port = "x"  # type: ignore[assignment]
    with pytest.raises(SettingsError, match="the s3 backend needs a bucket"):
        settings.storage = "s3"
    assert (settings.port, settings.storage) == (5, "file")
    settings.validate()


# ---------------------------------------------------------------- help, docs


def test_help_states_each_default_in_the_flag_s_unit() -> None:
    broker = argparse.ArgumentParser()
    BrokerSettings.add_arguments(broker)
    text = " ".join(broker.format_help().split())
    assert "(env GROUP_COMMIT_INTERVAL_MS; default 50)" in text
    assert "(env JOB_HEARTBEAT_TIMEOUT_MS; default 30000)" in text
    assert "(env TRIOQ_SHUTDOWN_GRACE_S; default 10)" in text
    assert "--job-heartbeat-timeout-ms JOB_HEARTBEAT_TIMEOUT_MS, --job-lease-ms" in text
    assert "(env TRIOQ_CREATE=1/0; default off)" in text
    assert "None" not in text
    wide = argparse.ArgumentParser(
        formatter_class=lambda prog: argparse.HelpFormatter(prog, width=300)
    )
    WorkerSettings.add_arguments(wide)
    worker = wide.format_help()
    assert "(env TRIOQ_POLL_INTERVAL_MS; default 1000)" in worker
    assert "(env TRIOQ_WORKER_ID; default host-pid-random)" in worker
    assert "(env TRIOQ_TOKEN)" in worker  # no default to state


def _table(path: Path, heading: str) -> list[list[str]]:
    """The rows (cells) of the first table after ``heading``."""
    text = path.read_text().split(heading, 1)[1]
    rows = []
    for line in text.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # no header, no separator


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def _documented_default(cell: str) -> str | None:
    cell = re.sub(r" \(.*\)$", "", cell).replace("`", "")
    return {"—": None, "none": None, '""': ""}.get(cell, cell)


def _shown_default(cls: type[Settings], name: str) -> str | None:
    field = cls.model_fields[name]
    item = public(cls)[name]
    default = field.default
    if item.shown_default is not None or default is None:
        return item.shown_default
    if isinstance(default, bool):
        return "on" if default else "off"
    if item.ms:
        return str(round(default * 1000))
    return f"{default:g}" if isinstance(default, float) else str(default)


@pytest.mark.parametrize(
    ("cls", "doc", "heading"),
    [
        (BrokerSettings, "broker.md", "## Settings"),
        (WorkerSettings, "workers.md", "## Running"),
    ],
)
def test_the_docs_tables_are_the_settings(cls: type[Settings], doc: str, heading: str) -> None:
    documented = {}
    for flag_cell, env_cell, field_cell, default_cell, *_ in _table(DOCS / doc, heading):
        field = _code(field_cell)[0].removesuffix("=")
        documented[field] = (_code(flag_cell), _code(env_cell), _documented_default(default_cell))
    expected = {
        name: (
            [item.flag, *item.aliases]
            if cls.model_fields[name].annotation is not bool
            else [item.flag, "--no-" + item.flag.removeprefix("--")][: len(documented[name][0])],
            [item.env],
            _shown_default(cls, name),
        )
        for name, item in public(cls).items()
    }
    assert documented == expected
