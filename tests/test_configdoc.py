"""docs/configuration.md is what ``python -m trioq._configdoc`` generates from the
settings, and it names every setting: a setting added or changed without
regenerating the page fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trioq._configdoc import client_options, generate, main
from trioq._settings import Public, Settings
from trioq.broker import BrokerSettings
from trioq.worker._settings import WorkerSettings

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
REGENERATE = "python -m trioq._configdoc > docs/configuration.md"


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next second-level heading."""
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : None if end == -1 else end]


def _rows(section: str) -> list[list[str]]:
    """The cells of the table rows of ``section`` (header and rule excluded)."""
    rows = []
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith(("| flag ", "| variable ")):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_the_page_is_the_generated_one() -> None:
    assert DOC.read_text(encoding="utf-8") == generate(), f"out of date: run {REGENERATE}"


def test_check_passes_on_the_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", str(DOC)]) == 0
    assert capsys.readouterr().err == ""


def test_check_fails_with_one_line_on_a_stale_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(generate().replace("`--concurrency`", "`--concurrency-old`", 1))
    assert main(["--check", str(stale)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "out of date" in err
    assert REGENERATE in err


def test_check_fails_with_one_line_on_a_missing_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--check", str(tmp_path / "nothing.md")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert REGENERATE in err


def test_printing_writes_the_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert capsys.readouterr().out == generate()


@pytest.mark.parametrize(
    ("cls", "heading"), [(BrokerSettings, "## Broker"), (WorkerSettings, "## Worker")]
)
def test_every_field_has_a_row_with_its_flag_and_variable(
    cls: type[Settings], heading: str
) -> None:
    rows = _rows(_section(DOC.read_text(encoding="utf-8"), heading))
    by_field: dict[str, tuple[list[str], str]] = {}
    for flag_cell, env_cell, field_cell, *_ in rows:
        names = re.findall(r"`([^`]+)`", field_cell)
        if names:
            by_field[names[0]] = (re.findall(r"`([^`]+)`", flag_cell), env_cell.strip("`"))
    assert set(by_field) == set(cls.model_fields)
    for name, info in cls.model_fields.items():
        public = next((item for item in info.metadata if isinstance(item, Public)), None)
        if public is None:
            assert by_field[name] == ([], "—")
            continue
        flags, env = by_field[name]
        assert flags[0] == public.flag
        assert set(public.aliases) <= set(flags)
        assert env == public.env


@pytest.mark.parametrize(
    ("cls", "heading", "field", "shown"),
    [
        (BrokerSettings, "## Broker", "group_commit_interval", "`50`"),
        (BrokerSettings, "## Broker", "job_lease", "`30000`"),
        (BrokerSettings, "## Broker", "dedup_window", "`86400`"),
        (BrokerSettings, "## Broker", "create", "off"),
        (BrokerSettings, "## Broker", "failover_probe", "on"),
        (BrokerSettings, "## Broker", "prefix", '`""`'),
        (BrokerSettings, "## Broker", "region", "AWS chain"),
        (WorkerSettings, "## Worker", "heartbeat_interval", "`5000`"),
        (WorkerSettings, "## Worker", "group_commit_interval", "`2000`"),
        (WorkerSettings, "## Worker", "concurrency", "`1`"),
    ],
)
def test_defaults_are_in_the_flags_unit(
    cls: type[Settings], heading: str, field: str, shown: str
) -> None:
    rows = _rows(_section(DOC.read_text(encoding="utf-8"), heading))
    (default,) = [row[3] for row in rows if row[2].startswith(f"`{field}`")]
    assert default == shown


def test_the_client_variables_are_listed_with_their_commands() -> None:
    section = _section(DOC.read_text(encoding="utf-8"), "## Command-line tools")
    rows = {row[0].strip("`"): row for row in _rows(section)}
    assert set(rows) == {option.env for option in client_options()}
    assert {"TRIOQ_BROKER_URL", "TRIOQ_TOKEN"} <= set(rows)
    for command in ("submit", "stats", "jobs", "get", "dead", "requeue", "cancel"):
        assert f"`trioq {command}`" in rows["TRIOQ_BROKER_URL"][3]
    assert "trioq dev" not in rows["TRIOQ_BROKER_URL"][3]


def test_the_worker_only_flag_is_listed() -> None:
    rows = _rows(_section(DOC.read_text(encoding="utf-8"), "## Worker"))
    (log_level,) = [row for row in rows if row[0] == "`--log-level`"]
    assert log_level[1] == "—"
    assert log_level[3] == "`INFO`"
