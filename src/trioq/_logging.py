"""Logging setup shared by the broker's and the worker's command lines.

:func:`configure_logging` installs one handler on the root logger, writing either
the classic text lines or one JSON object a line (``--log-format json``, encoded
with orjson). Job events carry their fields as ``extra=`` attributes of the record
(:func:`job_fields`); the JSON formatter writes each of :data:`EXTRA_FIELDS` that a
record carries as a key of its own, so a log pipeline can filter on ``jobId``
without parsing the message.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

import orjson

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The text lines' format (what both CLIs always wrote)."""

EXTRA_FIELDS: Final = ("event", "jobId", "type", "attempt", "outcome", "error", "payload")
"""Record attributes the JSON formatter writes as keys of their own when present."""


def job_fields(event: str, job_id: str, job_type: str, attempt: int, **more: Any) -> dict[str, Any]:
    """The ``extra=`` of a job event's log line (``more``: outcome, error, payload)."""
    return {"event": event, "jobId": job_id, "type": job_type, "attempt": attempt, **more}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
    ``msg``, the :data:`EXTRA_FIELDS` the record carries, and ``exc`` (the
    traceback) when it has one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in EXTRA_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        # default=str: an extra that orjson cannot encode is written, not lost
        return orjson.dumps(line, default=str).decode()


def check_level(level: str) -> str:
    """``level`` upper-cased; ValueError unless it names a logging level."""
    name = str(level).upper()
    if not isinstance(logging.getLevelName(name), int):
        raise ValueError(f"unknown log level {level!r}")
    return name


def configure_logging(
    level: str = "INFO", fmt: LogFormat | str = "text", *, stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record at ``level`` or above to ``stream`` (stderr) in ``fmt``
    (``text`` or ``json``), replacing the root logger's handlers; returns the handler.

    ``httpx`` and ``httpcore`` are kept at WARNING: they log every request at INFO
    (a standby's probe alone would write a line a second). Raises ValueError for an
    unknown level or format.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (text or json)")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(check_level(level))
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler
