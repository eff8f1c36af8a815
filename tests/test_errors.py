"""The error tree: every class has a unique tag and an HTTP status, is drawn in the
docstring of ``trioq._errors`` and exported from ``trioq``; and every tag the broker
can put on the wire (found in its source, and met on its error paths) has a class."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

import trioq
from trioq import _errors
from trioq._errors import ERRORS_BY_TAG, TrioqError
from trioq.testing import TEST_URL, open_test_broker

SRC = Path(trioq.__file__).parent

WIRE_PACKAGES = ("broker", "core", "storage")
"""What a broker process runs: a tag raised in any of them can reach an error body."""

WORKER_SIDE = {"PayloadInvalid", "JobTimeout"}
"""Raised in the worker process only; never in a broker's answer."""

CLIENT_SIDE = {"BrokerUnreachable"}
"""Raised by the client when no broker answered."""


def import_all_of_trioq() -> None:
    """Import every module of trioq (not ``__main__``s: they run), so that every error
    class is defined."""
    for module in pkgutil.walk_packages([str(SRC)], prefix="trioq."):
        if module.name.rsplit(".", 1)[-1] != "__main__":
            importlib.import_module(module.name)


def error_classes() -> list[type[TrioqError]]:
    """TrioqError and every subclass trioq defines (not the tests' own)."""
    import_all_of_trioq()
    found: list[type[TrioqError]] = []
    pending: list[type[TrioqError]] = [TrioqError]
    while pending:
        cls = pending.pop()
        if cls.__module__.split(".")[0] == "trioq":
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.__name__)


ERROR_CLASSES = error_classes()


def test_the_walk_finds_the_tree() -> None:
    names = {cls.__name__ for cls in ERROR_CLASSES}
    assert {"TrioqError", "NotLeader", "WriteOutcomeUnknown", "PayloadInvalid"} <= names
    assert len(names) == len(ERROR_CLASSES) >= 20


def test_tags_are_unique_and_their_own() -> None:
    tags = [cls.tag for cls in ERROR_CLASSES]
    assert len(set(tags)) == len(tags), sorted(t for t in tags if tags.count(t) > 1)
    for cls in ERROR_CLASSES:
        assert "tag" in cls.__dict__, f"{cls.__name__} inherits its parent's tag"
        assert re.fullmatch(r"[A-Z][A-Za-z]+", cls.tag)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_status_is_an_http_error_status(cls: type[TrioqError]) -> None:
    assert isinstance(cls.status, int)
    assert 400 <= cls.status <= 599


def test_errors_by_tag_is_complete_and_exact() -> None:
    assert {cls.tag: cls for cls in ERROR_CLASSES} == ERRORS_BY_TAG


def test_every_error_is_exported_from_trioq() -> None:
    for cls in ERROR_CLASSES:
        assert getattr(trioq, cls.__name__) is cls
        assert cls.__name__ in trioq.__all__


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_an_error_body_round_trips_to_its_class(cls: type[TrioqError]) -> None:
    body = cls("what happened").to_body()
    assert body["_tag"] == cls.tag
    assert body["message"] == "what happened"
    assert ERRORS_BY_TAG[str(body["_tag"])] is cls
    assert cls.__doc__, cls.__name__


# ------------------------------------------------------------------ the drawing


def drawn_tree() -> dict[str, str | None]:
    """``{class name: parent name}`` from the ``::`` drawing in the module docstring."""
    doc = _errors.__doc__
    assert doc is not None
    block = doc.split("::\n", 1)[1]
    lines = [line for line in block.splitlines() if line.strip()]
    root_indent = len(lines[0]) - len(lines[0].lstrip())
    parents: dict[str, str | None] = {}
    stack: list[str] = []  # the current path from the root
    for line in lines:
        match = re.match(r"^([ │├└─]*)([A-Za-z]+)", line)
        assert match, line
        prefix, name = match.groups()
        depth, rest = divmod(len(prefix) - root_indent, 4)
        assert rest == 0, f"misaligned: {line!r}"
        assert depth <= len(stack), f"skips a level: {line!r}"
        del stack[depth:]
        assert name not in parents, f"drawn twice: {name}"
        parents[name] = stack[-1] if stack else None
        stack.append(name)
    return parents


def test_the_docstring_drawing_lists_every_class_under_its_parent() -> None:
    drawn = drawn_tree()
    actual: dict[str, str | None] = {
        cls.__name__: None if cls is TrioqError else cls.__bases__[0].__name__
        for cls in ERROR_CLASSES
    }
    assert set(drawn) == set(actual), (
        f"missing from the drawing: {sorted(set(actual) - set(drawn))}; "
        f"drawn but not defined: {sorted(set(drawn) - set(actual))}"
    )
    assert drawn == actual


# ------------------------------------------------------------- tags on the wire


def _python_files(package: str) -> Iterator[Path]:
    yield from sorted((SRC / package).rglob("*.py"))


