"""The public names of trioq's modules, pinned (as httpx pins ``httpx.__all__``), and
a docstring on each.

A module's public names are those its source binds at top level without a leading
underscore: definitions, assignments, and explicit re-exports (``from x import A as
A``, also under ``if TYPE_CHECKING:``). Plain imports (``from typing import Any``) are
not. Adding or removing a public name means changing the pin below, on purpose.
"""

from __future__ import annotations

import ast
import enum
import importlib
import inspect
from types import ModuleType

import pytest

import trioq

PUBLIC_NAMES: dict[str, set[str]] = {
    "trioq": {
        # errors
        "TrioqError",
        "CASConflict",
        "StorageUnavailable",
        "BucketNotFound",
        "StorageAuthError",
        "StorageUnreachable",
        "WriteOutcomeUnknown",
        "DeadlineExceeded",
        "DocumentInvalid",
        "QueueNotFound",
        "BrokerProtocolError",
        "Unauthorized",
        "Forbidden",
        "JobNotFound",
        "LeaseLost",
        "PayloadTooLarge",
        "NotLeader",
        "BrokerUnreachable",
        "QueueFull",
        "Overloaded",
        "JobNotDead",
        "NotFound",
        "MethodNotAllowed",
        "InternalError",
        "PayloadInvalid",
        "JobTimeout",
        "JobFailed",
        # client
        "Client",
        "SyncClient",
        "Claimed",
        "JobSpec",
        "Submitted",
        # worker
        "Worker",
        "JobContext",
        "Retry",
        "Fatal",
        # engine
        "Engine",
        "EngineConfig",
        "Limits",
        # storage
        "Storage",
        "Versioned",
        "MemoryStorage",
        "FileStorage",
        "S3Storage",
        "ThrottledStorage",
        "FaultyStorage",
    },
    "trioq.storage": {
        "Storage",
        "Versioned",
        "MemoryStorage",
        "FileStorage",
        "S3Storage",
        "ThrottledStorage",
        "FaultyStorage",
    },
    "trioq.core": {
        "Engine",
        "EngineConfig",
        "EngineSnapshot",
        "Role",
        "Limits",
        "NewJob",
        "QueueState",
    },
    "trioq.broker": {"Broker", "BrokerSettings", "main", "parse_settings"},
    "trioq.worker": {"Worker", "JobContext", "main"},
    "trioq.testing": {
        "TEST_URL",
        "TestBroker",
        "UnhandledJobs",
        "open_test_broker",
        "trio_wall_clock",
    },
    "trioq.client": {
        "Client",
        "Claimed",
        "JobSpec",
        "DEFAULT_URL",
        "STARTING_RETRY_MAX",
        "encode_payload",
        "error_from_response",
        "ExchangeAnswer",
        "Failure",
        "Held",
        "Outcome",
        "Submitted",
        "Completion",
        "Beat",
        "new_job_id",
        "parse_urls",
        "to_json_value",
    },
}

MISSING_DOCSTRINGS: dict[str, str] = {}
"""Known gaps, in files this test does not own: each is a strict xfail, so fixing one
fails the test until its entry here is removed."""


def top_level_bindings(module: ModuleType) -> dict[str, ast.stmt]:
    """Every name the module's source binds at top level (or under a top-level
    ``if``), with the statement that binds it; imports only when re-exported."""
    tree = ast.parse(inspect.getsource(module))
    bindings: dict[str, ast.stmt] = {}

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bindings[node.name] = node
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        bindings[target.id] = node
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                bindings[node.target.id] = node
            elif isinstance(node, ast.ImportFrom | ast.Import):
                for alias in node.names:
                    if alias.asname is not None and alias.asname == alias.name:
                        bindings[alias.name] = node
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)

    visit(tree.body)
    return bindings


def public_names(module: ModuleType) -> set[str]:
    return {name for name in top_level_bindings(module) if not name.startswith("_")}


def attribute_docstring(module: ModuleType, name: str) -> str | None:
    """The string literal right after ``name = ...`` at the module's top level (the
    attribute docstring Sphinx reads), following an explicit re-export."""
    tree = ast.parse(inspect.getsource(module))
    body = tree.body
    for node, after in zip(body, [*body[1:], None], strict=True):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                return after.value.value
            return None
        if isinstance(node, ast.ImportFrom) and any(
            alias.name == name and alias.asname == name for alias in node.names
        ):
            source = importlib.import_module(
                "." * node.level + (node.module or ""), module.__package__
            )
            return attribute_docstring(source, name)
    return None


def docstring(module: ModuleType, name: str) -> str | None:
    obj = getattr(module, name)
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        if not isinstance(doc, str):
            return None
        # generated, not written: dataclass signatures, Enum's default
        if doc.startswith(f"{obj.__name__}(") or (
            issubclass(obj, enum.Enum) and doc == "An enumeration."
        ):
            return None
        return doc
    if inspect.isroutine(obj):
        return obj.__doc__
    return attribute_docstring(module, name)


@pytest.mark.parametrize("module_name", sorted(PUBLIC_NAMES))
def test_public_names_are_pinned(module_name: str) -> None:
    module = importlib.import_module(module_name)
    found = public_names(module)
    assert found == PUBLIC_NAMES[module_name], (
        f"new: {sorted(found - PUBLIC_NAMES[module_name])}, "
        f"gone: {sorted(PUBLIC_NAMES[module_name] - found)}"
    )
    for name in found:
        assert getattr(module, name) is not None, name


def test_trioq_all_is_every_public_name_sorted() -> None:
    assert trioq.__all__ == sorted(PUBLIC_NAMES["trioq"])
    assert set(trioq.__all__) == public_names(trioq)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from trioq import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(trioq.__all__)
    assert namespace["S3Storage"] is trioq.S3Storage  # the lazy one too


def test_reexports_are_the_same_objects_everywhere() -> None:
    """A class exported from two places is one class (no stale copies)."""
    import trioq.client
    import trioq.core
    import trioq.storage
    import trioq.worker

    for sub in (trioq.storage, trioq.core, trioq.worker, trioq.client):
        for name in public_names(sub) & set(trioq.__all__):
            assert getattr(sub, name) is getattr(trioq, name), f"{sub.__name__}.{name}"


def _docstring_cases() -> list[object]:
    cases: list[object] = []
    for module_name, names in sorted(PUBLIC_NAMES.items()):
        for name in sorted(names):
            qualified = f"{module_name}.{name}"
            marks = []
            if qualified in MISSING_DOCSTRINGS:
                marks.append(pytest.mark.xfail(strict=True, reason=MISSING_DOCSTRINGS[qualified]))
            cases.append(pytest.param(module_name, name, id=qualified, marks=marks))
    return cases


@pytest.mark.parametrize(("module_name", "name"), _docstring_cases())
def test_every_public_name_has_a_docstring(module_name: str, name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__doc__, module_name
    doc = docstring(module, name)
    assert doc is not None, f"{module_name}.{name} has no docstring"
    assert doc.strip(), f"{module_name}.{name} has an empty docstring"
