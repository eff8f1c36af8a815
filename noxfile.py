"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s bench`,
`nox -s chaos`, `nox -s fuzz`, `nox -s proto`."""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite: starts its own SeaweedFS and moto servers on 127.0.0.1."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check (including the ASYNC rules) and the formatter's check."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "examples", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks (run on demand, print tables): `nox -s bench -- core`, `-- e2e`.

    Names select benchmarks/bench_<name>.py; arguments starting with `-` are passed to
    each of them as one token, so give values with `=`
    (`nox -s bench -- e2e --full --only=own,redis --rows=1x64,4x64 --json=out.json`).
    `e2e` and `peers` compare with dramatiq on Redis when `redis-server` is on PATH:
    then dramatiq[redis] is installed into this session (a benchmark-only dependency,
    not one of trioq's); without `redis-server` that row is skipped with the reason.
    """
    session.install("-e", ".[test]")
    names = [arg for arg in session.posargs if not arg.startswith("-")] or ["core"]
    options = [arg for arg in session.posargs if arg.startswith("-")]
    if {"e2e", "peers"} & set(names) and shutil.which("redis-server"):
        session.install("dramatiq[redis]")
    for name in names:
        session.run("python", f"benchmarks/bench_{name}.py", *options)


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """The chaos harness (benchmarks/chaos.py, see docs/reliability.md):
    `nox -s chaos -- --minutes=N` (default 1; `--seed=S`, `--json=PATH`, ...).

    Exits non-zero when a check fails (a lost job, a duplicate under client ids, an
    unexplained overlapping execution, a leader that was not fenced, ...).
    """
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/chaos.py", *session.posargs)


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """The fuzzers at full size: `nox -s fuzz -- 12000` (examples per test; the test
    suite runs 150). A live broker; no 5xx, no state change from a rejected request."""
    session.install("-e", ".[test]")
    session.env["TRIOQ_FUZZ_EXAMPLES"] = session.posargs[0] if session.posargs else "12000"
    session.run("pytest", "-s", "tests/test_fuzz_http.py", "tests/test_fuzz_websocket.py")


@nox.session(python=PYTHON)
def proto(session: nox.Session) -> None:
    """Rebuild the Connect service's descriptor set (src/trioq/_connect/descriptors.binpb)
    from its .proto files, after an edit (tests/test_connect.py checks they agree)."""
    session.install("grpcio-tools>=1.66")
    here = "src/trioq/_connect"
    session.run(
        "python", "-m", "grpc_tools.protoc", f"-I{here}/proto",
        f"--descriptor_set_out={here}/descriptors.binpb", "--include_imports",
        "osqueue/v1/queue.proto", "google/rpc/error_info.proto",
    )  # fmt: skip