def emitted_tags(source: str, name: str) -> dict[str, str]:
    """``{tag: where}`` for every error class a module's source names (raises,
    constructs or hands on) and every ``"_tag"`` it writes into a body.

    A ``"_tag"`` whose value is neither a string nor ``SomeError.tag`` is reported as
    ``"?"``, so that a new way of writing one makes the test look at it.
    """
    tree = ast.parse(source, name)
    known = {cls.__name__ for cls in ERROR_CLASSES}
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("_errors"):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
    found: dict[str, str] = {}

    def where(node: ast.AST) -> str:
        return f"{name}:{getattr(node, 'lineno', '?')}"

    def tag_value(value: ast.expr) -> None:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            found[value.value] = where(value)
        elif (
            isinstance(value, ast.Attribute)
            and value.attr == "tag"
            and isinstance(value.value, ast.Name)
            and aliases.get(value.value.id, value.value.id) in known
        ):
            cls = getattr(trioq, aliases.get(value.value.id, value.value.id))
            found[cls.tag] = where(value)
        else:
            found["?"] = f"{where(value)}: {ast.unparse(value)}"

    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and aliases.get(node.id, node.id) in known:
            found[getattr(trioq, aliases.get(node.id, node.id)).tag] = where(node)
        elif isinstance(node, ast.Attribute) and node.attr in known:
            found[getattr(trioq, node.attr).tag] = where(node)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "_tag":
                    tag_value(value)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if (
                    isinstance(target, ast.Subscript)
                    and isinstance(target.slice, ast.Constant)
                    and target.slice.value == "_tag"
                ):
                    tag_value(node.value)
        elif isinstance(node, ast.Call) and any(kw.arg == "_tag" for kw in node.keywords):
            for kw in node.keywords:
                if kw.arg == "_tag":
                    tag_value(kw.value)
    return found


def wire_tags() -> dict[str, str]:
    found: dict[str, str] = {}
    for package in WIRE_PACKAGES:
        for path in _python_files(package):
            found.update(emitted_tags(path.read_text(), str(path.relative_to(SRC))))
    return found


def test_every_tag_the_broker_can_emit_has_a_class() -> None:
    found = wire_tags()
    unknown = {tag: at for tag, at in found.items() if tag not in ERRORS_BY_TAG}
    assert not unknown, f"tags with no class in the tree: {unknown}"
    # the scan is not vacuous: the broker's own answers are all found
    assert {
        "BrokerProtocolError",
        "Unauthorized",
        "Forbidden",
        "JobNotFound",
        "NotFound",
        "MethodNotAllowed",
        "LeaseLost",
        "JobNotDead",
        "PayloadTooLarge",
        "NotLeader",
        "QueueFull",
        "Overloaded",
        "StorageUnavailable",
        "CASConflict",
        "WriteOutcomeUnknown",
        "InternalError",
    } <= set(found)
    # and the worker's and client's own errors are not among them
    assert not (WORKER_SIDE | CLIENT_SIDE) & set(found), found


def test_the_scan_reads_tags_written_every_way() -> None:
    def scan(source: str) -> set[str]:
        return set(emitted_tags(source, "probe.py"))

    assert scan('x = {"_tag": "Bogus"}\n') == {"Bogus"}
    assert scan('body = {}\nbody["_tag"] = "Other"\n') == {"Other"}
    assert scan("from .._errors import QueueFull as Full\nraise Full()\n") == {"QueueFull"}
    assert scan('from .._errors import LeaseLost\nx = {"_tag": LeaseLost.tag}\n') == {"LeaseLost"}
    assert scan("import trioq\nraise trioq.JobNotDead()\n") == {"JobNotDead"}
    # a tag it cannot read is flagged, not skipped
    assert "?" in scan('def f(exc):\n    return {"_tag": exc.name}\n')


# --------------------------------------------------------- error paths, exercised


async def test_error_paths_answer_with_known_tags(autojump_clock: trio.abc.Clock) -> None:
    """A quick tour of the broker's error answers (test_http_errors has them all)."""
    async with open_test_broker(token="s3cret") as broker:
        auth = {"Authorization": "Bearer s3cret"}
        async with httpx.AsyncClient(transport=broker.transport, base_url=TEST_URL) as http:
            requests = [
                http.get("/v1/stats"),  # no token
                http.get("/no/such/route", headers=auth),
                http.delete("/v1/stats", headers=auth),
                http.post("/v1/jobs", content=b"nope", headers=auth),
                http.get("/v1/jobs/no-such-job", headers=auth),
                http.post("/v1/dead/no-such-job/requeue", headers=auth),
                http.post(
                    "/v1/jobs/no-such-job/heartbeat",
                    json={"workerId": "w", "attempt": 1},
                    headers=auth,
                ),
            ]
            seen: dict[str, int] = {}
            for request in requests:
                response = await request
                assert response.status_code >= 400, response.request.url
                tag = response.json()["_tag"]
                assert tag in ERRORS_BY_TAG, tag
                assert ERRORS_BY_TAG[tag].status == response.status_code, tag
                seen[tag] = response.status_code
    assert {"Unauthorized", "NotFound", "MethodNotAllowed", "BrokerProtocolError"} <= set(seen)
    assert "JobNotFound" in seen
